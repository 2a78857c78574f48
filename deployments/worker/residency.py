"""Residency: where a replica's model is and what it holds. Reserve at the registry -> load (from disk, or a
device copy from the RAM tier) -> measure what the load really took -> register; evictions (to the RAM tier
or to disk) that wait for the jobs using the model; the heartbeat that reports liveness, state and tier and
receives the registry's commands (evict; return the allocator's cache to the driver when a neighbour waits for
room) and the mode's backlog; the working memory a use reserves beyond the standing share.

Every beat reconciles with the driver: it carries the device's physical identity (its GPU UUID), the driver's
total and used (`mem_get_info`) and this process's own use (CUDA context, allocator reserve and use), so the
registry books each replica's context and cache as lines of their own and other processes as `unaccounted`.

Working memory: a loaded model is accounted with its standing share (the mode's default size at its
largest batch); a use that needs more reserves the difference (see `ReplicaReservations`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import torch

from deployments import metrics
from deployments.protocol import HeartbeatReport, HostComponent, Offloaded, Registration, Tier
from deployments.registry.client import RegistryClient
from deployments.worker.containment import ModelUse, insufficient_vram
from deployments.worker.device_probe import DeviceProbe
from deployments.worker.reservations import ReplicaReservations
from deployments.worker.shielded import finish_even_if_cancelled
from serve_app.config.app_args import RegistryConfig
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.vram_estimate import VramEstimate

logger = logging.getLogger(__name__)
Loaded = tuple[float, Tier]  # a load that happened: its seconds and the tier it came from


class Residency:
    """`registry` None: no accounting. `inflight`: the replica's requests in flight (reported)."""

    def __init__(self, runner: ModelRunner, mode: str, standing: VramEstimate, registry: RegistryClient | None,
                 config: RegistryConfig, probe: DeviceProbe, replica: str, inflight: Callable[[], int]) -> None:
        self.runner = runner
        self.mode = mode
        self.standing = standing  # estimated once: the checkpoint and the mode do not change
        self.registry = registry
        self.config = config
        self.probe = probe
        self.replica_id = replica
        self.device_id = probe.device_id()
        self.reservations = ReplicaReservations(registry, config, replica, mode, self.device_id, probe)
        self._inflight = inflight
        self.epoch = 0
        self.measured_bytes = 0
        self.host_bytes = 0  # what the model holds in the RAM tier
        self._load_lock = asyncio.Lock()
        self._using = 0  # uses past `ensure_loaded` that still need the model
        self._unloading = False
        self._stopping = False
        self._heartbeat: asyncio.Task[None] | None = None
        self.backlog = 0  # the mode's requests waiting in the routers, as the last heartbeat answer said

    # -- accounting ------------------------------------------------------------------------------------
    def report(self) -> HeartbeatReport:
        return HeartbeatReport(
            mode=self.mode, device=self.device_id, state=self.runner.state, tier=self.runner.tier,
            host_bytes=self.host_bytes if self.runner.tier is Tier.RAM else 0, components=self.host_components(),
            epoch=self.epoch,
            inflight=self._inflight(), footprint_bytes=self.accounted_bytes(),
            measured_bytes=self.measured_bytes, estimate_bytes=self.standing.total_bytes,
            last_use=self.runner.last_used, total_bytes=self.probe.total_bytes(),
            reported_used_bytes=self.probe.used_bytes(), process=self.probe.process_memory(),
            gpu_fraction=self.probe.gpu_fraction())

    def host_components(self) -> list[HostComponent]:
        """The component files the model maps in host memory (booked once per node by the registry)."""
        return [HostComponent(identity=c.identity, path=c.path, kind=c.kind, host_bytes=c.host_bytes)
                for c in self.runner.host_components()]

    def accounted_bytes(self) -> int:
        """What this model holds: the measured load, its LoRAs and its standing working memory."""
        return self.measured_bytes + self.runner.adapter_bytes() + self.standing.working_bytes

    # -- using the model ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def in_use(self) -> AsyncIterator[Loaded | None]:
        """The model loaded and kept on its device (no eviction or unload tears it down) for the block: yields
        the load it waited for, or None."""
        loaded = await self.ensure_loaded()
        self._using += 1  # right after the load, no await in between: an unload cannot slip in
        try:
            yield loaded
        finally:
            self._using -= 1

    def working(self, use: ModelUse) -> AbstractAsyncContextManager[None]:
        """Reserve, for `use`'s duration, the working memory it needs beyond the model's standing share and the
        bytes of the adapters it will load (asked now, when its turn has come)."""
        extra = max(0, use.needed.working_bytes - self.standing.working_bytes) + use.adapters()
        return self.reservations.working(extra, use.request_id, use.what)

    async def ensure_loaded(self) -> Loaded | None:
        """Load (reserve, load, measure, register) unless loaded: the load, or None for a no-op."""
        if self.runner.loaded and not self._unloading:
            return None
        return await finish_even_if_cancelled(self._load())  # a load half done is never left uncounted

    async def _load(self) -> Loaded | None:
        async with self._load_lock:
            if self.runner.loaded:
                return None
            started = time.perf_counter()
            await self.reservations.for_load(self.standing.total_bytes)
            before = self.probe.allocated_bytes()
            try:
                await asyncio.to_thread(self.runner.load)
            except BaseException as exc:
                await self.reservations.release_load()
                if isinstance(exc, torch.cuda.OutOfMemoryError):  # the runner left it cold: an answer, not a crash
                    raise insufficient_vram(self.probe, f"loading mode {self.mode!r}",
                                            self.standing.total_bytes) from None
                raise
            measured = self.probe.allocated_bytes() - before
            self.measured_bytes = measured if self.probe.cuda else self.runner.parameter_bytes()
            self.epoch += 1
            if self.registry is not None:
                await self.registry.register(Registration(
                    replica=self.replica_id, mode=self.mode, device=self.device_id,
                    footprint_bytes=self.accounted_bytes(), estimate_bytes=self.standing.total_bytes,
                    measured_bytes=self.measured_bytes, epoch=self.epoch, components=self.host_components()))
            loaded = time.perf_counter() - started, self.runner.loaded_from or Tier.DISK
            metrics.model_loaded(self.mode, loaded[1].value, loaded[0])
            return loaded

    async def evict(self, to: Tier, reason: str, only_from: Tier | None = None) -> bool:
        """Move the model off its device, after the uses of it finish: to the RAM tier (`to` RAM; only a model
        on the device moves) or to disk (dropped from either tier). A registry eviction (`only_from`: the tier
        the command was about) is skipped when busy, or when a load moved the model meanwhile (the registry
        withdraws it when the next heartbeat reports the model busy; the loader then asks again)."""
        if only_from is not None and (self._using or self._load_lock.locked()):
            return False  # busy, or a load is under way: never hold up the heartbeat behind it
        self._unloading = True
        moved = False
        try:
            async with self._load_lock:
                while self._using:
                    await asyncio.sleep(0.01)
                if only_from is not None and self.runner.tier is not only_from:
                    return False
                moved = await asyncio.to_thread(self.runner.offload if to is Tier.RAM else self.runner.unload)
                if moved:
                    self._moved(to)
                    if self.registry is not None and to is Tier.RAM:
                        await self.registry.offloaded(Offloaded(
                            replica=self.replica_id, mode=self.mode, device=self.device_id,
                            host_bytes=self.host_bytes, last_use=self.runner.last_used, epoch=self.epoch,
                            components=self.host_components()))
                if self.registry is not None and to is Tier.DISK:
                    await self.registry.unregister(self.replica_id, False, self.epoch)
        finally:
            self._unloading = False
        if moved:
            logger.info("mode %s moved from %s to %s (%s)", self.mode, self.device_id, to.value, reason)
            metrics.model_moved(self.mode, to.value, reason)
        return moved

    def _moved(self, to: Tier) -> None:
        self.epoch += 1
        self.measured_bytes = 0
        self.host_bytes = self.runner.own_host_bytes() if to is Tier.RAM else 0  # its mapped files: `components`

    # -- the heartbeat -------------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def heartbeat_once(self, wait_s: float = 0.0) -> None:
        """Report to the registry (which may hold the call up to `wait_s`) and obey its answer (an eviction)."""
        if self.registry is None:
            return
        answer = await self.registry.heartbeat(self.replica_id, self.report(), wait_s)
        self.backlog = answer.backlog
        if answer.return_cache:  # a neighbour waits for room: hand the cache back and say so at once
            await asyncio.to_thread(self.probe.return_cache)
            logger.info("%s returned its allocator cache for a neighbour", self.replica_id)
            answer = await self.registry.heartbeat(self.replica_id, self.report(), 0.0)
        if answer.evict is not None:
            await self.evict(answer.evict, "registry", only_from=answer.evict_from)

    async def _heartbeat_loop(self) -> None:
        """One beat per interval; the registry holds each beat open for the interval, so a command decided
        meanwhile arrives at once."""
        interval = self.config.heartbeat_interval_s
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.heartbeat_once(wait_s=interval)
            except Exception as exc:  # the registry restarts: keep beating, it re-learns us
                logger.warning("heartbeat of %s failed: %s", self.replica_id, exc)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def stop(self) -> None:
        """Stop beating, free the device and the RAM tier, unregister (forgotten by the registry)."""
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await asyncio.to_thread(self.runner.unload)
        if self.registry is not None:
            try:
                await self.registry.unregister(self.replica_id, True, timeout_s=2.0)
            except Exception as exc:  # the registry may already be gone (application deleted)
                logger.warning("could not unregister %s: %s", self.replica_id, exc)
