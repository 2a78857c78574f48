"""A mode replica that stops answering (SIGSTOP: a stuck process) costs its callers a timeout answer, not
their requests for ever: the router answers 504 naming the mode when `timeouts.generate_s` runs out, the
request's slot is freed (the next request is not stuck behind it), and once the process runs again the
mode serves."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.serve.conftest import ray_process_pid

pytestmark = pytest.mark.serve

GEN = {"prompt": "stuck", "width": 64, "height": 64, "steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def hung_app(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    modes = {"modes": [{"name": "stuck", "checkpoint": "tiny-sd1",
                        "deployment": {"max_ongoing_requests": 1}}]}
    url = deploy_app("hung", modes, demo_models_dir, tmp_path_factory.mktemp("hung"),
                     registry={"dead_after_s": 60.0}, timeouts={"generate_s": 3.0})
    yield url
    serve.delete("hung")


def test_a_stopped_replica_is_a_504_and_frees_its_slot(hung_app):
    assert httpx.post(f"{hung_app}/v1/txt2img", json=GEN, timeout=120).status_code == 200
    pid = ray_process_pid("ray::ServeReplica:hung:stuck")
    os.kill(pid, signal.SIGSTOP)
    try:
        answers = []
        for _ in range(2):  # the second would wait for ever behind the first if its slot were kept
            started = time.perf_counter()
            r = httpx.post(f"{hung_app}/v1/txt2img", json=GEN, timeout=60)
            answers.append((r.status_code, time.perf_counter() - started, r.json()["error"]["message"]))
        for status, took_s, message in answers:
            assert status == 504, answers
            assert "mode 'stuck' did not answer the generation within 3 s" in message
            assert took_s < 10, answers
        assert httpx.get(f"{hung_app}/healthz", timeout=5).status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while (r := httpx.post(f"{hung_app}/v1/txt2img", json=GEN, timeout=60)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
