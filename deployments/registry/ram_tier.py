"""The RAM tier's accounting, kept by the registry: per node, the evicted models held in host memory under
a budget (`registry.ram_budget_bytes`), and where the next eviction goes.

An eviction goes to RAM when the model fits in its node's budget, counting what is held there and what
other evictions already promised; the least recently used RAM-tier models are marked `dropping` (their
replicas drop them to disk) to make room. A model larger than the budget, or with the tier off (budget 0),
is dropped to disk. A RAM-tier model that is being brought back (its replica holds a reservation) is never
pushed out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from deployments.protocol import NodeStats, Offloaded, RamModelStats, Tier

logger = logging.getLogger(__name__)


def node_of(device: str) -> str:
    """`<node id>:gpu0` -> `<node id>`: the RAM tier is per node."""
    return device.split(":", 1)[0]


class RamTier:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.models: dict[str, RamModelStats] = {}  # by replica id

    def committed(self, node: str, promised: int) -> int:
        """Host memory of `node` held by models not being dropped, plus `promised` (evictions under way)."""
        return promised + sum(e.host_bytes for e in self.models.values() if e.node == node and not e.dropping)

    def place(self, mode: str, node: str, nbytes: int, promised: int,
              restoring: Iterable[str]) -> tuple[Tier, list[str]]:
        """Where an evicted model of `nbytes` on `node` goes, and the replicas whose RAM-tier models it pushes
        out (marked dropping)."""
        if nbytes <= 0 or nbytes > self.budget_bytes:
            return Tier.DISK, []
        room = self.budget_bytes - self.committed(node, promised)
        keep = set(restoring)
        victims = []
        for entry in sorted((e for e in self.models.values()
                             if e.node == node and not e.dropping and e.replica not in keep), key=lambda e: e.last_use):
            if room >= nbytes:
                break
            victims.append(entry)
            room += entry.host_bytes
        if room < nbytes:
            return Tier.DISK, []
        for entry in victims:
            entry.dropping = True
            logger.info("RAM tier of %s: dropping mode %s (replica %s) for mode %s", node, entry.mode, entry.replica,
                        mode)
        return Tier.RAM, [e.replica for e in victims]

    def put(self, moved: Offloaded) -> None:
        self.models[moved.replica] = RamModelStats(
            mode=moved.mode, replica=moved.replica, node=node_of(moved.device), host_bytes=moved.host_bytes,
            last_use=moved.last_use, epoch=moved.epoch)

    def drop(self, replica: str) -> None:
        self.models.pop(replica, None)

    def dropping(self, replica: str) -> bool:
        entry = self.models.get(replica)
        return entry is not None and entry.dropping

    def stats(self, node: str, promised: int) -> NodeStats:
        return NodeStats(node=node, ram_budget_bytes=self.budget_bytes, ram_used_bytes=self.committed(node, promised),
                         models=[e.model_copy() for e in self.models.values() if e.node == node])
