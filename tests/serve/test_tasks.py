"""Async tasks on the demo application: submitted (202), polled, completed with a signed webhook delivered
to a receiver the test runs, refused for a webhook host off the allow-list, cancelled, validated like the
direct routes, and still there after the Router replica is killed (the TaskStore holds them)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import pytest

from tests.serve.conftest import WEBHOOK_SECRET, wait_ready

pytestmark = pytest.mark.serve

GEN = {"prompt": "a task", "mode": "sd1", "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=120) as c:
        yield c


def _wait(client: httpx.Client, task_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise TimeoutError(task)


def test_a_task_completes_and_its_signed_webhook_arrives(client, receiver):
    url, got = receiver
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": GEN, "webhook": url})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running"), r.text
    task = _wait(client, r.json()["id"])
    assert task["status"] == "succeeded" and task["result"]["images"][0]["b64"] and task["result"]["mode"] == "sd1"
    assert task["progress"] == {"step": 2, "total": 2}
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.1)
    headers, body = got[0]
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-dreamlab-signature"] == expected and headers["x-dreamlab-task"] == task["id"]
    assert json.loads(body)["status"] == "succeeded"
    assert client.get(f"/v1/tasks/{task['id']}").json()["webhook"]["delivered"] is True


def test_webhooks_off_the_allow_list_and_bad_tasks_are_refused(client):
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": GEN, "webhook": "http://example.com/hook"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "webhook" and "allow-list" in r.text
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": {**GEN, "steps": 0}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "steps"
    r = client.post("/v1/tasks", json={"kind": "paint-a-wall", "request": {"mode": "sd1"}})
    assert r.status_code == 404 and r.json()["error"]["param"] == "kind" and "describe" in r.text
    assert client.get("/v1/tasks/no-such-task").status_code == 404


def test_a_custom_job_as_a_task(client):
    r = client.post("/v1/tasks", json={"kind": "describe", "request": {"mode": "sd1", "payload": {"echo": 7}}})
    task = _wait(client, r.json()["id"])
    assert task["status"] == "succeeded" and task["result"]["echo"] == 7


def test_a_running_task_is_cancelled(client):
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": {**GEN, "steps": 50, "num_images": 4}})
    task_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/tasks/{task_id}").json()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = client.delete(f"/v1/tasks/{task_id}").json()
    assert cancelled["status"] == "cancelled" and cancelled.get("result") is None
    assert cancelled["progress"]["step"] < 50
    assert client.post("/v1/txt2img", json=GEN).status_code == 200  # the replica is free again


def test_a_task_survives_a_killed_router_replica(client, demo_url):
    import ray

    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": {**GEN, "steps": 20}})
    task_id = r.json()["id"]
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "dreamlab#Router#" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    time.sleep(1)
    wait_ready(demo_url)
    task = _wait(client, task_id)
    assert task["status"] == "succeeded" and task["result"]["images"]


def _kill_task_store() -> None:
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if "dreamlab#TaskStore#" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def test_a_task_survives_a_killed_task_store_and_its_webhook_arrives_once(client, receiver):
    url, got = receiver
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": {**GEN, "steps": 20}, "webhook": url})
    task_id = r.json()["id"]
    _kill_task_store()  # SIGKILL: nothing of the replica's memory survives; the database does
    deadline = time.monotonic() + 120
    task = None
    while time.monotonic() < deadline:
        r = client.get(f"/v1/tasks/{task_id}")
        if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed", "cancelled"):
            task = r.json()
            break
        time.sleep(0.5)
    assert task is not None and task["status"] == "succeeded" and task["result"]["images"], task
    deadline = time.monotonic() + 30
    while not any(json.loads(b)["id"] == task_id for _, b in got) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert [json.loads(b)["id"] for _, b in got].count(task_id) == 1
    assert client.get(f"/v1/tasks/{task_id}").json()["webhook"]["delivered"] is True


def test_one_client_cannot_queue_more_than_its_share(client):
    ids, refused = [], None
    for _ in range(40):  # the demo's per-client cap of unfinished tasks is 16
        r = client.post("/v1/tasks", json={"kind": "txt2img", "request": {**GEN, "steps": 50}})
        if r.status_code != 202:
            refused = r
            break
        ids.append(r.json()["id"])
    try:
        assert refused is not None and refused.status_code == 429, refused and refused.text
        assert "unfinished tasks" in refused.json()["error"]["message"] and refused.headers["retry-after"]
        assert len(ids) == 16
    finally:
        for task_id in ids:
            client.delete(f"/v1/tasks/{task_id}")
    r = client.post("/v1/tasks", json={"kind": "txt2img", "request": GEN})  # room again once they are cancelled
    assert r.status_code == 202 and _wait(client, r.json()["id"])["status"] == "succeeded"
