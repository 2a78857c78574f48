"""Draining: generations in flight during a downscale and during `dreamlab shutdown` all finish with 200;
a killed replica is replaced and its registry entry disappears within a bounded time; a request on a
replica that dies is run again on another."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import PORT, WEBHOOK_PORT

pytestmark = pytest.mark.serve

LONG = {"prompt": "slow", "steps": 80, "seed": 1}


def _modes(replicas: int) -> dict:
    return {"modes": [{
        "name": "slow", "checkpoint": "tiny-sd1",
        "defaults": {"width": 64, "height": 64, "steps": 4},
        "limits": {"max_steps": 500},
        "deployment": {"num_replicas": replicas, "max_ongoing_requests": 1, "graceful_shutdown_timeout_s": 120},
    }]}


@pytest.fixture(scope="module")
def drain_app(ray_serve, demo_models_dir, tmp_path_factory):
    from tests.serve.conftest import deploy_app

    tmp = tmp_path_factory.mktemp("drain")
    registry = {"dead_after_s": 3.0, "heartbeat_interval_s": 0.3}
    tasks = {"webhook_allowed_hosts": [f"http://127.0.0.1:{WEBHOOK_PORT}"], "webhook_allowed_networks": ["127.0.0.0/8"]}
    url = deploy_app("drain", _modes(2), demo_models_dir, tmp, registry=registry, tasks=tasks)

    def redeploy(replicas: int, wait: bool = False) -> str:
        return deploy_app("drain", _modes(replicas), demo_models_dir, tmp, registry=registry, tasks=tasks, wait=wait)

    return url, redeploy


def _replicas(url: str) -> dict:
    return httpx.get(f"{url}/v1/registry", timeout=30).json()["replicas"]


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _start_long_requests(url: str, n: int, steps: int = LONG["steps"]):
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(httpx.post, f"{url}/v1/txt2img", json={**LONG, "steps": steps}, timeout=300)
               for _ in range(n)]
    _wait_for(lambda: sum(r["inflight"] for r in _replicas(url).values()) >= n, 60, f"{n} requests in flight")
    return pool, futures


def test_downscale_lets_in_flight_generations_finish(drain_app):
    url, redeploy = drain_app
    assert len(_replicas(url)) == 2
    pool, futures = _start_long_requests(url, 2)
    redeploy(1)  # Serve stops one replica: it drains first
    assert [f.result().status_code for f in futures] == [200, 200]
    pool.shutdown()
    _wait_for(lambda: len(_replicas(url)) == 1, 60, "the stopped replica to leave the registry")
    models = [m for d in httpx.get(f"{url}/v1/registry").json()["devices"] for m in d["models"]]
    assert len(models) == 1


def test_killed_replica_is_replaced_and_its_entry_dropped(drain_app):
    import ray

    url, _ = drain_app
    (old_id,) = _replicas(url)
    actor_name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if "drain#slow#" in a["name"] and a["name"].endswith(old_id))
    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
    started = time.monotonic()
    _wait_for(lambda: old_id not in _replicas(url), 30, "the killed replica's entry to disappear")
    dropped_after = time.monotonic() - started
    assert dropped_after < 30
    new = _wait_for(lambda: [r for r in _replicas(url) if r != old_id], 180, "a replacement replica")
    assert new
    r = httpx.post(f"{url}/v1/txt2img", json={"prompt": "after the kill"}, timeout=300)
    assert r.status_code == 200, r.text


def test_a_replica_killed_mid_request_costs_a_retry_not_an_error(drain_app):
    import ray

    url, redeploy = drain_app
    redeploy(2)
    _wait_for(lambda: len(_replicas(url)) == 2, 180, "two replicas")
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(httpx.post, f"{url}/v1/txt2img", json=LONG, timeout=300)
        (busy,) = _wait_for(lambda: [rid for rid, r in _replicas(url).items() if r["inflight"]], 60,
                            "the request in flight")
        (actor,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if "drain#slow#" in a["name"] and a["name"].endswith(busy)]
        ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
        r = request.result()
    assert r.status_code == 200, r.text  # run again on the other replica
    assert busy not in r.text


@pytest.mark.shutdown
def test_dreamlab_shutdown_finishes_in_flight_work_then_stops_serve(drain_app, demo_models_dir, receiver):
    """`dreamlab shutdown` lets in-flight generations and an accepted task finish, then stops Serve; started
    again on the same state, the task's result is readable and its webhook was delivered once."""
    import ray
    from ray import serve

    from serve_app.cli.drain_shutdown import drain_and_shutdown

    url, redeploy = drain_app
    redeploy(2)
    _wait_for(lambda: len(_replicas(url)) == 2, 180, "two replicas")
    hook_url, hooks = receiver
    task = httpx.post(f"{url}/v1/tasks", json={"kind": "txt2img", "request": {"prompt": "queued", "steps": 40},
                                               "webhook": hook_url}, timeout=60)
    assert task.status_code == 202, task.text
    pool, futures = _start_long_requests(url, 2, steps=160)  # they outlast the drain flag's way to the routers
    stopper = threading.Thread(target=drain_and_shutdown, kwargs={"timeout_s": 120})
    stopper.start()
    _wait_for(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 503, 15, "readiness to go 503")
    refused = httpx.post(f"{url}/v1/txt2img", json={"prompt": "late"}, timeout=60)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert not any(f.done() for f in futures)  # the late request came while work was in flight
    assert [f.result().status_code for f in futures] == [200, 200]
    pool.shutdown()
    stopper.join(timeout=180)
    assert not stopper.is_alive()
    leftovers = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("SERVE_REPLICA")]
    assert leftovers == []
    # the accepted task was finished before Serve stopped: its row says so (and would outlive a restart)
    from deployments.tasks.task_db import TaskDatabase, database_url

    async def stored_status() -> str | None:
        db = await TaskDatabase(database_url(demo_models_dir / ".dreamlab-state", None), "drain").open()
        try:
            row = await db.get(task.json()["id"])
            return row.status if row else None
        finally:
            await db.close()

    assert asyncio.run(stored_status()) == "succeeded"
    # Serve started again on the same state: the result is read back over HTTP, the webhook is not sent again
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    url = redeploy(1, wait=True)
    again = httpx.get(f"{url}/v1/tasks/{task.json()['id']}", timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "succeeded" and again.json()["result"]["images"][0]["b64"]
    assert again.json()["webhook"]["delivered"] is True
    time.sleep(2)  # a pending delivery would go out right after the TaskStore's start
    assert [json.loads(body)["id"] for _, body in hooks] == [task.json()["id"]]
    serve.delete("drain")
