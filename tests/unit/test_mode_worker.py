"""The mode worker's lifecycle without Ray or Serve: reserve -> load -> register, eviction over heartbeats,
unloads that wait for running jobs, failures and the health check, and the timings a generation reports.

The worker talks to a real `VramRegistry` through an in-process stand-in for its DeploymentHandle; the
model runner and the device probe are fakes whose behaviour each test controls (a generation can block on
an event, a load or a generation can raise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from deployments.mode_worker import ModeWorker
from deployments.protocol import DeviceStats, EntryState, ModelState, ReserveStatus, Tier
from deployments.vram_registry import VramRegistry
from serve_app.config.modes_file import ModeConfig
from serve_app.errors import InsufficientVRAMError, JobFailedError, RequestValidationError
from serve_app.model.checkpoint_inspect import CheckpointInfo, inspect_checkpoint
from serve_app.model.generation import GenerationRequest, GenerationResult, GenerationTimings
from serve_app.model.vram_estimate import estimate_vram

GiB = 1024**3
DEV = "node:gpu0"
MODE = "tiny-sd1"
PARAM_BYTES = 25_000_000  # what the fake runner's loaded weights take
WAIT_S = 5.0  # the longest any condition is waited for (only a failing test waits that long)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test scenario; one that hangs (a lifecycle bug) fails instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(coro, 5 * WAIT_S))


async def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module", autouse=True)
def _ray_serve_imported() -> None:
    """Outside Serve the worker's replica-id lookup imports `ray.serve` (no cluster starts); pay for that import
    once here, so the scenarios' timeouts measure the lifecycle only."""
    import ray.serve  # noqa: F401


# -- fakes -----------------------------------------------------------------------------------------------

class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    async def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class InProcessHandle:
    """A DeploymentHandle stand-in: `handle.method.remote(*args)` calls the real registry in process."""

    def __init__(self, registry: VramRegistry) -> None:
        self.registry = registry

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.registry, name))


class FakeProbe:
    cuda = False

    def device_id(self) -> str:
        return DEV

    def total_bytes(self) -> int | None:
        return None

    def used_bytes(self) -> int | None:
        return None

    def allocated_bytes(self) -> int:
        return 0


class FakeRunner:
    """What ModeWorker uses of a ModelRunner. `gate`: generations block until it is set; `load_error` /
    `generate_error`: raised by the next loads / generations; `self_check_passes`: what `self_check` answers."""

    def __init__(self, mode: ModeConfig, checkpoint: Path) -> None:
        self.mode = mode
        self.info: CheckpointInfo = inspect_checkpoint(checkpoint)
        self.family = self.info.family
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.state = ModelState.COLD
        self.tier = Tier.DISK
        self.loaded_from: Tier | None = None
        self.last_used = 0.0
        self.last_error: str | None = None
        self.load_calls = 0
        self.unload_calls = 0
        self.offload_calls = 0
        self.load_error: BaseException | None = None
        self.generate_error: BaseException | None = None
        self.self_check_passes = True
        self.self_check_calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()  # set when a generation is running

    def load(self) -> bool:
        self.load_calls += 1
        if self.load_error is not None:
            self.state = ModelState.FAILED
            self.last_error = str(self.load_error)
            raise self.load_error
        if self.loaded:
            return False
        self.loaded_from = Tier.RAM if self.tier is Tier.RAM else Tier.DISK
        self.tier, self.state = Tier.VRAM, ModelState.READY
        return True

    @property
    def loaded(self) -> bool:
        return self.tier is Tier.VRAM

    def offload(self) -> bool:
        self.offload_calls += 1
        if not self.loaded:
            return False
        self.tier, self.state = Tier.RAM, ModelState.OFFLOADED
        return True

    def unload(self) -> bool:
        self.unload_calls += 1
        if self.tier is Tier.DISK:
            return False
        self.tier, self.state = Tier.DISK, ModelState.COLD
        return True

    def parameter_bytes(self) -> int:
        return 0 if self.tier is Tier.DISK else PARAM_BYTES

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        assert self.loaded, "the worker ran a job while the model was not loaded"
        return fn()

    def pipelines(self) -> Any:
        assert self.loaded, "the worker called the pipeline while the model was not loaded"
        return object()

    def self_check(self, request_id: str = "-") -> bool:
        assert self.loaded, "the worker ran the self-check while the model was not loaded"
        self.self_check_calls += 1
        return self.self_check_passes

    def generate(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        assert self.loaded, "the worker ran a generation while the model was not loaded"
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=5 * WAIT_S):
            raise TimeoutError("the test never released the generation")
        assert self.loaded, "the model was unloaded under a running generation"
        if self.generate_error is not None:
            raise self.generate_error
        self.last_used = 1.0
        return GenerationResult(images=[], width=request.width, height=request.height, steps=request.steps,
                                scheduler=request.scheduler, timings=GenerationTimings(inference_s=0.001))


