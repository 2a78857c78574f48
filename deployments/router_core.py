"""What every front end of the Router shares: mode selection, admission, the drain flag and the default
mode learnt from the registry, and the typed calls to the mode workers.

The route methods live in `native_routes`, `openai_routes` and `a1111_routes` (subclasses of
`RouterCore`); `router.Router` joins them into the Serve ingress. It never touches torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from deployments.http_app import current_request_id
from deployments.protocol import GenerationRequest, GenerationResult, ProgressEvent
from deployments.registry_client import RegistryClient
from serve_app.api.mode_catalog import ModeCatalog, ServedMode
from serve_app.api.native_schemas import Txt2ImgRequest
from serve_app.api.request_resolution import resolve_request
from serve_app.config.modes_file import ModesFile
from serve_app.errors import ModeUnavailableError, QueueFullError, ShuttingDownError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def worker_errors(mode: str) -> Iterator[None]:
    """Ray's own failures of a call to a mode replica, as Dream Lab errors (no actor ids, pids or IPs)."""
    try:
        yield
    except BackPressureError:
        raise QueueFullError(f"mode {mode!r} has a full queue; retry later", retry_after_s=1) from None
    except (RayActorError, ActorUnavailableError):
        logger.warning("[%s] the replica of mode %s went away", current_request_id(), mode, exc_info=True)
        raise ModeUnavailableError(f"the replica of mode {mode!r} running this request went away; retry",
                                   retry_after_s=1) from None


@dataclass
class Generated:
    mode: ServedMode
    result: GenerationResult
    total_s: float


class RouterCore:
    """`mode_handles` maps mode name -> DeploymentHandle; `registry` is the registry's handle (None: none)."""

    def __init__(self, modes: dict[str, Any], model_root: str, mode_handles: dict[str, Any],
                 registry: Any = None) -> None:
        self.catalog = ModeCatalog(ModesFile.model_validate(modes), Path(model_root))
        self.handles = mode_handles
        self.registry = RegistryClient(registry) if registry is not None else None
        self.router_id = uuid.uuid4().hex[:12]
        self.inflight = 0
        self.draining = False
        self.current_default = self.catalog.default
        self._default_version = 0  # registry version of current_default (A1111 switches)
        self.started_at = time.time()
        self._poller: asyncio.Task | None = None

    # -- the registry's view: drain flag, default mode -------------------------------------------------
    async def ensure_poller(self) -> None:
        """Report in-flight work to the registry and learn the drain flag and default mode (every 0.2 s).

        The first call polls once before returning, so a router's very first request already knows
        whether the application drains."""
        if self._poller is None and self.registry is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())
            await self._poll_once()

    async def _poll_once(self) -> None:
        assert self.registry is not None
        try:
            ans = await self.registry.router_poll(self.router_id, self.inflight)
        except Exception as exc:
            logger.warning("registry poll failed: %s", exc)
            return
        self.draining = ans.draining
        # a poll sent before this router's own switch may answer after it: only newer versions count
        if ans.default_version > self._default_version and ans.default_mode in self.catalog.modes:
            self.current_default, self._default_version = ans.default_mode, ans.default_version

    async def _poll_registry(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._poll_once()

    async def set_default_mode(self, name: str) -> None:
        """Switch the application's default mode (shared with every router through the registry)."""
        self.current_default = name
        if self.registry is not None:
            self._default_version = await self.registry.set_default_mode(name)

    # -- admission -----------------------------------------------------------------------------------
    async def admit(self) -> None:
        """Count a request in flight; refuse it while the application drains. `release()` undoes it."""
        await self.ensure_poller()
        if self.draining:
            raise ShuttingDownError("Dream Lab is shutting down: in-flight work finishes, new work is refused",
                                    retry_after_s=30)
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1

    @contextlib.asynccontextmanager
    async def accepting(self) -> AsyncIterator[None]:
        await self.admit()
        try:
            yield
        finally:
            self.release()

    # -- modes and workers -----------------------------------------------------------------------------
    def select(self, name: str | None, param: str = "mode") -> ServedMode:
        """The named mode (or alias), or the application's current default mode."""
        return self.catalog.select(name or self.current_default, param=param)

    def resolve(self, body: Txt2ImgRequest, mode: ServedMode) -> GenerationRequest:
        """Validate `body` against `mode` once, here: bad input fails before it takes a queue slot."""
        return resolve_request(body, mode.config, mode.family, current_request_id())

    async def generate(self, body: Txt2ImgRequest, mode: ServedMode | None = None) -> Generated:
        """Resolve `body` (on `mode`, else the one it names) and run it on that mode's worker."""
        started = time.perf_counter()
        mode = mode or self.select(body.mode)
        request = self.resolve(body, mode)
        with worker_errors(mode.name):
            result: GenerationResult = await self.handles[mode.name].generate.remote(request)
        return Generated(mode, result, time.perf_counter() - started)

    async def generate_stream(self, mode: ServedMode,
                              request: GenerationRequest) -> AsyncIterator[ProgressEvent | GenerationResult]:
        """The worker's progress events, then its result."""
        with worker_errors(mode.name):
            async for event in self.handles[mode.name].options(stream=True).generate_stream.remote(request):
                yield event
