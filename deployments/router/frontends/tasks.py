"""Routes of the async task API (`/v1/tasks`): validated here like the direct routes (same resolution,
limits and access control), run and kept by the TaskStore deployment (see `deployments.tasks.store`)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from deployments.router.access_control import CLIENT
from deployments.router.frontends.native import NATIVE
from deployments.router.gateway import Gateway
from deployments.router.gateway_dependency import GatewayDep
from deployments.router.http_app import OffLoopJsonRoute
from deployments.router.request_context import current_caller
from deployments.tasks.client import TaskStoreClient
from deployments.tasks.submission import TaskSubmission
from serve_app.api.http_errors import FrontEnd, error_responses
from serve_app.api.schemas.tasks import JobTask, TaskOut, TaskRequest
from serve_app.api.webhooks import check_webhook
from serve_app.core.errors import ModeUnavailableError, UnknownJobTypeError, UnknownTaskError
from serve_app.core.strict_model import quote

TASK_ERRORS = error_responses(FrontEnd.NATIVE, 404, 422, 429, 503, 504)

router = APIRouter(route_class=OffLoopJsonRoute)


def _store(gw: Gateway) -> TaskStoreClient:
    """The TaskStore's client."""
    if gw.task_store is None:
        raise ModeUnavailableError("tasks are not available on this server", retry_after_s=60)
    return gw.task_store


def _known(task_id: str, task: TaskOut | None) -> TaskOut:
    if task is None:
        raise UnknownTaskError(f"task {quote(task_id)} not found (unknown, expired, or not yours)",
                               param="task_id")
    return task


@router.post("/v1/tasks", tags=NATIVE, dependencies=CLIENT, status_code=202, response_model=TaskOut,
             response_model_exclude_none=True, summary="Submit a task (answered at once; poll or get a webhook)",
             responses=TASK_ERRORS)
async def submit_task(gw: GatewayDep, body: TaskRequest) -> TaskOut:
    """A generation (`txt2img`, `img2img`, `inpaint`: `request` is that route's body) or a custom job
    (`request` is `{mode?, payload}`), checked now as the direct route would check it."""
    store = _store(gw)
    task = body.root
    async with gw.accepting():
        request, payload = None, None
        if isinstance(task, JobTask):
            mode = gw.select(task.request.mode)
            if task.kind not in mode.config.jobs:
                raise UnknownJobTypeError(
                    f"`kind` {quote(task.kind)} is neither txt2img, img2img, inpaint nor a job type of mode "
                    f"{mode.name!r} ({', '.join(mode.config.jobs) or 'it has none'})", param="kind")
            payload = task.request.payload
        else:
            mode = gw.select(task.request.mode)
            request = await gw.resolve(task.request, mode)
        webhook = check_webhook(task.webhook, gw.tasks_config) if task.webhook else None
        out: TaskOut = await store.submit(TaskSubmission(  # a fresh id: a client's X-Request-Id may repeat
            id=uuid.uuid4().hex, kind=task.kind, mode=mode.name, family=mode.family.value,
            owner=current_caller().id, request=request, payload=payload, webhook=webhook))
        return out


@router.get("/v1/tasks/{task_id}", tags=NATIVE, dependencies=CLIENT, response_model=TaskOut,
            response_model_exclude_none=True, summary="A task's status, progress and result",
            responses=TASK_ERRORS)
async def get_task(gw: GatewayDep, task_id: str) -> TaskOut:
    return _known(task_id, await _store(gw).get(task_id[:64], current_caller().id))


@router.delete("/v1/tasks/{task_id}", tags=NATIVE, dependencies=CLIENT, response_model=TaskOut,
               response_model_exclude_none=True, summary="Cancel a task (a running one stops at its next step)",
               responses=TASK_ERRORS)
async def cancel_task(gw: GatewayDep, task_id: str) -> TaskOut:
    return _known(task_id, await _store(gw).cancel(task_id[:64], current_caller().id))
