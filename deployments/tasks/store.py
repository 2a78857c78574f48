"""The TaskStore deployment: async tasks (`/v1/tasks`) run and kept outside the router.

Tasks live in the task database (`task_db`: SQLite under `state_dir` by default, PostgreSQL by URL) and their
results in the output store (`results`), never only in this replica's memory. So a TaskStore restart, a
crash or a cluster restart loses no accepted task: on start the store runs queued tasks again, re-runs a
task that was running once (a second interruption fails it with a reason that says so), and delivers
webhooks still pending. Finished tasks stay readable until they expire.

Fairness: per-client quotas (unfinished and stored tasks, bytes of results) under a global cap, and at most
`running_per_mode` tasks sent to one mode at once, taken round-robin by client: a client with 1000 tasks
neither locks others out of tasks nor queues 1000 jobs in front of their direct requests.

Run it as one replica: two stores on one database would both resume the same unfinished tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from deployments.protocol import GenerationResult
from deployments.router.fair_queue import FairQueue
from deployments.router.mode_client import ModeClient
from deployments.tasks.results import ResultStore
from deployments.tasks.submission import TaskSubmission
from deployments.tasks.task_db import TaskDatabase, TaskRow, database_url
from deployments.worker.mode_apps import mode_app_name, mode_handle
from serve_app.api.http_errors import error_facts
from serve_app.api.schemas.native import generation_response
from serve_app.api.schemas.tasks import TaskError, TaskOut, TaskProgress, TaskStatus, WebhookState
from serve_app.api.webhooks import deliver
from serve_app.config.app_args import TasksConfig
from serve_app.core.errors import (
    DreamLabError,
    QueueFullError,
    QuotaExceededError,
    UnknownModeError,
    WorkerTimeoutError,
)

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "DREAMLAB_STATE_DIR"
DATABASE_URL_ENV = "DREAMLAB_TASKS_DATABASE_URL"
MAX_RUNS = 2  # a task interrupted by restarts this often is failed, not started a third time
PROGRESS_WRITE_S = 1.0  # progress marks reach the database at most this often per task
SWEEP_EVERY_S = 10.0
IMAGE_TTL_S = 600.0  # an image served by URL stays fetchable this long


def state_root(config: TasksConfig, model_root: str | Path | None = None) -> Path:
    """Where the database file and results live: `state_dir`, $DREAMLAB_STATE_DIR, or the model root's
    `.dreamlab-state`."""
    chosen = config.state_dir or os.environ.get(STATE_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    return Path(model_root or ".").expanduser().resolve() / ".dreamlab-state"


def _app_name() -> str:
    """The Serve application this replica belongs to (apps may share a state folder or a database)."""
    try:
        from ray import serve

        return serve.get_replica_context().app_name or "dreamlab"
    except Exception:  # built outside a Serve replica (a unit test)
        return "dreamlab"


class TaskStore:
    def __init__(self, config: TasksConfig, mode_handles: dict[str, Any] | ModeClient, state_dir: str) -> None:
        self.config = config
        app = _app_name()
        self.workers = mode_handles if isinstance(mode_handles, ModeClient) else ModeClient(
            mode_handles, find=lambda mode: mode_handle(mode, mode_app_name(app, mode), check_exists=True))
        root = Path(state_dir)
        self.results = ResultStore(root / "results" / app)
        self.db = TaskDatabase(database_url(root, config.database_url or os.environ.get(DATABASE_URL_ENV)), app)
        self._opening: asyncio.Task[None] | None = None
        self._submit_lock = asyncio.Lock()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # cancelled by their client (not by a shutdown: those re-run)
        self._progress: dict[str, tuple[TaskProgress, float]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._queues: dict[str, FairQueue] = {}
        self._swept_at = 0.0

    # -- start and recovery --------------------------------------------------------------------------------
    async def _ready(self) -> None:
        """Open the database and resume what a previous run left (once; a failed open is tried again)."""
        if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
            self._opening = asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        await self.db.open()
        for row in await self.db.unfinished():
            await self._resume(row)
        for row in await self.db.pending_webhooks():
            self._spawn(self._notify(row.id))

    async def _resume(self, row: TaskRow) -> None:
        try:
            sub = TaskSubmission.decode(row.submission)
        except Exception as exc:
            logger.warning("task %s cannot be resumed: %s", row.id, exc)
            await self._finish(row.id, TaskStatus.FAILED, error=TaskError(
                status=500, type="job_error", message="the server restarted with a version that cannot resume "
                "this task; submit it again"))
            return
        if not await self.workers.knows(sub.mode):
            await self._finish(row.id, TaskStatus.FAILED, error=TaskError(
                status=503, type="unavailable_error", message=f"mode {sub.mode!r} is no longer served"))
            return
        if row.status == TaskStatus.RUNNING.value and row.runs >= MAX_RUNS:
            await self._finish(row.id, TaskStatus.FAILED, error=TaskError(
                status=503, type="unavailable_error", message=f"the server stopped {row.runs} times while this "
                "task ran; it is not started again"))
            return
        logger.info("[%s] task %s resumed after a restart (was %s)", sub.request_id, row.id, row.status)
        await self.db.update(row.id, status=TaskStatus.QUEUED.value)
        self._start(sub)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the API the router calls --------------------------------------------------------------------------
    async def submit(self, sub: TaskSubmission) -> TaskOut | DreamLabError:
        """The queued task, or the quota that refuses it: a refusal is returned, not raised, since it is an
        answer (a client over its quota sends many) and Serve logs every raised error with its traceback."""
        await self._ready()
        await self._sweep()
        async with self._submit_lock:  # quotas checked and the row written as one step
            try:
                await self._check_quotas(sub.owner)
            except (QueueFullError, QuotaExceededError) as refused:
                return refused
            await self.db.insert(TaskRow(
                id=sub.id, owner=sub.owner, kind=sub.kind, mode=sub.mode, status=TaskStatus.QUEUED.value,
                created_at=time.time(), submission=sub.encode(), webhook_url=sub.webhook))
        self._start(sub)
        logger.info("[%s] task %s (%s on mode %s) queued", sub.request_id, sub.id, sub.kind, sub.mode)
        found = await self._out(sub.id)
        assert found is not None
        return found

    async def _check_quotas(self, owner: str) -> None:
        c = self.config
        everyone = await self.db.usage()
        if everyone.stored >= c.max_tasks:
            raise QueueFullError(f"this server holds {everyone.stored} tasks, its most; retry later", retry_after_s=5)
        mine = await self.db.usage(owner)
        if mine.unfinished >= c.max_queued_per_client:
            raise QuotaExceededError(f"you have {mine.unfinished} unfinished tasks, your most "
                                     f"({c.max_queued_per_client}); wait for some to finish", retry_after_s=5)
        if mine.stored >= c.max_tasks_per_client:
            raise QuotaExceededError(f"you hold {mine.stored} tasks, your most ({c.max_tasks_per_client}); "
                                     "delete finished ones or wait until they expire", retry_after_s=30)
        if mine.result_bytes >= c.max_result_bytes_per_client:
            raise QuotaExceededError(f"your stored results take {mine.result_bytes} bytes, your most "
                                     f"({c.max_result_bytes_per_client}); delete finished tasks", retry_after_s=30)

    async def get(self, task_id: str, owner: str) -> TaskOut | None:
        await self._ready()
        await self._sweep()
        return await self._out(task_id, owner)

    async def cancel(self, task_id: str, owner: str) -> TaskOut | None:
        """Stop a task (queued: it never runs; running: the replica stops at the next step)."""
        await self._ready()
        row = await self.db.get(task_id)
        if row is None or row.owner != owner:
            return None
        runner = self._running.get(task_id)
        if runner is not None:
            self._cancelled.add(task_id)
            runner.cancel()
            await asyncio.wait({runner})
        elif row.status in (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value):
            await self._finish(task_id, TaskStatus.CANCELLED)
        return await self._out(task_id, owner)

    async def unfinished(self) -> int:
        """Tasks not done plus webhooks not yet delivered: what a drain waits for."""
        await self._ready()
        return len(await self.db.unfinished()) + len(await self.db.pending_webhooks())

    async def check_health(self) -> None:
        """Serve health check: the database answers (the first one also resumes a restarted store's tasks)."""
        await self._ready()
        await self._sweep()

    # -- images served by URL (OpenAI `response_format: url`), shared by every router replica -------------------
    async def put_image(self, data: bytes, media_type: str) -> str:
        key = uuid.uuid4().hex
        extension = media_type.rpartition("/")[2]
        await asyncio.to_thread(self.results.put_image, key, data, extension)
        return key

    async def get_image(self, key: str) -> tuple[bytes, str] | None:
        found = await asyncio.to_thread(self.results.find_image, key[:64], IMAGE_TTL_S)
        return None if found is None else (found[0], f"image/{found[1]}")

    # -- reading ---------------------------------------------------------------------------------------------
    async def _out(self, task_id: str, owner: str | None = None) -> TaskOut | None:
        row = await self.db.get(task_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        if row.expires_at is not None and row.expires_at < time.time():
            return None
        live = self._progress.get(task_id)
        progress = live[0] if live else TaskProgress(step=row.progress_step or 0, total=row.progress_total or 0)
        result = None
        if row.result_path:
            result = await asyncio.to_thread(self.results.get_result, row.result_path)
        webhook = None
        if row.webhook_url:
            webhook = WebhookState(url=row.webhook_url, delivered=row.webhook_state == "delivered",
                                   attempts=row.webhook_attempts, last_error=row.webhook_outcome)
        return TaskOut(id=row.id, kind=row.kind, mode=row.mode, status=TaskStatus(row.status), progress=progress,
                       created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                       expires_at=row.expires_at, result=result,
                       error=TaskError.model_validate_json(row.error) if row.error else None, webhook=webhook)

    async def _sweep(self) -> None:
        """Forget expired tasks and their result files (at most every SWEEP_EVERY_S)."""
        now = time.time()
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        expired = await self.db.expired(now)
        for row in expired:
            if row.result_path:
                await asyncio.to_thread(self.results.delete, row.result_path)
        await self.db.delete([row.id for row in expired])
        await asyncio.to_thread(self.results.sweep_images, IMAGE_TTL_S)

    # -- running ---------------------------------------------------------------------------------------------
    def _queue(self, mode: str) -> FairQueue:
        if mode not in self._queues:
            self._queues[mode] = FairQueue(mode, lambda: self.config.running_per_mode, -1,
                                           self.config.max_queued_per_client)
        return self._queues[mode]

    def _start(self, sub: TaskSubmission) -> None:
        runner = asyncio.get_running_loop().create_task(self._run(sub))
        self._running[sub.id] = runner
        runner.add_done_callback(lambda _: self._running.pop(sub.id, None))

    async def _run(self, sub: TaskSubmission) -> None:
        try:
            async with self._queue(sub.mode).slot(sub.owner):
                await self.db.mark_running(sub.id, time.time())
                try:
                    result = await asyncio.wait_for(self._execute(sub), self.config.call_timeout_s)
                except TimeoutError:
                    raise WorkerTimeoutError(f"mode {sub.mode!r} did not finish the task in "
                                             f"{self.config.call_timeout_s:g} s", retry_after_s=5) from None
            path, nbytes = await asyncio.to_thread(self.results.put_result, sub.id, result)
            await self._finish(sub.id, TaskStatus.SUCCEEDED, result_path=path, result_bytes=nbytes)
        except asyncio.CancelledError:
            if sub.id not in self._cancelled:
                raise  # the replica stops: the task stays queued/running in the database and is resumed
            self._cancelled.discard(sub.id)
            await self._finish(sub.id, TaskStatus.CANCELLED)
        except Exception as exc:  # the task fails as the direct request would have, with its status
            f = error_facts(exc, sub.request_id)
            await self._finish(sub.id, TaskStatus.FAILED,
                               error=TaskError(status=f.status, type=f.type, message=f.message, param=f.param))
        finally:
            self._progress.pop(sub.id, None)

    async def _finish(self, task_id: str, status: TaskStatus, *, error: TaskError | None = None,
                      result_path: str | None = None, result_bytes: int = 0) -> None:
        now = time.time()
        row = await self.db.get(task_id)
        values: dict[str, Any] = {"status": status.value, "finished_at": now,
                                  "expires_at": now + self.config.result_ttl_s,
                                  "error": error.model_dump_json() if error else None,
                                  "result_path": result_path, "result_bytes": result_bytes}
        live = self._progress.get(task_id)
        if live is not None:
            values.update(progress_step=live[0].step, progress_total=live[0].total)
        if row is not None and row.webhook_url:
            values["webhook_state"] = "pending"
        await self.db.update(task_id, **values)
        logger.info("task %s %s", task_id, status.value)
        if row is not None and row.webhook_url:
            self._spawn(self._notify(task_id))  # on its own task: a cancel does not wait for the deliveries

    async def _note_progress(self, task_id: str, step: int, total: int) -> None:
        """Readers see every step (memory); the database gets a mark at most every PROGRESS_WRITE_S, and the last."""
        now = time.monotonic()
        last = self._progress.get(task_id)
        written = last[1] if last is not None else None
        if written is None or now - written >= PROGRESS_WRITE_S or step == total:
            await self.db.update(task_id, progress_step=step, progress_total=total)
            written = now
        self._progress[task_id] = (TaskProgress(step=step, total=total), written)

    async def _execute(self, sub: TaskSubmission) -> Any:
        started = time.perf_counter()
        if not await self.workers.knows(sub.mode):  # a mode a refresh added, then took away again
            raise UnknownModeError(f"mode {sub.mode!r} is no longer served", param="mode")
        if sub.request is None:  # a custom job: no progress to report
            return await self.workers.run_job(sub.mode, sub.kind, sub.payload or {}, sub.request_id)
        result: GenerationResult | None = None
        async for event in self.workers.generate_stream(sub.mode, sub.request):
            if isinstance(event, GenerationResult):
                result = event
            else:
                await self._note_progress(sub.id, event.step, event.total)
        if result is None:
            raise RuntimeError("the generation stream ended without a result")
        response = generation_response(result, sub.mode, sub.family, sub.request.request_id,
                                       time.perf_counter() - started)
        return response.model_dump(mode="json", exclude_none=True)

    # -- webhooks ----------------------------------------------------------------------------------------------
    async def _notify(self, task_id: str) -> None:
        out = await self._out(task_id)
        if out is None or out.webhook is None:
            return
        body = json.dumps(out.model_dump(mode="json", exclude={"webhook"})).encode()
        delivered, attempts, outcome = await deliver(out.webhook.url, body, out.id, self.config)
        state = "delivered" if delivered else (outcome or "failed").split(":")[0]
        await self.db.update(task_id, webhook_state=state, webhook_attempts=attempts, webhook_outcome=outcome)
