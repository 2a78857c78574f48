"""Dream Lab's metrics on Ray's Prometheus endpoint after a little traffic on the demo application: each
series group is there with the labels an operator filters by (mode, route, status, stage, tier, reason,
device, kind)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.serve.conftest import METRICS_PORT

pytestmark = pytest.mark.serve

EXPECTED = [  # (metric, labels that must appear together on one of its samples)
    ("ray_dreamlab_requests_total", {"mode": "sd1", "route": "/v1/txt2img", "status": "200"}),
    ("ray_dreamlab_requests_total", {"mode": "sd1", "route": "/v1/txt2img", "status": "422"}),
    ("ray_dreamlab_request_stage_seconds_bucket", {"mode": "sd1", "stage": "inference"}),
    ("ray_dreamlab_request_stage_seconds_bucket", {"mode": "sd1", "stage": "queue"}),
    ("ray_dreamlab_request_stage_seconds_bucket", {"mode": "sd2", "stage": "load"}),
    ("ray_dreamlab_request_stage_seconds_bucket", {"mode": "sd1", "stage": "total"}),
    ("ray_dreamlab_queue_depth", {"mode": "sd1"}),
    ("ray_dreamlab_model_loads_total", {"mode": "sd2", "tier": "disk"}),
    ("ray_dreamlab_model_load_seconds_bucket", {"mode": "sd2", "tier": "disk"}),
    ("ray_dreamlab_model_moves_total", {"mode": "sd2", "to": "disk", "reason": "operator"}),
    ("ray_dreamlab_vram_bytes", {"kind": "free"}),
    ("ray_dreamlab_vram_bytes", {"kind": "used"}),
    ("ray_dreamlab_models", {"tier": "vram"}),
]
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+\S+', re.M)


def _samples(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(name, dict(re.findall(r'(\w+)="([^"]*)"', labels))) for name, labels in SAMPLE.findall(text)]


def _missing(text: str) -> list:
    samples = _samples(text)
    return [(metric, want) for metric, want in EXPECTED
            if not any(name == metric and want.items() <= labels.items() for name, labels in samples)]


def test_metrics_after_traffic_carry_their_labels(demo_url):
    with httpx.Client(base_url=demo_url, timeout=300) as client:
        assert client.post("/v1/txt2img", json={"prompt": "m", "mode": "sd1", "steps": 2}).status_code == 200
        assert client.post("/v1/txt2img", json={"prompt": "m", "mode": "sd1", "steps": 0}).status_code == 422
        assert client.post("/v1/modes/sd2/unload").status_code == 200  # a move off the device (operator)
        r = client.post("/v1/txt2img", json={"prompt": "m", "mode": "sd2", "steps": 2})  # a load from disk
        assert r.status_code == 200 and r.json()["timings"]["load_s"] is not None
    deadline, missing, text = time.monotonic() + 90, EXPECTED, ""
    while missing and time.monotonic() < deadline:  # Ray exports every few seconds
        time.sleep(2)
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).text
        missing = _missing(text)
    assert not missing, (missing, [line for line in text.splitlines() if "dreamlab" in line][:40])
