"""The ledger against the driver: what one physical device holds, line by line.

- `models`: the footprints the replicas registered (measured load + LoRAs + standing working memory);
- `contexts`: each replica's CUDA context (one per process: hundreds of MB);
- `caches`: each replica's allocator cache (`memory_reserved - memory_allocated`: GBs after a large request,
  until `torch.cuda.empty_cache` returns it to the driver);
- `unaccounted`: what the driver sees in use (`total - free` of `mem_get_info`) beyond the replicas' own
  processes (context + allocator reserve): other processes on the card, or replicas that do not report.

A decision (can a reservation fit?) takes the larger of the ledger (these lines + open reservations) and the
driver's used: the ledger covers memory promised but not yet allocated (a load under way), the driver covers
memory taken that nobody booked. Without CUDA there is no driver view and no process lines: the ledger is
the models and the reservations, as before. The readings come from different replicas' heartbeats (each at
most one beat old), so `unaccounted` may briefly show what a replica allocated since its last beat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from deployments.protocol import DeviceLine, ProcessMemory


@dataclass(frozen=True)
class ReplicaProcess:
    """A live replica's last report of its own process on a device."""

    replica: str
    mode: str
    memory: ProcessMemory


@dataclass(frozen=True)
class DeviceLines:
    models: int
    contexts: int = 0
    caches: int = 0
    unaccounted: int = 0
    driver_used: int | None = None
    lines: list[DeviceLine] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        """The ledger's view of the device: every line."""
        return self.models + self.contexts + self.caches + self.unaccounted

    @property
    def fixed(self) -> int:
        """What no eviction and no cache return frees: the contexts and the other processes."""
        return self.contexts + self.unaccounted

    def taken(self, reserved: int) -> int:
        """The larger of the ledger (with `reserved`) and the driver's used."""
        return max(self.accounted + reserved, self.driver_used or 0)


def device_lines(footprints: Iterable[int], processes: Iterable[ReplicaProcess],
                 driver_used: int | None) -> DeviceLines:
    """The lines of one device from its models' footprints, its replicas' process reports and the driver."""
    procs = list(processes)
    lines = [DeviceLine(replica=p.replica, mode=p.mode, context_bytes=p.memory.context_bytes,
                        cache_bytes=p.memory.cache_bytes) for p in procs]
    known = sum(p.memory.process_bytes for p in procs)
    unaccounted = max(0, driver_used - known) if driver_used is not None else 0
    return DeviceLines(models=sum(footprints), contexts=sum(line.context_bytes for line in lines),
                       caches=sum(line.cache_bytes for line in lines), unaccounted=unaccounted,
                       driver_used=driver_used, lines=lines)
