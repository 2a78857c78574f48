"""A checkpoint file that cannot be served, and why: what discovery records instead of stopping."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from serve_app.core.errors import CheckpointError, UnsupportedCheckpointError
from serve_app.core.strict_model import StrictModel
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, inspect_checkpoint


class CheckpointProblem(StrictModel):
    """A file under MODEL_ROOT that is not served, with the reason."""

    path: str = Field(description="The file or folder, relative to MODEL_ROOT.")
    error_type: str = Field(description="What kind of problem: unsupported_checkpoint, not_a_checkpoint, "
                            "pickle_checkpoint, corrupt_checkpoint, ...")
    message: str = Field(description="Why it is not served, naming what is missing or what was found.")
    family: str | None = Field(None, description="Its family, when it was recognised.")
    variant: str | None = Field(None, description="Its finer variant, when it was recognised.")


def _error_type(exc: CheckpointError) -> str:
    name = type(exc).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def survey_checkpoint(path: Path, root: Path) -> CheckpointInfo | CheckpointProblem:
    """`path`'s CheckpointInfo when it can be served, else the problem (never raises a CheckpointError)."""
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    try:
        info = inspect_checkpoint(path)
    except CheckpointError as exc:
        return CheckpointProblem(path=rel, error_type=_error_type(exc), message=exc.message)
    if info.serving_refusal is not None:
        return CheckpointProblem(path=rel, error_type=_error_type(UnsupportedCheckpointError("")),
                                 message=f"{info.path}: {info.serving_refusal}", family=info.family.value,
                                 variant=info.variant)
    return info
