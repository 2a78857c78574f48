"""The words for where a mode's model is, shared by the runner, the registry's reports and `/v1/modes`."""

from __future__ import annotations

from enum import Enum


class ModelState(str, Enum):
    COLD = "cold"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
