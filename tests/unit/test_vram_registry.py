"""The VRAM registry as a plain object: reservations, LRU eviction over heartbeats, liveness, restarts.

The registry takes its liveness clock by injection, so time is a fake here. Models' `last_use` is the
wall-clock time the replicas report in their heartbeats (as `ModelRunner.last_used` is), so the tests
set it through heartbeats.
"""

from __future__ import annotations

import random
import time

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
    assert_within_budget,
    clock,
    device_stats,
    load,
    make_registry,
    registration,
    report,
)

__all__ = ["clock"]  # the fixture, used by name


def test_reserve_granted_with_numbers(clock: FakeClock) -> None:
    reg = make_registry(clock)
    ans = reg.reserve("r1", "sd15", DEV, 4 * GiB)
    assert ans == ReserveAnswer(status=ReserveStatus.GRANTED, needed_bytes=4 * GiB, free_bytes=10 * GiB,
                         budget_bytes=10 * GiB)
    dev = device_stats(reg)
    assert (dev.reserved_bytes, dev.used_bytes, dev.free_bytes) == (4 * GiB, 0, 6 * GiB)
    assert dev.simulated is True
    assert reg.can_fit(DEV, 6 * GiB) and not reg.can_fit(DEV, 6 * GiB + 1)


def test_reserve_no_fit_with_numbers(clock: FakeClock) -> None:
    reg = make_registry(clock)
    ans = reg.reserve("r1", "huge", DEV, 11 * GiB)
    assert ans.status == "no_fit"
    assert (ans.needed_bytes, ans.free_bytes, ans.budget_bytes) == (11 * GiB, 10 * GiB, 10 * GiB)
    assert device_stats(reg).reserved_bytes == 0  # a refusal holds nothing


def test_real_device_budget_keeps_headroom(clock: FakeClock) -> None:
    reg = VramRegistry({"headroom_bytes": GiB}, clock=clock)
    ans = reg.reserve("r1", "sd15", "node-b:cuda:0", GiB, total_bytes=8 * GiB, reported_used=123)
    assert ans.budget_bytes == 7 * GiB and ans.status == "granted"
    dev = device_stats(reg, "node-b:cuda:0")
    assert dev.simulated is False and dev.total_bytes == 8 * GiB and dev.reported_used_bytes == 123


def test_two_replicas_never_reserve_the_same_free_memory(clock: FakeClock) -> None:
    reg = make_registry(clock)
    assert reg.reserve("a", "sd15", DEV, 6 * GiB).status == "granted"
    second = reg.reserve("b", "sdxl", DEV, 6 * GiB)
    assert second.status != "granted" and second.free_bytes == 4 * GiB
    assert_within_budget(reg)
    # asking again (the worker polls) does not change that while a's load is in progress
    assert reg.reserve("b", "sdxl", DEV, 6 * GiB).status != "granted"
    # re-reserving for the same replica replaces its own reservation instead of adding to it
    assert reg.reserve("a", "sd15", DEV, 6 * GiB).status == "granted"
    assert device_stats(reg).reserved_bytes == 6 * GiB
    # what is left can go to someone else
    assert reg.reserve("c", "tiny", DEV, 4 * GiB).status == "granted"
    assert reg.reserve("d", "tiny", DEV, 1).status != "granted"
    assert_within_budget(reg)


def test_release_returns_the_reservation(clock: FakeClock) -> None:
    reg = make_registry(clock)
    reg.reserve("a", "sd15", DEV, 8 * GiB)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status != "granted"
    reg.release("a")  # a's load failed
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status == "granted"


def test_reservation_expires(clock: FakeClock) -> None:
    reg = make_registry(clock, reservation_ttl_s=30, dead_after_s=1000)
    reg.reserve("a", "sd15", DEV, 8 * GiB)
    clock.advance(29)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status != "granted"
    clock.advance(2)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status == "granted"


def test_register_turns_the_reservation_into_use(clock: FakeClock) -> None:
    reg = make_registry(clock)
    load(reg, "a", "sd15", 3 * GiB)
    dev = device_stats(reg)
    assert (dev.used_bytes, dev.reserved_bytes, dev.free_bytes) == (3 * GiB, 0, 7 * GiB)
    (model,) = dev.models
    assert model.mode == "sd15" and model.replica == "a" and model.footprint_bytes == 3 * GiB
    assert model.state == "ready"


