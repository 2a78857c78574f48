"""`TaskStoreClient`: the router's typed calls to the TaskStore deployment, each bounded in time
(`timeouts.task_store_s`: a 504 past it, the call cancelled) and with Ray's own failures as a 503 (no actor
ids), so a stuck or restarting TaskStore never holds a router request for ever."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

from deployments.router.mode_client import within
from deployments.tasks.submission import TaskSubmission
from serve_app.api.schemas.tasks import TaskOut
from serve_app.core.errors import DreamLabError, ModeUnavailableError

logger = logging.getLogger(__name__)
WHO = "the task store"


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (RayActorError, ActorUnavailableError):
        logger.warning("the task store went away during a call", exc_info=True)
        raise ModeUnavailableError("the task store is restarting; retry", retry_after_s=5) from None


class TaskStoreClient:
    """`handle` is the TaskStore deployment's handle; every call waits at most `timeout_s`."""

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def _call(self, what: str, method: str, *args: Any) -> Any:
        with _store_errors():
            return await within(getattr(self.handle, method).remote(*args), self.timeout_s, WHO, what)

    async def submit(self, sub: TaskSubmission) -> TaskOut:
        """The queued task; a quota's refusal (returned by the store) is raised here."""
        out: TaskOut | DreamLabError = await self._call("task submission", "submit", sub)
        if isinstance(out, DreamLabError):
            raise out
        return out

    async def get(self, task_id: str, owner: str) -> TaskOut | None:
        found: TaskOut | None = await self._call("task read", "get", task_id, owner)
        return found

    async def cancel(self, task_id: str, owner: str) -> TaskOut | None:
        found: TaskOut | None = await self._call("task cancel", "cancel", task_id, owner)
        return found

    async def put_image(self, data: bytes, media_type: str) -> str:
        key: str = await self._call("image store", "put_image", data, media_type)
        return key

    async def get_image(self, key: str) -> tuple[bytes, str] | None:
        found: tuple[bytes, str] | None = await self._call("image read", "get_image", key)
        return found
