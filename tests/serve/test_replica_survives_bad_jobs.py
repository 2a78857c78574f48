"""Hostile input restarts nothing: requests that once broke a replica (the LMS sampler without scipy failed
inside the worker, which marked its pipeline failed, and Serve replaced the replica) now answer 200, and the
replicas that served them keep their ids and stay ready past a health-check period.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.serve

HEALTH_CHECK_PERIOD_S = 10  # the demo's (serve_app.config.app_args)
NATIVE_LMS = {"prompt": "x", "mode": "sd2", "scheduler": "lms", "width": 64, "height": 64, "steps": 2}
A1111_LMS = {"prompt": "x", "sampler_name": "LMS", "steps": 2, "width": 64, "height": 64}
ROUNDS = 3


@pytest.fixture(scope="module")
def client(demo_url):
    with httpx.Client(base_url=demo_url, timeout=120) as c:
        yield c


def replicas_by_mode(client: httpx.Client) -> dict[str, set[str]]:
    r = client.get("/v1/registry")
    assert r.status_code == 200, r.text
    by_mode: dict[str, set[str]] = {}
    for replica, seen in r.json()["replicas"].items():
        by_mode.setdefault(seen["mode"], set()).add(replica)
    return by_mode


def test_lms_requests_succeed_and_restart_no_replica(client):
    # the replicas serving both targets are up before their ids are recorded
    a1111_mode = json.loads(client.post("/sdapi/v1/txt2img", json={**A1111_LMS, "sampler_name": "Euler"})
                            .json()["info"])["sd_model_name"]
    assert client.post("/v1/txt2img", json={**NATIVE_LMS, "scheduler": "euler"}).status_code == 200
    targets = {"sd2", a1111_mode}
    before = replicas_by_mode(client)
    assert all(before.get(mode) for mode in targets), before

    for _ in range(ROUNDS):
        r = client.post("/v1/txt2img", json=NATIVE_LMS)
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == "sd2" and len(r.json()["images"]) == 1
        r = client.post("/sdapi/v1/txt2img", json=A1111_LMS)
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 1 and json.loads(r.json()["info"])["sd_model_name"] == a1111_mode

    # past a health-check period: a replica marked failed would show here, then be replaced
    deadline = time.monotonic() + HEALTH_CHECK_PERIOD_S + 2
    while time.monotonic() < deadline:
        states = {m["name"]: m["state"] for m in client.get("/v1/modes").json()["modes"]}
        assert all(states[mode] == "ready" for mode in targets), states
        replicas = client.get("/v1/registry").json()["replicas"]
        failed = {rid: seen for rid, seen in replicas.items() if seen["mode"] in targets and seen["state"] != "ready"}
        assert not failed, failed
        time.sleep(1)

    after = replicas_by_mode(client)
    # the targets' replicas are the same ones (other modes may autoscale meanwhile; they got no request here)
    assert {mode: after.get(mode) for mode in targets} == {mode: before[mode] for mode in targets}
    r = client.post("/v1/txt2img", json={"prompt": "a red fox", "mode": "sd2", "width": 64, "height": 64, "seed": 7})
    assert r.status_code == 200, r.text
