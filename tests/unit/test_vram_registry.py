"""The VRAM registry as a plain object: reservations, LRU eviction over heartbeats, liveness, restarts.

The registry takes its liveness clock by injection, so time is a fake here. Models' `last_use` is the
wall-clock time the replicas report in their heartbeats (as `ModelRunner.last_used` is), so the tests
set it through heartbeats.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from deployments.protocol import (
    HeartbeatAnswer,
    OperatorState,
    ReserveAnswer,
    ReserveStatus,
)
from deployments.registry.vram_registry import VramRegistry
from tests.unit.registry_fakes import (
    DEV,
    FakeClock,
    GiB,
    anyio_backend,
    assert_within_budget,
    clock,
    device_stats,
    load,
    make_registry,
    registration,
    report,
)

__all__ = ["anyio_backend", "clock"]  # the fixtures, used by name
pytestmark = pytest.mark.anyio


async def test_reserve_granted_with_numbers(clock: FakeClock) -> None:
    reg = make_registry(clock)
    ans = await reg.reserve("r1", "sd15", DEV, 4 * GiB)
    assert ans == ReserveAnswer(status=ReserveStatus.GRANTED, needed_bytes=4 * GiB, free_bytes=10 * GiB,
                         budget_bytes=10 * GiB)
    dev = await device_stats(reg)
    assert (dev.reserved_bytes, dev.used_bytes, dev.free_bytes) == (4 * GiB, 0, 6 * GiB)
    assert dev.simulated is True
    assert await reg.can_fit(DEV, 6 * GiB) and not await reg.can_fit(DEV, 6 * GiB + 1)


async def test_reserve_no_fit_with_numbers(clock: FakeClock) -> None:
    reg = make_registry(clock)
    ans = await reg.reserve("r1", "huge", DEV, 11 * GiB)
    assert ans.status == "no_fit"
    assert (ans.needed_bytes, ans.free_bytes, ans.budget_bytes) == (11 * GiB, 10 * GiB, 10 * GiB)
    assert (await device_stats(reg)).reserved_bytes == 0  # a refusal holds nothing


async def test_real_device_budget_keeps_headroom(clock: FakeClock) -> None:
    reg = VramRegistry({"headroom_bytes": GiB}, clock=clock)
    ans = await reg.reserve("r1", "sd15", "node-b:cuda:0", GiB, total_bytes=8 * GiB, reported_used=123)
    assert ans.budget_bytes == 7 * GiB and ans.status == "granted"
    dev = await device_stats(reg, "node-b:cuda:0")
    assert dev.simulated is False and dev.total_bytes == 8 * GiB and dev.reported_used_bytes == 123


async def test_two_replicas_never_reserve_the_same_free_memory(clock: FakeClock) -> None:
    reg = make_registry(clock)
    assert (await reg.reserve("a", "sd15", DEV, 6 * GiB)).status == "granted"
    second = await reg.reserve("b", "sdxl", DEV, 6 * GiB)
    assert second.status != "granted" and second.free_bytes == 4 * GiB
    await assert_within_budget(reg)
    # asking again (the worker polls) does not change that while a's load is in progress
    assert (await reg.reserve("b", "sdxl", DEV, 6 * GiB)).status != "granted"
    # re-reserving for the same replica replaces its own reservation instead of adding to it
    assert (await reg.reserve("a", "sd15", DEV, 6 * GiB)).status == "granted"
    assert (await device_stats(reg)).reserved_bytes == 6 * GiB
    # what is left can go to someone else
    assert (await reg.reserve("c", "tiny", DEV, 4 * GiB)).status == "granted"
    assert (await reg.reserve("d", "tiny", DEV, 1)).status != "granted"
    await assert_within_budget(reg)


async def test_release_returns_the_reservation(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await reg.reserve("a", "sd15", DEV, 8 * GiB)
    assert (await reg.reserve("b", "sdxl", DEV, 8 * GiB)).status != "granted"
    await reg.release("a")  # a's load failed
    assert (await reg.reserve("b", "sdxl", DEV, 8 * GiB)).status == "granted"


async def test_reservation_expires(clock: FakeClock) -> None:
    reg = make_registry(clock, reservation_ttl_s=30, dead_after_s=1000)
    await reg.reserve("a", "sd15", DEV, 8 * GiB)
    clock.advance(29)
    assert (await reg.reserve("b", "sdxl", DEV, 8 * GiB)).status != "granted"
    clock.advance(2)
    assert (await reg.reserve("b", "sdxl", DEV, 8 * GiB)).status == "granted"


async def test_register_turns_the_reservation_into_use(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "a", "sd15", 3 * GiB)
    dev = await device_stats(reg)
    assert (dev.used_bytes, dev.reserved_bytes, dev.free_bytes) == (3 * GiB, 0, 7 * GiB)
    (model,) = dev.models
    assert model.mode == "sd15" and model.replica == "a" and model.footprint_bytes == 3 * GiB
    assert model.state == "ready"


# -- LRU eviction over heartbeats ------------------------------------------------------------------------

async def _three_idle_models(reg: VramRegistry) -> float:
    base = time.time() + 1000  # later than the registration times, so the reported last uses decide
    for replica, mode, age in (("ra", "a", 1), ("rb", "b", 3), ("rc", "c", 2)):
        await load(reg, replica, mode, 3 * GiB)
        await reg.heartbeat(replica, report(mode, 3 * GiB, last_use=base + age))
    return base


async def test_lru_eviction_order(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await _three_idle_models(reg)  # last use: a oldest, then c, then b
    ans = await reg.reserve("rd", "d", DEV, 5 * GiB)  # 1 GiB free: needs two 3-GiB models out
    assert ans.status == "evicting" and ans.evicting == ["a", "c"]
    assert ans.free_bytes == 1 * GiB and ans.needed_bytes == 5 * GiB
    states = {m.mode: m.state for m in (await device_stats(reg)).models}
    assert states == {"a": "evicting", "b": "ready", "c": "evicting"}
    # the victims' heartbeats carry the command; the others' do not
    assert (await reg.heartbeat("ra", report("a", 3 * GiB))).evict is not None
    assert (await reg.heartbeat("rc", report("c", 3 * GiB))).evict is not None
    assert (await reg.heartbeat("rb", report("b", 3 * GiB))).evict is None
    # until they are gone the load waits, and asking again does not pick more victims
    again = await reg.reserve("rd", "d", DEV, 5 * GiB)
    assert again.status == "evicting" and sorted(again.evicting) == ["a", "c"]
    assert {m.mode: m.state for m in (await device_stats(reg)).models}["b"] == "ready"
    # the victims unload and unregister; now the load fits
    await reg.unregister("ra")
    assert (await reg.reserve("rd", "d", DEV, 5 * GiB)).status == "evicting"  # 4 GiB free, c still unloading
    await reg.heartbeat("rc", report("c", 0, loaded=False, epoch=2))  # c reports it unloaded (same effect)
    granted = await reg.reserve("rd", "d", DEV, 5 * GiB)
    assert granted.status == "granted" and granted.free_bytes == 7 * GiB
    await assert_within_budget(reg)


async def test_only_as_many_victims_as_needed(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await _three_idle_models(reg)
    ans = await reg.reserve("rd", "d", DEV, 4 * GiB)  # 1 free + a's 3 is enough
    assert ans.evicting == ["a"]


async def test_recent_use_protects_a_model(clock: FakeClock) -> None:
    reg = make_registry(clock)
    base = await _three_idle_models(reg)
    await reg.heartbeat("ra", report("a", 3 * GiB, last_use=base + 10))  # a is used again: now c is the oldest
    assert (await reg.reserve("rd", "d", DEV, 4 * GiB)).evicting == ["c"]


async def test_busy_models_are_never_evicted(clock: FakeClock) -> None:
    reg = make_registry(clock)
    base = time.time() + 1000
    await load(reg, "ra", "a", 4 * GiB)
    await load(reg, "rb", "b", 4 * GiB)
    await reg.heartbeat("ra", report("a", 4 * GiB, inflight=2, last_use=base + 1))  # oldest, but busy
    await reg.heartbeat("rb", report("b", 4 * GiB, inflight=0, last_use=base + 2))
    ans = await reg.reserve("rc", "c", DEV, 5 * GiB)
    assert ans.evicting == ["b"]
    assert (await reg.heartbeat("ra", report("a", 4 * GiB, inflight=2))).evict is None
    # with b gone, 6 GiB free; 8 GiB more would need a, which is busy: not granted, a is not told to unload
    await reg.unregister("rb")
    ans = await reg.reserve("rd", "big", DEV, 8 * GiB)
    assert ans.status not in ("granted", "evicting")
    assert "a" in ans.busy_modes
    assert (await reg.heartbeat("ra", report("a", 4 * GiB, inflight=2))).evict is None
    assert {m.mode: m.state for m in (await device_stats(reg)).models}["a"] == "ready"
    # once a is idle it may go
    await reg.heartbeat("ra", report("a", 4 * GiB, inflight=0))
    assert (await reg.reserve("rd", "big", DEV, 8 * GiB)).status == "evicting"
    assert (await reg.heartbeat("ra", report("a", 4 * GiB))).evict is not None


async def test_waiting_reserve_is_granted_after_unregister(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "ra", "a", 7 * GiB)
    await reg.heartbeat("ra", report("a", 7 * GiB, inflight=1))  # busy: cannot be evicted now
    first = await reg.reserve("rb", "b", DEV, 6 * GiB)
    assert first.status not in ("granted", "evicting")
    assert (await reg.heartbeat("ra", report("a", 7 * GiB, inflight=1))).evict is None
    await reg.unregister("ra", forget=True)  # the replica stops (scale-down)
    assert (await reg.reserve("rb", "b", DEV, 6 * GiB)).status == "granted"
    assert "ra" not in (await reg.stats()).replicas


async def test_an_evicted_model_does_not_count_twice(clock: FakeClock) -> None:
    """Two loads waiting for the same eviction cannot both be granted the memory it frees."""
    reg = make_registry(clock)
    await load(reg, "ra", "a", 8 * GiB)
    assert (await reg.reserve("rb", "b", DEV, 6 * GiB)).status == "evicting"
    assert (await reg.reserve("rc", "c", DEV, 6 * GiB)).status != "granted"
    await reg.unregister("ra")
    results = [(await reg.reserve("rb", "b", DEV, 6 * GiB)).status, (await reg.reserve("rc", "c", DEV, 6 * GiB)).status]
    assert results.count("granted") == 1
    await assert_within_budget(reg)


async def test_held_reserves_woken_together_are_not_both_granted(clock: FakeClock) -> None:
    """Two loads held open on the same eviction wake together when it is done: one event loop decides them
    one after the other, so only one gets the memory (the other is held again or told to wait)."""
    reg = make_registry(clock)
    await load(reg, "ra", "a", 8 * GiB)
    held = [asyncio.ensure_future(reg.reserve(r, m, DEV, 6 * GiB, wait_s=30)) for r, m in (("rb", "b"), ("rc", "c"))]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in held) and "rb" in reg.reserving and "rc" in reg.reserving
    await reg.unregister("ra")  # the victim left: both wake at once
    answers = await asyncio.wait_for(asyncio.gather(*held), 2)
    assert [a.status for a in answers].count("granted") == 1
    await assert_within_budget(reg)


# -- liveness and restarts -------------------------------------------------------------------------------

async def test_heartbeat_of_unknown_loaded_replica_reregisters(clock: FakeClock) -> None:
    """After a registry restart the replicas' heartbeats rebuild the accounting."""
    reg = make_registry(clock)
    ans = await reg.heartbeat("ra", report("a", 3 * GiB, epoch=4, inflight=1))
    assert ans == HeartbeatAnswer(evict=None, draining=False)
    dev = await device_stats(reg)
    assert dev.used_bytes == 3 * GiB
    (model,) = dev.models
    assert (model.mode, model.epoch, model.inflight) == ("a", 4, 1)
    assert (await reg.stats()).replicas["ra"].inflight == 1
    # the re-learned use counts for the next reservation
    assert (await reg.reserve("rb", "b", DEV, 8 * GiB)).status != "granted"
    # a cold replica's heartbeat registers nothing
    await reg.heartbeat("rz", report("z", 0, loaded=False))
    assert (await device_stats(reg)).used_bytes == 3 * GiB and "rz" in (await reg.stats()).replicas


