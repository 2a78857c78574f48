"""On a real GPU: the device probe's readings add up with the driver's, the allocator cache is returned by
`return_cache`, and the registry's lines (models, context, cache, unaccounted) reconcile with `mem_get_info`.

Skipped without CUDA; runs in seconds (no checkpoints).
"""

from __future__ import annotations

import re

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
MiB = 1024**2


def test_probe_reads_the_physical_card_and_its_own_process() -> None:
    from deployments.worker.device_probe import CONTEXT_ESTIMATE_BYTES, DeviceProbe, gpu_uuid

    assert re.fullmatch(r"GPU-[0-9a-f-]{36}", gpu_uuid()), gpu_uuid()
    probe = DeviceProbe()
    block = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
    mem = probe.process_memory()
    assert mem is not None and mem.allocator_allocated_bytes >= 256 * MiB
    assert mem.allocator_reserved_bytes >= mem.allocator_allocated_bytes
    used = probe.used_bytes()
    assert used is not None and used >= mem.allocator_reserved_bytes  # the driver sees at least our allocator
    # the context estimate is of the right order: what the driver sees beyond our allocator, with no other
    # process on the card, is our context (printed for calibration)
    beyond = used - mem.allocator_reserved_bytes
    print(f"context: driver-seen {beyond / MiB:.0f} MiB, estimate {CONTEXT_ESTIMATE_BYTES / MiB:.0f} MiB")
    del block


def test_cache_is_returned_on_command() -> None:
    from deployments.worker.device_probe import DeviceProbe

    probe = DeviceProbe()
    block = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda")
    del block  # freed to the allocator's cache, not to the driver
    mem = probe.process_memory()
    assert mem is not None and mem.cache_bytes >= 512 * MiB
    before = probe.used_bytes()
    probe.return_cache()
    after_mem, after = probe.process_memory(), probe.used_bytes()
    assert after_mem is not None and after_mem.cache_bytes < 64 * MiB
    assert before is not None and after is not None and before - after >= 448 * MiB


@pytest.mark.anyio
async def test_registry_lines_reconcile_with_the_driver() -> None:
    from deployments.protocol import HeartbeatReport, ModelState, Tier
    from deployments.registry.vram_registry import VramRegistry
    from deployments.worker.device_probe import DeviceProbe, gpu_uuid

    probe = DeviceProbe()
    weights = torch.empty(1024 * MiB, dtype=torch.uint8, device="cuda")
    scratch = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda")
    del scratch  # a "large request" left its cache
    device = f"node:{gpu_uuid()}"
    reg = VramRegistry({"headroom_bytes": 0})
    await reg.heartbeat("r1", HeartbeatReport(
        mode="m", device=device, state=ModelState.READY, tier=Tier.VRAM, host_bytes=0, epoch=1, inflight=0,
        footprint_bytes=weights.numel(), measured_bytes=weights.numel(), estimate_bytes=weights.numel(),
        last_use=0.0, total_bytes=probe.total_bytes(), reported_used_bytes=probe.used_bytes(),
        process=probe.process_memory(), gpu_fraction=None))
    (dev,) = (await reg.stats()).devices
    assert dev.cache_bytes >= 512 * MiB and dev.used_bytes == weights.numel()
    assert dev.reported_used_bytes is not None
    # the ledger's lines cover the driver's count: what they miss is at most the context estimate's error
    print(f"ledger {dev.accounted_bytes / MiB:.0f} MiB vs driver {dev.reported_used_bytes / MiB:.0f} MiB "
          f"(context {dev.context_bytes / MiB:.0f}, cache {dev.cache_bytes / MiB:.0f}, "
          f"unaccounted {dev.unaccounted_bytes / MiB:.0f})")
    assert dev.accounted_bytes >= dev.reported_used_bytes - 64 * MiB
    assert dev.free_bytes == dev.budget_bytes - max(dev.accounted_bytes, dev.reported_used_bytes)
    del weights


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
