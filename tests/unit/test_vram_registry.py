"""The VRAM registry as a plain object: reservations, LRU eviction over heartbeats, liveness, restarts.

The registry takes its liveness clock by injection, so time is a fake here. Models' `last_use` is the
wall-clock time the replicas report in their heartbeats (as `ModelRunner.last_used` is), so the tests
set it through heartbeats.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from deployments.protocol import (
    DeviceStats,
    HeartbeatAnswer,
    HeartbeatReport,
    ModelState,
    Offloaded,
    OperatorState,
    Registration,
    ReserveAnswer,
    ReserveStatus,
    Tier,
)
from deployments.vram_registry import VramRegistry

GiB = 1024**3
DEV = "node-a:cuda:0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def _registry(clock: FakeClock, budget_gib: int = 10, **cfg: Any) -> VramRegistry:
    return VramRegistry({"simulated_vram_bytes": budget_gib * GiB, "headroom_bytes": 0, **cfg}, clock=clock)


def _report(mode: str, footprint: int, *, loaded: bool = True, epoch: int = 1, inflight: int = 0,
            last_use: float | None = None, device: str = DEV) -> HeartbeatReport:
    return HeartbeatReport(mode=mode, device=device, state=ModelState.READY if loaded else ModelState.COLD,
                           tier=Tier.VRAM if loaded else Tier.DISK, host_bytes=0, epoch=epoch, inflight=inflight,
                           footprint_bytes=footprint,
                           measured_bytes=footprint, estimate_bytes=footprint, last_use=last_use or 0.0,
                           total_bytes=None, reported_used_bytes=None)


def _registration(replica: str, mode: str, nbytes: int, epoch: int = 1) -> Registration:
    return Registration(replica=replica, mode=mode, device=DEV, footprint_bytes=nbytes, estimate_bytes=nbytes,
                        measured_bytes=nbytes, epoch=epoch)


def _load(reg: VramRegistry, replica: str, mode: str, nbytes: int, epoch: int = 1) -> None:
    """The worker protocol for a load that fits: reserve (granted), load, register the measured footprint."""
    ans = reg.reserve(replica, mode, DEV, nbytes)
    assert ans.status == "granted", ans
    reg.register(_registration(replica, mode, nbytes, epoch))


def _device_stats(reg: VramRegistry, device: str = DEV) -> DeviceStats:
    (dev,) = [d for d in reg.stats().devices if d.device == device]
    return dev


def _assert_within_budget(reg: VramRegistry) -> None:
    for dev in reg.stats().devices:
        assert dev.used_bytes + dev.reserved_bytes <= dev.budget_bytes, dev
        assert dev.used_bytes <= dev.budget_bytes and dev.free_bytes >= 0, dev


# -- reservations ----------------------------------------------------------------------------------------

def test_reserve_granted_with_numbers(clock: FakeClock) -> None:
    reg = _registry(clock)
    ans = reg.reserve("r1", "sd15", DEV, 4 * GiB)
    assert ans == ReserveAnswer(status=ReserveStatus.GRANTED, needed_bytes=4 * GiB, free_bytes=10 * GiB,
                         budget_bytes=10 * GiB)
    dev = _device_stats(reg)
    assert (dev.reserved_bytes, dev.used_bytes, dev.free_bytes) == (4 * GiB, 0, 6 * GiB)
    assert dev.simulated is True
    assert reg.can_fit(DEV, 6 * GiB) and not reg.can_fit(DEV, 6 * GiB + 1)


def test_reserve_no_fit_with_numbers(clock: FakeClock) -> None:
    reg = _registry(clock)
    ans = reg.reserve("r1", "huge", DEV, 11 * GiB)
    assert ans.status == "no_fit"
    assert (ans.needed_bytes, ans.free_bytes, ans.budget_bytes) == (11 * GiB, 10 * GiB, 10 * GiB)
    assert _device_stats(reg).reserved_bytes == 0  # a refusal holds nothing


def test_real_device_budget_keeps_headroom(clock: FakeClock) -> None:
    reg = VramRegistry({"headroom_bytes": GiB}, clock=clock)
    ans = reg.reserve("r1", "sd15", "node-b:cuda:0", GiB, total_bytes=8 * GiB, reported_used=123)
    assert ans.budget_bytes == 7 * GiB and ans.status == "granted"
    dev = _device_stats(reg, "node-b:cuda:0")
    assert dev.simulated is False and dev.total_bytes == 8 * GiB and dev.reported_used_bytes == 123


def test_two_replicas_never_reserve_the_same_free_memory(clock: FakeClock) -> None:
    reg = _registry(clock)
    assert reg.reserve("a", "sd15", DEV, 6 * GiB).status == "granted"
    second = reg.reserve("b", "sdxl", DEV, 6 * GiB)
    assert second.status != "granted" and second.free_bytes == 4 * GiB
    _assert_within_budget(reg)
    # asking again (the worker polls) does not change that while a's load is in progress
    assert reg.reserve("b", "sdxl", DEV, 6 * GiB).status != "granted"
    # re-reserving for the same replica replaces its own reservation instead of adding to it
    assert reg.reserve("a", "sd15", DEV, 6 * GiB).status == "granted"
    assert _device_stats(reg).reserved_bytes == 6 * GiB
    # what is left can go to someone else
    assert reg.reserve("c", "tiny", DEV, 4 * GiB).status == "granted"
    assert reg.reserve("d", "tiny", DEV, 1).status != "granted"
    _assert_within_budget(reg)


def test_release_returns_the_reservation(clock: FakeClock) -> None:
    reg = _registry(clock)
    reg.reserve("a", "sd15", DEV, 8 * GiB)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status != "granted"
    reg.release("a")  # a's load failed
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status == "granted"


def test_reservation_expires(clock: FakeClock) -> None:
    reg = _registry(clock, reservation_ttl_s=30, dead_after_s=1000)
    reg.reserve("a", "sd15", DEV, 8 * GiB)
    clock.advance(29)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status != "granted"
    clock.advance(2)
    assert reg.reserve("b", "sdxl", DEV, 8 * GiB).status == "granted"


def test_register_turns_the_reservation_into_use(clock: FakeClock) -> None:
    reg = _registry(clock)
    _load(reg, "a", "sd15", 3 * GiB)
    dev = _device_stats(reg)
    assert (dev.used_bytes, dev.reserved_bytes, dev.free_bytes) == (3 * GiB, 0, 7 * GiB)
    (model,) = dev.models
    assert model.mode == "sd15" and model.replica == "a" and model.footprint_bytes == 3 * GiB
    assert model.state == "ready"


# -- LRU eviction over heartbeats ------------------------------------------------------------------------

def _three_idle_models(reg: VramRegistry) -> float:
    base = time.time() + 1000  # later than the registration times, so the reported last uses decide
    for replica, mode, age in (("ra", "a", 1), ("rb", "b", 3), ("rc", "c", 2)):
        _load(reg, replica, mode, 3 * GiB)
        reg.heartbeat(replica, _report(mode, 3 * GiB, last_use=base + age))
    return base


def test_lru_eviction_order(clock: FakeClock) -> None:
    reg = _registry(clock)
    _three_idle_models(reg)  # last use: a oldest, then c, then b
    ans = reg.reserve("rd", "d", DEV, 5 * GiB)  # 1 GiB free: needs two 3-GiB models out
    assert ans.status == "evicting" and ans.evicting == ["a", "c"]
    assert ans.free_bytes == 1 * GiB and ans.needed_bytes == 5 * GiB
    states = {m.mode: m.state for m in _device_stats(reg).models}
    assert states == {"a": "evicting", "b": "ready", "c": "evicting"}
    # the victims' heartbeats carry the command; the others' do not
    assert reg.heartbeat("ra", _report("a", 3 * GiB)).evict is not None
    assert reg.heartbeat("rc", _report("c", 3 * GiB)).evict is not None
    assert reg.heartbeat("rb", _report("b", 3 * GiB)).evict is None
    # until they are gone the load waits, and asking again does not pick more victims
    again = reg.reserve("rd", "d", DEV, 5 * GiB)
    assert again.status == "evicting" and sorted(again.evicting) == ["a", "c"]
    assert {m.mode: m.state for m in _device_stats(reg).models}["b"] == "ready"
    # the victims unload and unregister; now the load fits
    reg.unregister("ra")
    assert reg.reserve("rd", "d", DEV, 5 * GiB).status == "evicting"  # 4 GiB free, c still unloading
    reg.heartbeat("rc", _report("c", 0, loaded=False, epoch=2))  # c reports it unloaded (same effect)
    granted = reg.reserve("rd", "d", DEV, 5 * GiB)
    assert granted.status == "granted" and granted.free_bytes == 7 * GiB
    _assert_within_budget(reg)


def test_only_as_many_victims_as_needed(clock: FakeClock) -> None:
    reg = _registry(clock)
    _three_idle_models(reg)
    ans = reg.reserve("rd", "d", DEV, 4 * GiB)  # 1 free + a's 3 is enough
    assert ans.evicting == ["a"]


def test_recent_use_protects_a_model(clock: FakeClock) -> None:
    reg = _registry(clock)
    base = _three_idle_models(reg)
    reg.heartbeat("ra", _report("a", 3 * GiB, last_use=base + 10))  # a is used again: now c is the oldest
    assert reg.reserve("rd", "d", DEV, 4 * GiB).evicting == ["c"]


def test_busy_models_are_never_evicted(clock: FakeClock) -> None:
    reg = _registry(clock)
    base = time.time() + 1000
    _load(reg, "ra", "a", 4 * GiB)
    _load(reg, "rb", "b", 4 * GiB)
    reg.heartbeat("ra", _report("a", 4 * GiB, inflight=2, last_use=base + 1))  # oldest, but busy
    reg.heartbeat("rb", _report("b", 4 * GiB, inflight=0, last_use=base + 2))
    ans = reg.reserve("rc", "c", DEV, 5 * GiB)
    assert ans.evicting == ["b"]
    assert reg.heartbeat("ra", _report("a", 4 * GiB, inflight=2)).evict is None
    # with b gone, 6 GiB free; 8 GiB more would need a, which is busy: not granted, a is not told to unload
    reg.unregister("rb")
    ans = reg.reserve("rd", "big", DEV, 8 * GiB)
    assert ans.status not in ("granted", "evicting")
    assert "a" in ans.busy_modes
    assert reg.heartbeat("ra", _report("a", 4 * GiB, inflight=2)).evict is None
    assert {m.mode: m.state for m in _device_stats(reg).models}["a"] == "ready"
    # once a is idle it may go
    reg.heartbeat("ra", _report("a", 4 * GiB, inflight=0))
    assert reg.reserve("rd", "big", DEV, 8 * GiB).status == "evicting"
    assert reg.heartbeat("ra", _report("a", 4 * GiB)).evict is not None


def test_waiting_reserve_is_granted_after_unregister(clock: FakeClock) -> None:
    reg = _registry(clock)
    _load(reg, "ra", "a", 7 * GiB)
    reg.heartbeat("ra", _report("a", 7 * GiB, inflight=1))  # busy: cannot be evicted now
    first = reg.reserve("rb", "b", DEV, 6 * GiB)
    assert first.status not in ("granted", "evicting")
    assert reg.heartbeat("ra", _report("a", 7 * GiB, inflight=1)).evict is None
    reg.unregister("ra", forget=True)  # the replica stops (scale-down)
    assert reg.reserve("rb", "b", DEV, 6 * GiB).status == "granted"
    assert "ra" not in reg.stats().replicas


def test_an_evicted_model_does_not_count_twice(clock: FakeClock) -> None:
    """Two loads waiting for the same eviction cannot both be granted the memory it frees."""
    reg = _registry(clock)
    _load(reg, "ra", "a", 8 * GiB)
    assert reg.reserve("rb", "b", DEV, 6 * GiB).status == "evicting"
    assert reg.reserve("rc", "c", DEV, 6 * GiB).status != "granted"
    reg.unregister("ra")
    results = [reg.reserve("rb", "b", DEV, 6 * GiB).status, reg.reserve("rc", "c", DEV, 6 * GiB).status]
    assert results.count("granted") == 1
    _assert_within_budget(reg)


# -- liveness and restarts -------------------------------------------------------------------------------

def test_heartbeat_of_unknown_loaded_replica_reregisters(clock: FakeClock) -> None:
    """After a registry restart the replicas' heartbeats rebuild the accounting."""
    reg = _registry(clock)
    ans = reg.heartbeat("ra", _report("a", 3 * GiB, epoch=4, inflight=1))
    assert ans == HeartbeatAnswer(evict=None, draining=False)
    dev = _device_stats(reg)
    assert dev.used_bytes == 3 * GiB
    (model,) = dev.models
    assert (model.mode, model.epoch, model.inflight) == ("a", 4, 1)
    assert reg.stats().replicas["ra"].inflight == 1
    # the re-learned use counts for the next reservation
    assert reg.reserve("rb", "b", DEV, 8 * GiB).status != "granted"
    # a cold replica's heartbeat registers nothing
    reg.heartbeat("rz", _report("z", 0, loaded=False))
    assert _device_stats(reg).used_bytes == 3 * GiB and "rz" in reg.stats().replicas


