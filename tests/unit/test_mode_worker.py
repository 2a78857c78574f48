"""The mode worker's lifecycle without Ray or Serve: reserve -> load -> register, eviction over heartbeats,
unloads that wait for running jobs, failures and the health check, and the timings a generation reports.
Fakes: `worker_fakes`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments.protocol import EntryState, ModelState, ReserveStatus, Tier
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import JobFailedError, RequestValidationError
from tests.unit.worker_fakes import (
    DEV,
    MODE,
    PARAM_BYTES,
    WAIT_S,
    FakeRunner,
    GiB,
    ModeWorker,
    blocked_generation,
    device_stats,
    make_registry,
    make_request,
    make_worker,
    run,
    runner_of,
    started,
    wait_until,
)


def test_load_registers_measured_footprint(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            assert runner.loaded and runner.load_calls == 1
            expected = ModeConfig(name=MODE, checkpoint="tiny-sd1").vram_estimate(runner.info, "fp32")
            report = worker.report()
            assert report.measured_bytes == PARAM_BYTES
            assert report.footprint_bytes == PARAM_BYTES + expected.working_bytes
            assert report.estimate_bytes == expected.total_bytes and report.tier is Tier.VRAM and report.epoch == 1
            dev = device_stats(reg)
            (model,) = dev.models
            assert (model.mode, model.replica, model.device) == (MODE, worker.replica_id, DEV)
            assert model.footprint_bytes == report.footprint_bytes
            assert model.measured_bytes == PARAM_BYTES and model.estimate_bytes == expected.total_bytes
            assert model.state is EntryState.READY and model.epoch == 1
            # the reservation became the registration: nothing is held twice
            assert dev.used_bytes == report.footprint_bytes and dev.reserved_bytes == 0
            # the heartbeat loop runs: the registry hears the replica's state
            await wait_until(lambda: getattr(reg.ledger.replicas.get(worker.replica_id), "state", None)
                             is ModelState.READY)

    run(scenario())


def test_failed_load_releases_its_reservation(demo_models_dir: Path) -> None:
    reg = make_registry()

    def broken(runner: FakeRunner) -> None:
        runner.load_error = OSError("disk on fire")

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, configure=broken)
        try:
            with pytest.raises(OSError, match="disk on fire"):
                await worker.start()
            assert runner_of(worker).load_calls == 1 and not runner_of(worker).loaded
            dev = device_stats(reg)  # the device exists: the reservation was made, then released
            assert dev.reserved_bytes == 0 and dev.used_bytes == 0 and dev.models == []
        finally:
            await worker.stop()

    run(scenario())


def test_failed_operator_load_releases_its_reservation(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg, load_on_start=False)
        async with started(worker):
            assert runner_of(worker).load_calls == 0
            runner_of(worker).load_error = RuntimeError("bad weights")
            with pytest.raises(RuntimeError, match="bad weights"):
                await worker.load()
            dev = device_stats(reg)
            assert dev.reserved_bytes == 0 and dev.models == []
            # the memory is free for someone else
            assert (await reg.reserve("other", "other-mode", DEV, GiB)).status is ReserveStatus.GRANTED

    run(scenario())


def test_an_eviction_that_finds_the_model_busy_is_withdrawn_and_asked_again(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        # the heartbeat loop beats once at start, then the test drives `heartbeat_once` itself
        worker = make_worker(demo_models_dir, reg, heartbeat_interval_s=60)
        async with started(worker):
            runner = runner_of(worker)
            task, gate = await blocked_generation(worker)
            # another replica needs the whole device: the registry marks our (idle as far as it knows) model
            ans = await reg.reserve("other", "big", DEV, GiB)
            assert ans.status is ReserveStatus.EVICTING and ans.evicting == [MODE]
            await asyncio.wait_for(worker.heartbeat_once(), WAIT_S)  # arrives while the job runs: skipped
            assert runner.loaded and runner.unload_calls == 0 and not task.done()
            (model,) = device_stats(reg).models
            assert model.state is EntryState.READY and model.inflight == 1  # withdrawn: the model is busy
            assert (await reg.reserve("other", "big", DEV, GiB)).status is ReserveStatus.WAITING_BUSY
            gate.set()
            result = await asyncio.wait_for(task, WAIT_S)
            assert result.width == 64
            assert runner.loaded  # nothing unloads it until the registry asks again
            await asyncio.wait_for(worker.heartbeat_once(), WAIT_S)  # idle now: the registry hears it
            # the loader asks again
            assert (await reg.reserve("other", "big", DEV, GiB)).status is ReserveStatus.EVICTING
            await asyncio.wait_for(worker.heartbeat_once(), WAIT_S)  # the eviction, now idle: offloads to RAM
            assert not runner.loaded and runner.offload_calls == 1 and runner.unload_calls == 0
            assert device_stats(reg).models == []
            assert worker.report().footprint_bytes == worker.residency.standing.working_bytes
            (node,) = (await reg.stats()).nodes
            assert [(m.mode, m.host_bytes) for m in node.models] == [(MODE, PARAM_BYTES)]
            assert node.ram_used_bytes == PARAM_BYTES
            assert (await reg.reserve("other", "big", DEV, GiB)).status is ReserveStatus.GRANTED

    run(scenario())


def test_unload_waits_for_running_jobs(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            gen, gate = await blocked_generation(worker)
            unload = asyncio.get_running_loop().create_task(worker.unload())
            await asyncio.sleep(0.1)
            assert not unload.done() and not gen.done()
            assert runner.loaded and runner.unload_calls == 0
            assert [m.mode for m in device_stats(reg).models] == [MODE]
            gate.set()
            answer = await asyncio.wait_for(unload, WAIT_S)
            assert answer.status == "unloaded" and answer.mode == MODE and answer.replica == worker.replica_id
            result = gen.result()  # done before the unload was
            assert result.width == 64 and result.timings.job_s > 0
            assert not runner.loaded and device_stats(reg).models == []
            assert (await worker.unload()).status == "already_unloaded"

    run(scenario())


async def _failed_generation(worker: ModeWorker, error: BaseException, request_id: str) -> JobFailedError:
    """`error` raised inside a generation: the JobFailedError the client gets, checked to carry no internals."""
    runner_of(worker).generate_error = error
    with pytest.raises(JobFailedError) as info:
        await worker.generate(make_request(request_id))
    runner_of(worker).generate_error = None
    assert "secret-detail-42" not in str(info.value) and "secret-detail-42" not in info.value.message
    assert "secret-detail-42" not in str(info.value.to_dict())
    assert request_id in info.value.message and info.value.status_code == 500
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert worker.inflight == 0
    return info.value


def test_a_failed_generation_with_a_sound_pipeline_keeps_the_replica(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            err = await _failed_generation(worker, RuntimeError("scipy secret-detail-42 is missing"), "req-bad")
            assert err.param is None
            assert runner.self_check_calls == 1  # the pipeline was checked, and passed
            assert runner.state is ModelState.READY and worker.report().state is ModelState.READY
            worker.check_health()
            assert (await worker.generate(make_request("req-next"))).width == 64  # the next request is served
            assert runner.load_calls == 1 and runner.loaded  # by the same, still loaded model

    run(scenario())


def test_broken_pipeline_fails_the_health_check(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            worker.check_health()
            runner_of(worker).self_check_passes = False
            await _failed_generation(worker, RuntimeError("CUDA kernel secret-detail-42 exploded"), "req-boom")
            assert runner_of(worker).self_check_calls == 1
            assert worker.report().state is ModelState.FAILED
            with pytest.raises(RuntimeError, match="pipeline is broken"):
                worker.check_health()
            # the registry hears it on the next heartbeat (what /v1/modes reports while Serve replaces us)
            await wait_until(lambda: getattr(reg.ledger.replicas.get(worker.replica_id), "state", None)
                             is ModelState.FAILED)

    run(scenario())


def test_dream_lab_errors_pass_through_and_keep_the_replica_healthy(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            error = RequestValidationError("width 65 is not a multiple of 8", param="width")
            runner_of(worker).generate_error = error
            with pytest.raises(RequestValidationError) as info:
                await worker.generate(make_request())
            assert info.value is error and info.value.param == "width"
            assert runner_of(worker).state is ModelState.READY and runner_of(worker).self_check_calls == 0
            worker.check_health()
            # and the replica still serves
            runner_of(worker).generate_error = None
            assert (await worker.generate(make_request())).width == 64

    run(scenario())


def test_load_of_a_loaded_mode_is_a_no_op(demo_models_dir: Path) -> None:
    reg = make_registry()

    async def scenario() -> None:
        worker = make_worker(demo_models_dir, reg)
        async with started(worker):
            runner = runner_of(worker)
            answer = await worker.load()
            assert (answer.status, answer.load_s, answer.mode) == ("already_loaded", None, MODE)
            assert runner.load_calls == 1 and worker.residency.epoch == 1
            assert (await worker.unload()).status == "unloaded"
            assert worker.residency.epoch == 2 and device_stats(reg).models == []
            answer = await worker.load()
            assert answer.status == "loaded" and answer.load_s is not None and answer.load_s >= 0
            assert runner.load_calls == 2 and runner.loaded
            (model,) = device_stats(reg).models
            assert model.epoch == 3 and model.footprint_bytes == worker.report().footprint_bytes

    run(scenario())


def test_timings_of_first_and_loading_generations(demo_models_dir: Path) -> None:
    async def scenario() -> None:
        worker = make_worker(demo_models_dir, make_registry())
        async with started(worker):
            first = await worker.generate(make_request("first"))
            second = await worker.generate(make_request("second"))
            assert first.timings.replica_start_s == round(worker.start_s, 4)
            assert first.timings.replica_start_s is not None and first.timings.load_s is None
            assert second.timings.replica_start_s is None and second.timings.load_s is None
            assert first.timings.inference_s == 0.001 and first.timings.job_s > 0

        lazy = make_worker(demo_models_dir, make_registry(), load_on_start=False)
        async with started(lazy):
            assert not runner_of(lazy).loaded
            first = await lazy.generate(make_request("first"))
            assert first.timings.load_s is not None and first.timings.load_s >= 0
            assert first.timings.replica_start_s is not None
            assert runner_of(lazy).load_calls == 1
            second = await lazy.generate(make_request("second"))
            assert second.timings.load_s is None and second.timings.replica_start_s is None

    run(scenario())
