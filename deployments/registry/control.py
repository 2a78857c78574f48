"""The registry's control state: the operator state (drain flag, default mode, the modes a checkpoint refresh
added or took out; versioned) and the routers' polls (each router's in-flight requests, for a drain to wait on).

A router keeps a copy of the operator state and gives it back in its polls: after a registry restart the
newest copy wins, so a drain or a default-mode switch survives the restart. Like the ledger, a plain object
with no awaits, called from the registry actor's one event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from deployments.protocol import AddedMode, OperatorState

logger = logging.getLogger(__name__)


class ControlState:
    def __init__(self, clock: Callable[[], float], dead_after_s: float) -> None:
        self._clock = clock
        self._dead_after_s = dead_after_s
        self.operator = OperatorState()
        self.routers: dict[str, tuple[int, float]] = {}  # router id -> (inflight, seen)
        self.waiting: dict[str, dict[str, int]] = {}  # router id -> requests waiting in its fair queue, per mode

    @property
    def draining(self) -> bool:
        return self.operator.draining

    def _change(self, **changes: object) -> OperatorState:
        self.operator = self.operator.model_copy(update={**changes, "version": self.operator.version + 1})
        return self.operator

    def set_draining(self, draining: bool) -> None:
        self._change(draining=draining)
        logger.warning("draining %s", "started" if draining else "cancelled")

    def set_default_mode(self, mode: str) -> OperatorState:
        return self._change(default_mode=mode)

    def change_modes(self, add: list[AddedMode], drop: list[str],
                     removed: list[str]) -> tuple[OperatorState, list[str]]:
        """A checkpoint refresh: `add` modes (one already added under its name stays as it is), `drop` added
        modes, and `removed` becomes the configured modes taken out. Answers the state and the names of
        `add` really added: only their refresh deploys them, so two refreshes at once deploy each mode once."""
        kept = {m.name: m for m in self.operator.added_modes if m.name not in drop}
        accepted = [m.name for m in add if m.name not in kept]
        kept.update({m.name: m for m in add if m.name in accepted})
        added, removed = list(kept.values()), sorted(set(removed))
        if added == self.operator.added_modes and removed == self.operator.removed_modes:
            return self.operator, []
        logger.warning("modes changed by a refresh: added %s, dropped %s, configured ones removed %s", accepted,
                       [n for n in drop if any(m.name == n for m in self.operator.added_modes)], removed)
        return self._change(added_modes=added, removed_modes=removed), accepted

    def router_poll(self, router: str, inflight: int, state: OperatorState | None = None,
                    waiting: dict[str, int] | None = None) -> OperatorState:
        """A router reports its in-flight requests, its waiting requests per mode and its copy of the operator
        state (a newer copy wins); it learns the registry's."""
        self.routers[router] = (inflight, self._clock())
        if waiting is not None:
            self.waiting[router] = waiting
        if state is not None and state.version > self.operator.version:
            logger.warning("operator state restored from router %s: %s", router, state)
            self.operator = state
        return self.operator

    def router_inflight(self) -> int:
        return sum(n for n, _ in self.routers.values())

    def backlog(self, mode: str) -> int:
        """Requests of `mode` waiting in the fair queues of the routers heard from within `dead_after_s`."""
        now = self._clock()
        return sum(waiting.get(mode, 0) for router, waiting in self.waiting.items()
                   if router in self.routers and now - self.routers[router][1] <= self._dead_after_s)

    def sweep(self) -> None:
        """Routers are forgotten late: a drain must not mistake a slow router for an idle one."""
        now = self._clock()
        for rid in [r for r, (_, seen) in self.routers.items() if now - seen > 5 * self._dead_after_s]:
            del self.routers[rid]
            self.waiting.pop(rid, None)
