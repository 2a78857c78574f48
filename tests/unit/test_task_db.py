"""The task database on SQLite (always) and on a real PostgreSQL (`DREAMLAB_TEST_POSTGRES_URL`, which
`.ci/run` sets from `scripts/start_test_postgres.sh`): rows survive closing and reopening, unfinished tasks
and pending webhooks are found again, expiry spares undelivered webhooks, usage is counted per client."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from deployments.tasks.results import ResultStore
from deployments.tasks.task_db import TaskDatabase, TaskRow, database_url

POSTGRES_URL = os.environ.get("DREAMLAB_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return database_url(tmp_path / "state", None)
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL: set DREAMLAB_TEST_POSTGRES_URL (bash scripts/start_test_postgres.sh)")
    return database_url(tmp_path, POSTGRES_URL)


def _row(owner: str, status: str = "queued", **values: object) -> TaskRow:
    return TaskRow(id=uuid.uuid4().hex, owner=owner, kind="txt2img", mode="sd1", status=status, created_at=1.0,
                   submission='{"kind": "txt2img"}', **values)


def test_rows_survive_a_reopen_and_unfinished_work_is_found_again(url: str) -> None:
    owner = f"key:{uuid.uuid4().hex[:8]}"  # PostgreSQL's database outlives one test: count only our rows

    async def scenario() -> None:
        db = await TaskDatabase(url).open()
        queued, running = _row(owner), _row(owner, "running")
        done = _row(owner, "succeeded", webhook_url="http://x", webhook_state="pending", expires_at=5.0,
                    result_path="tasks/ab/x.json", result_bytes=1000)
        for row in (queued, running, done):
            await db.insert(row)
        await db.close()

        db = await TaskDatabase(url).open()  # a restarted TaskStore
        mine = {r.id for r in await db.unfinished() if r.owner == owner}
        assert mine == {queued.id, running.id}
        assert done.id in {r.id for r in await db.pending_webhooks()}
        assert done.id not in {r.id for r in await db.expired(now=10.0)}  # its webhook is still owed
        await db.update(done.id, webhook_state="delivered", webhook_attempts=1)
        assert done.id in {r.id for r in await db.expired(now=10.0)}
        usage = await db.usage(owner)
        assert (usage.unfinished, usage.stored, usage.result_bytes) == (2, 3, 1000)
        for started in (20.0, 30.0):  # started, cut off by a restart, started again
            await db.mark_running(queued.id, started)
        again = await db.get(queued.id)
        assert again is not None and (again.status, again.started_at, again.runs) == ("running", 30.0, 2)
        await db.delete([done.id, queued.id, running.id])
        assert await db.get(done.id) is None
        assert (await db.usage(owner)).stored == 0
        await db.close()

    asyncio.run(scenario())


def test_the_result_store_keeps_files_by_relative_path(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "out")
    relative, nbytes = store.put_result("abc123", {"images": [{"b64": "AAAA"}]})
    assert nbytes > 0 and not Path(relative).is_absolute()
    assert ResultStore(tmp_path / "out").get_result(relative) == {"images": [{"b64": "AAAA"}]}  # a new process
    store.delete(relative)
    assert store.get_result(relative) is None
    with pytest.raises(ValueError):
        store.put_result("../../etc/passwd", {})
    with pytest.raises(ValueError):
        store.read("../outside")