def test_silent_replica_is_dropped(clock: FakeClock) -> None:
    reg = _registry(clock, dead_after_s=6)
    _load(reg, "ra", "a", 4 * GiB)
    _load(reg, "rb", "b", 4 * GiB)
    for _ in range(3):  # b keeps beating, a has gone silent (its node died)
        clock.advance(2.5)
        reg.heartbeat("rb", _report("b", 4 * GiB))
    stats = reg.stats()
    assert set(stats.replicas) == {"rb"}
    dev = _device_stats(reg)
    assert [m.mode for m in dev.models] == ["b"] and dev.used_bytes == 4 * GiB
    assert reg.reserve("rc", "c", DEV, 6 * GiB).status == "granted"


def test_a_replica_within_dead_after_is_kept(clock: FakeClock) -> None:
    reg = _registry(clock, dead_after_s=6)
    _load(reg, "ra", "a", 4 * GiB)
    clock.advance(5.9)
    assert "ra" in reg.stats().replicas and _device_stats(reg).used_bytes == 4 * GiB


def test_stale_heartbeat_does_not_undo_a_newer_registration(clock: FakeClock) -> None:
    reg = _registry(clock)
    # epoch 1: loaded, epoch 2: unloaded, epoch 3: loaded again and registered
    reg.register(_registration("ra", "a", 3 * GiB, epoch=3))
    # a heartbeat built at epoch 2 ("not loaded") arrives late: the model stays
    reg.heartbeat("ra", _report("a", 0, loaded=False, epoch=2))
    dev = _device_stats(reg)
    assert dev.used_bytes == 3 * GiB and dev.models[0].epoch == 3
    # a late epoch-1 "loaded" report with another footprint does not overwrite it either
    reg.heartbeat("ra", _report("a", 9 * GiB, loaded=True, epoch=1))
    assert _device_stats(reg).used_bytes == 3 * GiB
    # a current report is applied
    reg.heartbeat("ra", _report("a", 0, loaded=False, epoch=4))
    assert _device_stats(reg).used_bytes == 0 and _device_stats(reg).models == []


