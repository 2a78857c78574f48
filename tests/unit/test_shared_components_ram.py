"""Shared component files in the RAM tier: a file that several modes map is booked once per node, with the
modes that use it; it stays booked while one of them is still in the RAM tier and is released with the last;
an eviction whose files are already held needs only the model's own bytes; a CPU device's models list it."""

from __future__ import annotations

import pytest

from deployments.protocol import HostComponent, ModelState, Offloaded, Tier
from deployments.registry.vram_registry import VramRegistry
from tests.unit.registry_fakes import DEV, FakeClock, GiB, anyio_backend, clock, load, make_registry, report

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
