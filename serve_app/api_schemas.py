"""HTTP request bodies of the native API beyond generation (see generation_request for txt2img/img2img)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from serve_app.strict_model import StrictModel


class JobRequest(StrictModel):
    """A custom job: which mode runs it and the job's own JSON payload."""

    mode: str | None = Field(None, description="Mode name or alias; the default mode when left out.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Passed to the job function as is.")
