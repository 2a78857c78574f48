"""The mode deployment: each replica is one GPU actor serving one mode's checkpoint.

A thin wrapper around `serve_app.model_runner.ModelRunner` that adds the cluster lifecycle:
reserve at the registry -> load -> measure what the load really took -> register; a heartbeat that
reports liveness and state and receives eviction commands; jobs with progress streaming; and on
shutdown (Serve drains in-flight requests first) unregister and free the memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serve_app.errors import DreamLabError, InsufficientVRAMError, JobFailedError
from serve_app.jobs import JobContext, JobRegistry
from serve_app.generation_result import GenerationResult
from serve_app.model_runner import ModelRunner, ModelState
from serve_app.modes_config import ModeConfig, resolve_checkpoint
from serve_app.pipeline_loader import dtype_name
from serve_app.vram_estimate import estimate_mode_vram
from deployments.device_probe import DeviceProbe
from deployments.vram_registry import RegistryConfig

logger = logging.getLogger(__name__)


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # constructed outside Serve (unit tests)
        return f"local-{id(object())}"


class ModeWorker:
    """One replica of one mode. `registry` is the VramRegistry deployment handle (None: no accounting)."""

    async def __init__(
        self,
        mode: dict[str, Any],
        model_root: str,
        registry: Any = None,
        registry_config: dict[str, Any] | None = None,
        allow_absolute_paths: bool = False,
        *,
        runner_factory: type[ModelRunner] = ModelRunner,
        probe: DeviceProbe | None = None,
    ) -> None:
        started = time.perf_counter()
        self.mode = ModeConfig.model_validate(mode)
        checkpoint = resolve_checkpoint(self.mode.checkpoint, Path(model_root), allow_absolute=allow_absolute_paths,
                                        source=f"mode {self.mode.name}")
        self.runner = runner_factory(self.mode, checkpoint)
        self.jobs = JobRegistry(self.mode.jobs)
        # estimated once: the checkpoint and the mode do not change
        self._vram = estimate_mode_vram(self.runner.info, self.mode, dtype_name(self.runner.dtype))
        self.registry = registry
        self.registry_config = RegistryConfig.model_validate(registry_config or {})
        self.probe = probe or DeviceProbe()
        self.replica_id = _replica_id()
        self.device_id = self.probe.device_id()
        self.inflight = 0
        self.epoch = 0
        self._measured_bytes = 0
        self._load_lock = asyncio.Lock()
        self._using = 0  # jobs past _ensure_loaded that still need the model
        self._unloading = False
        self._stopping = False
        self._first_request = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        if self.mode.load_on_start:
            await self._ensure_loaded()
        self.start_s = time.perf_counter() - started
        logger.info("replica %s of mode %s up on %s in %.2fs", self.replica_id, self.mode.name, self.device_id,
                    self.start_s)

    # -- memory accounting ---------------------------------------------------------------------------
    def _report(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name,
            "device": self.device_id,
            "state": self.runner.state.value,
            "loaded": self.runner.loaded,
            "epoch": self.epoch,
            "inflight": self.inflight,
            "footprint_bytes": self._accounted_bytes(),
            "measured_bytes": self._measured_bytes,
            "estimate_bytes": self._vram.total_bytes,
            "last_use": self.runner.last_used,
            "total_bytes": self.probe.total_bytes(),
            "reported_used_bytes": self.probe.used_bytes(),
        }

    def _accounted_bytes(self) -> int:
        """What this model holds: the measured load plus its working memory at the mode's limits."""
        return self._measured_bytes + self._vram.working_bytes

    async def _registry(self, method: str, *args: Any, timeout_s: float = 10.0) -> Any:
        """Call the registry with a timeout: while it restarts (or after it stopped) calls must not hang."""
        return await asyncio.wait_for(getattr(self.registry, method).remote(*args), timeout_s)

    async def _reserve(self, nbytes: int) -> None:
        deadline = time.monotonic() + self.registry_config.reserve_timeout_s
        while True:
            ans = await self._registry("reserve", self.replica_id, self.mode.name, self.device_id, nbytes,
                                       self.probe.total_bytes(), self.probe.used_bytes())
            if ans["status"] == "granted":
                return
            if ans["status"] == "no_fit" or time.monotonic() > deadline:
                raise InsufficientVRAMError(
                    f"mode {self.mode.name!r} does not fit on {self.device_id}: needs {ans['needed_bytes']} bytes, "
                    f"{ans['free_bytes']} free of a {ans['budget_bytes']}-byte budget"
                    + (f" (still busy: {', '.join(ans['busy_modes'])})" if ans.get("busy_modes") else ""),
                    needed_bytes=ans["needed_bytes"], free_bytes=ans["free_bytes"], budget_bytes=ans["budget_bytes"])
            await asyncio.sleep(min(0.05, self.registry_config.heartbeat_interval_s / 4))

    async def _ensure_loaded(self) -> float | None:
        """Load (reserve, load, measure, register) unless loaded; the load seconds, or None for a no-op.

        The caller counts itself in `_using` right after this returns (no await in between), which keeps
        an unload from pulling the model out from under its job.
        """
        if self.runner.loaded and not self._unloading:
            return None
        async with self._load_lock:
            if self.runner.loaded:
                return None
            started = time.perf_counter()
            if self.registry is not None:
                await self._reserve(self._vram.total_bytes)
            before = self.probe.allocated_bytes()
            try:
                await asyncio.to_thread(self.runner.load)
            except BaseException:
                if self.registry is not None:
                    await self._registry("release", self.replica_id)
                raise
            measured = self.probe.allocated_bytes() - before
            self._measured_bytes = measured if self.probe.cuda else self.runner.parameter_bytes()
            self.epoch += 1
            if self.registry is not None:
                await self._registry("register", self.replica_id, self.mode.name, self.device_id,
                                     self._accounted_bytes(), self._vram.total_bytes, self.epoch, self._measured_bytes)
            return time.perf_counter() - started

    async def _unload(self, reason: str, only_if_idle: bool = False) -> bool:
        """Unload after the jobs using the model finish; an eviction (`only_if_idle`) is skipped when busy
        (the registry repeats it on the next heartbeat while the model stays marked for eviction)."""
        if only_if_idle and self._using:
            return False
        self._unloading = True
        try:
            async with self._load_lock:
                while self._using:
                    await asyncio.sleep(0.01)
                unloaded = await asyncio.to_thread(self.runner.unload)
                self.epoch += 1
                self._measured_bytes = 0
                if self.registry is not None:
                    await self._registry("unregister", self.replica_id, False, self.epoch)
        finally:
            self._unloading = False
        if unloaded:
            logger.info("mode %s unloaded on %s (%s)", self.mode.name, self.device_id, reason)
        return unloaded

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            if self.registry is not None:
                try:
                    ans = await self._registry("heartbeat", self.replica_id, self._report())
                    if "unload" in ans["commands"]:
                        await self._unload("evicted by the registry", only_if_idle=True)
                except Exception as exc:  # the registry restarts: keep beating, it re-learns us
                    logger.warning("heartbeat of %s failed: %s", self.replica_id, exc)
            await asyncio.sleep(self.registry_config.heartbeat_interval_s)

    # -- jobs ----------------------------------------------------------------------------------------
    async def _run(self, job_type: str, payload: dict[str, Any], ctx: JobContext, request_id: str) -> Any:
        started = time.perf_counter()
        fn = self.jobs.get(job_type)
        first, self._first_request = self._first_request, False
        load_s = await self._ensure_loaded()
        self._using += 1
        try:
            result = await asyncio.to_thread(fn, ctx, payload)
        except DreamLabError:
            raise
        except Exception as exc:
            if job_type in ("txt2img", "img2img"):
                self.runner.state = ModelState.FAILED
                self.runner.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("[%s] job %s failed on mode %s", request_id, job_type, self.mode.name)
            raise JobFailedError(f"job {job_type!r} failed: {type(exc).__name__}: {exc}", param="job_type") from exc
        finally:
            self._using -= 1
        if isinstance(result, GenerationResult):
            result.timings["job_s"] = round(time.perf_counter() - started, 4)
            if load_s is not None:
                result.timings["load_s"] = round(load_s, 4)
            if first:
                result.timings["replica_start_s"] = round(self.start_s, 4)
        return result

    async def run(self, job_type: str, payload: dict[str, Any], request_id: str = "-") -> Any:
        """Run a job (txt2img, img2img or a custom type) to completion."""
        self.inflight += 1
        try:
            return await self._run(job_type, payload, JobContext(self.runner), request_id)
        finally:
            self.inflight -= 1

    async def run_stream(self, job_type: str, payload: dict[str, Any], request_id: str = "-") -> AsyncIterator[dict]:
        """Run a job, yielding `{"event": "progress", ...}` per denoising step, then `{"event": "result"}`.

        When the consumer goes away (the client disconnected), the generation is interrupted at the next
        step, so the replica is free again at once.
        """
        self.inflight += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict] = asyncio.Queue()
        cancelled = False
        ctx = JobContext(self.runner, progress=self._progress_hook(
            lambda event: loop.call_soon_threadsafe(events.put_nowait, event)), cancelled=lambda: cancelled)
        task = loop.create_task(self._run(job_type, payload, ctx, request_id))
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
                yield {"event": "result", "result": task.result()}
                return
        finally:
            cancelled = True
            if not task.done():
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieve it: after a disconnect the GenerationCancelledError is expected
            self.inflight -= 1

    @staticmethod
    def _progress_hook(emit):
        """A per-step callback that emits progress events with elapsed time and ETA."""
        started = time.time()

        def hook(step: int, total: int) -> None:
            elapsed = time.time() - started
            emit({"event": "progress", "step": step, "total": total, "elapsed_s": round(elapsed, 4),
                  "eta_s": round(elapsed / step * (total - step), 4)})

        return hook

    # -- operator actions and state --------------------------------------------------------------------
    async def load(self) -> dict[str, Any]:
        load_s = await self._ensure_loaded()
        return {"mode": self.mode.name, "status": "already_loaded" if load_s is None else "loaded",
                "load_s": load_s, "replica": self.replica_id}

    async def unload(self) -> dict[str, Any]:
        unloaded = await self._unload("operator request")
        return {"mode": self.mode.name, "status": "unloaded" if unloaded else "already_unloaded",
                "replica": self.replica_id}

    def check_health(self) -> None:
        """Unhealthy (Serve replaces the replica) when the pipeline broke while running."""
        if self.runner.state is ModelState.FAILED:
            raise RuntimeError(f"mode {self.mode.name} pipeline is broken: {self.runner.last_error}")

    async def __del__(self) -> None:
        """Serve calls this after draining in-flight requests: unregister and free the device."""
        self._stopping = True
        self._heartbeat.cancel()
        await asyncio.to_thread(self.runner.unload)
        if self.registry is not None:
            try:
                await self._registry("unregister", self.replica_id, True, timeout_s=2.0)
            except Exception as exc:  # the registry may already be gone (application deleted)
                logger.warning("could not unregister %s: %s", self.replica_id, exc)
