"""The Gateway: what every front end of the Router shares. Admission and drain (the drain flag and the
default mode learnt from the registry), mode selection and request resolution, one fair queue per mode,
and the mode workers through a `ModeClient`.

It is built from typed configs and pre-built catalogs, by keyword (`RouterIngress` builds them in the
replica; a unit test builds it with fakes). The front ends (`frontends/`) are `APIRouter` modules that get
it as a FastAPI dependency (`gateway_dependency`). It never touches torch and imports no FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from deployments import metrics
from deployments.protocol import GenerationRequest, GenerationResult, OperatorState, ProgressEvent, RegistryStats
from deployments.registry.client import RegistryClient
from deployments.router.fair_queue import FairQueue
from deployments.router.mode_client import ModeClient
from deployments.router.request_context import current_caller, current_server_id, note_mode
from deployments.tasks.client import TaskStoreClient
from serve_app.api.access_policy import AccessPolicy
from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.mode_catalog import ModeCatalog, ServedMode
from serve_app.api.request_resolution import resolve_refiner_base, resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.app_args import FairShareConfig, TasksConfig
from serve_app.core.errors import RequestValidationError, ShuttingDownError
from serve_app.model.generation.job import GenerationTimings

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
# CPU work for one client (a large JSON body, an image's decode and resize, png-info, upscaling, ControlNet
# detect maps) runs here, not on the event loop that answers everyone else; two threads bound what one replica
# spends on it at once.
_CPU_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dreamlab-router-cpu")


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` on the router's bounded CPU pool, in the caller's context (its request id)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_CPU_POOL, call)


@dataclass
class Generated:
    mode: ServedMode
    result: GenerationResult
    total_s: float


class Gateway:
    """`workers` calls the mode workers; `registry` is the registry's client and `task_store` the
    TaskStore's (None: none); `access` says who may call (open when it holds no key)."""

    def __init__(self, *, catalog: ModeCatalog, adapters: AdapterCatalog, workers: ModeClient,
                 access: AccessPolicy | None = None, fair_share: FairShareConfig | None = None,
                 tasks: TasksConfig | None = None, registry: RegistryClient | None = None,
                 task_store: TaskStoreClient | None = None) -> None:
        self.catalog = catalog
        self.adapters = adapters
        self.workers = workers
        self.registry = registry
        self.task_store = task_store
        self.tasks_config = tasks or TasksConfig()
        self.access = access or AccessPolicy()
        self.fair_share = fair_share or FairShareConfig()
        self.queues: dict[str, FairQueue] = {}
        for mode in self.catalog.modes.values():
            self.add_queue(mode)
        self.router_id = uuid.uuid4().hex[:12]
        self.inflight = 0
        self.operator = OperatorState()  # this router's copy of what operators set (see OperatorState)
        self.replicas: dict[str, int] = {}  # live replicas per mode, from the registry
        self.started_at = time.time()
        self._poller: asyncio.Task | None = None
        self._stats: tuple[float, RegistryStats] | None = None  # (when, what) of the last registry stats
        self._stats_call: asyncio.Future[RegistryStats] | None = None
        # called with each operator state the registry answers (the modes a checkpoint refresh changed)
        self.on_state: Callable[[OperatorState], Awaitable[None]] | None = None

    @property
    def draining(self) -> bool:
        return self.operator.draining

    @property
    def current_default(self) -> str:
        """The application's default mode: the last switch, else the configured one."""
        switched = self.operator.default_mode
        return switched if switched in self.catalog.modes else self.catalog.default

    # -- operator state shared through the registry: drain flag, default mode ----------------------------
    async def registry_stats(self, max_age_s: float = 0.0) -> RegistryStats:
        """The registry's per-device stats. With `max_age_s`, an answer at most that old; concurrent callers
        share one registry call, so a flood of probes costs the registry one call per `max_age_s`."""
        if self.registry is None:
            return RegistryStats(devices=[], draining=self.draining, replicas={})
        if self._stats is not None and time.monotonic() - self._stats[0] <= max_age_s:
            return self._stats[1]
        if self._stats_call is None or self._stats_call.done():
            self._stats_call = asyncio.ensure_future(self.registry.stats())
        stats = await asyncio.shield(self._stats_call)
        self._stats = (time.monotonic(), stats)
        return stats

    async def ensure_poller(self) -> None:
        """Report in-flight work, the waiting requests per mode (the backlog Serve's autoscaler is told through
        the mode replicas) and the operator state to the registry, learn its (every 0.2 s).

        The first call polls once before returning, so a router's very first request already knows
        whether the application drains."""
        if self._poller is None and self.registry is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())
            await self._poll_once()

    async def _poll_once(self) -> None:
        assert self.registry is not None
        try:
            ans = await self.registry.router_poll(self.router_id, self.inflight, self.operator,
                                                  {name: queue.waiting() for name, queue in self.queues.items()})
        except Exception as exc:
            logger.warning("registry poll failed: %s", exc)
            return
        # a poll sent before this router's own switch may answer after it: only newer versions count
        if ans.state.version > self.operator.version:
            self.operator = ans.state
        if self.on_state is not None:
            await self.on_state(self.operator)
        self.replicas = ans.replicas
        for name, queue in self.queues.items():
            queue.wake()  # a mode that scaled up takes more at once
            metrics.queue_depth(name, queue.waiting())

    async def _poll_registry(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._poll_once()

    async def set_default_mode(self, name: str) -> None:
        """Switch the application's default mode (shared with every router through the registry)."""
        if self.registry is None:
            self.operator = self.operator.model_copy(
                update={"default_mode": name, "version": self.operator.version + 1})
            return
        state = await self.registry.set_default_mode(name)
        if state.version > self.operator.version:
            self.operator = state

    # -- admission -----------------------------------------------------------------------------------
    async def refuse_if_draining(self) -> None:
        await self.ensure_poller()
        if self.draining:
            raise ShuttingDownError("Dream Lab is shutting down: in-flight work finishes, new work is refused",
                                    retry_after_s=30)

    async def admit(self) -> None:
        """Count a request in flight; refuse it while the application drains. `release()` undoes it."""
        await self.refuse_if_draining()
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
    def add_queue(self, mode: ServedMode) -> None:
        """The fair queue of `mode` (a mode a checkpoint refresh added gets one too; one that went keeps its)."""
        if mode.name not in self.queues:
            options = mode.config.deployment_options()
            self.queues[mode.name] = FairQueue(mode.name, self._capacity(mode.name, options["max_ongoing_requests"]),
                                               options["max_queued_requests"], self.fair_share.max_waiting_per_client)

    def _capacity(self, mode: str, per_replica: int) -> Callable[[], int]:
        """How many requests of `mode` go on to its replicas at once (a scaled-to-zero mode takes one
        replica's worth, which wakes it)."""
        return lambda: per_replica * max(1, self.replicas.get(mode, 0))

    @contextlib.asynccontextmanager
    async def dispatch(self, mode: ServedMode) -> AsyncIterator[None]:
        """A slot to send a request of `mode` on, in fair turn with the other clients."""
        queue, started = self.queues[mode.name], time.perf_counter()
        async with queue.slot(current_caller().id):
            metrics.stage_seconds(mode.name, {"queue": time.perf_counter() - started})
            metrics.queue_depth(mode.name, queue.waiting())
            yield
        metrics.queue_depth(mode.name, queue.waiting())

    def select(self, name: str | None, param: str = "mode") -> ServedMode:
        """The named mode (or alias), or the application's current default mode."""
        mode = self.catalog.select(name or self.current_default, param=param)
        note_mode(mode.name)
        return mode

    @staticmethod
    def observe(mode: ServedMode, result: GenerationResult, total_s: float) -> None:
        """A finished generation's stages, into the metrics."""
        t = result.timings
        metrics.stage_seconds(mode.name, {"load": t.load_s, "inference": t.inference_s, "encode": t.encode_s,
                                          "total": total_s})

    async def resolve(self, body: Txt2ImgRequest, mode: ServedMode) -> GenerationRequest:
        """Validate `body` against `mode` once, here: bad input fails before it takes a queue slot. A body
        with images is resolved off the event loop (decoding and resizing them is CPU work)."""
        if body.refiner is not None:  # only `generate` runs the two stages
            raise RequestValidationError("`refiner` runs on the direct generation routes only (not streamed, not as "
                                         "a task)", param="refiner")
        resolve = functools.partial(resolve_request, body, mode.config, mode.family, current_server_id(),
                                    self.adapters, inpainting=mode.info.inpainting, variant=mode.info.variant)
        return await off_loop(resolve) if _carries_images(body) else resolve()

    async def _refiner_stages(self, body: Txt2ImgRequest, mode: ServedMode) -> tuple[GenerationRequest, ServedMode]:
        """The base's request of a base -> refiner generation (it stops at `switch_at` and answers latents)."""
        assert body.refiner is not None
        refiner = self.select(body.refiner.mode, param="refiner.mode")
        resolve = functools.partial(resolve_refiner_base, body, mode, refiner, current_server_id(), self.adapters)
        return await off_loop(resolve) if _carries_images(body) else resolve(), refiner

    async def _generate_refined(self, body: Txt2ImgRequest, mode: ServedMode) -> GenerationResult:
        """Base -> refiner across two mode deployments: the latents travel between them, not images."""
        base, refiner = await self._refiner_stages(body, mode)
        first = await self._generate_once(mode, base)
        second = await self._generate_once(refiner, base.refiner_finish(first.latents))
        a, b = first.timings, second.timings
        second.timings = GenerationTimings(
            inference_s=round(a.inference_s + b.inference_s, 4), encode_s=b.encode_s, job_s=round(a.job_s + b.job_s, 4),
            load_s=None if a.load_s is None and b.load_s is None else round((a.load_s or 0) + (b.load_s or 0), 4),
            adapter_loads=a.adapter_loads)
        second.stages = [(mode.name, a), (refiner.name, b)]
        return second

    async def generate(self, body: Txt2ImgRequest, mode: ServedMode | None = None) -> Generated:
        """Resolve `body` (on `mode`, else the one it names) and run it on that mode's worker.

        A replica that dies under the request costs one retry (Serve sends it to another replica);
        generation has no side effects, so running it twice is safe."""
        started = time.perf_counter()
        mode = mode or self.select(body.mode)
        if body.refiner is not None:
            result = await self._generate_refined(body, mode)
        else:
            result = await self._generate_once(mode, await self.resolve(body, mode))
        total_s = time.perf_counter() - started
        self.observe(mode, result, total_s)
        return Generated(mode, result, total_s)

    async def _generate_once(self, mode: ServedMode, request: GenerationRequest) -> GenerationResult:
        async with self.dispatch(mode):
            return await self.workers.generate(mode.name, request)

    async def generate_stream(self, mode: ServedMode,
                              request: GenerationRequest) -> AsyncGenerator[ProgressEvent | GenerationResult, None]:
        """The worker's progress events, then its result (see `ModeClient.generate_stream`)."""
        started = time.perf_counter()
        async with self.dispatch(mode):
            async for event in self.workers.generate_stream(mode.name, request):
                if isinstance(event, GenerationResult):
                    self.observe(mode, event, time.perf_counter() - started)
                yield event


def _carries_images(body: Txt2ImgRequest) -> bool:
    """An init image, a ControlNet unit's or an IP-Adapter's image: decoding it is CPU work."""
    return getattr(body, "image", None) is not None or bool(body.controls) or bool(body.ip_adapters)
