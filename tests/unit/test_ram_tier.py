"""The registry's RAM tier and per-request working memory: where evictions go, who is pushed out of RAM,
what a registry restart relearns, and extra reservations keyed per request."""

from __future__ import annotations

import asyncio

import pytest

from deployments.protocol import ModelState, Offloaded, Tier
from deployments.registry.vram_registry import VramRegistry
from tests.unit.registry_fakes import (
    DEV,
    FakeClock,
    GiB,
    anyio_backend,
    clock,
    device_stats,
    load,
    make_registry,
    registration,
    report,
)

__all__ = ["anyio_backend", "clock"]  # the fixtures, used by name
pytestmark = pytest.mark.anyio


async def _offload(reg: VramRegistry, replica: str, mode: str, nbytes: int, epoch: int, last_use: float) -> None:
    """What a worker does when told `evict: ram`: the model leaves the device for host memory."""
    await reg.offloaded(Offloaded(replica=replica, mode=mode, device=DEV, host_bytes=nbytes, last_use=last_use,
                            epoch=epoch))


async def test_evicted_models_go_to_the_ram_tier_and_the_least_recent_is_pushed_out(clock: FakeClock) -> None:
    reg = make_registry(clock, budget_gib=10, ram_budget_bytes=7 * GiB)
    await load(reg, "ra", "a", 4 * GiB)
    await load(reg, "rb", "b", 4 * GiB)
    await reg.heartbeat("ra", report("a", 4 * GiB, last_use=1.0))
    await reg.heartbeat("rb", report("b", 4 * GiB, last_use=2.0))
    # c needs 6 GiB: a (least recent) is evicted, to RAM (4 of 7 GiB)
    assert (await reg.reserve("rc", "c", DEV, 6 * GiB)).evicting == ["a"]
    assert (await reg.heartbeat("ra", report("a", 4 * GiB, last_use=1.0))).evict is Tier.RAM
    assert (await reg.stats()).nodes[0].ram_used_bytes == 4 * GiB  # promised before the move is done
    await _offload(reg, "ra", "a", 4 * GiB, epoch=2, last_use=1.0)
    assert (await reg.reserve("rc", "c", DEV, 6 * GiB)).status == "granted"
    await reg.register(registration("rc", "c", 6 * GiB))
    # d needs the device again: b goes to RAM too, which pushes a (older) out of RAM to disk
    await reg.heartbeat("rc", report("c", 6 * GiB, last_use=3.0, inflight=1))  # c is busy: only b can go
    assert (await reg.reserve("rd", "d", DEV, 4 * GiB)).evicting == ["b"]
    assert (await reg.heartbeat("rb", report("b", 4 * GiB, last_use=2.0))).evict is Tier.RAM
    ans = await reg.heartbeat("ra", report("a", 0, loaded=False, epoch=2).model_copy(
        update={"tier": Tier.RAM, "host_bytes": 4 * GiB, "state": ModelState.OFFLOADED}))
    assert ans.evict is Tier.DISK
    (node,) = (await reg.stats()).nodes
    assert node.ram_used_bytes == 4 * GiB and [(m.mode, m.dropping) for m in node.models] == [("a", True)]
    await reg.unregister("ra", epoch=3)  # a dropped it
    await _offload(reg, "rb", "b", 4 * GiB, epoch=2, last_use=2.0)
    (node,) = (await reg.stats()).nodes
    assert [m.mode for m in node.models] == ["b"] and node.ram_used_bytes == 4 * GiB


async def test_a_model_too_large_for_the_ram_budget_is_evicted_to_disk(clock: FakeClock) -> None:
    reg = make_registry(clock, ram_budget_bytes=3 * GiB)
    await load(reg, "ra", "a", 4 * GiB)
    assert (await reg.reserve("rb", "b", DEV, 8 * GiB)).evicting == ["a"]
    assert (await reg.heartbeat("ra", report("a", 4 * GiB))).evict is Tier.DISK


async def test_a_registry_restart_relearns_the_ram_tier_from_heartbeats(clock: FakeClock) -> None:
    reg = make_registry(clock)
    in_ram = report("a", 0, loaded=False, epoch=2, last_use=5.0).model_copy(
        update={"tier": Tier.RAM, "host_bytes": 3 * GiB, "state": ModelState.OFFLOADED})
    assert (await reg.heartbeat("ra", in_ram)).evict is None
    (node,) = (await reg.stats()).nodes
    assert [(m.mode, m.host_bytes, m.last_use) for m in node.models] == [("a", 3 * GiB, 5.0)]
    assert (await reg.stats()).devices[0].models == []


async def test_extra_working_memory_is_reserved_per_request_and_released(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "ra", "a", 4 * GiB)
    await reg.heartbeat("ra", report("a", 4 * GiB, inflight=2))  # two large requests run
    assert (await reg.reserve("ra", "a", DEV, 2 * GiB, key="ra/req-1")).status == "granted"
    assert (await reg.reserve("ra", "a", DEV, 2 * GiB, key="ra/req-2")).status == "granted"
    assert (await device_stats(reg)).reserved_bytes == 4 * GiB and (await device_stats(reg)).free_bytes == 2 * GiB
    # a's own model is never a victim for its own request, nor counted as freeing up later
    assert (await reg.reserve("ra", "a", DEV, 7 * GiB, key="ra/req-3")).status == "no_fit"
    await reg.release("ra/req-1")
    await reg.release("ra/req-2")
    assert (await device_stats(reg)).reserved_bytes == 0 and [m.mode for m in (await device_stats(reg)).models] == ["a"]


async def test_a_held_reserve_is_granted_as_soon_as_the_victim_leaves(clock: FakeClock) -> None:
    reg = make_registry(clock)
    await load(reg, "ra", "a", 8 * GiB)

    async def scenario() -> None:
        ask = asyncio.get_running_loop().create_task(reg.reserve("rb", "b", DEV, 6 * GiB, wait_s=30))
        await asyncio.sleep(0.05)
        assert not ask.done() and reg.ledger.models["ra"].evict_to is Tier.RAM  # held while a leaves
        await _offload(reg, "ra", "a", 8 * GiB, epoch=2, last_use=0.0)
        assert (await asyncio.wait_for(ask, 2)).status == "granted"  # at once, not after 30 s

    await scenario()
