"""Containment: a bad job fails its request, never the replica.

Dream Lab's own errors pass through. Anything else fails the request after the device memory it held is
freed: a CUDA out-of-memory error is a 507 (`InsufficientVRAMError`) with the numbers and the model stays
loaded; any other error is a 500 without its text (the traceback goes to the log) and, for generations, is
followed by the runner's self-check: only a failed self-check marks the model FAILED (the health check then
fails, Serve replaces the replica).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import torch

from deployments.protocol import ModelState
from deployments.worker.device_probe import DeviceProbe
from serve_app.core.errors import DreamLabError, InsufficientVRAMError, JobFailedError
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.vram_estimate import VramEstimate
from serve_app.model.loading.pipeline_loader import free_device_memory

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def _no_adapters() -> int:
    return 0


@dataclass(frozen=True)
class ModelUse:
    """One use of the loaded model: what it is (for messages), whose it is, the memory it needs (`needed`;
    working memory beyond the model's standing share is reserved for it), the bytes of the adapters it will
    load (`adapters`, asked when its turn comes) and whether an unexpected error is followed by the
    self-check (`check_pipeline`: generations yes, custom jobs no)."""

    what: str
    request_id: str
    needed: VramEstimate
    check_pipeline: bool
    adapters: Callable[[], int] = field(default=_no_adapters)


def insufficient_vram(probe: DeviceProbe, what: str, needed_bytes: int, advice: str = "") -> InsufficientVRAMError:
    """The 507 of an out-of-memory error, with the device's numbers."""
    total = probe.total_bytes() or 0
    free = total - (probe.used_bytes() or total)
    return InsufficientVRAMError(f"{what} ran out of device memory: it needs about {needed_bytes} bytes, {free} "
                                 f"are free of {total}{advice}", needed_bytes=needed_bytes, free_bytes=free,
                                 budget_bytes=total)


class Containment:
    def __init__(self, runner: ModelRunner, mode: str, probe: DeviceProbe) -> None:
        self.runner = runner
        self.mode = mode
        self.probe = probe

    def run(self, use: ModelUse, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` (in a worker thread), contained: see the module's docstring."""
        error: str | None = None  # None: out of memory
        try:
            return fn(*args, **kwargs)
        except DreamLabError:
            raise
        except torch.cuda.OutOfMemoryError:
            logger.warning("[%s] %s ran out of device memory on mode %s", use.request_id, use.what, self.mode)
        except Exception as exc:
            logger.exception("[%s] %s failed on mode %s", use.request_id, use.what, self.mode)
            error = f"{type(exc).__name__}: {exc}"
        # out of the except blocks: the error's traceback, and the tensors its frames held, are gone
        free_device_memory(self.runner.device)
        if error is None:
            raise insufficient_vram(self.probe, f"{use.what} on mode {self.mode!r}", use.needed.total_bytes,
                                    f"; try a smaller width/height/num_images (request id {use.request_id})")
        if use.check_pipeline:
            self.check_pipeline(use.request_id, error)
        raise JobFailedError(f"{use.what} failed on mode {self.mode!r} (request id {use.request_id})", param=None)

    def check_pipeline(self, request_id: str, error: str) -> None:
        """After an unexpected error: a pipeline that fails its self-check is marked FAILED."""
        try:
            passed = self.runner.self_check(request_id)
        except Exception:
            logger.exception("[%s] mode %s self-check raised", request_id, self.mode)
            passed = False
        if passed:
            logger.warning("[%s] mode %s passed its self-check after the error: the replica keeps serving",
                           request_id, self.mode)
            return
        self.runner.state = ModelState.FAILED
        self.runner.last_error = error
        logger.error("[%s] mode %s failed its self-check after the error: marked failed, the replica will be "
                     "replaced", request_id, self.mode)

    def check_health(self) -> None:
        """Unhealthy (Serve replaces the replica) when the pipeline broke: it failed its self-check."""
        if self.runner.state is ModelState.FAILED:
            raise RuntimeError(f"mode {self.mode} pipeline is broken: {self.runner.last_error}")