async def test_silent_replica_is_dropped(clock: FakeClock) -> None:
    reg = make_registry(clock, dead_after_s=6)
    await load(reg, "ra", "a", 4 * GiB)
    await load(reg, "rb", "b", 4 * GiB)
    for _ in range(3):  # b keeps beating, a has gone silent (its node died)
        clock.advance(2.5)
        await reg.heartbeat("rb", report("b", 4 * GiB))
    stats = await reg.stats()
    assert set(stats.replicas) == {"rb"}
    dev = await device_stats(reg)
    assert [m.mode for m in dev.models] == ["b"] and dev.used_bytes == 4 * GiB
    assert (await reg.reserve("rc", "c", DEV, 6 * GiB)).status == "granted"


async def test_a_replica_within_dead_after_is_kept(clock: FakeClock) -> None:
    reg = make_registry(clock, dead_after_s=6)
    await load(reg, "ra", "a", 4 * GiB)
    clock.advance(5.9)
    assert "ra" in (await reg.stats()).replicas and (await device_stats(reg)).used_bytes == 4 * GiB


async def test_stale_heartbeat_does_not_undo_a_newer_registration(clock: FakeClock) -> None:
    reg = make_registry(clock)
    # epoch 1: loaded, epoch 2: unloaded, epoch 3: loaded again and registered
    await reg.register(registration("ra", "a", 3 * GiB, epoch=3))
    # a heartbeat built at epoch 2 ("not loaded") arrives late: the model stays
    await reg.heartbeat("ra", report("a", 0, loaded=False, epoch=2))
    dev = await device_stats(reg)
    assert dev.used_bytes == 3 * GiB and dev.models[0].epoch == 3
    # a late epoch-1 "loaded" report with another footprint does not overwrite it either
    await reg.heartbeat("ra", report("a", 9 * GiB, loaded=True, epoch=1))
    assert (await device_stats(reg)).used_bytes == 3 * GiB
    # a current report is applied
    await reg.heartbeat("ra", report("a", 0, loaded=False, epoch=4))
    assert (await device_stats(reg)).used_bytes == 0 and (await device_stats(reg)).models == []