# -- LRU eviction over heartbeats ------------------------------------------------------------------------

def _three_idle_models(reg: VramRegistry) -> float:
    base = time.time() + 1000  # later than the registration times, so the reported last uses decide
    for replica, mode, age in (("ra", "a", 1), ("rb", "b", 3), ("rc", "c", 2)):
        load(reg, replica, mode, 3 * GiB)
        reg.heartbeat(replica, report(mode, 3 * GiB, last_use=base + age))
    return base


def test_lru_eviction_order(clock: FakeClock) -> None:
    reg = make_registry(clock)
    _three_idle_models(reg)  # last use: a oldest, then c, then b
    ans = reg.reserve("rd", "d", DEV, 5 * GiB)  # 1 GiB free: needs two 3-GiB models out
    assert ans.status == "evicting" and ans.evicting == ["a", "c"]
    assert ans.free_bytes == 1 * GiB and ans.needed_bytes == 5 * GiB
    states = {m.mode: m.state for m in device_stats(reg).models}
    assert states == {"a": "evicting", "b": "ready", "c": "evicting"}
    # the victims' heartbeats carry the command; the others' do not
    assert reg.heartbeat("ra", report("a", 3 * GiB)).evict is not None
    assert reg.heartbeat("rc", report("c", 3 * GiB)).evict is not None
    assert reg.heartbeat("rb", report("b", 3 * GiB)).evict is None
    # until they are gone the load waits, and asking again does not pick more victims
    again = reg.reserve("rd", "d", DEV, 5 * GiB)
    assert again.status == "evicting" and sorted(again.evicting) == ["a", "c"]
    assert {m.mode: m.state for m in device_stats(reg).models}["b"] == "ready"
    # the victims unload and unregister; now the load fits
    reg.unregister("ra")
    assert reg.reserve("rd", "d", DEV, 5 * GiB).status == "evicting"  # 4 GiB free, c still unloading
    reg.heartbeat("rc", report("c", 0, loaded=False, epoch=2))  # c reports it unloaded (same effect)
    granted = reg.reserve("rd", "d", DEV, 5 * GiB)
    assert granted.status == "granted" and granted.free_bytes == 7 * GiB
    assert_within_budget(reg)


def test_only_as_many_victims_as_needed(clock: FakeClock) -> None:
    reg = make_registry(clock)
    _three_idle_models(reg)
    ans = reg.reserve("rd", "d", DEV, 4 * GiB)  # 1 free + a's 3 is enough
    assert ans.evicting == ["a"]


def test_recent_use_protects_a_model(clock: FakeClock) -> None:
    reg = make_registry(clock)
    base = _three_idle_models(reg)
    reg.heartbeat("ra", report("a", 3 * GiB, last_use=base + 10))  # a is used again: now c is the oldest
    assert reg.reserve("rd", "d", DEV, 4 * GiB).evicting == ["c"]


def test_busy_models_are_never_evicted(clock: FakeClock) -> None:
    reg = make_registry(clock)
    base = time.time() + 1000
    load(reg, "ra", "a", 4 * GiB)
    load(reg, "rb", "b", 4 * GiB)
    reg.heartbeat("ra", report("a", 4 * GiB, inflight=2, last_use=base + 1))  # oldest, but busy
    reg.heartbeat("rb", report("b", 4 * GiB, inflight=0, last_use=base + 2))
    ans = reg.reserve("rc", "c", DEV, 5 * GiB)
    assert ans.evicting == ["b"]
    assert reg.heartbeat("ra", report("a", 4 * GiB, inflight=2)).evict is None
    # with b gone, 6 GiB free; 8 GiB more would need a, which is busy: not granted, a is not told to unload
    reg.unregister("rb")
    ans = reg.reserve("rd", "big", DEV, 8 * GiB)
    assert ans.status not in ("granted", "evicting")
    assert "a" in ans.busy_modes
    assert reg.heartbeat("ra", report("a", 4 * GiB, inflight=2)).evict is None
    assert {m.mode: m.state for m in device_stats(reg).models}["a"] == "ready"
    # once a is idle it may go
    reg.heartbeat("ra", report("a", 4 * GiB, inflight=0))
    assert reg.reserve("rd", "big", DEV, 8 * GiB).status == "evicting"
    assert reg.heartbeat("ra", report("a", 4 * GiB)).evict is not None


