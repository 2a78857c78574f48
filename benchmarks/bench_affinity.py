"""Adapter affinity benchmark (a script, not a test): `python benchmarks/bench_affinity.py [--requests 100]`.

Real Ray Serve on the tiny demo SD1 model: a mode with 2 replicas, each keeping 2 LoRA sets (its LoRA
cache holds two files), and 4 single-LoRA sets requested in rotation, 2 at a time. Sent the way the router
sends them (under the set's id as Serve's `multiplexed_model_id`) and sent without that id, on a fresh
deployment each; prints the LoRA loads of both (target with affinity: <= 8 for 100 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = 4
TARGET = 8


def _modes(lora_bytes: int) -> dict:
    return {"default_mode": "sd1", "modes": [{
        "name": "sd1", "checkpoint": "tiny-sd1", "lora_cache_bytes": 2 * lora_bytes, "adapter_sets_per_replica": 2,
        "defaults": {"width": 64, "height": 64, "steps": 1},
        "deployment": {"num_replicas": 2, "max_ongoing_requests": 2,
                       "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.1}}}]}


async def _rotation(handle, requests: list, affinity: bool) -> int:
    """Send `requests` 2 at a time; the adapter files the replicas read from disk for them."""
    pending = list(requests)

    async def lane() -> int:
        loads = 0
        while pending:
            request = pending.pop(0)
            h = handle.options(multiplexed_model_id=request.adapter_set_id()) if affinity else handle
            loads += (await h.generate.remote(request)).timings.adapter_loads
        return loads

    return sum(await asyncio.gather(lane(), lane()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import ray
    import yaml
    from ray import serve
    from safetensors.torch import save_file

    from serve_app.api.adapter_catalog import AdapterCatalog
    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import LoraRef, Txt2ImgRequest
    from serve_app.app_builder import build_app
    from serve_app.config.modes_file import ModesFile
    from serve_app.model.demo.demo_adapters import demo_lora
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.families import Family

    root = Path(tempfile.mkdtemp(prefix="dreamlab-bench-affinity-"))
    write_demo_models(root, (Family.SD1,))
    (root / "loras").mkdir(exist_ok=True)
    for i in range(SETS):
        save_file(demo_lora(Family.SD1, seed=10 + i), str(root / "loras" / f"style-{i}.safetensors"))
    modes = _modes((root / "loras" / "style-0.safetensors").stat().st_size)
    (root / "modes.yaml").write_text(yaml.safe_dump(modes))
    mode = ModesFile.model_validate(modes).modes[0]
    catalog = AdapterCatalog(root)
    requests = [resolve_request(Txt2ImgRequest(prompt="fox", seed=i, loras=[LoraRef(name=f"style-{i % SETS}")]),
                                mode, Family.SD1, adapters=catalog) for i in range(args.requests)]

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    counts = {}
    try:
        for affinity in (False, True):
            serve.run(build_app({"modes_file": str(root / "modes.yaml"), "model_root": str(root)}),
                      name="affinity", route_prefix="/affinity")
            handle = serve.get_deployment_handle("sd1", "affinity")
            counts[affinity] = asyncio.run(_rotation(handle, requests, affinity))
            serve.delete("affinity")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.requests} requests, {SETS} LoRA sets in rotation, 2 replicas keeping 2 sets each: "
          f"LoRA loads with affinity {counts[True]} (target <= {TARGET}), without {counts[False]}")
    return 0 if counts[True] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
