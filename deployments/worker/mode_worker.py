"""The mode deployment: each replica is one GPU actor serving one mode's checkpoint.

A thin wrapper around `ModelRunner` that adds the cluster lifecycle: reserve at the registry -> load (from
disk, or a device copy from the RAM tier) -> measure what the load really took -> register; a heartbeat
that reports liveness, state and tier and receives eviction commands (to the RAM tier or to disk); typed
generation (`generate`, `generate_stream`) and custom jobs (`run`), one model-use discipline for both; and
on shutdown (Serve drains in-flight requests first) unregister and free the memory.

Working memory: a loaded model is accounted with its standing share (the mode's default size at its
largest batch); a request that needs more reserves the difference (see `replica_reservations`).

`ModeWorker` is a plain class with a sync constructor and an async `start`, so tests build it without
Serve; `mode_worker_deployment.ModeWorkerDeployment` is what Serve runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from deployments import metrics
from deployments.protocol import (
    GenerationRequest,
    GenerationResult,
    HeartbeatReport,
    LoadAnswer,
    ModelState,
    Offloaded,
    ProgressEvent,
    Registration,
    Tier,
    UnloadAnswer,
)
from deployments.registry.client import RegistryClient
from deployments.worker.device_probe import DeviceProbe, replica_id
from deployments.worker.reservations import ReplicaReservations
from deployments.worker.shielded import finish_even_if_cancelled
from serve_app.config.app_args import RegistryConfig
from serve_app.config.modes_file import ModeConfig, resolve_checkpoint
from serve_app.core.errors import DreamLabError, InsufficientVRAMError, JobFailedError
from serve_app.model.generation.custom_jobs import JobContext, JobRegistry
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.vram_estimate import VramEstimate, estimate_vram
from serve_app.model.loading.pipeline_loader import dtype_name, free_device_memory

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ModeWorker:
    """One replica of one mode. `registry` is the VramRegistry deployment handle (None: no accounting)."""

    def __init__(
        self,
        mode: dict[str, Any] | ModeConfig,
        model_root: str,
        registry: Any = None,
        registry_config: dict[str, Any] | None = None,
        allow_absolute_paths: bool = False,
        *,
        runner_factory: Callable[[ModeConfig, Path], ModelRunner] = ModelRunner,
        probe: DeviceProbe | None = None,
    ) -> None:
        self._created = time.perf_counter()
        self.mode = ModeConfig.model_validate(mode)
        checkpoint = resolve_checkpoint(self.mode.checkpoint, Path(model_root), allow_absolute=allow_absolute_paths,
                                        source=f"mode {self.mode.name}")
        self.runner = runner_factory(self.mode, checkpoint)
        self.jobs = JobRegistry(self.mode.jobs)
        # estimated once: the checkpoint and the mode do not change
        self._vram = self.mode.vram_estimate(self.runner.info, dtype_name(self.runner.dtype))
        self.registry = RegistryClient(registry) if registry is not None else None
        self.registry_config = RegistryConfig.model_validate(registry_config or {})
        self.probe = probe or DeviceProbe()
        self.replica_id = replica_id()
        self.device_id = self.probe.device_id()
        self.reservations = ReplicaReservations(self.registry, self.registry_config, self.replica_id, self.mode.name,
                                                self.device_id, self.probe)
        self.inflight = 0
        self.epoch = 0
        self.start_s = 0.0
        self._measured_bytes = 0
        self._host_bytes = 0  # what the model holds in the RAM tier
        self._load_lock = asyncio.Lock()
        self._run_lock = asyncio.Lock()
        self._using = 0  # jobs past _ensure_loaded that still need the model
        self._unloading = False
        self._stopping = False
        self._first_request = True
        self._heartbeat: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the heartbeat and, when the mode says so, load."""
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        if self.mode.load_on_start:
            await self._ensure_loaded()
        self.start_s = time.perf_counter() - self._created
        logger.info("replica %s of mode %s up on %s in %.2fs", self.replica_id, self.mode.name, self.device_id,
                    self.start_s)

    # -- memory accounting ---------------------------------------------------------------------------
    def report(self) -> HeartbeatReport:
        return HeartbeatReport(
            mode=self.mode.name, device=self.device_id, state=self.runner.state, tier=self.runner.tier,
            host_bytes=self._host_bytes if self.runner.tier is Tier.RAM else 0, epoch=self.epoch,
            inflight=self.inflight, footprint_bytes=self._accounted_bytes(),
            measured_bytes=self._measured_bytes, estimate_bytes=self._vram.total_bytes,
            last_use=self.runner.last_used, total_bytes=self.probe.total_bytes(),
            reported_used_bytes=self.probe.used_bytes())

    def _accounted_bytes(self) -> int:
        """What this model holds: the measured load, its LoRAs and its standing working memory."""
        return self._measured_bytes + self.runner.adapter_bytes() + self._vram.working_bytes

    async def _ensure_loaded(self) -> tuple[float, Tier] | None:
        """Load (reserve, load, measure, register) unless loaded: (the load seconds, the tier it came from),
        or None for a no-op.

        The caller counts itself in `_using` right after this returns (no await in between), which keeps
        an unload from pulling the model out from under its job.
        """
        if self.runner.loaded and not self._unloading:
            return None
        return await finish_even_if_cancelled(self._load())  # a load half done is never left uncounted

    async def _load(self) -> tuple[float, Tier] | None:
        async with self._load_lock:
            if self.runner.loaded:
                return None
            started = time.perf_counter()
            await self.reservations.for_load(self._vram.total_bytes)
            before = self.probe.allocated_bytes()
            try:
                await asyncio.to_thread(self.runner.load)
            except BaseException as exc:
                await self.reservations.release_load()
                if isinstance(exc, torch.cuda.OutOfMemoryError):  # the runner left it cold: an answer, not a crash
                    raise self._out_of_memory(f"loading mode {self.mode.name!r}", self._vram.total_bytes) from None
                raise
            measured = self.probe.allocated_bytes() - before
            self._measured_bytes = measured if self.probe.cuda else self.runner.parameter_bytes()
            self.epoch += 1
            if self.registry is not None:
                await self.registry.register(Registration(
                    replica=self.replica_id, mode=self.mode.name, device=self.device_id,
                    footprint_bytes=self._accounted_bytes(), estimate_bytes=self._vram.total_bytes,
                    measured_bytes=self._measured_bytes, epoch=self.epoch))
            loaded = time.perf_counter() - started, self.runner.loaded_from or Tier.DISK
            metrics.model_loaded(self.mode.name, loaded[1].value, loaded[0])
            return loaded

    async def _evict(self, to: Tier, reason: str, only_from: Tier | None = None) -> bool:
        """Move the model off its device, after the jobs using it finish: to the RAM tier (`to` RAM; only a
        model on the device moves) or to disk (dropped from either tier). A registry eviction (`only_from`:
        the tier the command was about) is skipped when busy, or when a load moved the model meanwhile (the
        registry withdraws it when the next heartbeat reports the model busy; the loader then asks again)."""
        if only_from is not None and (self._using or self._load_lock.locked()):
            return False  # busy, or a load is under way: never hold up the heartbeat behind it
        self._unloading = True
        moved = False
        try:
            async with self._load_lock:
                while self._using:
                    await asyncio.sleep(0.01)
                if only_from is not None and self.runner.tier is not only_from:
                    return False
                moved = await asyncio.to_thread(self.runner.offload if to is Tier.RAM else self.runner.unload)
                if moved:
                    self.epoch += 1
                    self._measured_bytes = 0
                    self._host_bytes = self.runner.parameter_bytes() if to is Tier.RAM else 0
                    if self.registry is not None and to is Tier.RAM:
                        await self.registry.offloaded(Offloaded(
                            replica=self.replica_id, mode=self.mode.name, device=self.device_id,
                            host_bytes=self._host_bytes, last_use=self.runner.last_used, epoch=self.epoch))
                if self.registry is not None and to is Tier.DISK:
                    await self.registry.unregister(self.replica_id, False, self.epoch)
        finally:
            self._unloading = False
        if moved:
            logger.info("mode %s moved from %s to %s (%s)", self.mode.name, self.device_id, to.value, reason)
            metrics.model_moved(self.mode.name, to.value, reason)
        return moved

    async def heartbeat_once(self, wait_s: float = 0.0) -> None:
        """Report to the registry (which may hold the call up to `wait_s`) and obey its answer (an eviction)."""
        if self.registry is None:
            return
        answer = await self.registry.heartbeat(self.replica_id, self.report(), wait_s)
        if answer.evict is not None:
            await self._evict(answer.evict, "registry", only_from=answer.evict_from)

    async def _heartbeat_loop(self) -> None:
        """One beat per interval; the registry holds each beat open for the interval, so a command decided
        meanwhile arrives at once."""
        interval = self.registry_config.heartbeat_interval_s
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.heartbeat_once(wait_s=interval)
            except Exception as exc:  # the registry restarts: keep beating, it re-learns us
                logger.warning("heartbeat of %s failed: %s", self.replica_id, exc)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # -- work ----------------------------------------------------------------------------------------
    async def _with_model(self, call: Callable[[], T], what: str, request_id: str, check_pipeline: bool,
                          needed: VramEstimate, adapters: Callable[[], int] = lambda: 0,
                          ) -> tuple[T, tuple[float, Tier] | None]:
        """Run `call` in a thread with the model loaded (see `_contained`), generation and custom jobs alike:
        (its result, the load it waited for). The model stays in use (no eviction or unload can tear it down)
        until the thread is done, self-check included. Working memory beyond the model's standing share
        (`needed` vs the mode's estimate) and the bytes of the adapters the call will load (`adapters`, asked
        when its turn comes; from then on the footprint counts them) are reserved at the registry for the
        call's duration."""
        loaded = await self._ensure_loaded()
        self._using += 1
        try:  # one at a time, as the runner runs them: a waiting request holds no extra working memory
            async with self._run_lock, self.reservations.working(
                    max(0, needed.working_bytes - self._vram.working_bytes) + adapters(), request_id, what):
                return await finish_even_if_cancelled(asyncio.to_thread(
                    self._contained, call, what, request_id, check_pipeline, needed.total_bytes)), loaded
        finally:
            self._using -= 1

    def _contained(self, call: Callable[[], T], what: str, request_id: str, check_pipeline: bool,
                   needed_bytes: int) -> T:
        """Run `call` (in a worker thread) so that a failure fails this request, not the replica.

        Dream Lab's own errors pass through. Anything else fails the request after the device memory it held
        is freed: a CUDA out-of-memory error is a 507 with the numbers (`needed_bytes`: what the request is
        estimated to need) and the model stays loaded; any other error is a 500 without its text (the
        traceback goes to the log) and, with `check_pipeline`, is followed by the runner's self-check: only a
        failed self-check marks the model FAILED (the health check then fails, Serve replaces the replica).
        """
        error: str | None = None  # None: out of memory
        try:
            return call()
        except DreamLabError:
            raise
        except torch.cuda.OutOfMemoryError:
            logger.warning("[%s] %s ran out of device memory on mode %s", request_id, what, self.mode.name)
        except Exception as exc:
            logger.exception("[%s] %s failed on mode %s", request_id, what, self.mode.name)
            error = f"{type(exc).__name__}: {exc}"
        # out of the except blocks: the error's traceback, and the tensors its frames held, are gone
        free_device_memory(self.runner.device)
        if error is None:
            raise self._out_of_memory(f"{what} on mode {self.mode.name!r}", needed_bytes,
                                      f"; try a smaller width/height/num_images (request id {request_id})")
        if check_pipeline:
            self._check_pipeline(request_id, error)
        raise JobFailedError(f"{what} failed on mode {self.mode.name!r} (request id {request_id})", param=None)

    def _out_of_memory(self, what: str, needed_bytes: int, advice: str = "") -> InsufficientVRAMError:
        total = self.probe.total_bytes() or 0
        free = total - (self.probe.used_bytes() or total)
        return InsufficientVRAMError(f"{what} ran out of device memory: it needs about {needed_bytes} bytes, {free} "
                                     f"are free of {total}{advice}", needed_bytes=needed_bytes, free_bytes=free,
                                     budget_bytes=total)

    def _check_pipeline(self, request_id: str, error: str) -> None:
        """After an unexpected error: a pipeline that fails its self-check is marked FAILED."""
        try:
            passed = self.runner.self_check(request_id)
        except Exception:
            logger.exception("[%s] mode %s self-check raised", request_id, self.mode.name)
            passed = False
        if passed:
            logger.warning("[%s] mode %s passed its self-check after the error: the replica keeps serving",
                           request_id, self.mode.name)
            return
        self.runner.state = ModelState.FAILED
        self.runner.last_error = error
        logger.error("[%s] mode %s failed its self-check after the error: marked failed, the replica will be "
                     "replaced", request_id, self.mode.name)

    async def _generate(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
                        cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        started = time.perf_counter()
        first, self._first_request = self._first_request, False
        needed = estimate_vram(self.runner.info, dtype_name(self.runner.dtype), *request.output_size,
                               len(request.seeds))
        result, loaded = await self._with_model(
            lambda: self.runner.generate(request, progress, cancelled), request.kind, request.request_id,
            check_pipeline=True, needed=needed, adapters=lambda: self.runner.adapter_bytes_to_load(request))
        result.timings.job_s = round(time.perf_counter() - started, 4)
        if loaded is not None:
            result.timings.load_s = round(loaded[0], 4)
            result.timings.load_tier = loaded[1].value
        if first:
            result.timings.replica_start_s = round(self.start_s, 4)
        return result

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one resolved generation to completion."""
        logger.info("[%s] %s on mode %s", request.request_id, request.kind, self.mode.name)
        self.inflight += 1
        try:
            return await self._generate(request)
        finally:
            self.inflight -= 1

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[ProgressEvent | GenerationResult]:
        """Run one generation, yielding a `ProgressEvent` per denoising step, then the `GenerationResult`.

        When the consumer goes away (the client disconnected), the generation is interrupted at the next
        step, so the replica is free again at once.
        """
        logger.info("[%s] %s (streamed) on mode %s", request.request_id, request.kind, self.mode.name)
        self.inflight += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        cancelled = False
        started = time.monotonic()

        def progress(step: int, total: int) -> None:  # runs in the generation thread
            elapsed = time.monotonic() - started
            event = ProgressEvent(step=step, total=total, elapsed_s=round(elapsed, 4),
                                  eta_s=round(elapsed / step * (total - step), 4))
            loop.call_soon_threadsafe(events.put_nowait, event)

        task = loop.create_task(self._generate(request, progress, lambda: cancelled))
        try:
            while True:
                getter = loop.create_task(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield task.result()
                return
        finally:
            cancelled = True
            if not task.done():
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieve it: after a disconnect the GenerationCancelledError is expected
            self.inflight -= 1

    async def run(self, job_type: str, payload: dict[str, Any], request_id: str = "-") -> Any:
        """Run a custom job type (named in the mode's `jobs:`) to completion."""
        fn = self.jobs.get(job_type)
        logger.info("[%s] job %s on mode %s", request_id, job_type, self.mode.name)
        self.inflight += 1
        try:
            job = functools.partial(fn, JobContext(self.runner), payload)
            result, _ = await self._with_model(lambda: self.runner.run_exclusive(job), f"job {job_type!r}",
                                               request_id, check_pipeline=False, needed=self._vram)
            return result
        finally:
            self.inflight -= 1

    # -- operator actions and state --------------------------------------------------------------------
    async def load(self) -> LoadAnswer:
        loaded = await self._ensure_loaded()
        return LoadAnswer(mode=self.mode.name, status="already_loaded" if loaded is None else "loaded",
                          load_s=None if loaded is None else loaded[0],
                          load_tier=None if loaded is None else loaded[1], replica=self.replica_id)

    async def unload(self) -> UnloadAnswer:
        unloaded = await self._evict(Tier.DISK, "operator")
        return UnloadAnswer(mode=self.mode.name, status="unloaded" if unloaded else "already_unloaded",
                            replica=self.replica_id)

    def check_health(self) -> None:
        """Unhealthy (Serve replaces the replica) when the pipeline broke: it failed its self-check."""
        if self.runner.state is ModelState.FAILED:
            raise RuntimeError(f"mode {self.mode.name} pipeline is broken: {self.runner.last_error}")

    async def stop(self) -> None:
        """Unregister and free the device (Serve has drained in-flight requests before)."""
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await asyncio.to_thread(self.runner.unload)
        if self.registry is not None:
            try:
                await self.registry.unregister(self.replica_id, True, timeout_s=2.0)
            except Exception as exc:  # the registry may already be gone (application deleted)
                logger.warning("could not unregister %s: %s", self.replica_id, exc)
