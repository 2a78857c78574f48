"""Builders for the registry's unit tests (`test_vram_registry.py`, `test_ram_tier.py`): a fake clock (the
registry takes its liveness clock by injection), the asyncio backend for the async tests (the registry's
calls are coroutines) and the worker side of the protocol as plain calls."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.protocol import DeviceStats, HeartbeatReport, ModelState, Registration, Tier
from deployments.registry.vram_registry import VramRegistry

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


@pytest.fixture()
def anyio_backend() -> str:
    """The registry's calls are coroutines: the tests await them on asyncio (anyio's pytest plugin)."""
    return "asyncio"


def make_registry(clock: FakeClock, budget_gib: int = 10, **cfg: Any) -> VramRegistry:
    return VramRegistry({"simulated_vram_bytes": budget_gib * GiB, "headroom_bytes": 0, **cfg}, clock=clock)


def report(mode: str, footprint: int, *, loaded: bool = True, epoch: int = 1, inflight: int = 0,
            last_use: float | None = None, device: str = DEV) -> HeartbeatReport:
    return HeartbeatReport(mode=mode, device=device, state=ModelState.READY if loaded else ModelState.COLD,
                           tier=Tier.VRAM if loaded else Tier.DISK, host_bytes=0, epoch=epoch, inflight=inflight,
                           footprint_bytes=footprint,
                           measured_bytes=footprint, estimate_bytes=footprint, last_use=last_use or 0.0,
                           total_bytes=None, reported_used_bytes=None)


def registration(replica: str, mode: str, nbytes: int, epoch: int = 1) -> Registration:
    return Registration(replica=replica, mode=mode, device=DEV, footprint_bytes=nbytes, estimate_bytes=nbytes,
                        measured_bytes=nbytes, epoch=epoch)


async def load(reg: VramRegistry, replica: str, mode: str, nbytes: int, epoch: int = 1) -> None:
    """The worker protocol for a load that fits: reserve (granted), load, register the measured footprint."""
    ans = await reg.reserve(replica, mode, DEV, nbytes)
    assert ans.status == "granted", ans
    await reg.register(registration(replica, mode, nbytes, epoch))


async def device_stats(reg: VramRegistry, device: str = DEV) -> DeviceStats:
    (dev,) = [d for d in (await reg.stats()).devices if d.device == device]
    return dev


async def assert_within_budget(reg: VramRegistry) -> None:
    for dev in (await reg.stats()).devices:
        assert dev.used_bytes + dev.reserved_bytes <= dev.budget_bytes, dev
        assert dev.used_bytes <= dev.budget_bytes and dev.free_bytes >= 0, dev


# -- reservations ----------------------------------------------------------------------------------------