def test_draining_flag_reaches_heartbeats(clock: FakeClock) -> None:
    reg = _registry(clock)
    _load(reg, "ra", "a", GiB)
    assert reg.heartbeat("ra", _report("a", GiB)).draining is False
    reg.set_draining(True)
    assert reg.heartbeat("ra", _report("a", GiB)).draining is True
    assert reg.router_poll("router-1", 3).state.draining is True
    reg.heartbeat("ra", _report("a", GiB, inflight=2))
    assert (reg.inflight().routers, reg.inflight().replicas) == (3, 2)  # what a drain waits for


# -- the budget invariant under a long random protocol-following run -------------------------------------

def test_stats_never_exceed_the_budget(clock: FakeClock) -> None:
    rng = random.Random(1234)
    reg = _registry(clock, budget_gib=16, dead_after_s=5)
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
            reg.register(_registration(rid, rid, granted.pop(rid), epoch=step))
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
                ans = reg.heartbeat(other, _report(other, 0, epoch=loaded[other], inflight=rng.choice([0, 0, 1]),
                                                   last_use=base + rng.random()).model_copy(
                    update={"footprint_bytes": 1}))
                if ans.evict:
                    unloads += 1
                    reg.unregister(other)
                    loaded.pop(other)
            else:
                reg.heartbeat(other, _report(other, 0, loaded=False, epoch=step))
        clock.advance(0.5)
        _assert_within_budget(reg)
    # the run went through every path: grants, evictions (carried out), and waiting
    assert statuses.get("granted", 0) > 20 and statuses.get("evicting", 0) > 5 and unloads > 5, (statuses, unloads)


