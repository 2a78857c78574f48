"""Backlog-driven autoscaling on real Ray Serve (issue 22): with Serve's default `target_ongoing_requests` (2)
and the default `max_ongoing_requests` (2), a mode scales out on the requests waiting in the router's fair queue
(which Serve's own count never sees), and back in once they are served; a scaled-to-zero mode wakes on a queued
request.

The signal's path, and what it costs here: the router reports its waiting requests with each registry poll
(0.2 s); a mode replica learns its mode's backlog in its heartbeat answer (`heartbeat_interval_s`, 0.25 s here)
and hands it to Serve through `record_autoscaling_stats`, which Serve records every `look_back_period_s` / 5
and pushes to its controller every `metrics_interval_s` (0.25 s here: the mode's own autoscaling_config sets the
push interval of its replicas and of the handles to it; Serve's default is 10 s), averaging over
`look_back_period_s` (1 s here, default 30 s). The controller decides every 0.1 s and applies
`upscale_delay_s` / `downscale_delay_s` to what `BacklogPolicy` asks for. So the second replica is decided
within `upscale_delay_s` plus one decision interval: that path, ~1 s at these settings by the intervals, measured
at 1.6 s to the controller's decision and 2.0 s to `serve.status()` showing the replica on this 2-CPU machine
(its generations compete with the event loops that carry the signal); the test allows 3 s.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

import httpx
import pytest

pytestmark = pytest.mark.serve
logger = logging.getLogger(__name__)

APP = "backlog"
UPSCALE_DELAY_S = 3.0
DOWNSCALE_DELAY_S = 4.0
HEARTBEAT_S = 0.25
METRICS_INTERVAL_S = 0.25
LOOK_BACK_S = 1.0
# router poll (0.2 s) + heartbeat (0.25 s) + record (0.2 s) + push (0.25 s) + control loop (0.1 s) + reading
# serve.status(), with room for a busy 2-CPU machine: from the requests' arrival to the replica Serve shows
DECISION_INTERVAL_S = 3.0
BACKLOG = 16
FAST_METRICS = {"metrics_interval_s": METRICS_INTERVAL_S, "look_back_period_s": LOOK_BACK_S}


@pytest.fixture(scope="module")
def backlog_app(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    modes = {"modes": [
        {"name": "busy", "checkpoint": "tiny-sd1", "defaults": {"width": 64, "height": 64, "steps": 60},
         "deployment": {"graceful_shutdown_timeout_s": 10, "autoscaling_config": {
             "min_replicas": 1, "max_replicas": 2, "upscale_delay_s": UPSCALE_DELAY_S,
             "downscale_delay_s": DOWNSCALE_DELAY_S, **FAST_METRICS}}},  # Serve's default target: 2
        {"name": "sleepy", "checkpoint": "tiny-sd1", "defaults": {"width": 64, "height": 64, "steps": 2},
         "deployment": {"graceful_shutdown_timeout_s": 10, "autoscaling_config": {
             "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "downscale_delay_s": 600,
             **FAST_METRICS}}},
    ]}
    # the burst comes from one client at once: let all its bodies arrive together (the body guard's default is 8)
    url = deploy_app(APP, modes, demo_models_dir, tmp_path_factory.mktemp(APP),
                     registry={"heartbeat_interval_s": HEARTBEAT_S}, http={"max_unread_bodies_per_client": BACKLOG})
    yield url
    serve.delete(APP)


def replicas(mode: str) -> tuple[int, int]:
    """Serve's replicas of `mode`: (all it has decided on: starting, running or stopping; running)."""
    from ray import serve

    states = serve.status().applications[APP].deployments[mode].replica_states
    return sum(states.values()), states.get("RUNNING", 0)


def wait_for(what: str, predicate, timeout_s: float, poll_s: float = 0.1) -> float:
    """Seconds until `predicate()` held (measured before the check that saw it); fails naming `what` after
    `timeout_s`."""
    started = time.monotonic()
    while True:
        checked = time.monotonic() - started
        if predicate():
            return checked
        assert checked < timeout_s, f"{what} not within {timeout_s:g} s"
        time.sleep(poll_s)


def test_a_backlog_of_16_scales_the_mode_to_2_replicas_and_back(backlog_app):
    assert replicas("busy") == (1, 1)
    with httpx.Client(base_url=backlog_app, timeout=300) as client, \
            concurrent.futures.ThreadPoolExecutor(BACKLOG) as pool:
        sent = time.monotonic()
        answers = [pool.submit(client.post, "/v1/txt2img", json={"prompt": f"p{i}", "mode": "busy", "seed": i})
                   for i in range(BACKLOG)]
        bound = UPSCALE_DELAY_S + DECISION_INTERVAL_S
        decided = wait_for("a second replica", lambda: replicas("busy")[0] == 2, bound + 30)
        logger.info("second replica decided %.1f s after the burst (bound %.1f s)", decided, bound)
        assert decided <= bound, f"the second replica came {decided:.1f} s after the burst, not within {bound:g} s"
        # the new replica starts and loads, then takes its share of the backlog
        wait_for("a second running replica", lambda: replicas("busy")[1] == 2, 120, poll_s=0.5)
        done = [a.result() for a in answers]
        served_s = time.monotonic() - sent
    assert [r.status_code for r in done] == [200] * BACKLOG, [r.text[:200] for r in done if r.status_code != 200]
    back = wait_for("back to 1 replica", lambda: replicas("busy") == (1, 1),
                    DOWNSCALE_DELAY_S + LOOK_BACK_S + DECISION_INTERVAL_S + 20, poll_s=0.5)
    logger.info("16 requests served in %.1f s; back to 1 replica %.1f s later", served_s, back)


def test_a_scaled_to_zero_mode_wakes_on_a_queued_request(backlog_app):
    assert replicas("sleepy") == (0, 0)
    with httpx.Client(base_url=backlog_app, timeout=300) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        # three at once: the router lets one replica's worth (max_ongoing_requests 2) through to Serve's handle,
        # which wakes the mode; the third waits in the router's queue
        answers = [pool.submit(client.post, "/v1/txt2img", json={"prompt": f"wake {i}", "mode": "sleepy"})
                   for i in range(3)]
        done = [a.result() for a in answers]
        woke = time.monotonic() - started
    assert [r.status_code for r in done] == [200] * 3, [r.text[:200] for r in done]
    assert all(r.json()["mode"] == "sleepy" for r in done)
    assert replicas("sleepy") == (1, 1)
    logger.info("scaled-to-zero mode answered 3 requests %.1f s after they were sent", woke)
