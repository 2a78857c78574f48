"""The ledger against the driver (issue 22): each replica's CUDA context and allocator cache are lines of
their own, other processes are `unaccounted`, decisions take the larger of ledger and driver, and a replica
returns its cache when a neighbour waits for room. A fake CUDA probe stands in for the driver; the real
readings are checked in tests/gpu."""

from __future__ import annotations

import pytest

from deployments.protocol import HeartbeatReport, ModelState, ProcessMemory, ReserveStatus, Tier
from deployments.registry.client import RegistryClient
from deployments.registry.device_lines import ReplicaProcess, device_lines
from deployments.registry.placement import mode_placement
from deployments.registry.vram_registry import VramRegistry
from deployments.worker.residency import Residency
from tests.unit.registry_fakes import FakeClock, GiB, anyio_backend, clock
from tests.unit.worker_fakes import FakeProbe, InProcessHandle

__all__ = ["anyio_backend", "clock"]
pytestmark = pytest.mark.anyio
MiB = 1024**2
CARD = "node-a:GPU-5f1c2d3e"  # a physical card, by its UUID
TOTAL = 10 * GiB


class FakeCudaProbe(FakeProbe):
    """One replica's process on a shared card: its context, its allocator, and the driver's view of the
    whole card (this process + `others`, what other processes hold)."""

    cuda = True

    def __init__(self, context: int, allocated: int, reserved: int, others: int) -> None:
        self.context, self.allocated, self.reserved, self.others = context, allocated, reserved, others
        self.returned = 0

    def device_id(self) -> str:
        return CARD

    def total_bytes(self) -> int | None:
        return TOTAL

    def used_bytes(self) -> int | None:
        return self.context + self.reserved + self.others

    def allocated_bytes(self) -> int:
        return self.allocated

    def process_memory(self) -> ProcessMemory | None:
        return ProcessMemory(context_bytes=self.context, allocator_reserved_bytes=self.reserved,
                             allocator_allocated_bytes=self.allocated)

    def gpu_fraction(self) -> float | None:
        return 0.5

    def return_cache(self) -> None:
        self.returned += 1
        self.reserved = self.allocated


class _Runner:
    """What Residency's report reads of a runner: a loaded model."""

    state, tier, last_used = ModelState.READY, Tier.VRAM, 0.0

    def adapter_bytes(self) -> int:
        return 0

    def host_components(self) -> list:
        return []  # no mapped component files


class _Standing:
    total_bytes = working_bytes = 0


def beat(probe: FakeCudaProbe, mode: str, footprint: int) -> HeartbeatReport:
    return HeartbeatReport(mode=mode, device=CARD, state=ModelState.READY, tier=Tier.VRAM, host_bytes=0, epoch=1,
                           inflight=0, footprint_bytes=footprint, measured_bytes=footprint, estimate_bytes=footprint,
                           last_use=0.0, total_bytes=probe.total_bytes(), reported_used_bytes=probe.used_bytes(),
                           process=probe.process_memory(), gpu_fraction=0.5)


def test_lines_split_the_driver_view() -> None:
    ctx = ProcessMemory(context_bytes=500 * MiB, allocator_reserved_bytes=5 * GiB, allocator_allocated_bytes=2 * GiB)
    lines = device_lines([2 * GiB], [ReplicaProcess("r1", "sdxl", ctx)], driver_used=500 * MiB + 5 * GiB + GiB)
    assert (lines.models, lines.contexts, lines.caches, lines.unaccounted) == (2 * GiB, 500 * MiB, 3 * GiB, GiB)
    assert lines.accounted == 6 * GiB + 500 * MiB and lines.fixed == GiB + 500 * MiB
    assert lines.taken(reserved=GiB) == lines.accounted + GiB  # the ledger is the larger here
    # a process that allocated beyond what it booked: the driver is the larger
    grown = device_lines([GiB], [], driver_used=8 * GiB)
    assert grown.unaccounted == 8 * GiB and grown.taken(0) == 9 * GiB
    assert device_lines([GiB], [], driver_used=None).taken(GiB) == 2 * GiB  # no CUDA: the old ledger