async def test_draining_flag_reaches_heartbeats(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "ra", "a", GiB)
    assert (await reg.heartbeat("ra", report("a", GiB))).draining is False
    await reg.set_draining(True)
    assert (await reg.heartbeat("ra", report("a", GiB))).draining is True
    assert (await reg.router_poll("router-1", 3)).state.draining is True
    await reg.heartbeat("ra", report("a", GiB, inflight=2))
    assert ((await reg.inflight()).routers, (await reg.inflight()).replicas) == (3, 2)  # what a drain waits for


# -- the budget invariant under a long random protocol-following run -------------------------------------

async def test_stats_never_exceed_the_budget(clock: FakeClock) -> None:
    rng = random.Random(1234)
    reg = make_registry(clock, budget_gib=16, dead_after_s=5)
    replicas = [f"r{i}" for i in range(6)]
    loaded: dict[str, int] = {}
    granted: dict[str, int] = {}
    statuses: dict[str, int] = {}
    unloads = 0
    base = time.time() + 1000
    for step in range(600):
        rid = rng.choice(replicas)
        action = rng.random()
        if rid in granted:  # finish the load: register at most what was reserved
            await reg.register(registration(rid, rid, granted.pop(rid), epoch=step))
            loaded[rid] = step
        elif rid in loaded and action < 0.2:
            await reg.unregister(rid)
            loaded.pop(rid)
        elif rid not in loaded:
            ans = await reg.reserve(rid, rid, DEV, rng.randint(1, 8) * GiB)
            statuses[ans.status] = statuses.get(ans.status, 0) + 1
            if ans.status == "granted":
                granted[rid] = ans.needed_bytes
        # everyone alive beats; evicted models unload when told to
        for other in replicas:
            if other in loaded:
                ans = await reg.heartbeat(other, report(other, 0, epoch=loaded[other], inflight=rng.choice([0, 0, 1]),
                                                   last_use=base + rng.random()).model_copy(
                    update={"footprint_bytes": 1}))
                if ans.evict:
                    unloads += 1
                    await reg.unregister(other)
                    loaded.pop(other)
            else:
                await reg.heartbeat(other, report(other, 0, loaded=False, epoch=step))
        clock.advance(0.5)
        await assert_within_budget(reg)
    # the run went through every path: grants, evictions (carried out), and waiting
    assert statuses.get("granted", 0) > 20 and statuses.get("evicting", 0) > 0 and unloads > 5, (statuses, unloads)


