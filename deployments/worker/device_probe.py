"""Which replica this is, which device it runs on and how much memory it holds: real CUDA numbers when CUDA
is there.

Device identity is the physical device: on CUDA the GPU's UUID (what `nvidia-smi -L` prints), so every replica
on one card books into one ledger whatever Ray GPU index or fraction it got (a replica Ray placed with no GPU
that still sees one is booked on that card too); without CUDA the GPU Ray simulated for the replica (its
index: `num_gpus` is accounted by Ray even on a CPU-only cluster), else the node's CPU.
"""

from __future__ import annotations

import logging
import os
import uuid

import torch

from deployments.protocol import ProcessMemory

logger = logging.getLogger(__name__)

# Without NVML the CUDA context of a process cannot be read; this is what one CUDA 12 context with PyTorch's
# kernels loaded lazily takes on an H100-class card (measured by tests/gpu: `test_context_estimate`).
CONTEXT_ESTIMATE_BYTES = 512 * 1024**2


def replica_id() -> str:
    """Serve's id of this replica (`local-...` when built outside Serve, in unit tests)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"local-{uuid.uuid4().hex[:12]}"


def gpu_uuid(index: int = 0) -> str:
    """The physical identity of CUDA device `index` (`GPU-<uuid>`)."""
    return f"GPU-{torch.cuda.get_device_properties(index).uuid}"


def nvml_process_bytes(index: int = 0) -> int | None:
    """What the driver says this process holds on the device (NVML, when `nvidia-ml-py` is installed)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(gpu_uuid(index))
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except Exception as exc:  # no permission in a container, an old driver: fall back to the estimate
        logger.debug("NVML could not read this process's memory: %s", exc)
    return None


class DeviceProbe:
    """Device identity and CUDA memory readings (subclassed by tests with fixed numbers)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()

    def device_id(self) -> str:
        import ray

        node = ray.get_runtime_context().get_node_id()[:12]
        if self.cuda:
            return f"{node}:{gpu_uuid()}"
        gpus = ray.get_gpu_ids()
        return f"{node}:gpu{gpus[0]}" if gpus else f"{node}:cpu"

    def gpu_fraction(self) -> float | None:
        """The `num_gpus` Ray placed this replica with (0: none), or None outside Ray."""
        try:
            import ray

            return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
        except Exception:
            return None

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

    def process_memory(self) -> ProcessMemory | None:
        """This process's own use of its device: context, allocator reserve and use (None without CUDA)."""
        if not self.cuda:
            return None
        reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
        whole = nvml_process_bytes()
        context = whole - reserved if whole is not None and whole > reserved else CONTEXT_ESTIMATE_BYTES
        return ProcessMemory(context_bytes=context, allocator_reserved_bytes=reserved,
                             allocator_allocated_bytes=allocated)

    def return_cache(self) -> None:
        """Give the allocator's unused cached blocks back to the driver (blocks in use stay)."""
        if self.cuda:
            torch.cuda.empty_cache()
