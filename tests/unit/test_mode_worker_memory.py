"""The mode worker's memory: out-of-memory errors answer 507 and keep the model, evictions go to the RAM tier
(or to disk) and come back, and a large request reserves its extra working memory. Fakes: `worker_fakes`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from deployments.protocol import ModelState, ReserveStatus, Tier
from deployments.registry.vram_registry import VramRegistry
from serve_app.core.errors import InsufficientVRAMError
from serve_app.model.generation.job import GenerationRequest, LoraUse
from serve_app.model.inspection.vram_estimate import estimate_vram
from tests.unit.worker_fakes import (
    DEV,
    MODE,
    PARAM_BYTES,
    WAIT_S,
    GiB,
    device_stats,
    make_registry,
    make_request,
    make_worker,
    run,
    runner_of,
    started,
    wait_until,
)


def test_out_of_memory_is_a_507_with_the_numbers_not_a_broken_replica(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            runner.self_check_passes = False  # were the pipeline checked and failed, the replica would go
            runner.generate_error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                                                "(secret-detail-42)")
            with pytest.raises(InsufficientVRAMError) as info:
                await worker.generate(make_request("req-huge"))
            runner.generate_error = None
            err = info.value
            assert err.status_code == 507 and err.error_type == "insufficient_vram" and "req-huge" in err.message
            assert "secret-detail-42" not in str(err.to_dict()) and "width" in err.message
            assert err.needed_bytes > 0 and err.to_dict()["needed_bytes"] == err.needed_bytes
            assert runner.self_check_calls == 0 and runner.state is ModelState.READY
            worker.check_health()
            assert (await worker.generate(make_request("req-small"))).width == 64

    run(scenario())


async def _evict_for_another_mode(reg: VramRegistry) -> None:
    """Another replica asks for the whole device: our idle model is marked for eviction."""
    assert (await reg.reserve("other", "big", DEV, reg.ledger.devices[DEV].budget_bytes)).status \
        is ReserveStatus.EVICTING


def test_an_evicted_model_comes_back_from_the_ram_tier(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            runner = runner_of(worker)
            await _evict_for_another_mode(reg)
            await worker.heartbeat_once()
            assert runner.tier is Tier.RAM and worker.report().state is ModelState.OFFLOADED
            assert worker.report().host_bytes == PARAM_BYTES and worker.report().tier is Tier.RAM
            await reg.release("other")  # the other mode went away again
            result = await worker.generate(make_request("back"))
            assert result.timings.load_tier == "ram" and result.timings.load_s is not None
            assert runner.load_calls == 2 and runner.unload_calls == 0 and runner.loaded
            assert (await reg.stats()).nodes[0].models == []
            assert [m.mode for m in device_stats(reg).models] == [MODE]
            # an operator unload drops it from every tier; the next load reads the disk
            assert (await worker.unload()).status == "unloaded" and runner.tier is Tier.DISK
            assert (await worker.load()).load_tier is Tier.DISK

    run(scenario())


def test_without_a_ram_budget_an_evicted_model_is_dropped(demo_models_dir: Path) -> None:
    reg = VramRegistry({"simulated_vram_bytes": GiB, "ram_budget_bytes": 0})

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            await _evict_for_another_mode(reg)
            await worker.heartbeat_once()
            assert runner_of(worker).tier is Tier.DISK and runner_of(worker).offload_calls == 0
            assert (await reg.stats()).nodes[0].models == [] and device_stats(reg).models == []

    run(scenario())


def _large_request(request_id: str) -> GenerationRequest:
    return dataclasses.replace(make_request(request_id), width=1024, height=1024, seeds=[1, 2, 3, 4])


def test_a_large_request_reserves_its_extra_working_memory_while_it_runs(demo_models_dir: Path) -> None:
    reg = make_registry(budget_bytes=64 * GiB)

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            needed = estimate_vram(runner.info, "fp32", 1024, 1024, 4)
            extra = needed.working_bytes - worker.residency.standing.working_bytes
            assert extra > 0  # 4x the pixels of the mode's default size at the same batch
            runner.gate = threading.Event()
            runner.entered.clear()
            task = asyncio.get_running_loop().create_task(worker.generate(_large_request("large")))
            await wait_until(runner.entered.is_set)
            assert device_stats(reg).reserved_bytes == extra
            runner.gate.set()
            await asyncio.wait_for(task, WAIT_S)
            assert device_stats(reg).reserved_bytes == 0
            # a request within the standing share reserves nothing
            runner.gate = None
            await worker.generate(make_request("small"))
            assert reg.ledger.reservations == {}

    run(scenario())


def test_the_adapters_a_request_loads_are_reserved_before_they_load(demo_models_dir: Path) -> None:
    reg = make_registry(budget_bytes=64 * GiB)
    lora = LoraUse(name="style", path="/x/style.safetensors", weight=1.0, file_bytes=300 * 2**20)

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            runner.gate = threading.Event()
            runner.entered.clear()
            request = dataclasses.replace(make_request("styled"), loras=[lora])
            task = asyncio.get_running_loop().create_task(worker.generate(request))
            await wait_until(runner.entered.is_set)
            assert device_stats(reg).reserved_bytes == lora.file_bytes
            runner.gate.set()
            await asyncio.wait_for(task, WAIT_S)
            assert reg.ledger.reservations == {}
            reg.ledger.devices[DEV].budget_bytes = device_stats(reg).used_bytes + 1024  # no room for the LoRA now
            with pytest.raises(InsufficientVRAMError, match="adapter files"):
                await worker.generate(dataclasses.replace(make_request("no-room"), loras=[lora]))

    run(scenario())


def test_a_large_request_that_cannot_fit_is_a_507_and_the_model_keeps_serving(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            dev = device_stats(reg)
            reg.ledger.devices[DEV].budget_bytes = dev.used_bytes + 1024  # the model fits, nothing more does
            with pytest.raises(InsufficientVRAMError) as info:
                await worker.generate(_large_request("too-large"))
            err = info.value
            assert err.status_code == 507 and "extra working memory" in err.message and "width" in err.message
            assert err.needed_bytes > err.free_bytes == 1024
            assert reg.ledger.reservations == {} and runner_of(worker).loaded
            assert (await worker.generate(make_request("small"))).width == 64

    run(scenario())


def test_a_held_heartbeat_carries_an_eviction_at_once(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, heartbeat_interval_s=30)  # each beat is held up to 30 s
        async with started(worker):
            await wait_until(lambda: worker.replica_id in reg.waiting)
            await _evict_for_another_mode(reg)
            await wait_until(lambda: runner_of(worker).tier is Tier.RAM, timeout_s=2.0)  # not 30 s later

    run(scenario())


def test_out_of_memory_during_a_load_is_a_507_and_releases_the_reservation(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, load_on_start=False)
        async with started(worker):
            runner_of(worker).load_error = torch.cuda.OutOfMemoryError("CUDA out of memory (secret-detail-7)")
            with pytest.raises(InsufficientVRAMError) as info:
                await worker.generate(make_request("cold"))
            assert info.value.status_code == 507 and "secret-detail-7" not in info.value.message
            assert device_stats(reg).reserved_bytes == 0 and device_stats(reg).models == []

    run(scenario())


def test_a_load_whose_client_went_away_is_still_measured_and_registered(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, load_on_start=False)
        async with started(worker):
            runner = runner_of(worker)
            runner.load_gate = threading.Event()
            request = asyncio.get_running_loop().create_task(worker.generate(make_request("gone")))
            await wait_until(runner.loading.is_set)
            request.cancel()  # the client disconnected mid-load
            runner.load_gate.set()
            with pytest.raises(asyncio.CancelledError):
                await request
            await wait_until(lambda: [m.mode for m in device_stats(reg).models] == [MODE])
            (model,) = device_stats(reg).models
            assert model.measured_bytes == PARAM_BYTES and device_stats(reg).reserved_bytes == 0

    run(scenario())
