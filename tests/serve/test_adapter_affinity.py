"""Affinity routing of adapter sets through Serve's model multiplexing: with 2 replicas that each keep 2
LoRA sets, 4 sets requested in rotation through the router are loaded about once each, not once per
request (benchmarks/bench_affinity.py measures the same with and without affinity)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from safetensors.torch import save_file

from serve_app.model.demo.demo_adapters import demo_lora
from serve_app.model.families import Family

pytestmark = pytest.mark.serve

SETS = 4
REQUESTS = 24


@pytest.fixture(scope="module")
def affinity_app(ray_serve, demo_models_dir, tmp_path_factory):
    from ray import serve

    from tests.serve.conftest import deploy_app

    root = tmp_path_factory.mktemp("affinity")
    shutil.copytree(demo_models_dir / "tiny-sd1", root / "tiny-sd1")
    (root / "loras").mkdir()
    for i in range(SETS):
        save_file(demo_lora(Family.SD1, seed=10 + i), str(root / "loras" / f"style-{i}.safetensors"))
    lora_bytes = (root / "loras" / "style-0.safetensors").stat().st_size
    modes = {"default_mode": "sd1", "modes": [{
        "name": "sd1", "checkpoint": "tiny-sd1", "lora_cache_bytes": 2 * lora_bytes, "adapter_sets_per_replica": 2,
        "defaults": {"width": 64, "height": 64, "steps": 1},
        "deployment": {"num_replicas": 2, "max_ongoing_requests": 2,
                       "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.1}}}]}
    url = deploy_app("affinity", modes, root, root)
    with httpx.Client(base_url=url, timeout=300) as client:
        yield client
    serve.delete("affinity")


def test_requests_with_the_same_loras_go_where_they_are_loaded(affinity_app):
    def one(i: int) -> int:
        r = affinity_app.post("/v1/txt2img", json={"prompt": "fox", "seed": i,
                                                   "loras": [{"name": f"style-{i % SETS}", "weight": 0.5}]})
        assert r.status_code == 200, r.text
        return r.json()["timings"]["adapter_loads"]

    with ThreadPoolExecutor(2) as pool:
        loads = sum(pool.map(one, range(REQUESTS)))
    assert SETS <= loads <= 2 * SETS, loads  # each set loaded about once; without affinity about once a request
