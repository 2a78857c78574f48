"""The RAM tier's accounting, kept by the registry: per node, the evicted models held in host memory under
a budget (`registry.ram_budget_bytes`), and where the next eviction goes.

An eviction goes to RAM when the model fits in its node's budget, counting what is held there and what
other evictions already promised; the least recently used RAM-tier models are marked `dropping` (their
replicas drop them to disk) to make room. A model larger than the budget, or with the tier off (budget 0),
is dropped to disk. A RAM-tier model that is being brought back (its replica holds a reservation) is never
pushed out.

Shared component files: a replica maps its component files (text encoders, VAEs: see the model layer's
`mapped_weights`), so every replica of a node that uses the same file shares one copy in host memory. Each
model's own bytes are booked per model; each component file once per node (by its identity), while at
least one RAM-tier model (or an eviction to RAM under way) uses it. Pushing a model out frees a shared file
only when it was its last user; a model whose files are already held needs only its own bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from deployments.protocol import HostComponent, NodeStats, Offloaded, RamModelStats, SharedComponentStats, Tier

logger = logging.getLogger(__name__)


def node_of(device: str) -> str:
    """`<node id>:gpu0` -> `<node id>`: the RAM tier is per node."""
    return device.split(":", 1)[0]


class Promise(NamedTuple):
    """What a model takes in host memory: its own bytes, and the component files it maps."""

    own_bytes: int
    components: tuple[HostComponent, ...] = ()


@dataclass
class Holding:
    """The component files a replica maps, as its last report said, and where its model is."""

    mode: str
    device: str
    tier: Tier
    components: list[HostComponent] = field(default_factory=list)

    @property
    def on_cpu_device(self) -> bool:
        return self.tier is Tier.VRAM and self.device.endswith(":cpu")


class RamTier:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.models: dict[str, RamModelStats] = {}  # by replica id
        self.holdings: dict[str, Holding] = {}  # by replica id

    # -- what is booked ------------------------------------------------------------------------------
    def _held(self, replica: str) -> list[HostComponent]:
        holding = self.holdings.get(replica)
        return holding.components if holding is not None else []

    def device_components(self, replica: str) -> list[HostComponent]:
        """The component files `replica` maps while its model is on a CPU device: there its weights *are* the
        node's mapping of each file, one copy however many replicas map it (the device's ledger counts it once)."""
        holding = self.holdings.get(replica)
        return holding.components if holding is not None and holding.on_cpu_device else []

    def _booked(self, node: str, promised: Iterable[Promise], exclude: frozenset[str] = frozenset()
                ) -> dict[str, HostComponent]:
        """The component files booked on `node`: used by a RAM-tier model (not dropping, not in `exclude`) or by
        an eviction to RAM under way."""
        booked = {c.identity: c for p in promised for c in p.components}
        for e in self.models.values():
            if e.node == node and not e.dropping and e.replica not in exclude:
                booked.update((c.identity, c) for c in self._held(e.replica))
        return booked

    def committed(self, node: str, promised: Iterable[Promise], exclude: frozenset[str] = frozenset()) -> int:
        """Host memory of `node` held by models not being dropped (nor in `exclude`), plus `promised` (evictions
        under way); each shared component file once."""
        promised = list(promised)
        held = [e for e in self.models.values() if e.node == node and not e.dropping and e.replica not in exclude]
        own = sum(p.own_bytes for p in promised) + sum(e.host_bytes for e in held)
        return own + sum(c.host_bytes for c in self._booked(node, promised, exclude).values())

    def promise(self, replica: str, nbytes: int) -> Promise:
        """What the model of `replica`, `nbytes` on its device, will take in host memory."""
        components = tuple(self._held(replica))
        return Promise(max(0, nbytes - sum(c.host_bytes for c in components)), components)

    # -- placing evictions ---------------------------------------------------------------------------
    def place(self, mode: str, node: str, incoming: Promise, promised: Iterable[Promise],
              restoring: Iterable[str]) -> tuple[Tier, list[str]]:
        """Where an evicted model (`incoming`) on `node` goes, and the replicas whose RAM-tier models it pushes
        out (marked dropping)."""
        promised = list(promised)
        total = incoming.own_bytes + sum(c.host_bytes for c in incoming.components)
        if total <= 0 or total > self.budget_bytes:
            return Tier.DISK, []

        def short(exclude: frozenset[str]) -> int:
            booked = self._booked(node, promised, exclude)
            need = incoming.own_bytes + sum(c.host_bytes for c in incoming.components if c.identity not in booked)
            return need - (self.budget_bytes - self.committed(node, promised, exclude))

        keep = set(restoring)
        victims: frozenset[str] = frozenset()
        for entry in sorted((e for e in self.models.values()
                             if e.node == node and not e.dropping and e.replica not in keep), key=lambda e: e.last_use):
            if short(victims) <= 0:
                break
            victims |= {entry.replica}
        if short(victims) > 0:
            return Tier.DISK, []
        for replica in victims:
            entry = self.models[replica]
            entry.dropping = True
            logger.info("RAM tier of %s: dropping mode %s (replica %s) for mode %s", node, entry.mode, entry.replica,
                        mode)
        return Tier.RAM, sorted(victims, key=lambda r: self.models[r].last_use)

    # -- what replicas report ------------------------------------------------------------------------
    def hold(self, replica: str, mode: str, device: str, tier: Tier, components: list[HostComponent]) -> None:
        """The component files `replica` maps (from its report) and where its model is."""
        self.holdings[replica] = Holding(mode, device, tier, list(components))

    def put(self, moved: Offloaded) -> None:
        self.hold(moved.replica, moved.mode, moved.device, Tier.RAM, moved.components)
        self.models[moved.replica] = RamModelStats(
            mode=moved.mode, replica=moved.replica, node=node_of(moved.device), host_bytes=moved.host_bytes,
            last_use=moved.last_use, epoch=moved.epoch, components=[c.identity for c in moved.components])

    def drop(self, replica: str) -> None:
        """The model of `replica` left the RAM tier."""
        self.models.pop(replica, None)

    def forget(self, replica: str) -> None:
        """`replica` holds nothing (unloaded, or gone)."""
        self.models.pop(replica, None)
        self.holdings.pop(replica, None)

    def dropping(self, replica: str) -> bool:
        entry = self.models.get(replica)
        return entry is not None and entry.dropping

    # -- reporting -----------------------------------------------------------------------------------
    def _components(self, node: str) -> list[SharedComponentStats]:
        users: dict[str, list[tuple[str, str, bool]]] = {}  # identity -> (mode, replica, in the RAM tier)
        files: dict[str, HostComponent] = {}
        for replica, holding in self.holdings.items():
            in_ram = replica in self.models
            if node_of(holding.device) != node or not (in_ram or holding.on_cpu_device):
                continue
            for c in holding.components:
                files[c.identity] = c
                users.setdefault(c.identity, []).append((holding.mode, replica, in_ram))
        return [SharedComponentStats(
            identity=i, path=c.path, kind=c.kind, host_bytes=c.host_bytes,
            modes=sorted({m for m, _, _ in users[i]}), replicas=sorted(r for _, r, _ in users[i]),
            ram_tier_modes=sorted({m for m, _, ram in users[i] if ram})) for i, c in sorted(files.items())]

    def stats(self, node: str, promised: Iterable[Promise]) -> NodeStats:
        return NodeStats(node=node, ram_budget_bytes=self.budget_bytes, ram_used_bytes=self.committed(node, promised),
                         models=[e.model_copy() for e in self.models.values() if e.node == node],
                         components=self._components(node))
