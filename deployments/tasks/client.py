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

    async def submit(self, sub: TaskSubmission) -> TaskOut:
        """The queued task; a quota's refusal (returned by the store) is raised here."""
        with _store_errors():
            out: TaskOut | DreamLabError = await within(self.handle.submit.remote(sub), self.timeout_s, WHO,
                                                        "task submission")
        if isinstance(out, DreamLabError):
            raise out
        return out

    async def get(self, task_id: str, owner: str) -> TaskOut | None:
        with _store_errors():
            out: TaskOut | None = await within(self.handle.get.remote(task_id, owner), self.timeout_s, WHO,
                                               "task read")
            return out

    async def cancel(self, task_id: str, owner: str) -> TaskOut | None:
        with _store_errors():
            out: TaskOut | None = await within(self.handle.cancel.remote(task_id, owner), self.timeout_s, WHO,
                                               "task cancel")
            return out

    async def put_image(self, data: bytes, media_type: str) -> str:
        with _store_errors():
            key: str = await within(self.handle.put_image.remote(data, media_type), self.timeout_s, WHO,
                                    "image store")
            return key

    async def get_image(self, key: str) -> tuple[bytes, str] | None:
        with _store_errors():
            found: tuple[bytes, str] | None = await within(self.handle.get_image.remote(key), self.timeout_s, WHO,
                                                           "image read")
            return found
