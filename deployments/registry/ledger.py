"""The VRAM ledger: per device the budget, the accounted use of registered models and the open reservations
(loads, and the extra working memory of requests larger than a model's standing share); per model its mode,
replica, footprint, estimate, state and last use; per node the RAM tier (evicted models held in host memory
under `ram_budget_bytes`, least recently used first out to disk when a newer eviction needs the room). It
decides whether a reservation fits and which idle models are evicted for it (least recently used first).

Memory is accounted and reconciled with the driver on every heartbeat (see `device_lines`): `used` is the
sum of the footprints the workers measured (`torch.cuda.memory_allocated` deltas on CUDA, parameter bytes on
the CPU, where the mapped component files a model reports are counted once per device, not once per model);
each replica's CUDA context and allocator cache are lines of their own, and what the driver
(`mem_get_info`) sees beyond the replicas' processes is `unaccounted`. Decisions take the larger of the ledger
and the driver. A device is a physical GPU (its UUID), so replicas that share a card share its ledger. When
room is short, replicas holding allocator cache are told to return it (`empty_cache`) before any idle model is
evicted. Without CUDA each device gets a simulated size and no driver view, so CPU tests run the same logic.

A plain object with no awaits and no locks: `VramRegistry` calls it from its actor's one event loop, so every
call runs whole before the next starts (two reservations can never both be granted room only one fits in).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from deployments.protocol import (
    DeviceStats,
    EntryState,
    HeartbeatReport,
    ModelStats,
    NodeStats,
    Offloaded,
    Registration,
    ReplicaStats,
    ReserveAnswer,
    ReserveStatus,
    Tier,
)
from deployments.registry.device_lines import DeviceLines, ReplicaProcess, device_lines
from deployments.registry.ram_tier import Promise, RamTier, node_of
from deployments.registry.records import DeviceEntry, ReplicaSeen, Reservation
from serve_app.config.app_args import RegistryConfig

logger = logging.getLogger(__name__)


class Command(NamedTuple):
    """What a replica is told in its heartbeat's answer."""

    evict: Tier | None = None  # move the model there
    evict_from: Tier | None = None  # the tier the eviction is about
    return_cache: bool = False  # return the allocator's cache to the driver


