"""Which replica this is, which device it runs on and how much memory it holds: real CUDA numbers when CUDA
is there."""

from __future__ import annotations

import uuid

import torch


def replica_id() -> str:
    """Serve's id of this replica (`local-...` when built outside Serve, in unit tests)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"local-{uuid.uuid4().hex[:12]}"


class DeviceProbe:
    """Device identity (node id + GPU index, or the node's CPU) and CUDA memory readings.

    Without CUDA, Ray's GPU ids still name the simulated GPU a replica was placed on (`num_gpus` is
    accounted by Ray even on a CPU-only cluster), so simulated devices are distinct per GPU index.
    """

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()

    def device_id(self) -> str:
        import ray

        node = ray.get_runtime_context().get_node_id()[:12]
        gpus = ray.get_gpu_ids()
        return f"{node}:gpu{gpus[0]}" if gpus else f"{node}:cpu"

    def total_bytes(self) -> int | None:
        """Device size, or None where there is no CUDA (the registry then simulates one)."""
        return torch.cuda.mem_get_info()[1] if self.cuda else None

    def used_bytes(self) -> int | None:
        """Bytes in use on the device by every process (driver view), or None without CUDA."""
        if not self.cuda:
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free

    def allocated_bytes(self) -> int:
        """Bytes this process's PyTorch allocator holds (0 without CUDA)."""
        return torch.cuda.memory_allocated() if self.cuda else 0
