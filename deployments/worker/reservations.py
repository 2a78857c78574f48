"""A mode replica's reservations at the registry: room for its load, and the extra working memory of each
request that needs more than the model's standing share (released when the request is done).

A reservation is asked for until granted (the registry holds each ask until room may have been freed):
evictions and busy neighbours may take a while. A load waits up to `reserve_timeout_s`, a request's extra
up to `working_timeout_s` (a request should not hold its caller for minutes behind another mode's long
job); then, or at once when even evicting everything else on the device would not make room, it answers
507 with the numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from deployments.protocol import ReserveStatus
from deployments.registry.client import RegistryClient
from deployments.worker.device_probe import DeviceProbe
from serve_app.config.app_args import RegistryConfig
from serve_app.core.errors import InsufficientVRAMError

logger = logging.getLogger(__name__)


class ReplicaReservations:
    """`registry` None: no accounting (every reservation is granted at once)."""

    def __init__(self, registry: RegistryClient | None, config: RegistryConfig, replica: str, mode: str,
                 device: str, probe: DeviceProbe) -> None:
        self.registry = registry
        self.config = config
        self.replica, self.mode, self.device = replica, mode, device
        self.probe = probe

    async def for_load(self, nbytes: int) -> None:
        await self._reserve(nbytes, None, f"mode {self.mode!r}", self.config.reserve_timeout_s)

    async def release_load(self) -> None:
        if self.registry is not None:
            await self.registry.release(self.replica)

    @asynccontextmanager
    async def working(self, extra_bytes: int, request_id: str, what: str) -> AsyncIterator[None]:
        """Hold `extra_bytes` of working memory for one request (nothing when it needs no extra)."""
        if extra_bytes <= 0 or self.registry is None:
            yield
            return
        key = f"{self.replica}/{request_id}/{uuid.uuid4().hex[:6]}"
        await self._reserve(extra_bytes, key, f"{what} on mode {self.mode!r} (extra working memory or adapter files "
                            "beyond the model's share; try a smaller width/height/num_images or fewer adapters)",
                            self.config.working_timeout_s)
        renewing = asyncio.get_running_loop().create_task(self._renew(key))
        try:
            yield
        finally:
            renewing.cancel()
            try:
                await asyncio.shield(self.registry.release(key))
            except Exception as exc:  # the registry restarts: the reservation expires there on its own
                logger.warning("could not release %s: %s", key, exc)

    async def _renew(self, key: str) -> None:
        """Renew a request's reservation while the request runs (it expires on its own once renewals stop)."""
        assert self.registry is not None
        while True:
            await asyncio.sleep(self.config.reservation_ttl_s / 3)
            try:
                await self.registry.renew(key)
            except Exception as exc:  # the registry restarts: the next renewal tries again
                logger.warning("could not renew %s: %s", key, exc)

    async def _reserve(self, nbytes: int, key: str | None, what: str, timeout_s: float) -> None:
        if self.registry is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = max(0.0, min(1.0, deadline - time.monotonic()))
            ans = await self.registry.reserve(self.replica, self.mode, self.device, nbytes, self.probe.total_bytes(),
                                              self.probe.used_bytes(), key, wait_s)
            if ans.status is ReserveStatus.GRANTED:
                return
            if ans.status is ReserveStatus.NO_FIT or time.monotonic() > deadline:
                busy = f" (still busy: {', '.join(ans.busy_modes)})" if ans.busy_modes else ""
                raise InsufficientVRAMError(
                    f"{what} does not fit on its device ({self.device.rsplit(':', 1)[-1]}): needs {ans.needed_bytes} "
                    f"bytes, {ans.free_bytes} free of a {ans.budget_bytes}-byte budget{busy}",
                    needed_bytes=ans.needed_bytes, free_bytes=ans.free_bytes, budget_bytes=ans.budget_bytes)
