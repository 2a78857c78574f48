"""The VRAM registry: the one place that decides whether a load fits on a device.

It runs as the application's `VramRegistry` deployment (one replica, so its lifetime is the
application's and an operator finds it in the dashboard under that name). It keeps, per device, the
budget, the accounted use of registered models and the open reservations (loads, and the extra working
memory of requests larger than a model's standing share), and per model its mode, replica, footprint,
estimate, state and last use. Per node it keeps the RAM tier: evicted models held in host memory under
`ram_budget_bytes`, least recently used first out (dropped to disk) when a newer eviction needs the room.

Eviction channel: the registry answers each mode replica's heartbeat with the commands for it
(`HeartbeatAnswer.evict`: to `ram` or to `disk`). A DeploymentHandle cannot address one replica, and a
separate GPU actor per replica would add a hop (and a second copy of progress streaming) to every
generation; the heartbeat already exists for liveness and for re-registration after a registry restart,
so it carries eviction too. The loading side polls `reserve` until the victims have left the device.

Memory is accounted, not sampled: `used` is the sum of the footprints the workers measured
(`torch.cuda.memory_allocated` deltas on CUDA, parameter bytes on the CPU); the device's own report
(`mem_get_info`) is shown beside it. Without CUDA each device gets a simulated size, so CPU tests run
the same logic.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from deployments.metrics import RegistryExport
from deployments.protocol import (
    DeviceStats,
    EntryState,
    HeartbeatAnswer,
    HeartbeatReport,
    InflightCounts,
    ModelStats,
    Offloaded,
    OperatorState,
    Registration,
    RegistryStats,
    ReplicaStats,
    ReserveAnswer,
    ReserveStatus,
    RouterPollAnswer,
    Tier,
)
from deployments.registry.ram_tier import RamTier, node_of
from deployments.registry.records import DeviceEntry, ReplicaSeen, Reservation
from deployments.registry.wakeups import Wakeups
from serve_app.config.app_args import RegistryConfig

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def serialised(method: F) -> F:
    """One registry call at a time: Serve runs a deployment's sync methods in a thread pool, and two
    `reserve` calls interleaved could both be granted room that only one fits in."""

    @functools.wraps(method)
    def locked(self: VramRegistry, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class VramRegistry:
    """Per-device VRAM accounting with reservations and LRU eviction. Plain class: Serve wraps it."""

    def __init__(self, config: dict[str, Any] | RegistryConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if isinstance(config, RegistryConfig) else RegistryConfig.model_validate(config or {})
        self._clock = clock
        self._lock = threading.RLock()
        self.devices: dict[str, DeviceEntry] = {}
        self.models: dict[str, ModelStats] = {}  # by replica id
        self.ram = RamTier(self.config.ram_budget_bytes)
        self.reservations: dict[str, Reservation] = {}  # by key: the replica id (a load) or replica/request
        self.replicas: dict[str, ReplicaSeen] = {}
        self.operator = OperatorState()
        self.routers: dict[str, tuple[int, float]] = {}  # router id -> (inflight, seen)
        self.waiting = Wakeups()  # heartbeats held open, by replica id
        self.export = RegistryExport()  # device gauges, set from the heartbeats
        self.reserving = Wakeups()  # reserve calls held open until room may have been freed, by reservation key

    # -- devices -------------------------------------------------------------------------------------
    def _device(self, device: str, total_bytes: int | None = None, reported_used: int | None = None) -> DeviceEntry:
        entry = self.devices.get(device)
        if entry is None:
            simulated = total_bytes is None
            total = self.config.simulated_vram_bytes if simulated else total_bytes
            budget = self.config.budget_bytes if self.config.budget_bytes is not None else max(
                0, total - (0 if simulated else self.config.headroom_bytes))
            entry = self.devices[device] = DeviceEntry(device, total, min(budget, total), simulated=simulated)
        if reported_used is not None:
            entry.reported_used_bytes = reported_used
        return entry

    def _used(self, device: str) -> int:
        return sum(m.footprint_bytes for m in self.models.values() if m.device == device)

    def _reserved(self, device: str, exclude: str | None = None) -> int:
        return sum(r.bytes for key, r in self.reservations.items() if r.device == device and key != exclude)

    def _free(self, device: str, exclude: str | None = None) -> int:
        return self.devices[device].budget_bytes - self._used(device) - self._reserved(device, exclude)

    # -- liveness ------------------------------------------------------------------------------------
    def _sweep(self) -> None:
        now = self._clock()
        for rid in [r for r, seen in self.replicas.items() if now - seen.last_heartbeat > self.config.dead_after_s]:
            logger.warning("replica %s (mode %s) silent for %.1fs: dropping its entries", rid,
                           self.replicas[rid].mode, now - self.replicas[rid].last_heartbeat)
            self._forget(rid)
        for rid in [r for r, res in self.reservations.items() if res.expires < now]:
            logger.warning("reservation of %s expired", rid)
            del self.reservations[rid]
        # Routers are forgotten late: a drain must not mistake a slow router for an idle one.
        for rid in [r for r, (_, seen) in self.routers.items() if now - seen > 5 * self.config.dead_after_s]:
            del self.routers[rid]

    def _forget(self, replica: str) -> None:
        self.replicas.pop(replica, None)
        self.models.pop(replica, None)
        self.ram.drop(replica)
        for key in [k for k, r in self.reservations.items() if r.replica == replica]:
            del self.reservations[key]

    # -- the RAM tier --------------------------------------------------------------------------------
    def _promised_to_ram(self, node: str) -> int:
        """Host memory that evictions to RAM under way on `node` will take."""
        return sum(m.measured_bytes for m in self.models.values()
                   if node_of(m.device) == node and m.state is EntryState.EVICTING and m.evict_to is Tier.RAM)

    def _evict(self, model: ModelStats, for_mode: str) -> None:
        model.state = EntryState.EVICTING
        node = node_of(model.device)
        model.evict_to, dropped = self.ram.place(model.mode, node, model.measured_bytes, self._promised_to_ram(node),
                                                 restoring=(r.replica for r in self.reservations.values()))
        for replica in [model.replica, *dropped]:
            self.waiting.wake(replica)
        logger.info("evicting mode %s (replica %s) from %s to %s for mode %s", model.mode, model.replica,
                    model.device, model.evict_to.value, for_mode)

    def _seen(self, replica: str, mode: str, device: str) -> ReplicaSeen:
        seen = self.replicas.get(replica)
        if seen is None:
            seen = self.replicas[replica] = ReplicaSeen(mode, device, self._clock())
        seen.last_heartbeat = self._clock()
        return seen

    # -- operations ----------------------------------------------------------------------------------
    @serialised
    def can_fit(self, device: str, nbytes: int) -> bool:
        self._sweep()
        self._device(device)
        return nbytes <= self._free(device)

    @serialised
    def reserve(self, replica: str, mode: str, device: str, nbytes: int, total_bytes: int | None = None,
                reported_used: int | None = None, key: str | None = None) -> ReserveAnswer:
        """Reserve `nbytes` on `device` for `replica`: its load (`key` None), or the extra working memory of
        one large request (`key` names it; `release(key)` after).

        GRANTED; or EVICTING (idle models, least recently used first, were told to unload: call again); or
        WAITING_BUSY (it fits once models busy now go idle: call again); or NO_FIT with the numbers when
        even evicting every other model on the device would not make room.
        """
        self._sweep()
        key = key or replica
        self._seen(replica, mode, device)
        dev = self._device(device, total_bytes, reported_used)
        free = self._free(device, exclude=key)

        def answer(status: ReserveStatus, **more: list[str]) -> ReserveAnswer:
            return ReserveAnswer(status=status, needed_bytes=nbytes, free_bytes=free, budget_bytes=dev.budget_bytes,
                                 **more)

        if nbytes <= free:
            self.reservations[key] = Reservation(replica, mode, device, nbytes,
                                                 self._clock() + self.config.reservation_ttl_s)
            return answer(ReserveStatus.GRANTED)
        own = sum(m.footprint_bytes for m in self.models.values() if m.replica == replica and m.device == device)
        if nbytes > dev.budget_bytes - own:
            return answer(ReserveStatus.NO_FIT)
        on_device = [m for m in self.models.values() if m.device == device and m.replica != replica]
        evicting = [m for m in on_device if m.state is EntryState.EVICTING]
        pending = sum(m.footprint_bytes for m in evicting)
        idle = sorted((m for m in on_device if m.state is EntryState.READY and m.inflight == 0),
                      key=lambda m: m.last_use)
        victims: list[ModelStats] = []
        for model in idle:
            if free + pending >= nbytes:
                break
            victims.append(model)
            pending += model.footprint_bytes
        busy = [m for m in on_device if m.state is EntryState.READY and m.inflight > 0]
        if free + pending < nbytes:
            later = sum(m.footprint_bytes for m in busy) + self._reserved(device, exclude=key)
            if free + pending + later < nbytes:
                return answer(ReserveStatus.NO_FIT)
            # Fits once busy models (and loads in progress) go idle: evict what is idle now, poll again.
            for model in victims:
                self._evict(model, mode)
            return answer(ReserveStatus.WAITING_BUSY, busy_modes=[m.mode for m in busy])
        for model in victims:
            self._evict(model, mode)
        return answer(ReserveStatus.EVICTING, evicting=[m.mode for m in evicting + victims])

    async def reserve_wait(self, replica: str, mode: str, device: str, nbytes: int, total_bytes: int | None = None,
                           reported_used: int | None = None, key: str | None = None,
                           wait_s: float = 0.0) -> ReserveAnswer:
        """`reserve`; when the answer is to ask again, the call is held up to `wait_s` and asks again as soon as
        room may have been freed (a victim left, a reservation was released, a heartbeat came in)."""
        event = self.reserving.arm(key or replica)
        answer = self.reserve(replica, mode, device, nbytes, total_bytes, reported_used, key)
        if answer.status not in (ReserveStatus.EVICTING, ReserveStatus.WAITING_BUSY) or wait_s <= 0:
            self.reserving.disarm(key or replica, event)
            return answer
        await self.reserving.wait(key or replica, event, wait_s)
        return self.reserve(replica, mode, device, nbytes, total_bytes, reported_used, key)

    @serialised
    def release(self, key: str) -> None:
        """Drop the reservation under `key` (a replica's failed or abandoned load, or a request's extra)."""
        self.reservations.pop(key, None)
        self.reserving.wake_all()

    @serialised
    def register(self, reg: Registration) -> None:
        """A load finished: its reservation becomes a model entry with the measured footprint."""
        seen = self._seen(reg.replica, reg.mode, reg.device)
        seen.epoch = max(seen.epoch, reg.epoch)
        self._device(reg.device)
        self.reservations.pop(reg.replica, None)
        self.ram.drop(reg.replica)
        self.reserving.wake_all()
        self.models[reg.replica] = ModelStats(
            mode=reg.mode, replica=reg.replica, device=reg.device, footprint_bytes=reg.footprint_bytes,
            estimate_bytes=reg.estimate_bytes, measured_bytes=reg.measured_bytes, state=EntryState.READY,
            last_use=time.time(), epoch=reg.epoch, inflight=0)
        logger.info("registered mode %s on %s: %d bytes (estimate %d)", reg.mode, reg.device, reg.footprint_bytes,
                    reg.estimate_bytes)

    @serialised
    def offloaded(self, moved: Offloaded) -> None:
        """An evicted model left its device for the RAM tier of its node."""
        seen = self._seen(moved.replica, moved.mode, moved.device)
        seen.epoch = max(seen.epoch, moved.epoch)
        self.models.pop(moved.replica, None)
        self.ram.put(moved)
        self.reserving.wake_all()

    @serialised
    def unregister(self, replica: str, forget: bool = False, epoch: int = 0) -> None:
        """The model of `replica` is gone from both tiers (unloaded at `epoch`); `forget` also drops the replica
        (it stops)."""
        if replica in self.replicas:
            self.replicas[replica].epoch = max(self.replicas[replica].epoch, epoch)
        self.models.pop(replica, None)
        self.ram.drop(replica)
        self.reservations.pop(replica, None)
        self.reserving.wake_all()
        if forget:
            self._forget(replica)

    @serialised
    def heartbeat(self, replica: str, report: HeartbeatReport) -> HeartbeatAnswer:
        """Liveness + state report of a replica; answers the commands for it and the drain flag.

        A report of a model the registry does not know in that tier (it restarted) re-registers it there.
        """
        self._sweep()
        seen = self._seen(replica, report.mode, report.device)
        seen.inflight = report.inflight
        seen.state = report.state
        self._device(report.device, report.total_bytes, report.reported_used_bytes)
        if report.epoch >= seen.epoch:  # else a report older than the last registration or unregistration
            self._sync_tier(replica, report)
        for reservation in self.reservations.values():  # a live replica's reservations are in use: keep them
            if reservation.replica == replica:
                reservation.expires = self._clock() + self.config.reservation_ttl_s
        self.reserving.wake_all()  # a model may have left, or gone idle
        return self._commands(replica)

    def _commands(self, replica: str) -> HeartbeatAnswer:
        model = self.models.get(replica)
        if model is not None and model.state is EntryState.EVICTING:
            return HeartbeatAnswer(evict=model.evict_to, evict_from=Tier.VRAM, draining=self.draining)
        if self.ram.dropping(replica):
            return HeartbeatAnswer(evict=Tier.DISK, evict_from=Tier.RAM, draining=self.draining)
        return HeartbeatAnswer(draining=self.draining)

    async def heartbeat_wait(self, replica: str, report: HeartbeatReport, wait_s: float) -> HeartbeatAnswer:
        """A heartbeat that, when it brings no command, is held open up to `wait_s` and answered as soon as one
        is decided (an eviction, a drain): a victim leaves its device at once instead of at its next beat, which
        is most of what a switch between modes waits for."""
        event = self.waiting.arm(replica)
        answer = self.heartbeat(replica, report)
        if self.export.due():
            self.export.export(self.stats())
        if answer.evict is not None or answer.draining or wait_s <= 0:
            self.waiting.disarm(replica, event)
            return answer
        if not await self.waiting.wait(replica, event, wait_s):
            return answer
        with self._lock:
            return self._commands(replica)

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
                                         host_bytes=report.host_bytes, last_use=report.last_use, epoch=report.epoch))
        else:
            self.ram.drop(replica)

    # -- draining and the default mode ---------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self.operator.draining

    def _change(self, **changes: object) -> OperatorState:
        self.operator = self.operator.model_copy(update={**changes, "version": self.operator.version + 1})
        return self.operator

    @serialised
    def set_draining(self, draining: bool = True) -> None:
        self._change(draining=draining)
        self.waiting.wake_all()
        logger.warning("draining %s", "started" if draining else "cancelled")

    @serialised
    def set_default_mode(self, mode: str) -> OperatorState:
        """Switch the application's default mode."""
        return self._change(default_mode=mode)

    @serialised
    def router_poll(self, router: str, inflight: int, state: OperatorState | None = None) -> RouterPollAnswer:
        """A router reports its in-flight requests and its copy of the operator state (a newer copy wins:
        after a registry restart the routers bring the state back); it learns the registry's."""
        self.routers[router] = (inflight, self._clock())
        if state is not None and state.version > self.operator.version:
            logger.warning("operator state restored from router %s: %s", router, state)
            self.operator = state
        replicas: dict[str, int] = {}
        for seen in self.replicas.values():
            replicas[seen.mode] = replicas.get(seen.mode, 0) + 1
        return RouterPollAnswer(state=self.operator, replicas=replicas)

    @serialised
    def inflight(self) -> InflightCounts:
        self._sweep()
        return InflightCounts(routers=sum(n for n, _ in self.routers.values()),
                              replicas=sum(s.inflight for s in self.replicas.values()))

    # -- reporting ------------------------------------------------------------------------------------
    @serialised
    def stats(self) -> RegistryStats:
        self._sweep()
        devices = []
        for name, dev in sorted(self.devices.items()):
            used, reserved = self._used(name), self._reserved(name)
            devices.append(DeviceStats(
                device=name, total_bytes=dev.total_bytes, budget_bytes=dev.budget_bytes, used_bytes=used,
                reserved_bytes=reserved, free_bytes=dev.budget_bytes - used - reserved,
                reported_used_bytes=dev.reported_used_bytes, simulated=dev.simulated,
                models=[m.model_copy() for m in self.models.values() if m.device == name]))
        nodes = sorted({node_of(d) for d in self.devices} | {e.node for e in self.ram.models.values()})
        return RegistryStats(devices=devices, draining=self.draining,
                             nodes=[self.ram.stats(node, self._promised_to_ram(node)) for node in nodes],
                             replicas={rid: ReplicaStats(mode=s.mode, device=s.device, inflight=s.inflight,
                                                         state=s.state)
                                       for rid, s in self.replicas.items()})

    def check_health(self) -> None:
        """Serve health check: the registry is a plain in-memory object, alive when it answers."""