async def test_stale_loaded_heartbeat_after_unregister_does_not_reregister(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "r1", "sd1", 2 * GiB, epoch=1)
    await reg.unregister("r1", epoch=2)  # evicted: the worker's epoch moved on
    ans = await reg.heartbeat("r1", report("sd1", 2 * GiB, loaded=True, epoch=1))  # sent before the unload
    assert ans.evict is None
    assert (await device_stats(reg)).models == [] and (await device_stats(reg)).used_bytes == 0
    await reg.heartbeat("r1", report("sd1", 2 * GiB, loaded=False, epoch=2))
    assert (await device_stats(reg)).models == []


async def test_operator_state_is_versioned_and_survives_a_registry_restart(clock: FakeClock) -> None:
    reg = make_registry(clock)
    assert (await reg.router_poll("router-1", 0)).state.version == 0
    assert (await reg.set_default_mode("sdxl")).version == 1
    await reg.set_draining(True)
    assert (await reg.set_default_mode("sd1")).version == 3
    state = (await reg.router_poll("router-1", 0)).state
    assert (state.default_mode, state.draining, state.version) == ("sd1", True, 3)
    # an older copy from a slow router does not undo a newer change
    assert (await reg.router_poll("router-2", 0, OperatorState(default_mode="sdxl", version=1))).state == state
    # the registry restarts (a new object): the first router poll brings the state back
    fresh = make_registry(clock)
    assert (await fresh.router_poll("router-1", 0, state)).state == state and fresh.control.draining is True
    assert (await fresh.set_default_mode("sd2")).version == 4


async def test_a_leaked_request_reservation_expires_though_its_replica_beats(clock: FakeClock) -> None:
    """Heartbeats keep a replica's load reservation; a request's reservation lives only while renewed."""
    from tests.unit.registry_fakes import report

    reg = make_registry(clock, reservation_ttl_s=30, dead_after_s=1000)
    await reg.reserve("a", "sd15", DEV, 4 * GiB)  # a's load
    await reg.reserve("a", "sd15", DEV, 2 * GiB, key="a/req-1")  # a request's extra, leaked
    await reg.reserve("a", "sd15", DEV, 1 * GiB, key="a/req-2")  # a request's extra, renewed by its request
    for _ in range(4):
        clock.advance(20)
        await reg.heartbeat("a", report("sd15", 0, loaded=False))
        assert await reg.renew("a/req-2")
    assert set(reg.ledger.reservations) == {"a", "a/req-2"}
    assert not await reg.renew("a/req-1")
    for _ in range(2):  # renewals stop (the request ended without its release): it goes too
        clock.advance(20)
        await reg.heartbeat("a", report("sd15", 0, loaded=False))
    assert set(reg.ledger.reservations) == {"a"}