def test_stale_loaded_heartbeat_after_unregister_does_not_reregister(clock: FakeClock) -> None:
    reg = _registry(clock)
    _load(reg, "r1", "sd1", 2 * GiB, epoch=1)
    reg.unregister("r1", epoch=2)  # evicted: the worker's epoch moved on
    ans = reg.heartbeat("r1", _report("sd1", 2 * GiB, loaded=True, epoch=1))  # sent before the unload
    assert ans.evict is None
    assert _device_stats(reg).models == [] and _device_stats(reg).used_bytes == 0
    reg.heartbeat("r1", _report("sd1", 2 * GiB, loaded=False, epoch=2))
    assert _device_stats(reg).models == []


def test_operator_state_is_versioned_and_survives_a_registry_restart(clock: FakeClock) -> None:
    reg = _registry(clock)
    assert reg.router_poll("router-1", 0).state.version == 0
    assert reg.set_default_mode("sdxl").version == 1
    reg.set_draining(True)
    assert reg.set_default_mode("sd1").version == 3
    state = reg.router_poll("router-1", 0).state
    assert (state.default_mode, state.draining, state.version) == ("sd1", True, 3)
    # an older copy from a slow router does not undo a newer change
    assert reg.router_poll("router-2", 0, OperatorState(default_mode="sdxl", version=1)).state == state
    # the registry restarts (a new object): the first router poll brings the state back
    fresh = _registry(clock)
    assert fresh.router_poll("router-1", 0, state).state == state and fresh.draining is True
    assert fresh.set_default_mode("sd2").version == 4