def test_waiting_reserve_is_granted_after_unregister(clock: FakeClock) -> None:
    reg = make_registry(clock)
    load(reg, "ra", "a", 7 * GiB)
    reg.heartbeat("ra", report("a", 7 * GiB, inflight=1))  # busy: cannot be evicted now
    first = reg.reserve("rb", "b", DEV, 6 * GiB)
    assert first.status not in ("granted", "evicting")
    assert reg.heartbeat("ra", report("a", 7 * GiB, inflight=1)).evict is None
    reg.unregister("ra", forget=True)  # the replica stops (scale-down)
    assert reg.reserve("rb", "b", DEV, 6 * GiB).status == "granted"
    assert "ra" not in reg.stats().replicas


def test_an_evicted_model_does_not_count_twice(clock: FakeClock) -> None:
    """Two loads waiting for the same eviction cannot both be granted the memory it frees."""
    reg = make_registry(clock)
    load(reg, "ra", "a", 8 * GiB)
    assert reg.reserve("rb", "b", DEV, 6 * GiB).status == "evicting"
    assert reg.reserve("rc", "c", DEV, 6 * GiB).status != "granted"
    reg.unregister("ra")
    results = [reg.reserve("rb", "b", DEV, 6 * GiB).status, reg.reserve("rc", "c", DEV, 6 * GiB).status]
    assert results.count("granted") == 1
    assert_within_budget(reg)


# -- liveness and restarts -------------------------------------------------------------------------------

def test_heartbeat_of_unknown_loaded_replica_reregisters(clock: FakeClock) -> None:
    """After a registry restart the replicas' heartbeats rebuild the accounting."""
    reg = make_registry(clock)
    ans = reg.heartbeat("ra", report("a", 3 * GiB, epoch=4, inflight=1))
    assert ans == HeartbeatAnswer(evict=None, draining=False)
    dev = device_stats(reg)
    assert dev.used_bytes == 3 * GiB
    (model,) = dev.models
    assert (model.mode, model.epoch, model.inflight) == ("a", 4, 1)
    assert reg.stats().replicas["ra"].inflight == 1
    # the re-learned use counts for the next reservation
    assert reg.reserve("rb", "b", DEV, 8 * GiB).status != "granted"
    # a cold replica's heartbeat registers nothing
    reg.heartbeat("rz", report("z", 0, loaded=False))
    assert device_stats(reg).used_bytes == 3 * GiB and "rz" in reg.stats().replicas


def test_silent_replica_is_dropped(clock: FakeClock) -> None:
    reg = make_registry(clock, dead_after_s=6)
    load(reg, "ra", "a", 4 * GiB)
    load(reg, "rb", "b", 4 * GiB)
    for _ in range(3):  # b keeps beating, a has gone silent (its node died)
        clock.advance(2.5)
        reg.heartbeat("rb", report("b", 4 * GiB))
    stats = reg.stats()
    assert set(stats.replicas) == {"rb"}
    dev = device_stats(reg)
    assert [m.mode for m in dev.models] == ["b"] and dev.used_bytes == 4 * GiB
    assert reg.reserve("rc", "c", DEV, 6 * GiB).status == "granted"


def test_a_replica_within_dead_after_is_kept(clock: FakeClock) -> None:
    reg = make_registry(clock, dead_after_s=6)
    load(reg, "ra", "a", 4 * GiB)
    clock.advance(5.9)
    assert "ra" in reg.stats().replicas and device_stats(reg).used_bytes == 4 * GiB


