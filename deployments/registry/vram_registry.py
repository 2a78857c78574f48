"""The VRAM registry: the one place that decides whether a load fits on a device.

It runs as the application's `VramRegistry` deployment (one replica, so its lifetime is the application's
and an operator finds it in the dashboard under that name). It composes the VRAM ledger (`VramLedger`:
devices, models, reservations, the eviction policy, the RAM tier) and the control state (`ControlState`:
drain flag, default mode, router polls).

One concurrency model: every method is async and runs on the actor's event loop; the ledger and the control
state are plain objects with no awaits, so each call's decision runs whole before the next (two reservations
can never both be granted room that only one fits in). The only awaits are the calls held open:

Eviction channel: the registry answers each mode replica's heartbeat with the commands for it
(`HeartbeatAnswer.evict`: to `ram` or to `disk`). A DeploymentHandle cannot address one replica, and a
separate GPU actor per replica would add a hop (and a second copy of progress streaming) to every
generation; the heartbeat already exists for liveness and for re-registration after a registry restart,
so it carries eviction too. A heartbeat with `wait_s` is held open until a command is decided; a `reserve`
with `wait_s` is held until room may have been freed, and the loading side asks again until granted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from deployments.metrics import RegistryExport
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
    ReserveStatus,
    RouterPollAnswer,
)
from deployments.registry.control import ControlState
from deployments.registry.ledger import Command, VramLedger
from deployments.registry.placement import mode_placement
from deployments.registry.wakeups import Wakeups
from serve_app.config.app_args import RegistryConfig

logger = logging.getLogger(__name__)


class VramRegistry:
    """Per-device VRAM accounting with reservations and LRU eviction, and the operator state. Plain class:
    Serve wraps it."""

    def __init__(self, config: dict[str, Any] | RegistryConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, placement: dict[str, float] | None = None) -> None:
        """`placement`: each mode's `num_gpus` as built (its replicas' own reports win once they beat)."""
        self.config = config if isinstance(config, RegistryConfig) else RegistryConfig.model_validate(config or {})
        self.placement = dict(placement or {})
        self.waiting = Wakeups()  # heartbeats held open, by replica id
        self.reserving = Wakeups()  # reserve calls held open until room may have been freed, by reservation key
        self.ledger = VramLedger(self.config, clock, on_command=self.waiting.wake)
        self.control = ControlState(clock, self.config.dead_after_s)
        self.export = RegistryExport()  # device gauges, set from the heartbeats

    def _sweep(self) -> None:
        self.ledger.sweep()
        self.control.sweep()

    # -- the ledger ----------------------------------------------------------------------------------
    async def can_fit(self, device: str, nbytes: int) -> bool:
        self._sweep()
        return self.ledger.can_fit(device, nbytes)

    async def reserve(self, replica: str, mode: str, device: str, nbytes: int, total_bytes: int | None = None,
                      reported_used: int | None = None, key: str | None = None, wait_s: float = 0.0) -> ReserveAnswer:
        """Reserve `nbytes` on `device` for `replica` (see `VramLedger.reserve`). When the answer is to ask again
        (EVICTING, WAITING_BUSY), the call is held up to `wait_s` and asks again as soon as room may have been
        freed (a victim left, a reservation was released, a heartbeat came in)."""
        key = key or replica
        event = self.reserving.arm(key)
        self._sweep()
        answer = self.ledger.reserve(replica, mode, device, nbytes, total_bytes, reported_used, key)
        if answer.status not in (ReserveStatus.EVICTING, ReserveStatus.WAITING_BUSY) or wait_s <= 0:
            self.reserving.disarm(key, event)
            return answer
        await self.reserving.wait(key, event, wait_s)
        self._sweep()
        return self.ledger.reserve(replica, mode, device, nbytes, total_bytes, reported_used, key)

    async def renew(self, key: str) -> bool:
        """Keep a request's reservation alive (its holder calls this while it runs)."""
        return self.ledger.renew(key)

    async def release(self, key: str) -> None:
        """Drop the reservation under `key` (a replica's failed or abandoned load, or a request's extra)."""
        self.ledger.release(key)
        self.reserving.wake_all()

    async def register(self, reg: Registration) -> None:
        """A load finished: its reservation becomes a model entry with the measured footprint."""
        self.ledger.register(reg)
        self.reserving.wake_all()

    async def offloaded(self, moved: Offloaded) -> None:
        """An evicted model left its device for the RAM tier of its node."""
        self.ledger.offloaded(moved)
        self.reserving.wake_all()

    async def unregister(self, replica: str, forget: bool = False, epoch: int = 0) -> None:
        """The model of `replica` is gone from both tiers (unloaded at `epoch`); `forget` also drops the replica
        (it stops)."""
        self.ledger.unregister(replica, forget, epoch)
        self.reserving.wake_all()

    async def heartbeat(self, replica: str, report: HeartbeatReport, wait_s: float = 0.0) -> HeartbeatAnswer:
        """Liveness + state report of a replica; answers its commands and the drain flag. When it brings no
        command the call is held open up to `wait_s` and answered as soon as one is decided (an eviction, a
        drain): a victim leaves its device at once instead of at its next beat, which is most of what a switch
        between modes waits for."""
        event = self.waiting.arm(replica)
        self._sweep()
        answer = self._answer(self.ledger.heartbeat(replica, report), report.mode)
        self.reserving.wake_all()  # a model may have left, or gone idle
        if self.export.due():
            self.export.export(self._stats())
        if answer.evict is not None or answer.return_cache or answer.draining or wait_s <= 0:
            self.waiting.disarm(replica, event)
            return answer
        if not await self.waiting.wait(replica, event, wait_s):
            return answer
        return self._answer(self.ledger.commands(replica), report.mode)

    def _answer(self, command: Command, mode: str) -> HeartbeatAnswer:
        return HeartbeatAnswer(evict=command.evict, evict_from=command.evict_from, return_cache=command.return_cache,
                               draining=self.control.draining, backlog=self.control.backlog(mode))

    # -- the control state ----------------------------------------------------------------------------
    async def set_draining(self, draining: bool = True) -> None:
        self.control.set_draining(draining)
        self.waiting.wake_all()

    async def set_default_mode(self, mode: str) -> OperatorState:
        """Switch the application's default mode."""
        return self.control.set_default_mode(mode)

    async def change_modes(self, add: list[AddedMode], drop: list[str],
                           removed: list[str]) -> tuple[OperatorState, list[str]]:
        """A checkpoint refresh's changes to the served modes (see `ControlState.change_modes`)."""
        return self.control.change_modes(add, drop, removed)

    async def router_poll(self, router: str, inflight: int, state: OperatorState | None = None,
                          waiting: dict[str, int] | None = None) -> RouterPollAnswer:
        """A router reports its in-flight requests, the requests waiting in its fair queues per mode (the
        backlog the mode replicas pass on to Serve's autoscaler) and its copy of the operator state (a newer
        copy wins: after a registry restart the routers bring the state back); it learns the registry's and
        the live replicas per mode."""
        return RouterPollAnswer(state=self.control.router_poll(router, inflight, state, waiting),
                                replicas=self.ledger.replicas_per_mode())

    async def inflight(self) -> InflightCounts:
        self._sweep()
        return InflightCounts(routers=self.control.router_inflight(), replicas=self.ledger.replica_inflight())

    # -- reporting ------------------------------------------------------------------------------------
    async def stats(self) -> RegistryStats:
        return self._stats()

    def _stats(self) -> RegistryStats:
        self._sweep()
        fractions = {**self.placement, **self.ledger.gpu_fractions()}
        return RegistryStats(devices=self.ledger.device_stats(), draining=self.control.draining,
                             nodes=self.ledger.node_stats(), replicas=self.ledger.replica_stats(),
                             placement=mode_placement(fractions))

    async def check_health(self) -> None:
        """Serve health check: the registry is a plain in-memory object, alive when it answers."""
