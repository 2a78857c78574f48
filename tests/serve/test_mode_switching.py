"""Two modes on one simulated GPU whose budget fits only one: switching by eviction, and 507 when too big."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_app.api.mode_catalog import ModeCatalog
from serve_app.config.modes_file import ModesFile

pytestmark = pytest.mark.serve

SMALL = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0}
GPU_HALF = {"ray_actor_options": {"num_cpus": 0, "num_gpus": 0.3}}


def _modes() -> dict:
    common = {"load_on_start": False, "deployment": GPU_HALF, "defaults": SMALL,
              "limits": {"max_width": 64, "max_height": 64, "max_num_images": 1}}
    return {"default_mode": "a", "modes": [
        {"name": "a", "checkpoint": "tiny-sd1", **common},
        {"name": "b", "checkpoint": "tiny-sdxl.safetensors", **common},
        {"name": "big", "checkpoint": "tiny-sdxl", "load_on_start": False, "deployment": GPU_HALF,
         "defaults": {**SMALL, "width": 256, "height": 256},
         "limits": {"max_width": 256, "max_height": 256, "max_num_images": 4}},
    ]}


@pytest.fixture(scope="module")
def switching_app(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    catalog = ModeCatalog(ModesFile.model_validate(_modes()), demo_models_dir)
    est = {name: m.estimate_bytes() for name, m in catalog.modes.items()}
    budget = max(est["a"], est["b"]) + 8 * 2**20  # room for either, never both
    assert est["a"] + est["b"] > budget and est["big"] > budget
    url = deploy_app("switch", _modes(), demo_models_dir, tmp_path_factory.mktemp("switch"),
                     registry={"budget_bytes": budget, "heartbeat_interval_s": 0.2})
    with httpx.Client(base_url=url, timeout=300) as client:
        yield client, budget
    serve.delete("switch")


def _gpu_device(client: httpx.Client) -> dict:
    devices = [d for d in client.get("/v1/registry").json()["devices"] if ":gpu" in d["device"]]
    assert len(devices) == 1, devices  # every replica of this app sits on the one simulated GPU
    return devices[0]


def test_alternating_requests_switch_modes_by_eviction_within_budget(switching_app):
    client, budget = switching_app
    for i, mode in enumerate(["a", "b", "a", "b", "a"]):
        r = client.post("/v1/txt2img", json={"prompt": "switch", "mode": mode, "seed": 1})
        assert r.status_code == 200, r.text
        # from the third request on, each switch brings the other mode back from the RAM tier
        assert r.json()["timings"].get("load_tier") == ("ram" if i >= 2 else "disk"), r.json()["timings"]
        dev = _gpu_device(client)
        assert dev["budget_bytes"] == budget
        assert dev["used_bytes"] + dev["reserved_bytes"] <= budget
        assert [m["mode"] for m in dev["models"]] == [mode]
    modes = {m["name"]: (m["state"], m["tier"]) for m in client.get("/v1/modes").json()["modes"]}
    assert modes["a"] == ("ready", "vram") and modes["b"] == ("offloaded", "ram") and modes["big"][1] == "disk"
    (node,) = [n for n in client.get("/v1/registry").json()["nodes"] if n["models"]]
    assert [m["mode"] for m in node["models"]] == ["b"] and 0 < node["ram_used_bytes"] <= node["ram_budget_bytes"]


def test_concurrent_requests_for_both_modes_all_succeed_within_budget(switching_app):
    client, budget = switching_app
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(
            lambda m: client.post("/v1/txt2img", json={"prompt": "both", "mode": m}), ["a", "b"] * 3))
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results if r.status_code != 200]
    dev = _gpu_device(client)
    assert dev["used_bytes"] + dev["reserved_bytes"] <= budget and len(dev["models"]) == 1


def test_mode_larger_than_the_budget_gets_507_with_the_numbers(switching_app):
    client, budget = switching_app
    r = client.post("/v1/txt2img", json={"prompt": "too big", "mode": "big"})
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["budget_bytes"] == budget
    assert err["needed_bytes"] > budget
    assert 0 <= err["free_bytes"] <= budget
    assert str(err["needed_bytes"]) in err["message"]
    # the failed load left nothing behind
    dev = _gpu_device(client)
    assert dev["reserved_bytes"] == 0 and dev["used_bytes"] <= budget
