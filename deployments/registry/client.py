"""Typed calls to the `VramRegistry` deployment, each with a timeout: while the registry restarts (or after
it stopped) a caller must not hang. Mode workers and routers talk to the registry only through this."""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.protocol import (
    AddedMode,
    HeartbeatAnswer,
    HeartbeatReport,
    InflightCounts,
    Offloaded,
    OperatorState,
    Registration,
    RegistryStats,
    ReserveAnswer,
    RouterPollAnswer,
)


class RegistryClient:
    """Wraps the registry's DeploymentHandle (anything whose methods have an awaitable `.remote`)."""

    def __init__(self, handle: Any, timeout_s: float = 10.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return await asyncio.wait_for(getattr(self.handle, method).remote(*args), timeout_s or self.timeout_s)

    async def reserve(self, replica: str, mode: str, device: str, nbytes: int, total_bytes: int | None,
                      reported_used: int | None, key: str | None = None, wait_s: float = 0.0) -> ReserveAnswer:
        """`wait_s`: when the answer would be to ask again, the registry may hold the call that long."""
        return await self._call("reserve", replica, mode, device, nbytes, total_bytes, reported_used, key,
                                wait_s, timeout_s=self.timeout_s + wait_s)

    async def release(self, key: str) -> None:
        await self._call("release", key)

    async def renew(self, key: str) -> bool:
        renewed: bool = await self._call("renew", key)
        return renewed

    async def offloaded(self, moved: Offloaded) -> None:
        await self._call("offloaded", moved)

    async def register(self, registration: Registration) -> None:
        await self._call("register", registration)

    async def unregister(self, replica: str, forget: bool = False, epoch: int = 0,
                         timeout_s: float | None = None) -> None:
        await self._call("unregister", replica, forget, epoch, timeout_s=timeout_s)

    async def heartbeat(self, replica: str, report: HeartbeatReport, wait_s: float = 0.0) -> HeartbeatAnswer:
        """`wait_s`: the registry may hold the call that long, answering as soon as it has a command."""
        return await self._call("heartbeat", replica, report, wait_s, timeout_s=self.timeout_s + wait_s)

    async def router_poll(self, router: str, inflight: int, state: OperatorState,
                          waiting: dict[str, int] | None = None) -> RouterPollAnswer:
        return await self._call("router_poll", router, inflight, state, waiting, timeout_s=5.0)

    async def set_default_mode(self, mode: str) -> OperatorState:
        return await self._call("set_default_mode", mode)

    async def change_modes(self, add: list[AddedMode], drop: list[str],
                           removed: list[str]) -> tuple[OperatorState, list[str]]:
        state, accepted = await self._call("change_modes", add, drop, removed)
        return state, accepted

    async def stats(self) -> RegistryStats:
        return await self._call("stats")

    async def inflight(self) -> InflightCounts:
        return await self._call("inflight")
