"""The mode deployment's logic: each replica is one GPU actor serving one mode's checkpoint.

`ModeWorker` composes three parts around a `ModelRunner`: `Residency` (reserve -> load -> measure ->
register, evictions to the RAM tier or to disk, the heartbeat), `Containment` (a bad job fails its request,
never the replica: out of memory -> 507, other errors -> 500 and the self-check) and the progress-stream
bridge (`progress_stream`: the generation thread's steps as an async stream). Typed generation (`generate`,
`generate_stream`) and custom jobs (`run`) share one model-use discipline, `_with_model`; on shutdown (Serve
drains in-flight requests first) the replica unregisters and frees the memory.

`ModeWorker` is a plain class with a sync constructor and an async `start`, so tests build it without
Serve; `deployments.worker.deployment.ModeWorkerDeployment` is what Serve runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from deployments.protocol import (
    GenerationRequest,
    GenerationResult,
    HeartbeatReport,
    LoadAnswer,
    ProgressEvent,
    Tier,
    UnloadAnswer,
)
from deployments.registry.client import RegistryClient
from deployments.worker.containment import Containment, ModelUse
from deployments.worker.device_probe import DeviceProbe, replica_id
from deployments.worker.progress_bridge import Cancelled, Progress, progress_stream
from deployments.worker.residency import Loaded, Residency
from deployments.worker.shielded import finish_even_if_cancelled
from serve_app.config.app_args import RegistryConfig
from serve_app.config.mode_families import component_paths, with_family
from serve_app.config.modes_file import ModeConfig, resolve_checkpoint
from serve_app.model.components.component_files import ComponentPaths
from serve_app.model.generation.custom_jobs import JobContext, JobRegistry
from serve_app.model.generation.runner import ModelRunner, RunnerSettings
from serve_app.model.inspection.vram_estimate import DTypeName, estimate_vram
from serve_app.model.loading.pipeline_loader import dtype_name

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def _model_runner(mode: ModeConfig, checkpoint: Path, components: ComponentPaths | None = None) -> ModelRunner:
    # a ModeConfig is the runner's settings; its Literal-typed fields read as the protocol's `str` ones
    return ModelRunner(cast(RunnerSettings, mode), checkpoint, components=components)


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
        runner_factory: Callable[..., ModelRunner] = _model_runner,
        probe: DeviceProbe | None = None,
    ) -> None:
        self._created = time.perf_counter()
        self.mode = ModeConfig.model_validate(mode)
        checkpoint = resolve_checkpoint(self.mode.checkpoint, Path(model_root), allow_absolute=allow_absolute_paths,
                                        source=f"mode {self.mode.name}")
        components = component_paths(self.mode, Path(model_root), allow_absolute_paths)
        self.runner = (runner_factory(self.mode, checkpoint) if components is None
                       else runner_factory(self.mode, checkpoint, components))
        self.mode = with_family(self.mode, self.runner.info)  # the family's defaults, as the router has them
        self._dtype = cast(DTypeName, dtype_name(self.runner.dtype))  # one of the names it was built from
        self.jobs = JobRegistry(self.mode.jobs)
        self.registry_config = RegistryConfig.model_validate(registry_config or {})
        self.probe = probe or DeviceProbe()
        self.replica_id = replica_id()
        self.residency = Residency(
            self.runner, self.mode.name, self.mode.vram_estimate(self.runner.info, self._dtype),
            RegistryClient(registry) if registry is not None else None, self.registry_config, self.probe,
            self.replica_id, lambda: self.inflight)
        self.containment = Containment(self.runner, self.mode.name, self.probe)
        self.device_id = self.residency.device_id
        self.inflight = 0
        self.start_s = 0.0
        self._run_lock = asyncio.Lock()
        self._first_request = True

    async def start(self) -> None:
        """Start the heartbeat and, when the mode says so, load."""
        self.residency.start_heartbeat()
        if self.mode.load_on_start:
            await self.residency.ensure_loaded()
        self.start_s = time.perf_counter() - self._created
        logger.info("replica %s of mode %s up on %s in %.2fs", self.replica_id, self.mode.name, self.device_id,
                    self.start_s)

    def report(self) -> HeartbeatReport:
        return self.residency.report()

    async def heartbeat_once(self, wait_s: float = 0.0) -> None:
        await self.residency.heartbeat_once(wait_s)

    # -- work ----------------------------------------------------------------------------------------
    async def _with_model(self, use: ModelUse, fn: Callable[P, T], *args: P.args,
                          **kwargs: P.kwargs) -> tuple[T, Loaded | None]:
        """`fn(*args, **kwargs)` in a thread with the model loaded, contained (see `Containment`), generations
        and custom jobs alike: (its result, the load it waited for). The model stays in use (no eviction or
        unload can tear it down) until the thread is done, self-check included; `use`'s working memory
        beyond the standing share and its adapters' bytes are reserved at the registry meanwhile."""
        call = functools.partial(self.containment.run, use, fn, *args, **kwargs)
        # one at a time (the run lock), as the runner runs them: a waiting request holds no extra working memory
        async with self.residency.in_use() as loaded, self._run_lock, self.residency.working(use):
            return await finish_even_if_cancelled(asyncio.to_thread(call)), loaded

    async def _generate(self, request: GenerationRequest, progress: Progress | None = None,
                        cancelled: Cancelled | None = None) -> GenerationResult:
        started = time.perf_counter()
        first, self._first_request = self._first_request, False
        use = ModelUse(what=request.kind, request_id=request.request_id, check_pipeline=True,
                       needed=estimate_vram(self.runner.info, self._dtype, *request.output_size, len(request.seeds),
                                            control_units=len(request.controls)),
                       adapters=functools.partial(self.runner.adapter_bytes_to_load, request))
        result, loaded = await self._with_model(use, self.runner.generate, request, progress, cancelled)
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

    async def generate_stream(self, request: GenerationRequest,
                              ) -> AsyncGenerator[ProgressEvent | GenerationResult, None]:
        """Run one generation, yielding a `ProgressEvent` per denoising step, then the `GenerationResult`.

        When the consumer goes away (the client disconnected), the generation is interrupted at the next
        step, so the replica is free again at once.
        """
        logger.info("[%s] %s (streamed) on mode %s", request.request_id, request.kind, self.mode.name)
        self.inflight += 1
        try:  # closed with this generator: a consumer that goes away stops the generation
            async with aclosing(progress_stream(functools.partial(self._generate, request))) as events:
                async for event in events:
                    yield event
        finally:
            self.inflight -= 1

    async def run(self, job_type: str, payload: dict[str, Any], request_id: str = "-") -> Any:
        """Run a custom job type (named in the mode's `jobs:`) to completion."""
        fn = self.jobs.get(job_type)
        logger.info("[%s] job %s on mode %s", request_id, job_type, self.mode.name)
        self.inflight += 1
        try:
            use = ModelUse(what=f"job {job_type!r}", request_id=request_id, check_pipeline=False,
                           needed=self.residency.standing)
            result, _ = await self._with_model(use, self.runner.run_exclusive,
                                               functools.partial(fn, JobContext(self.runner), payload))
            return result
        finally:
            self.inflight -= 1

    # -- operator actions and state --------------------------------------------------------------------
    async def load(self) -> LoadAnswer:
        loaded = await self.residency.ensure_loaded()
        return LoadAnswer(mode=self.mode.name, status="already_loaded" if loaded is None else "loaded",
                          load_s=None if loaded is None else loaded[0],
                          load_tier=None if loaded is None else loaded[1], replica=self.replica_id)

    async def unload(self) -> UnloadAnswer:
        unloaded = await self.residency.evict(Tier.DISK, "operator")
        return UnloadAnswer(mode=self.mode.name, status="unloaded" if unloaded else "already_unloaded",
                            replica=self.replica_id)

    def check_health(self) -> None:
        """Unhealthy (Serve replaces the replica) when the pipeline broke: it failed its self-check."""
        self.containment.check_health()

    async def stop(self) -> None:
        """Unregister and free the device (Serve has drained in-flight requests before)."""
        await self.residency.stop()
