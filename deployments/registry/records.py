"""The registry's own bookkeeping (never sent anywhere: what it answers is in `protocol`)."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.protocol import ModelState, ProcessMemory


@dataclass
class Reservation:
    replica: str
    mode: str
    device: str
    bytes: int
    expires: float


@dataclass
class DeviceEntry:
    device: str
    total_bytes: int
    budget_bytes: int
    reported_used_bytes: int | None = None
    simulated: bool = True


@dataclass
class ReplicaSeen:
    mode: str
    device: str
    last_heartbeat: float
    inflight: int = 0
    state: ModelState = ModelState.COLD
    epoch: int = 0  # newest load/unload epoch the registry has heard of from this replica
    process: ProcessMemory | None = None  # its own use of its GPU (context, allocator), CUDA only
    gpu_fraction: float | None = None  # the num_gpus Ray placed it with