def test_stale_heartbeat_does_not_undo_a_newer_registration(clock: FakeClock) -> None:
    reg = make_registry(clock)
    # epoch 1: loaded, epoch 2: unloaded, epoch 3: loaded again and registered
    reg.register(registration("ra", "a", 3 * GiB, epoch=3))
    # a heartbeat built at epoch 2 ("not loaded") arrives late: the model stays
    reg.heartbeat("ra", report("a", 0, loaded=False, epoch=2))
    dev = device_stats(reg)
    assert dev.used_bytes == 3 * GiB and dev.models[0].epoch == 3
    # a late epoch-1 "loaded" report with another footprint does not overwrite it either
    reg.heartbeat("ra", report("a", 9 * GiB, loaded=True, epoch=1))
    assert device_stats(reg).used_bytes == 3 * GiB
    # a current report is applied
    reg.heartbeat("ra", report("a", 0, loaded=False, epoch=4))
    assert device_stats(reg).used_bytes == 0 and device_stats(reg).models == []


def test_draining_flag_reaches_heartbeats(clock: FakeClock) -> None:
    reg = make_registry(clock)
    load(reg, "ra", "a", GiB)
    assert reg.heartbeat("ra", report("a", GiB)).draining is False
    reg.set_draining(True)
    assert reg.heartbeat("ra", report("a", GiB)).draining is True
    assert reg.router_poll("router-1", 3).state.draining is True
    reg.heartbeat("ra", report("a", GiB, inflight=2))
    assert (reg.inflight().routers, reg.inflight().replicas) == (3, 2)  # what a drain waits for


# -- the budget invariant under a long random protocol-following run -------------------------------------

def test_stats_never_exceed_the_budget(clock: FakeClock) -> None:
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
            reg.register(registration(rid, rid, granted.pop(rid), epoch=step))
            loaded[rid] = step
        elif rid in loaded and action < 0.2:
            reg.unregister(rid)
            loaded.pop(rid)
        elif rid not in loaded:
            ans = reg.reserve(rid, rid, DEV, rng.randint(1, 8) * GiB)
            statuses[ans.status] = statuses.get(ans.status, 0) + 1
            if ans.status == "granted":
                granted[rid] = ans.needed_bytes
        # everyone alive beats; evicted models unload when told to
        for other in replicas:
            if other in loaded:
                ans = reg.heartbeat(other, report(other, 0, epoch=loaded[other], inflight=rng.choice([0, 0, 1]),
                                                   last_use=base + rng.random()).model_copy(
                    update={"footprint_bytes": 1}))
                if ans.evict:
                    unloads += 1
                    reg.unregister(other)
                    loaded.pop(other)
            else:
                reg.heartbeat(other, report(other, 0, loaded=False, epoch=step))
        clock.advance(0.5)
        assert_within_budget(reg)
    # the run went through every path: grants, evictions (carried out), and waiting
    assert statuses.get("granted", 0) > 20 and statuses.get("evicting", 0) > 0 and unloads > 5, (statuses, unloads)


def test_stale_loaded_heartbeat_after_unregister_does_not_reregister(clock: FakeClock) -> None:
    reg = make_registry(clock)
    load(reg, "r1", "sd1", 2 * GiB, epoch=1)
    reg.unregister("r1", epoch=2)  # evicted: the worker's epoch moved on
    ans = reg.heartbeat("r1", report("sd1", 2 * GiB, loaded=True, epoch=1))  # sent before the unload
    assert ans.evict is None
    assert device_stats(reg).models == [] and device_stats(reg).used_bytes == 0
    reg.heartbeat("r1", report("sd1", 2 * GiB, loaded=False, epoch=2))
    assert device_stats(reg).models == []


def test_operator_state_is_versioned_and_survives_a_registry_restart(clock: FakeClock) -> None:
    reg = make_registry(clock)
    assert reg.router_poll("router-1", 0).state.version == 0
    assert reg.set_default_mode("sdxl").version == 1
    reg.set_draining(True)
    assert reg.set_default_mode("sd1").version == 3
    state = reg.router_poll("router-1", 0).state
    assert (state.default_mode, state.draining, state.version) == ("sd1", True, 3)
    # an older copy from a slow router does not undo a newer change
    assert reg.router_poll("router-2", 0, OperatorState(default_mode="sdxl", version=1)).state == state
    # the registry restarts (a new object): the first router poll brings the state back
    fresh = make_registry(clock)
    assert fresh.router_poll("router-1", 0, state).state == state and fresh.draining is True
    assert fresh.set_default_mode("sd2").version == 4
