"""Bodies of the async task API (`/v1/tasks`): a generation or custom job submitted now, its result fetched
later (or delivered to a webhook), for clients that cannot hold a connection through a cold start."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from serve_app.api.schemas.error_paths import inner, relocated
from serve_app.api.schemas.native import Img2ImgRequest, InpaintRequest, JobRequest, Txt2ImgRequest
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


GENERATION_KINDS = ("txt2img", "img2img", "inpaint")
_WEBHOOK = Field(None, max_length=2048, description="Called once the task is done (POST, signed); its host must be "
                 "on the server's allow-list.")


class Txt2ImgTask(StrictModel):
    """A txt2img task: `request` is the body of `POST /v1/txt2img`."""

    kind: Literal["txt2img"]
    request: Txt2ImgRequest
    webhook: str | None = _WEBHOOK


class Img2ImgTask(StrictModel):
    """An img2img task: `request` is the body of `POST /v1/img2img`."""

    kind: Literal["img2img"]
    request: Img2ImgRequest
    webhook: str | None = _WEBHOOK


class InpaintTask(StrictModel):
    """An inpainting task: `request` is the body of `POST /v1/inpaint`."""

    kind: Literal["inpaint"]
    request: InpaintRequest
    webhook: str | None = _WEBHOOK


class JobTask(StrictModel):
    """A custom job task: `kind` names a job type of the mode, `request` is the body of `POST /v1/jobs/{kind}`."""

    kind: str = Field(max_length=128, description="A custom job type of the mode (see `jobs` in `GET /v1/modes`).")
    request: JobRequest
    webhook: str | None = _WEBHOOK


def _task_tag(value: Any) -> str:
    """Which body a task is: its `kind` when that is a generation, else a custom job."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in GENERATION_KINDS else "job"


Task = Annotated[
    Annotated[Txt2ImgTask, Tag("txt2img")] | Annotated[Img2ImgTask, Tag("img2img")]
    | Annotated[InpaintTask, Tag("inpaint")] | Annotated[JobTask, Tag("job")],
    Discriminator(_task_tag),
]


class TaskRequest(RootModel[Task]):
    """`POST /v1/tasks`: a generation (`txt2img`, `img2img`, `inpaint`) or a custom job, told apart by `kind`.

    An error names the field as the direct route would (`steps`, not `txt2img.request.steps`)."""

    @model_validator(mode="wrap")
    @classmethod
    def _errors_as_the_route_names_them(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> TaskRequest:
        try:
            return handler(value)
        except ValidationError as exc:
            raise relocated(exc, _MOVE) from None


_MOVE = inner("request", tags=(*GENERATION_KINDS, "job"))


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
