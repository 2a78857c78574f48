"""Shared component files in the RAM tier: a file that several modes map is booked once per node, with the
modes that use it; it stays booked while one of them is still in the RAM tier and is released with the last;
an eviction whose files are already held needs only the model's own bytes; a CPU device's models list it, and
the CPU device's ledger counts it once however many of its models map it."""

from __future__ import annotations

import pytest

from deployments.protocol import HostComponent, ModelState, Offloaded, Registration, Tier
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
    report,
)

__all__ = ["anyio_backend", "clock"]  # the fixtures, used by name
pytestmark = pytest.mark.anyio

T5 = HostComponent(identity="2049:77:9500:1:", path="/models/t5xxl_fp16.safetensors", kind="t5xxl",
                   host_bytes=2 * GiB)
CLIP = HostComponent(identity="2049:78:246:1:", path="/models/clip_l.safetensors", kind="clip_l", host_bytes=GiB // 4)


async def _beat(reg: VramRegistry, replica: str, mode: str, nbytes: int, components: list[HostComponent],
                last_use: float = 0.0):
    """A heartbeat of a loaded model that maps `components`."""
    return await reg.heartbeat(replica, report(mode, nbytes, last_use=last_use).model_copy(
        update={"components": components}))


async def _offload(reg: VramRegistry, replica: str, mode: str, own: int, components: list[HostComponent],
                   last_use: float = 0.0) -> None:
    await reg.offloaded(Offloaded(replica=replica, mode=mode, device=DEV, host_bytes=own, last_use=last_use,
                                  epoch=2, components=components))


async def _node(reg: VramRegistry):
    (node,) = (await reg.stats()).nodes
    return node


async def test_a_shared_t5_is_booked_once_and_released_with_its_last_user(clock: FakeClock) -> None:
    reg = make_registry(clock, ram_budget_bytes=20 * GiB)
    await _offload(reg, "ra", "flux", GiB, [CLIP, T5])
    await _offload(reg, "rb", "flux-schnell", GiB, [CLIP, T5])
    node = await _node(reg)
    assert node.ram_used_bytes == 2 * GiB + T5.host_bytes + CLIP.host_bytes  # not twice the encoders
    assert [(c.kind, c.host_bytes, c.modes, c.ram_tier_modes) for c in node.components] == [
        ("t5xxl", 2 * GiB, ["flux", "flux-schnell"], ["flux", "flux-schnell"]),
        ("clip_l", GiB // 4, ["flux", "flux-schnell"], ["flux", "flux-schnell"])]
    assert [m.components for m in node.models] == [[CLIP.identity, T5.identity]] * 2
    await reg.unregister("ra", epoch=3)  # flux unloads: the encoders stay booked for flux-schnell
    node = await _node(reg)
    assert node.ram_used_bytes == GiB + T5.host_bytes + CLIP.host_bytes
    assert [(c.kind, c.modes) for c in node.components] == [("t5xxl", ["flux-schnell"]), ("clip_l", ["flux-schnell"])]
    await reg.unregister("rb", forget=True, epoch=3)  # both gone: released (no node holds anything)
    assert (await reg.stats()).nodes == [] and reg.ledger.ram.holdings == {}


async def test_an_eviction_whose_files_are_held_needs_only_its_own_bytes(clock: FakeClock) -> None:
    # 5 GiB of RAM: flux (1 own + 2 T5) is there; flux-schnell (1 own + the same T5) fits beside it only
    # because its T5 is already held
    reg = make_registry(clock, budget_gib=10, ram_budget_bytes=5 * GiB)
    await _offload(reg, "ra", "flux", GiB, [T5], last_use=1.0)
    await load(reg, "rb", "flux-schnell", 3 * GiB)
    await _beat(reg, "rb", "flux-schnell", 3 * GiB, [T5], last_use=2.0)
    assert (await reg.reserve("rc", "sd3", DEV, 9 * GiB)).evicting == ["flux-schnell"]
    answer = await _beat(reg, "rb", "flux-schnell", 3 * GiB, [T5], last_use=2.0)
    assert answer.evict is Tier.RAM and not reg.ledger.ram.dropping("ra")  # nobody pushed out
    assert (await _node(reg)).ram_used_bytes == 2 * GiB + T5.host_bytes  # promised: its own GiB only
    await _offload(reg, "rb", "flux-schnell", GiB, [T5], last_use=2.0)
    node = await _node(reg)
    assert node.ram_used_bytes == 4 * GiB and [c.modes for c in node.components] == [["flux", "flux-schnell"]]


async def test_pushing_out_a_sharer_frees_only_its_own_bytes(clock: FakeClock) -> None:
    # 6 GiB of RAM: a (2 own) and b (1 own) share the T5 (2): 5 GiB used. c (3 own, no shared file) needs 3:
    # pushing out b (the least recent) frees only its own 1 GiB (the T5 stays for a), not enough
    reg = make_registry(clock, budget_gib=10, ram_budget_bytes=6 * GiB)
    await _offload(reg, "rb", "b", GiB, [T5], last_use=1.0)
    await _offload(reg, "ra", "a", 2 * GiB, [T5], last_use=2.0)
    await load(reg, "rc", "c", 3 * GiB)
    assert (await reg.reserve("rd", "d", DEV, 9 * GiB)).evicting == ["c"]
    assert (await reg.heartbeat("rc", report("c", 3 * GiB))).evict is Tier.RAM
    # the least recent (b) is not enough alone, so a goes too; the T5 is then free as well
    assert reg.ledger.ram.dropping("rb") and reg.ledger.ram.dropping("ra")


async def test_models_on_a_cpu_device_list_the_files_they_share(clock: FakeClock) -> None:
    reg = make_registry(clock)
    cpu = "node-a:cpu"
    for replica, mode in (("ra", "flux"), ("rb", "flux-schnell")):
        await reg.heartbeat(replica, report(mode, GiB, device=cpu).model_copy(update={"components": [T5]}))
    node = next(n for n in (await reg.stats()).nodes if n.node == "node-a")
    assert [(c.path, c.modes, c.replicas, c.ram_tier_modes) for c in node.components] == [
        (T5.path, ["flux", "flux-schnell"], ["ra", "rb"], [])]
    assert node.ram_used_bytes == 0  # on the device: the device's ledger holds them, not the RAM tier
    gone = report("flux", 0, loaded=False, epoch=2, device=cpu).model_copy(update={"state": ModelState.COLD})
    await reg.heartbeat("ra", gone)
    node = next(n for n in (await reg.stats()).nodes if n.node == "node-a")
    assert [c.modes for c in node.components] == [["flux-schnell"]]


async def test_two_cpu_modes_sharing_a_mapped_t5_book_it_once_on_the_cpu_device(clock: FakeClock) -> None:
    """On a CPU device a model's weights are its node's mapping of each component file: two modes mapping the
    same T5 hold one copy, so the device's ledger counts it once (from the registration on, before a beat)."""
    reg = make_registry(clock, budget_gib=10)
    cpu = "node-a:cpu"
    for replica, mode, own in (("ra", "flux", GiB), ("rb", "flux-schnell", 2 * GiB)):
        assert (await reg.reserve(replica, mode, cpu, own + T5.host_bytes)).status == "granted"
        await reg.register(Registration(replica=replica, mode=mode, device=cpu, footprint_bytes=own + T5.host_bytes,
                                        estimate_bytes=own + T5.host_bytes, measured_bytes=own + T5.host_bytes,
                                        epoch=1, components=[T5]))
    device = await device_stats(reg, cpu)
    assert device.used_bytes == GiB + 2 * GiB + T5.host_bytes  # not 2 x the T5
    assert [m.footprint_bytes for m in device.models] == [3 * GiB, 4 * GiB]  # each model still shows its own
    assert device.free_bytes == 10 * GiB - device.used_bytes
    # heartbeats keep it so; a third mode mapping another file adds that file
    await reg.heartbeat("ra", report("flux", 3 * GiB, device=cpu).model_copy(update={"components": [T5]}))
    await reg.heartbeat("rc", report("sd3", GiB + CLIP.host_bytes, device=cpu).model_copy(
        update={"components": [CLIP]}))
    assert (await device_stats(reg, cpu)).used_bytes == 4 * GiB + T5.host_bytes + CLIP.host_bytes
    # flux unloads: the T5 stays counted for flux-schnell, only flux's own GiB is freed
    await reg.unregister("ra", epoch=2)
    assert (await device_stats(reg, cpu)).used_bytes == 3 * GiB + T5.host_bytes + CLIP.host_bytes


async def test_evicting_one_cpu_sharer_frees_only_its_own_bytes(clock: FakeClock) -> None:
    # 10 GiB CPU device: a (2 own) and b (2 own) share the T5 (2): 6 GiB used, 4 free. A load of 7 needs 3
    # more: evicting b alone frees 2 (the T5 stays for a), so a goes too (then the T5 is freed with it)
    reg = make_registry(clock, budget_gib=10)
    cpu = "node-a:cpu"
    for replica, mode, last_use in (("rb", "b", 1.0), ("ra", "a", 2.0)):
        await reg.heartbeat(replica, report(mode, 4 * GiB, device=cpu, last_use=last_use).model_copy(
            update={"components": [T5]}))
    assert (await device_stats(reg, cpu)).used_bytes == 6 * GiB
    answer = await reg.reserve("rc", "c", cpu, 7 * GiB)
    assert answer.status == "evicting" and answer.evicting == ["b", "a"]
    assert (await reg.reserve("rd", "d", cpu, 11 * GiB)).status == "no_fit"
