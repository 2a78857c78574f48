"""Bodies of the async task API (`/v1/tasks`): a generation or custom job submitted now, its result fetched
later (or delivered to a webhook), for clients that cannot hold a connection through a cold start."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from serve_app.core.strict_model import StrictModel


class TaskStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskRequest(StrictModel):
    """`POST /v1/tasks`."""

    kind: str = Field(max_length=128, description="`txt2img`, `img2img`, `inpaint`, or a custom job type of the mode.")
    request: dict[str, Any] = Field(description="The native body of that route (a job: `{mode?, payload}`).")
    webhook: str | None = Field(None, max_length=2048, description="Called once the task is done (POST, signed); "
                                "its host must be on the server's allow-list.")


class TaskProgress(BaseModel):
    step: int = 0
    total: int = 0


class TaskError(BaseModel):
    status: int = Field(description="The HTTP status the direct request would have answered.")
    type: str
    message: str
    param: str | None = None


class WebhookState(BaseModel):
    url: str
    delivered: bool = False
    attempts: int = 0
    last_error: str | None = None


class TaskOut(BaseModel):
    id: str
    kind: str
    mode: str
    status: TaskStatus
    progress: TaskProgress = Field(default_factory=TaskProgress)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="When a finished task is forgotten.")
    result: Any = Field(None, description="Once succeeded: the direct route's response body.")
    error: TaskError | None = None
    webhook: WebhookState | None = None