async def test_context_cache_and_foreign_process_refuse_what_the_old_ledger_granted(clock: FakeClock) -> None:
    """The done-when of issue 22: 10 GiB card, headroom 0. sdxl's replica holds a 3 GiB model, a 500 MiB
    context and 3 GiB of allocator cache after a large request; another process holds 1 GiB. The old ledger
    (footprints only) says 7 GiB free: sd15's 4 GiB would be granted and then OOM. Now it is refused until the
    cache comes back, then granted."""
    reg = VramRegistry({"headroom_bytes": 0}, clock=clock)
    probe = FakeCudaProbe(context=500 * MiB, allocated=3 * GiB, reserved=6 * GiB, others=GiB)
    residency = Residency(_Runner(), "sdxl", _Standing(), RegistryClient(InProcessHandle(reg)),  # type: ignore[arg-type]
                          reg.config, probe, "sdxl-1", lambda: 0)  # type: ignore[arg-type]
    residency.measured_bytes = 3 * GiB
    await residency.heartbeat_once()
    (dev,) = (await reg.stats()).devices
    assert dev.device == CARD and dev.simulated is False
    assert (dev.used_bytes, dev.context_bytes, dev.cache_bytes, dev.unaccounted_bytes) == (3 * GiB, 500 * MiB,
                                                                                           3 * GiB, GiB)
    assert dev.free_bytes == TOTAL - (7 * GiB + 500 * MiB) and dev.reported_used_bytes == 7 * GiB + 500 * MiB
    assert [(line.mode, line.context_bytes, line.cache_bytes) for line in dev.lines] == [("sdxl", 500 * MiB, 3 * GiB)]
    assert dev.total_bytes - dev.used_bytes >= 4 * GiB  # what the old ledger would have granted from
    assert not await reg.can_fit(CARD, 4 * GiB)

    ans = await reg.reserve("sd15-1", "sd15", CARD, 4 * GiB, TOTAL, probe.used_bytes())
    assert ans.status is ReserveStatus.EVICTING and ans.returning_cache == ["sdxl"] and ans.evicting == []
    assert ans.free_bytes == 3 * GiB - 500 * MiB
    # sdxl's next heartbeat carries the command: it empties its cache and reports at once
    await residency.heartbeat_once()
    assert probe.returned == 1
    (dev,) = (await reg.stats()).devices
    assert dev.cache_bytes == 0 and dev.free_bytes == 6 * GiB - 500 * MiB
    ans = await reg.reserve("sd15-1", "sd15", CARD, 4 * GiB, TOTAL, probe.used_bytes())
    assert ans.status is ReserveStatus.GRANTED
    await residency.heartbeat_once()  # a cache return is told once
    assert probe.returned == 1


async def test_no_fit_counts_what_nothing_frees(clock: FakeClock) -> None:
    """Contexts and other processes are not freed by evictions: a request larger than the rest is no_fit."""
    reg = VramRegistry({"headroom_bytes": 0}, clock=clock)
    probe = FakeCudaProbe(context=GiB, allocated=GiB, reserved=GiB, others=3 * GiB)
    await reg.heartbeat("sdxl-1", beat(probe, "sdxl", GiB))
    # 10 GiB - 1 (model) - 1 (context) - 3 (others) = 5 free; evicting the model would free 6, never 6.5
    ans = await reg.reserve("sd15-1", "sd15", CARD, 6 * GiB + 512 * MiB, TOTAL, probe.used_bytes())
    assert ans.status is ReserveStatus.NO_FIT and ans.free_bytes == 5 * GiB
    ans = await reg.reserve("sd15-1", "sd15", CARD, 6 * GiB, TOTAL, probe.used_bytes())
    assert ans.status is ReserveStatus.EVICTING and ans.evicting == ["sdxl"]


async def test_driver_truth_wins_when_a_process_took_more_than_it_booked(clock: FakeClock) -> None:
    reg = VramRegistry({"headroom_bytes": 0}, clock=clock)
    probe = FakeCudaProbe(context=0, allocated=0, reserved=0, others=0)
    await reg.heartbeat("sdxl-1", beat(probe, "sdxl", GiB))
    (dev,) = (await reg.stats()).devices
    assert dev.free_bytes == 9 * GiB
    probe.others = 8 * GiB  # e.g. a notebook on the same card
    await reg.heartbeat("sdxl-1", beat(probe, "sdxl", GiB))
    assert not await reg.can_fit(CARD, 2 * GiB) and await reg.can_fit(CARD, GiB)


async def test_replicas_on_one_card_share_one_ledger(clock: FakeClock) -> None:
    """Two replicas report the same physical card (different Ray GPU indexes or none): one device entry."""
    reg = VramRegistry({"headroom_bytes": 0}, clock=clock, placement={"sd15": 0.5, "sdxl": 1.0})
    a = FakeCudaProbe(context=500 * MiB, allocated=2 * GiB, reserved=2 * GiB, others=0)
    await reg.heartbeat("sd15-1", beat(a, "sd15", 2 * GiB))
    await reg.heartbeat("sdxl-1", beat(a, "sdxl", 3 * GiB))
    stats = await reg.stats()
    assert [d.device for d in stats.devices] == [CARD]
    assert stats.devices[0].used_bytes == 5 * GiB and len(stats.devices[0].lines) == 2
    # the replicas' reported fractions win over the built ones
    assert {p.mode: (p.num_gpus, p.shares_card_with) for p in stats.placement} == {
        "sd15": (0.5, ["sd15", "sdxl"]), "sdxl": (0.5, ["sd15", "sdxl"])}


def test_which_modes_may_share_a_card() -> None:
    placed = {p.mode: p.shares_card_with for p in mode_placement({"a": 0.5, "b": 0.3, "c": 1.0, "d": 0.0,
                                                                  "e": 0.7})}
    assert placed == {"a": ["a", "b"], "b": ["a", "b", "e"], "c": [], "d": [], "e": ["b"]}


