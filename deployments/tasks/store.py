"""The TaskStore deployment: async tasks (`/v1/tasks`) live here, not in the router, so a Router replica that
restarts loses none of them. It runs each task on its mode's deployment (a generation streamed, for its
progress; a custom job called), keeps the outcome for `result_ttl_s`, and calls the task's webhook.

A cancelled task that has not started never runs (Serve drops the queued call); a running one stops at the
next denoising step (the replica sees its caller go away). Everything is in this replica's memory: losing
it (or the cluster) loses the tasks; see the README.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from deployments.protocol import GenerationRequest, GenerationResult
from deployments.router.mode_client import ModeClient
from serve_app.api.http_errors import error_facts
from serve_app.api.schemas.native import generation_response
from serve_app.api.schemas.tasks import TaskError, TaskOut, TaskProgress, TaskStatus, WebhookState
from serve_app.api.webhooks import deliver
from serve_app.config.app_args import TasksConfig
from serve_app.core.errors import QueueFullError

logger = logging.getLogger(__name__)


@dataclass
class TaskSubmission:
    """A validated task, as the router hands it over: a resolved generation, or a custom job's payload."""

    id: str
    kind: str
    mode: str
    family: str
    owner: str
    request: GenerationRequest | None = None
    payload: dict[str, Any] | None = None
    webhook: str | None = None

    @property
    def request_id(self) -> str:
        """What its log lines carry: the submitting request's id for a generation."""
        return self.request.request_id if self.request is not None else self.id


@dataclass
class _Held:
    out: TaskOut
    owner: str
    runner: asyncio.Task | None = None
    notifier: asyncio.Task | None = None  # the webhook's deliveries


class TaskStore:
    def __init__(self, config: TasksConfig | None, mode_handles: dict[str, Any] | ModeClient) -> None:
        self.config = config or TasksConfig()
        self.workers = mode_handles if isinstance(mode_handles, ModeClient) else ModeClient(mode_handles)
        self.tasks: dict[str, _Held] = {}

    def _sweep(self) -> None:
        now = time.time()
        for task_id in [i for i, t in self.tasks.items() if t.out.expires_at is not None and t.out.expires_at < now]:
            del self.tasks[task_id]

    async def submit(self, sub: TaskSubmission) -> TaskOut:
        self._sweep()
        if len(self.tasks) >= self.config.max_tasks:
            raise QueueFullError(f"this server holds {len(self.tasks)} tasks, its most; retry later", retry_after_s=5)
        out = TaskOut(id=sub.id, kind=sub.kind, mode=sub.mode, status=TaskStatus.QUEUED, created_at=time.time(),
                      webhook=WebhookState(url=sub.webhook) if sub.webhook else None)
        held = self.tasks[sub.id] = _Held(out, sub.owner)
        held.runner = asyncio.get_running_loop().create_task(self._run(held, sub))
        logger.info("[%s] task %s (%s on mode %s) queued", sub.request_id, sub.id, sub.kind, sub.mode)
        return out.model_copy()

    def _mine(self, task_id: str, owner: str) -> _Held | None:
        self._sweep()
        held = self.tasks.get(task_id)
        return held if held is not None and held.owner == owner else None

    async def get(self, task_id: str, owner: str) -> TaskOut | None:
        held = self._mine(task_id, owner)
        return None if held is None else held.out.model_copy()

    async def cancel(self, task_id: str, owner: str) -> TaskOut | None:
        held = self._mine(task_id, owner)
        if held is None:
            return None
        if held.runner is not None and not held.out.status.done:
            held.runner.cancel()
            await asyncio.wait({held.runner})
        return held.out.model_copy()

    def _started(self, out: TaskOut) -> None:
        if out.status is TaskStatus.QUEUED:
            out.status, out.started_at = TaskStatus.RUNNING, time.time()

    async def _execute(self, out: TaskOut, sub: TaskSubmission) -> Any:
        started = time.perf_counter()
        if sub.request is None:  # a custom job: no progress to report
            self._started(out)
            return await self.workers.run_job(sub.mode, sub.kind, sub.payload or {}, sub.request_id)
        result: GenerationResult | None = None
        async for event in self.workers.generate_stream(sub.mode, sub.request):
            if isinstance(event, GenerationResult):
                result = event
            else:
                self._started(out)
                out.progress = TaskProgress(step=event.step, total=event.total)
        assert result is not None, "the generation stream ended without a result"
        response = generation_response(result, sub.mode, sub.family, sub.request.request_id,
                                       time.perf_counter() - started)
        return response.model_dump(mode="json", exclude_none=True)

    async def _run(self, held: _Held, sub: TaskSubmission) -> None:
        out = held.out
        try:
            out.result = await self._execute(out, sub)
            out.status = TaskStatus.SUCCEEDED
        except asyncio.CancelledError:
            out.status = TaskStatus.CANCELLED
        except Exception as exc:  # the task fails as the direct request would have, with its status
            f = error_facts(exc, sub.request_id)
            out.status, out.error = TaskStatus.FAILED, TaskError(status=f.status, type=f.type, message=f.message,
                                                                 param=f.param)
        out.finished_at = time.time()
        out.expires_at = out.finished_at + self.config.result_ttl_s
        logger.info("[%s] task %s %s", sub.request_id, sub.id, out.status.value)
        if out.webhook is not None:  # on its own task: a cancel does not wait for the deliveries
            held.notifier = asyncio.get_running_loop().create_task(self._notify(out))

    async def _notify(self, out: TaskOut) -> None:
        assert out.webhook is not None
        body = json.dumps(out.model_dump(mode="json", exclude={"webhook"})).encode()
        delivered, attempts, error = await deliver(out.webhook.url, body, out.id, self.config)
        out.webhook = WebhookState(url=out.webhook.url, delivered=delivered, attempts=attempts, last_error=error)

    def check_health(self) -> None:
        """Serve health check: alive when it answers."""
