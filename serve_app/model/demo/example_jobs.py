"""Example custom job types (named in `configs/demo_modes.yaml` by import path).

A job is `fn(ctx: JobContext, payload: dict) -> JSON-able`; errors it raises go back to the client as JSON.
"""

from __future__ import annotations

from typing import Any

from serve_app.core.errors import RequestValidationError
from serve_app.model.generation.custom_jobs import JobContext


def describe(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """What is loaded on this replica: family, device, dtype, parameter bytes. Payload: `{"echo": any}`."""
    unknown = set(payload) - {"echo"}
    if unknown:
        raise RequestValidationError(f"`payload` has unknown keys {sorted(unknown)}; describe takes only 'echo'",
                                     param="payload")
    pipes = ctx.pipelines
    return {
        "mode": ctx.runner.mode.name,
        "family": pipes.family.value,
        "device": str(pipes.device),
        "dtype": str(pipes.dtype).removeprefix("torch."),
        "parameter_bytes": ctx.runner.parameter_bytes(),
        "components": sorted(k for k, v in pipes.base.components.items() if v is not None),
        "echo": payload.get("echo"),
    }