def _offload(reg: VramRegistry, replica: str, mode: str, nbytes: int, epoch: int, last_use: float) -> None:
    """What a worker does when told `evict: ram`: the model leaves the device for host memory."""
    reg.offloaded(Offloaded(replica=replica, mode=mode, device=DEV, host_bytes=nbytes, last_use=last_use,
                            epoch=epoch))


def test_evicted_models_go_to_the_ram_tier_and_the_least_recent_is_pushed_out(clock: FakeClock) -> None:
    reg = _registry(clock, budget_gib=10, ram_budget_bytes=7 * GiB)
    _load(reg, "ra", "a", 4 * GiB)
    _load(reg, "rb", "b", 4 * GiB)
    reg.heartbeat("ra", _report("a", 4 * GiB, last_use=1.0))
    reg.heartbeat("rb", _report("b", 4 * GiB, last_use=2.0))
    # c needs 6 GiB: a (least recent) is evicted, to RAM (4 of 7 GiB)
    assert reg.reserve("rc", "c", DEV, 6 * GiB).evicting == ["a"]
    assert reg.heartbeat("ra", _report("a", 4 * GiB, last_use=1.0)).evict is Tier.RAM
    assert reg.stats().nodes[0].ram_used_bytes == 4 * GiB  # promised before the move is done
    _offload(reg, "ra", "a", 4 * GiB, epoch=2, last_use=1.0)
    assert reg.reserve("rc", "c", DEV, 6 * GiB).status == "granted"
    reg.register(_registration("rc", "c", 6 * GiB))
    # d needs the device again: b goes to RAM too, which pushes a (older) out of RAM to disk
    reg.heartbeat("rc", _report("c", 6 * GiB, last_use=3.0, inflight=1))  # c is busy: only b can go
    assert reg.reserve("rd", "d", DEV, 4 * GiB).evicting == ["b"]
    assert reg.heartbeat("rb", _report("b", 4 * GiB, last_use=2.0)).evict is Tier.RAM
    ans = reg.heartbeat("ra", _report("a", 0, loaded=False, epoch=2).model_copy(
        update={"tier": Tier.RAM, "host_bytes": 4 * GiB, "state": ModelState.OFFLOADED}))
    assert ans.evict is Tier.DISK
    (node,) = reg.stats().nodes
    assert node.ram_used_bytes == 4 * GiB and [(m.mode, m.dropping) for m in node.models] == [("a", True)]
    reg.unregister("ra", epoch=3)  # a dropped it
    _offload(reg, "rb", "b", 4 * GiB, epoch=2, last_use=2.0)
    (node,) = reg.stats().nodes
    assert [m.mode for m in node.models] == ["b"] and node.ram_used_bytes == 4 * GiB


