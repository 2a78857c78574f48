"""The words for where a mode's model is, shared by the runner, the registry's reports and `/v1/modes`."""

from __future__ import annotations

from enum import Enum


class ModelState(str, Enum):
    COLD = "cold"
    LOADING = "loading"
    READY = "ready"
    OFFLOADED = "offloaded"  # in the RAM tier: a device copy away from ready
    FAILED = "failed"


class Tier(str, Enum):
    """Where a model's weights are: on its device, in its node's host memory, or only on disk."""

    VRAM = "vram"
    RAM = "ram"
    DISK = "disk"