# -- building workers ------------------------------------------------------------------------------------

def _registry(budget_bytes: int = GiB) -> VramRegistry:
    return VramRegistry({"simulated_vram_bytes": budget_bytes})


def _request(request_id: str = "req-1") -> GenerationRequest:
    return GenerationRequest(kind="txt2img", prompt="a lab", negative_prompt="", width=64, height=64, steps=2,
                             guidance_scale=7.0, seeds=[1], scheduler="euler", output_format="png",
                             request_id=request_id)


def _worker(models: Path, registry: VramRegistry, *, load_on_start: bool = True,
            heartbeat_interval_s: float = 0.05, configure: Callable[[FakeRunner], None] | None = None) -> ModeWorker:
    def factory(mode: ModeConfig, checkpoint: Path) -> FakeRunner:
        runner = FakeRunner(mode, checkpoint)
        if configure is not None:
            configure(runner)
        return runner

    return ModeWorker({"name": MODE, "checkpoint": "tiny-sd1", "load_on_start": load_on_start}, str(models),
                      registry=InProcessHandle(registry),
                      registry_config={"heartbeat_interval_s": heartbeat_interval_s, "reserve_timeout_s": 2},
                      runner_factory=factory, probe=FakeProbe())


@asynccontextmanager
async def started(worker: ModeWorker) -> AsyncIterator[ModeWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        gate = _runner(worker).gate
        if gate is not None:
            gate.set()  # never leave a generation thread blocked behind a failed assertion
        await worker.stop()


def _runner(worker: ModeWorker) -> FakeRunner:
    assert isinstance(worker.runner, FakeRunner)
    return worker.runner


def _device_stats(reg: VramRegistry) -> DeviceStats:
    (dev,) = [d for d in reg.stats().devices if d.device == DEV]
    return dev


async def _blocked_generation(worker: ModeWorker) -> tuple[asyncio.Task[GenerationResult], threading.Event]:
    """A generation running in the fake runner, held there until the returned event is set."""
    runner = _runner(worker)
    gate = runner.gate = threading.Event()
    runner.entered.clear()
    task = asyncio.get_running_loop().create_task(worker.generate(_request("blocked")))
    await wait_until(runner.entered.is_set)
    return task, gate


# -- tests -----------------------------------------------------------------------------------------------

def test_load_registers_measured_footprint(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            assert runner.loaded and runner.load_calls == 1
            expected = ModeConfig(name=MODE, checkpoint="tiny-sd1").vram_estimate(runner.info, "fp32")
            report = worker.report()
            assert report.measured_bytes == PARAM_BYTES
            assert report.footprint_bytes == PARAM_BYTES + expected.working_bytes
            assert report.estimate_bytes == expected.total_bytes and report.tier is Tier.VRAM and report.epoch == 1
            dev = _device_stats(reg)
            (model,) = dev.models
            assert (model.mode, model.replica, model.device) == (MODE, worker.replica_id, DEV)
            assert model.footprint_bytes == report.footprint_bytes
            assert model.measured_bytes == PARAM_BYTES and model.estimate_bytes == expected.total_bytes
            assert model.state is EntryState.READY and model.epoch == 1
            # the reservation became the registration: nothing is held twice
            assert dev.used_bytes == report.footprint_bytes and dev.reserved_bytes == 0
            # the heartbeat loop runs: the registry hears the replica's state
            await wait_until(lambda: reg.stats().replicas.get(worker.replica_id) is not None
                             and reg.stats().replicas[worker.replica_id].state is ModelState.READY)

    run(scenario())


def test_failed_load_releases_its_reservation(demo_models_dir: Path) -> None:
    reg = _registry()

    def broken(runner: FakeRunner) -> None:
        runner.load_error = OSError("disk on fire")

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg, configure=broken)
        try:
            with pytest.raises(OSError, match="disk on fire"):
                await worker.start()
            assert _runner(worker).load_calls == 1 and not _runner(worker).loaded
            dev = _device_stats(reg)  # the device exists: the reservation was made, then released
            assert dev.reserved_bytes == 0 and dev.used_bytes == 0 and dev.models == []
        finally:
            await worker.stop()

    run(scenario())


def test_failed_operator_load_releases_its_reservation(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg, load_on_start=False)
        async with started(worker):
            assert _runner(worker).load_calls == 0
            _runner(worker).load_error = RuntimeError("bad weights")
            with pytest.raises(RuntimeError, match="bad weights"):
                await worker.load()
            dev = _device_stats(reg)
            assert dev.reserved_bytes == 0 and dev.models == []
            # the memory is free for someone else
            assert reg.reserve("other", "other-mode", DEV, GiB).status is ReserveStatus.GRANTED

    run(scenario())


def test_eviction_is_skipped_while_busy_and_repeated_on_the_next_heartbeat(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        # the heartbeat loop beats once at start, then the test drives `heartbeat_once` itself
        worker = _worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            runner = _runner(worker)
            task, gate = await _blocked_generation(worker)
            # another replica needs the whole device: the registry marks our (idle as far as it knows) model
            ans = reg.reserve("other", "big", DEV, GiB)
            assert ans.status is ReserveStatus.EVICTING and ans.evicting == [MODE]
            await asyncio.wait_for(worker.heartbeat_once(), WAIT_S)  # arrives while the job runs: skipped
            assert runner.loaded and runner.unload_calls == 0 and not task.done()
            (model,) = _device_stats(reg).models
            assert model.state is EntryState.EVICTING and model.inflight == 1
            assert reg.reserve("other", "big", DEV, GiB).status is not ReserveStatus.GRANTED
            gate.set()
            result = await asyncio.wait_for(task, WAIT_S)
            assert result.width == 64
            assert runner.loaded  # nothing unloads it until the registry repeats the command
            await asyncio.wait_for(worker.heartbeat_once(), WAIT_S)  # repeated, now idle: offloads to RAM
            assert not runner.loaded and runner.offload_calls == 1 and runner.unload_calls == 0
            assert _device_stats(reg).models == [] and worker.report().footprint_bytes == worker._vram.working_bytes
            (node,) = reg.stats().nodes
            assert [(m.mode, m.host_bytes) for m in node.models] == [(MODE, PARAM_BYTES)]
            assert node.ram_used_bytes == PARAM_BYTES
            assert reg.reserve("other", "big", DEV, GiB).status is ReserveStatus.GRANTED

    run(scenario())


def test_unload_waits_for_running_jobs(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            gen, gate = await _blocked_generation(worker)
            unload = asyncio.get_running_loop().create_task(worker.unload())
            await asyncio.sleep(0.1)
            assert not unload.done() and not gen.done()
            assert runner.loaded and runner.unload_calls == 0
            assert [m.mode for m in _device_stats(reg).models] == [MODE]
            gate.set()
            answer = await asyncio.wait_for(unload, WAIT_S)
            assert answer.status == "unloaded" and answer.mode == MODE and answer.replica == worker.replica_id
            result = gen.result()  # done before the unload was
            assert result.width == 64 and result.timings.job_s > 0
            assert not runner.loaded and _device_stats(reg).models == []
            assert (await worker.unload()).status == "already_unloaded"

    run(scenario())


async def _failed_generation(worker: ModeWorker, error: BaseException, request_id: str) -> JobFailedError:
    """`error` raised inside a generation: the JobFailedError the client gets, checked to carry no internals."""
    _runner(worker).generate_error = error
    with pytest.raises(JobFailedError) as info:
        await worker.generate(_request(request_id))
    _runner(worker).generate_error = None
    assert "secret-detail-42" not in str(info.value) and "secret-detail-42" not in info.value.message
    assert "secret-detail-42" not in str(info.value.to_dict())
    assert request_id in info.value.message and info.value.status_code == 500
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert worker.inflight == 0
    return info.value


def test_a_failed_generation_with_a_sound_pipeline_keeps_the_replica(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            err = await _failed_generation(worker, RuntimeError("scipy secret-detail-42 is missing"), "req-bad")
            assert err.param is None
            assert runner.self_check_calls == 1  # the pipeline was checked, and passed
            assert runner.state is ModelState.READY and worker.report().state is ModelState.READY
            worker.check_health()
            assert (await worker.generate(_request("req-next"))).width == 64  # the next request is served
            assert runner.load_calls == 1 and runner.loaded  # by the same, still loaded model

    run(scenario())


def test_broken_pipeline_fails_the_health_check(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            worker.check_health()
            _runner(worker).self_check_passes = False
            await _failed_generation(worker, RuntimeError("CUDA kernel secret-detail-42 exploded"), "req-boom")
            assert _runner(worker).self_check_calls == 1
            assert worker.report().state is ModelState.FAILED
            with pytest.raises(RuntimeError, match="pipeline is broken"):
                worker.check_health()
            # the registry hears it on the next heartbeat (what /v1/modes reports while Serve replaces us)
            await wait_until(lambda: getattr(reg.stats().replicas.get(worker.replica_id), "state", None)
                             is ModelState.FAILED)

    run(scenario())


def test_out_of_memory_is_a_507_with_the_numbers_not_a_broken_replica(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            runner.self_check_passes = False  # were the pipeline checked and failed, the replica would go
            runner.generate_error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                                                "(secret-detail-42)")
            with pytest.raises(InsufficientVRAMError) as info:
                await worker.generate(_request("req-huge"))
            runner.generate_error = None
            err = info.value
            assert err.status_code == 507 and err.error_type == "insufficient_vram" and "req-huge" in err.message
            assert "secret-detail-42" not in str(err.to_dict()) and "width" in err.message
            assert err.needed_bytes > 0 and err.to_dict()["needed_bytes"] == err.needed_bytes
            assert runner.self_check_calls == 0 and runner.state is ModelState.READY
            worker.check_health()
            assert (await worker.generate(_request("req-small"))).width == 64

    run(scenario())


def test_dream_lab_errors_pass_through_and_keep_the_replica_healthy(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            error = RequestValidationError("width 65 is not a multiple of 8", param="width")
            _runner(worker).generate_error = error
            with pytest.raises(RequestValidationError) as info:
                await worker.generate(_request())
            assert info.value is error and info.value.param == "width"
            assert _runner(worker).state is ModelState.READY and _runner(worker).self_check_calls == 0
            worker.check_health()
            # and the replica still serves
            _runner(worker).generate_error = None
            assert (await worker.generate(_request())).width == 64

    run(scenario())


def test_load_of_a_loaded_mode_is_a_no_op(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            answer = await worker.load()
            assert (answer.status, answer.load_s, answer.mode) == ("already_loaded", None, MODE)
            assert runner.load_calls == 1 and worker.epoch == 1
            assert (await worker.unload()).status == "unloaded"
            assert worker.epoch == 2 and _device_stats(reg).models == []
            answer = await worker.load()
            assert answer.status == "loaded" and answer.load_s is not None and answer.load_s >= 0
            assert runner.load_calls == 2 and runner.loaded
            (model,) = _device_stats(reg).models
            assert model.epoch == 3 and model.footprint_bytes == worker.report().footprint_bytes

    run(scenario())


def test_timings_of_first_and_loading_generations(demo_models_dir: Path) -> None:
    async def scenario() -> None:
        worker = _worker(demo_models_dir, _registry())
        async with started(worker):
            first = await worker.generate(_request("first"))
            second = await worker.generate(_request("second"))
            assert first.timings.replica_start_s == round(worker.start_s, 4)
            assert first.timings.replica_start_s is not None and first.timings.load_s is None
            assert second.timings.replica_start_s is None and second.timings.load_s is None
            assert first.timings.inference_s == 0.001 and first.timings.job_s > 0

        lazy = _worker(demo_models_dir, _registry(), load_on_start=False)
        async with started(lazy):
            assert not _runner(lazy).loaded
            first = await lazy.generate(_request("first"))
            assert first.timings.load_s is not None and first.timings.load_s >= 0
            assert first.timings.replica_start_s is not None
            assert _runner(lazy).load_calls == 1
            second = await lazy.generate(_request("second"))
            assert second.timings.load_s is None and second.timings.replica_start_s is None

    run(scenario())


def _evict_for_another_mode(reg: VramRegistry) -> None:
    """Another replica asks for the whole device: our idle model is marked for eviction."""
    assert reg.reserve("other", "big", DEV, reg.devices[DEV].budget_bytes).status is ReserveStatus.EVICTING


def test_an_evicted_model_comes_back_from_the_ram_tier(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            runner = _runner(worker)
            _evict_for_another_mode(reg)
            await worker.heartbeat_once()
            assert runner.tier is Tier.RAM and worker.report().state is ModelState.OFFLOADED
            assert worker.report().host_bytes == PARAM_BYTES and worker.report().tier is Tier.RAM
            reg.release("other")  # the other mode went away again
            result = await worker.generate(_request("back"))
            assert result.timings.load_tier == "ram" and result.timings.load_s is not None
            assert runner.load_calls == 2 and runner.unload_calls == 0 and runner.loaded
            assert reg.stats().nodes[0].models == [] and [m.mode for m in _device_stats(reg).models] == [MODE]
            # an operator unload drops it from every tier; the next load reads the disk
            assert (await worker.unload()).status == "unloaded" and runner.tier is Tier.DISK
            assert (await worker.load()).load_tier is Tier.DISK

    run(scenario())


def test_without_a_ram_budget_an_evicted_model_is_dropped(demo_models_dir: Path) -> None:
    reg = VramRegistry({"simulated_vram_bytes": GiB, "ram_budget_bytes": 0})

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            _evict_for_another_mode(reg)
            await worker.heartbeat_once()
            assert _runner(worker).tier is Tier.DISK and _runner(worker).offload_calls == 0
            assert reg.stats().nodes[0].models == [] and _device_stats(reg).models == []

    run(scenario())


def _large_request(request_id: str) -> GenerationRequest:
    return dataclasses.replace(_request(request_id), width=1024, height=1024, seeds=[1, 2, 3, 4])


def test_a_large_request_reserves_its_extra_working_memory_while_it_runs(demo_models_dir: Path) -> None:
    reg = _registry(budget_bytes=64 * GiB)

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            runner = _runner(worker)
            needed = estimate_vram(runner.info, "fp32", 1024, 1024, 4)
            extra = needed.working_bytes - worker._vram.working_bytes
            assert extra > 0  # 4x the pixels of the mode's default size at the same batch
            runner.gate = threading.Event()
            runner.entered.clear()
            task = asyncio.get_running_loop().create_task(worker.generate(_large_request("large")))
            await wait_until(runner.entered.is_set)
            assert _device_stats(reg).reserved_bytes == extra
            runner.gate.set()
            await asyncio.wait_for(task, WAIT_S)
            assert _device_stats(reg).reserved_bytes == 0
            # a request within the standing share reserves nothing
            runner.gate = None
            await worker.generate(_request("small"))
            assert reg.reservations == {}

    run(scenario())


def test_a_large_request_that_cannot_fit_is_a_507_and_the_model_keeps_serving(demo_models_dir: Path) -> None:
    reg = _registry()

    async def scenario() -> None:
        worker = _worker(demo_models_dir, reg)
        async with started(worker):
            dev = _device_stats(reg)
            reg.devices[DEV].budget_bytes = dev.used_bytes + 1024  # the model fits, nothing more does
            with pytest.raises(InsufficientVRAMError) as info:
                await worker.generate(_large_request("too-large"))
            err = info.value
            assert err.status_code == 507 and "extra working memory" in err.message and "width" in err.message
            assert err.needed_bytes > err.free_bytes == 1024
            assert reg.reservations == {} and _runner(worker).loaded
            assert (await worker.generate(_request("small"))).width == 64

    run(scenario())