def test_a_model_too_large_for_the_ram_budget_is_evicted_to_disk(clock: FakeClock) -> None:
    reg = _registry(clock, ram_budget_bytes=3 * GiB)
    _load(reg, "ra", "a", 4 * GiB)
    assert reg.reserve("rb", "b", DEV, 8 * GiB).evicting == ["a"]
    assert reg.heartbeat("ra", _report("a", 4 * GiB)).evict is Tier.DISK


def test_a_registry_restart_relearns_the_ram_tier_from_heartbeats(clock: FakeClock) -> None:
    reg = _registry(clock)
    report = _report("a", 0, loaded=False, epoch=2, last_use=5.0).model_copy(
        update={"tier": Tier.RAM, "host_bytes": 3 * GiB, "state": ModelState.OFFLOADED})
    assert reg.heartbeat("ra", report).evict is None
    (node,) = reg.stats().nodes
    assert [(m.mode, m.host_bytes, m.last_use) for m in node.models] == [("a", 3 * GiB, 5.0)]
    assert reg.stats().devices[0].models == []


def test_extra_working_memory_is_reserved_per_request_and_released(clock: FakeClock) -> None:
    reg = _registry(clock)
    _load(reg, "ra", "a", 4 * GiB)
    reg.heartbeat("ra", _report("a", 4 * GiB, inflight=2))  # two large requests run
    assert reg.reserve("ra", "a", DEV, 2 * GiB, key="ra/req-1").status == "granted"
    assert reg.reserve("ra", "a", DEV, 2 * GiB, key="ra/req-2").status == "granted"
    assert _device_stats(reg).reserved_bytes == 4 * GiB and _device_stats(reg).free_bytes == 2 * GiB
    # a's own model is never a victim for its own request, nor counted as freeing up later
    assert reg.reserve("ra", "a", DEV, 7 * GiB, key="ra/req-3").status == "no_fit"
    reg.release("ra/req-1")
    reg.release("ra/req-2")
    assert _device_stats(reg).reserved_bytes == 0 and [m.mode for m in _device_stats(reg).models] == ["a"]
