"""Fakes and builders for the mode worker's unit tests (`test_mode_worker*.py`): no Ray, no Serve.

The worker talks to a real `VramRegistry` through an in-process stand-in for its DeploymentHandle; the
model runner and the device probe are fakes whose behaviour each test controls (a generation can block on
an event, a load or a generation can raise).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from deployments.protocol import DeviceStats, ModelState, ProcessMemory, Tier
from deployments.registry.vram_registry import VramRegistry
from deployments.worker.mode_worker import ModeWorker
from serve_app.config.modes_file import ModeConfig
from serve_app.model.generation.job import GenerationRequest, GenerationResult, GenerationTimings, Txt2Img
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, inspect_checkpoint

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


# Outside Serve the worker's replica-id lookup imports `ray.serve` (no cluster starts): pay for that import
# here, at collection, so the scenarios' timeouts measure the lifecycle only.
import ray.serve  # noqa: E402, F401

# -- fakes -----------------------------------------------------------------------------------------------

class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    async def remote(self, *args: Any) -> Any:
        result = self.fn(*args)
        return await result if inspect.isawaitable(result) else result


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

    def process_memory(self) -> ProcessMemory | None:
        return None

    def gpu_fraction(self) -> float | None:
        return None

    def return_cache(self) -> None:
        pass


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
        self.load_gate: threading.Event | None = None  # loads block until it is set
        self.loading = threading.Event()  # set when a load is running
        self.entered = threading.Event()  # set when a generation is running

    def load(self) -> bool:
        self.load_calls += 1
        self.loading.set()
        if self.load_gate is not None and not self.load_gate.wait(timeout=5 * WAIT_S):
            raise TimeoutError("the test never released the load")
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

    def adapter_bytes(self) -> int:
        return 0

    def adapter_bytes_to_load(self, request: GenerationRequest) -> int:
        return sum(lora.file_bytes for lora in request.loras)

    def parameter_bytes(self) -> int:
        return 0 if self.tier is Tier.DISK else PARAM_BYTES

    def host_components(self) -> list:
        return []

    def own_host_bytes(self) -> int:
        return self.parameter_bytes()

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

def make_registry(budget_bytes: int = GiB) -> VramRegistry:
    return VramRegistry({"simulated_vram_bytes": budget_bytes})


def make_request(request_id: str = "req-1") -> GenerationRequest:
    return GenerationRequest(job=Txt2Img(), prompt="a lab", negative_prompt="", width=64, height=64, steps=2,
                             guidance_scale=7.0, seeds=[1], scheduler="euler", output_format="png",
                             request_id=request_id)


def make_worker(models: Path, registry: VramRegistry, *, load_on_start: bool = True,
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
        gate = runner_of(worker).gate
        if gate is not None:
            gate.set()  # never leave a generation thread blocked behind a failed assertion
        await worker.stop()


def runner_of(worker: ModeWorker) -> FakeRunner:
    assert isinstance(worker.runner, FakeRunner)
    return worker.runner


def device_stats(reg: VramRegistry) -> DeviceStats:
    (dev,) = [d for d in reg.ledger.device_stats() if d.device == DEV]  # the ledger as it stands
    return dev


async def blocked_generation(worker: ModeWorker) -> tuple[asyncio.Task[GenerationResult], threading.Event]:
    """A generation running in the fake runner, held there until the returned event is set."""
    runner = runner_of(worker)
    gate = runner.gate = threading.Event()
    runner.entered.clear()
    task = asyncio.get_running_loop().create_task(worker.generate(make_request("blocked")))
    await wait_until(runner.entered.is_set)
    return task, gate
