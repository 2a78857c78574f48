"""`ModeClient`: the one place that calls the mode workers (their Serve handles), for the router and the
task store alike.

Each call is typed (`GenerationRequest` in, `GenerationResult` / `ProgressEvent` / `LoadAnswer` out), sent
under the request's adapter-set id as Serve's `multiplexed_model_id` (so Serve prefers a replica that holds
those adapters), and Ray's own failures come out as Dream Lab errors (`worker_errors`: no actor ids, pids
or IPs). A generation whose replica goes away is sent once more (Serve picks another replica): generation
has no side effects, so running it twice is safe; a stream is retried only while nothing was streamed.

Every call has a deadline (`WorkerTimeoutsConfig`): a replica that hangs (a stuck thread, a stopped process)
answers 504 and the call is cancelled, so the caller's fair-queue slot is freed.

It imports neither FastAPI nor the router's app: the task store uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from deployments.protocol import GenerationRequest, GenerationResult, LoadAnswer, ProgressEvent, UnloadAnswer
from serve_app.config.app_args import WorkerTimeoutsConfig
from serve_app.core.errors import ModeUnavailableError, QueueFullError, WorkerTimeoutError

logger = logging.getLogger(__name__)


async def within(response: Any, timeout_s: float, who: str, what: str) -> Any:
    """Await a handle's response for at most `timeout_s`; past it the call is cancelled (the replica stops
    the request) and a 504 says who (`mode 'sd1'`, `the task store`) did not answer."""
    try:
        return await asyncio.wait_for(_awaited(response), timeout_s)
    except TimeoutError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise WorkerTimeoutError(f"{who} did not answer the {what} within {timeout_s:g} s; retry later",
                                 retry_after_s=5) from None


async def _awaited(response: Any) -> Any:
    return await response


@contextlib.contextmanager
def worker_errors(mode: str, request_id: str = "-") -> Iterator[None]:
    """Ray's own failures of a call to a mode replica, as Dream Lab errors (no actor ids, pids or IPs)."""
    try:
        yield
    except BackPressureError:
        raise QueueFullError(f"mode {mode!r} has a full queue; retry later", retry_after_s=1) from None
    except (RayActorError, ActorUnavailableError):
        logger.warning("[%s] the replica of mode %s went away", request_id, mode, exc_info=True)
        raise ModeUnavailableError(f"the replica of mode {mode!r} running this request went away; retry",
                                   retry_after_s=1) from None


class ModeClient:
    """Typed calls to the mode workers; `handles` maps a mode's name to its deployment's handle."""

    def __init__(self, handles: Mapping[str, Any], timeouts: WorkerTimeoutsConfig | None = None,
                 find: Callable[[str], Any] | None = None) -> None:
        """`find`: the handle of a mode not in `handles` (one a checkpoint refresh added), or an error."""
        self.handles = dict(handles)
        self.timeouts = timeouts or WorkerTimeoutsConfig()
        self.find = find

    async def knows(self, mode: str) -> bool:
        """Whether `mode` has a handle here; one missing is looked up with `find` (off the event loop)."""
        if mode not in self.handles and self.find is not None:
            try:
                self.handles[mode] = await asyncio.to_thread(self.find, mode)
            except Exception as exc:
                logger.info("no deployment of mode %s: %s", mode, exc)
        return mode in self.handles

    def _handle(self, mode: str, request: GenerationRequest | None = None) -> Any:
        handle = self.handles[mode]
        set_id = request.adapter_set_id() if request is not None else None
        return handle.options(multiplexed_model_id=set_id) if set_id else handle

    async def generate_once(self, mode: str, request: GenerationRequest) -> GenerationResult:
        with worker_errors(mode, request.request_id):
            result: GenerationResult = await within(self._handle(mode, request).generate.remote(request),
                                                    self.timeouts.generate_s, f"mode {mode!r}", "generation")
            return result

    async def generate(self, mode: str, request: GenerationRequest) -> GenerationResult:
        """Run `request` on a replica of `mode`; a replica that went away costs one retry."""
        try:
            return await self.generate_once(mode, request)
        except ModeUnavailableError:
            logger.warning("[%s] retrying on another replica of mode %s", request.request_id, mode)
            return await self.generate_once(mode, request)

    async def generate_stream(self, mode: str,
                              request: GenerationRequest) -> AsyncGenerator[ProgressEvent | GenerationResult, None]:
        """The worker's progress events, then its result. Retried once like `generate` while nothing was
        streamed yet; after that a dead replica is a 503."""
        for attempt in (1, 2):
            streamed = False
            try:
                with worker_errors(mode, request.request_id):
                    stream = self._handle(mode, request).options(stream=True).generate_stream.remote(request)
                    while True:
                        try:
                            event = await within(anext(stream), self.timeouts.stream_idle_s, f"mode {mode!r}",
                                                       "next step")
                        except StopAsyncIteration:
                            return
                        except WorkerTimeoutError:
                            stream.cancel()
                            raise
                        streamed = True
                        yield event
            except ModeUnavailableError:
                if streamed or attempt == 2:
                    raise
                logger.warning("[%s] retrying on another replica of mode %s", request.request_id, mode)

    async def run_job(self, mode: str, job_type: str, payload: dict[str, Any], request_id: str) -> Any:
        """A custom job of `mode` (its `jobs:`); not retried (a job may have side effects)."""
        with worker_errors(mode, request_id):
            return await within(self._handle(mode).run.remote(job_type, payload, request_id), self.timeouts.job_s,
                                f"mode {mode!r}", f"job {job_type!r}")

    async def load(self, mode: str) -> LoadAnswer:
        with worker_errors(mode):
            answer: LoadAnswer = await within(self._handle(mode).load.remote(), self.timeouts.load_s,
                                              f"mode {mode!r}", "load")
            return answer

    async def unload(self, mode: str) -> UnloadAnswer:
        with worker_errors(mode):
            answer: UnloadAnswer = await within(self._handle(mode).unload.remote(), self.timeouts.unload_s,
                                                f"mode {mode!r}", "unload")
            return answer
