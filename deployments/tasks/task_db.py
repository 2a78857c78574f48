"""Where tasks are kept: a SQL database, so an accepted task outlives the TaskStore replica, the cluster and
a crash. SQLite (a file under `tasks.state_dir`, WAL mode) by default; PostgreSQL when `tasks.database_url`
names one, for clusters that outgrow one node. Both through SQLAlchemy's async engine (drivers `aiosqlite`,
`asyncpg`), so one set of statements serves both.

A row is one task: what was submitted (JSON, re-run after a restart), its state and progress, where its
result lies in the output store (`results.ResultStore`: the database keeps the path, not the bytes) and how
its webhook delivery stands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

logger = logging.getLogger(__name__)

UNFINISHED = ("queued", "running")

metadata = MetaData()
tasks_table = Table(
    "dreamlab_tasks", metadata,
    Column("id", String(64), primary_key=True),
    Column("app", String(128), nullable=False, index=True),  # the Serve application (apps may share a database)
    Column("owner", String(128), nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("mode", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("expires_at", Float, index=True),
    Column("progress_step", Integer),
    Column("progress_total", Integer),
    Column("error", Text),  # the TaskError as JSON
    Column("result_path", Text),
    Column("result_bytes", BigInteger, nullable=False, default=0),
    Column("submission", Text, nullable=False),  # the TaskSubmission as JSON
    Column("runs", Integer, nullable=False, default=0),  # times it was started (a restart may re-run it)
    Column("webhook_url", Text),
    Column("webhook_state", String(16)),  # pending / delivered / refused / failed
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_outcome", Text),
)


class TaskRow(BaseModel):
    """One task as stored."""

    model_config = ConfigDict(extra="forbid")

    id: str
    app: str = "dreamlab"
    owner: str
    kind: str
    mode: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    error: str | None = None
    result_path: str | None = None
    result_bytes: int = 0
    submission: str
    runs: int = 0
    webhook_url: str | None = None
    webhook_state: str | None = None
    webhook_attempts: int = 0
    webhook_outcome: str | None = None


class OwnerUsage(BaseModel):
    """What one client holds: for per-client quotas."""

    unfinished: int
    stored: int
    result_bytes: int


def database_url(state_dir: str | Path, url: str | None) -> str:
    """The configured PostgreSQL URL (as `postgresql+asyncpg://...`), else the SQLite file in `state_dir`."""
    if url:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix):]
        return url
    path = Path(state_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path / 'tasks.sqlite3'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer; a crash keeps commits
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class TaskDatabase:
    """Async access to one Serve application's rows of the tasks table. `open()` before use, `close()` after."""

    def __init__(self, url: str, app: str = "dreamlab") -> None:
        self.url = url
        self.app = app
        self.engine: AsyncEngine | None = None

    async def open(self) -> TaskDatabase:
        engine = create_async_engine(self.url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        self.engine = engine
        logger.info("task database: %s", engine.dialect.name)
        return self

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise RuntimeError("TaskDatabase.open() was not called")
        return self.engine

    async def insert(self, row: TaskRow) -> None:
        async with self._engine().begin() as conn:
            await conn.execute(insert(tasks_table).values(**row.model_copy(update={"app": self.app}).model_dump()))

    async def update(self, task_id: str, **values: Any) -> None:
        async with self._engine().begin() as conn:
            await conn.execute(update(tasks_table).where(tasks_table.c.id == task_id).values(**values))

    async def mark_running(self, task_id: str, started_at: float) -> None:
        """The task starts (again): `runs` counts its starts, so a restart knows how often it was cut off."""
        await self.update(task_id, status="running", started_at=started_at, runs=tasks_table.c.runs + 1)

    async def get(self, task_id: str) -> TaskRow | None:
        async with self._engine().connect() as conn:
            query = select(tasks_table).where(tasks_table.c.id == task_id, tasks_table.c.app == self.app)
            found = (await conn.execute(query)).mappings().first()
        return None if found is None else TaskRow.model_validate(dict(found))

    async def _rows(self, *where: Any) -> list[TaskRow]:
        async with self._engine().connect() as conn:
            query = select(tasks_table).where(tasks_table.c.app == self.app, *where).order_by(tasks_table.c.created_at)
            found = (await conn.execute(query)).mappings().all()
        return [TaskRow.model_validate(dict(r)) for r in found]

    async def unfinished(self) -> list[TaskRow]:
        """Queued and running tasks, oldest first (what a restarted store must run again)."""
        return await self._rows(tasks_table.c.status.in_(UNFINISHED))

    async def pending_webhooks(self) -> list[TaskRow]:
        return await self._rows(tasks_table.c.webhook_state == "pending",
                                tasks_table.c.status.not_in(UNFINISHED))

    async def expired(self, now: float) -> list[TaskRow]:
        return await self._rows(tasks_table.c.expires_at.is_not(None), tasks_table.c.expires_at < now,
                                tasks_table.c.webhook_state.is_distinct_from("pending"))

    async def delete(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            async with self._engine().begin() as conn:
                await conn.execute(delete(tasks_table).where(tasks_table.c.id.in_(list(task_ids))))

    async def usage(self, owner: str | None = None) -> OwnerUsage:
        """Unfinished and stored tasks and result bytes, of one client or (None) of everyone."""
        unfinished = func.sum(tasks_table.c.status.in_(UNFINISHED).cast(Integer))
        query = select(unfinished, func.count(), func.coalesce(func.sum(tasks_table.c.result_bytes), 0)).where(
            tasks_table.c.app == self.app)
        if owner is not None:
            query = query.where(tasks_table.c.owner == owner)
        async with self._engine().connect() as conn:
            n_unfinished, n_stored, nbytes = (await conn.execute(query)).one()
        return OwnerUsage(unfinished=int(n_unfinished or 0), stored=int(n_stored), result_bytes=int(nbytes))