class VramLedger:
    """`on_command(replica)`: called when the replica is given a command (its held heartbeat answers)."""

    def __init__(self, config: RegistryConfig, clock: Callable[[], float],
                 on_command: Callable[[str], None] = lambda replica: None) -> None:
        self.config = config
        self._clock = clock
        self._on_command = on_command
        self.cache_returns: set[str] = set()  # replicas told to return their allocator cache
        self.devices: dict[str, DeviceEntry] = {}
        self.models: dict[str, ModelStats] = {}  # by replica id
        self.ram = RamTier(config.ram_budget_bytes)
        self.reservations: dict[str, Reservation] = {}  # by key: the replica id (a load) or replica/request
        self.replicas: dict[str, ReplicaSeen] = {}

    # -- devices -------------------------------------------------------------------------------------
    def _device(self, device: str, total_bytes: int | None = None, reported_used: int | None = None) -> DeviceEntry:
        entry = self.devices.get(device)
        if entry is None:
            total = self.config.simulated_vram_bytes if total_bytes is None else total_bytes
            headroom = 0 if total_bytes is None else self.config.headroom_bytes
            budget = self.config.budget_bytes if self.config.budget_bytes is not None else max(0, total - headroom)
            entry = self.devices[device] = DeviceEntry(device, total, min(budget, total),
                                                       simulated=total_bytes is None)
        if reported_used is not None:
            entry.reported_used_bytes = reported_used
        return entry

    def _models_bytes(self, device: str, exclude: frozenset[str] = frozenset()) -> int:
        """What the models on `device` (but those of the replicas in `exclude`) hold: their footprints; on a
        CPU device each mapped component file once (there a model's weights are its node's mapping of the
        file, shared by every replica mapping it), not once per model."""
        models = [m for m in self.models.values() if m.device == device and m.replica not in exclude]
        shared: dict[str, int] = {}
        total = 0
        for model in models:
            files = self.ram.device_components(model.replica)
            total += max(0, model.footprint_bytes - sum(c.host_bytes for c in files))
            shared.update((c.identity, c.host_bytes) for c in files)
        return total + sum(shared.values())

    def _freed(self, device: str, replicas: set[str]) -> int:
        """What unloading the models of `replicas` from `device` frees (a file still mapped by another stays)."""
        return self._models_bytes(device) - self._models_bytes(device, exclude=frozenset(replicas))

    def _lines(self, device: str) -> DeviceLines:
        processes = [ReplicaProcess(rid, seen.mode, seen.process) for rid, seen in self.replicas.items()
                     if seen.device == device and seen.process is not None]
        return device_lines([self._models_bytes(device)], processes, self.devices[device].reported_used_bytes)

    def _reserved(self, device: str, exclude: str | None = None) -> int:
        return sum(r.bytes for key, r in self.reservations.items() if r.device == device and key != exclude)

    def _free(self, device: str, exclude: str | None = None) -> int:
        """The budget less the larger of the ledger (every line + reservations) and the driver's used."""
        return self.devices[device].budget_bytes - self._lines(device).taken(self._reserved(device, exclude))

    # -- liveness ------------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Drop the replicas that stopped beating and the reservations that expired."""
        now = self._clock()
        for rid in [r for r, seen in self.replicas.items() if now - seen.last_heartbeat > self.config.dead_after_s]:
            logger.warning("replica %s (mode %s) silent for %.1fs: dropping its entries", rid,
                           self.replicas[rid].mode, now - self.replicas[rid].last_heartbeat)
            self._forget(rid)
        for rid in [r for r, res in self.reservations.items() if res.expires < now]:
            logger.warning("reservation of %s expired", rid)
            del self.reservations[rid]

    def _forget(self, replica: str) -> None:
        self.replicas.pop(replica, None)
        self.models.pop(replica, None)
        self.ram.forget(replica)
        self.cache_returns.discard(replica)
        for key in [k for k, r in self.reservations.items() if r.replica == replica]:
            del self.reservations[key]

    def _seen(self, replica: str, mode: str, device: str) -> ReplicaSeen:
        seen = self.replicas.get(replica)
        if seen is None:
            seen = self.replicas[replica] = ReplicaSeen(mode, device, self._clock())
        seen.last_heartbeat = self._clock()
        return seen

    # -- eviction ------------------------------------------------------------------------------------
    def _promised_to_ram(self, node: str) -> list[Promise]:
        """Host memory that evictions to RAM under way on `node` will take (their own, their component files)."""
        return [self.ram.promise(m.replica, m.measured_bytes) for m in self.models.values()
                if node_of(m.device) == node and m.state is EntryState.EVICTING and m.evict_to is Tier.RAM]

    def _evict(self, model: ModelStats, for_mode: str) -> None:
        model.state = EntryState.EVICTING
        node = node_of(model.device)
        model.evict_to, dropped = self.ram.place(
            model.mode, node, self.ram.promise(model.replica, model.measured_bytes), self._promised_to_ram(node),
            restoring=(r.replica for r in self.reservations.values()))
        for replica in [model.replica, *dropped]:
            self._on_command(replica)
        logger.info("evicting mode %s (replica %s) from %s to %s for mode %s", model.mode, model.replica,
                    model.device, model.evict_to.value, for_mode)

    def _return_caches(self, caches: dict[str, int]) -> list[str]:
        """Tell the replicas holding allocator cache on a device to return it; their modes."""
        for replica in caches:
            self.cache_returns.add(replica)
            self._on_command(replica)
        return sorted({self.replicas[r].mode for r in caches})

    def commands(self, replica: str) -> Command:
        """What `replica` is told to do now (a cache return is told once)."""
        return_cache = replica in self.cache_returns
        self.cache_returns.discard(replica)
        model = self.models.get(replica)
        if model is not None and model.state is EntryState.EVICTING:
            return Command(model.evict_to, Tier.VRAM, return_cache)
        if self.ram.dropping(replica):
            return Command(Tier.DISK, Tier.RAM, return_cache)
        return Command(return_cache=return_cache)

    # -- reservations --------------------------------------------------------------------------------
    def can_fit(self, device: str, nbytes: int) -> bool:
        self._device(device)
        return nbytes <= self._free(device)

    def reserve(self, replica: str, mode: str, device: str, nbytes: int, total_bytes: int | None = None,
                reported_used: int | None = None, key: str | None = None) -> ReserveAnswer:
        """Reserve `nbytes` on `device` for `replica`: its load (`key` None), or the extra working memory of
        one large request (`key` names it; `release(key)` after).

        GRANTED; or EVICTING (idle models, least recently used first, were told to unload: call again); or
        WAITING_BUSY (it fits once models busy now go idle: call again); or NO_FIT with the numbers when
        even evicting every other model on the device would not make room.
        """
        key = key or replica
        self._seen(replica, mode, device)
        dev = self._device(device, total_bytes, reported_used)
        free = self._free(device, exclude=key)

        def answer(status: ReserveStatus, **more: list[str]) -> ReserveAnswer:
            return ReserveAnswer(status=status, needed_bytes=nbytes, free_bytes=max(0, free),
                                 budget_bytes=dev.budget_bytes, **more)

        if nbytes <= free:
            self.reservations[key] = Reservation(replica, mode, device, nbytes,
                                                 self._clock() + self.config.reservation_ttl_s)
            return answer(ReserveStatus.GRANTED)
        own = sum(m.footprint_bytes for m in self.models.values() if m.replica == replica and m.device == device)
        lines = self._lines(device)
        if nbytes > dev.budget_bytes - own - lines.fixed:  # contexts and other processes stay whatever we do
            return answer(ReserveStatus.NO_FIT)
        on_device = [m for m in self.models.values() if m.device == device and m.replica != replica]
        evicting = [m for m in on_device if m.state is EntryState.EVICTING]
        caches = {line.replica: line.cache_bytes for line in lines.lines if line.cache_bytes > 0}
        going = {m.replica for m in evicting}
        pending = self._freed(device, going) + sum(caches.values())  # caches go before any model
        idle = sorted((m for m in on_device if m.state is EntryState.READY and m.inflight == 0),
                      key=lambda m: m.last_use)
        victims: list[ModelStats] = []
        for model in idle:
            if free + pending >= nbytes:
                break
            victims.append(model)
            going.add(model.replica)
            pending = self._freed(device, going) + sum(caches.values())
        busy = [m for m in on_device if m.state is EntryState.READY and m.inflight > 0]
        if free + pending < nbytes:
            later = (self._freed(device, going | {m.replica for m in busy}) - self._freed(device, going)
                     + self._reserved(device, exclude=key))
            if free + pending + later < nbytes:
                return answer(ReserveStatus.NO_FIT)
            # Fits once busy models (and loads in progress) go idle: evict what is idle now, poll again.
            returning = self._return_caches(caches)
            for model in victims:
                self._evict(model, mode)
            return answer(ReserveStatus.WAITING_BUSY, busy_modes=[m.mode for m in busy], returning_cache=returning)
        returning = self._return_caches(caches)
        for model in victims:
            self._evict(model, mode)
        return answer(ReserveStatus.EVICTING, evicting=[m.mode for m in evicting + victims],
                      returning_cache=returning)

    def release(self, key: str) -> None:
        """Drop the reservation under `key` (a replica's failed or abandoned load, or a request's extra)."""
        self.reservations.pop(key, None)

    # -- what the replicas report --------------------------------------------------------------------
    def register(self, reg: Registration) -> None:
        """A load finished: its reservation becomes a model entry with the measured footprint."""
        seen = self._seen(reg.replica, reg.mode, reg.device)
        seen.epoch = max(seen.epoch, reg.epoch)
        self._device(reg.device)
        self.reservations.pop(reg.replica, None)
        self.ram.drop(reg.replica)
        self.ram.hold(reg.replica, reg.mode, reg.device, Tier.VRAM, reg.components)
        self.models[reg.replica] = ModelStats(
            mode=reg.mode, replica=reg.replica, device=reg.device, footprint_bytes=reg.footprint_bytes,
            estimate_bytes=reg.estimate_bytes, measured_bytes=reg.measured_bytes, state=EntryState.READY,
            last_use=time.time(), epoch=reg.epoch, inflight=0)
        logger.info("registered mode %s on %s: %d bytes (estimate %d)", reg.mode, reg.device, reg.footprint_bytes,
                    reg.estimate_bytes)

    def offloaded(self, moved: Offloaded) -> None:
        """An evicted model left its device for the RAM tier of its node."""
        seen = self._seen(moved.replica, moved.mode, moved.device)
        seen.epoch = max(seen.epoch, moved.epoch)
        self.models.pop(moved.replica, None)
        self.ram.put(moved)

    def unregister(self, replica: str, forget: bool = False, epoch: int = 0) -> None:
        """The model of `replica` is gone from both tiers (unloaded at `epoch`); `forget` also drops the replica
        (it stops)."""
        if replica in self.replicas:
            self.replicas[replica].epoch = max(self.replicas[replica].epoch, epoch)
        self.models.pop(replica, None)
        self.ram.forget(replica)
        self.reservations.pop(replica, None)
        if forget:
            self._forget(replica)

    def heartbeat(self, replica: str, report: HeartbeatReport) -> Command:
        """Liveness + state report of a replica; its commands. A report of a model the ledger does not know in
        that tier (the registry restarted) re-registers it there."""
        seen = self._seen(replica, report.mode, report.device)
        seen.inflight = report.inflight
        seen.state = report.state
        seen.process = report.process
        seen.gpu_fraction = report.gpu_fraction
        self._device(report.device, report.total_bytes, report.reported_used_bytes)
        if report.epoch >= seen.epoch:  # else a report older than the last registration or unregistration
            self._sync_tier(replica, report)
            self.ram.hold(replica, report.mode, report.device, report.tier, report.components)
        load = self.reservations.get(replica)  # a live replica's load is under way: keep its reservation
        if load is not None:
            load.expires = self._clock() + self.config.reservation_ttl_s
        # a request's reservation is renewed by that request only (`renew`): one a request leaked (a release
        # that timed out, a caller gone mid-reserve) expires on its own instead of shrinking the device
        return self.commands(replica)

    def renew(self, key: str) -> bool:
        """Extend the reservation under `key` by the TTL; False when it is gone (expired or released)."""
        held = self.reservations.get(key)
        if held is None:
            return False
        held.expires = self._clock() + self.config.reservation_ttl_s
        return True

    def _sync_tier(self, replica: str, report: HeartbeatReport) -> None:
        if report.tier is Tier.VRAM:
            model = self.models.get(replica)
            if model is None:
                self.register(Registration(
                    replica=replica, mode=report.mode, device=report.device, footprint_bytes=report.footprint_bytes,
                    estimate_bytes=report.estimate_bytes, measured_bytes=report.measured_bytes, epoch=report.epoch))
                model = self.models[replica]
            model.inflight = report.inflight
            model.last_use = max(model.last_use, report.last_use)
            if model.state is EntryState.EVICTING and report.inflight:  # it got busy first: the loader asks again
                model.state, model.evict_to = EntryState.READY, None
            model.footprint_bytes = report.footprint_bytes  # grows with the LoRAs the replica holds
            return
        self.models.pop(replica, None)
        if report.tier is Tier.RAM:
            if replica not in self.ram.models:
                self.offloaded(Offloaded(replica=replica, mode=report.mode, device=report.device,
                                         host_bytes=report.host_bytes, last_use=report.last_use, epoch=report.epoch,
                                         components=report.components))
        else:
            self.ram.drop(replica)

    # -- reporting ------------------------------------------------------------------------------------
    def replica_inflight(self) -> int:
        return sum(s.inflight for s in self.replicas.values())

    def gpu_fractions(self) -> dict[str, float]:
        """The num_gpus each mode's live replicas report being placed with."""
        return {seen.mode: seen.gpu_fraction for seen in self.replicas.values() if seen.gpu_fraction is not None}

    def replicas_per_mode(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in self.replicas.values():
            counts[seen.mode] = counts.get(seen.mode, 0) + 1
        return counts

    def device_stats(self) -> list[DeviceStats]:
        devices = []
        for name, dev in sorted(self.devices.items()):
            lines, reserved = self._lines(name), self._reserved(name)
            devices.append(DeviceStats(
                device=name, total_bytes=dev.total_bytes, budget_bytes=dev.budget_bytes, used_bytes=lines.models,
                reserved_bytes=reserved, context_bytes=lines.contexts, cache_bytes=lines.caches,
                unaccounted_bytes=lines.unaccounted, accounted_bytes=lines.accounted,
                free_bytes=dev.budget_bytes - lines.taken(reserved), reported_used_bytes=dev.reported_used_bytes,
                simulated=dev.simulated, lines=lines.lines,
                models=[m.model_copy() for m in self.models.values() if m.device == name]))
        return devices

    def node_stats(self) -> list[NodeStats]:
        nodes = sorted({node_of(d) for d in self.devices} | {e.node for e in self.ram.models.values()})
        return [self.ram.stats(node, self._promised_to_ram(node)) for node in nodes]

    def replica_stats(self) -> dict[str, ReplicaStats]:
        return {rid: ReplicaStats(mode=s.mode, device=s.device, inflight=s.inflight, state=s.state)
                for rid, s in self.replicas.items()}
