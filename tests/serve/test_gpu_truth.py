"""GPU truth on the serve tier (issue 22): a modes file without num_gpus is refused on the (simulated, 1 GPU)
test cluster naming the mode; `/readyz` stays 200 while the default mode is evicted (the app loads it on the
next request) while `/readyz?mode=` says 503; `/v1/registry` shows the placement."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from serve_app.core.errors import ConfigError
from tests.serve.conftest import wait_ready

pytestmark = pytest.mark.serve


def test_a_modes_file_without_num_gpus_is_refused_on_a_gpu_cluster(ray_serve, demo_models_dir, tmp_path):
    from serve_app.app_builder import build_app

    modes = tmp_path / "unplaced.yaml"
    modes.write_text(yaml.safe_dump({"modes": [
        {"name": "placed", "checkpoint": "tiny-sd1", "deployment": {"ray_actor_options": {"num_gpus": 0.5}}},
        {"name": "unplaced", "checkpoint": "tiny-sd1"}]}))
    with pytest.raises(ConfigError) as err:
        build_app({"modes_file": str(modes), "model_root": str(demo_models_dir)})
    assert "mode 'unplaced' names no num_gpus on a cluster with 1 GPUs" in err.value.message


def test_readiness_stays_while_the_default_mode_is_evicted(demo_url):
    with httpx.Client(base_url=demo_url, timeout=120) as client:
        assert client.get("/readyz", params={"mode": "sd1"}).status_code == 200
        assert client.post("/v1/modes/sd1/unload").status_code == 200
        try:
            deadline = time.monotonic() + 30
            while client.get("/readyz", params={"mode": "sd1"}).status_code == 200:  # the router's view ages 1 s
                assert time.monotonic() < deadline, "sd1 still reported loaded"
                time.sleep(0.2)
            answer = client.get("/readyz", params={"mode": "sd1"})
            assert answer.status_code == 503 and answer.json()["mode"] == "sd1"
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json() == {"status": "ready", "default_mode": "sd1"}
            # the app still serves the default mode: the request loads it
            assert client.post("/v1/txt2img", json={"prompt": "back", "steps": 2}).status_code == 200
        finally:
            client.post("/v1/modes/sd1/load")
    wait_ready(demo_url, mode="sd1")  # as the other modules found it


def test_the_registry_says_which_modes_share_a_card(demo_url):
    placement = {p["mode"]: p for p in httpx.get(f"{demo_url}/v1/registry", timeout=30).json()["placement"]}
    assert set(placement) == {"sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux", "flux-schnell", "flux-fill"}
    assert all(p["num_gpus"] == 0 and p["shares_card_with"] == [] for p in placement.values())  # the demo: CPU
