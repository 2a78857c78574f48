"""Adapter affinity benchmark (a script, not a test):
`python benchmarks/bench_affinity.py [--requests 100] [--adapter lora|controlnet]`.

Real Ray Serve on the tiny demo SD1 model: a mode with 2 replicas, each keeping 2 adapter sets (its LoRA
cache, or with `--adapter controlnet` its ControlNet cache, holds two files), and 4 single-adapter sets
requested in rotation, 2 at a time: one LoRA each, or one ControlNet unit each (copies of the demo SD1
ControlNet under 4 names, preprocessor none, a 64x64 control image). Sent the way the router sends them
(under the set's id as Serve's `multiplexed_model_id`) and sent without that id, on a fresh deployment each;
prints the adapter loads the replicas report for both (target with affinity: <= 8 for 100 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = 4
TARGET = 8


def _modes(cache: dict) -> dict:
    """The mode: `cache` holds its adapter cache's setting (LoRA or ControlNet bytes, dtype)."""
    return {"default_mode": "sd1", "modes": [{
        "name": "sd1", "checkpoint": "tiny-sd1", "adapter_sets_per_replica": 2, **cache,
        "defaults": {"width": 64, "height": 64, "steps": 1},
        "deployment": {"num_replicas": 2, "max_ongoing_requests": 2,
                       "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.1}}}]}


def _lora_sets(root: Path) -> tuple[dict, Callable[[int], dict]]:
    """4 demo LoRAs under `root`/loras; the mode's cache (2 files) and a request's LoRA field."""
    from safetensors.torch import save_file

    from serve_app.api.schemas.native import LoraRef
    from serve_app.model.demo.demo_adapters import demo_lora
    from serve_app.model.families import Family

    (root / "loras").mkdir(exist_ok=True)
    for i in range(SETS):
        save_file(demo_lora(Family.SD1, seed=10 + i), str(root / "loras" / f"style-{i}.safetensors"))
    cache = {"lora_cache_bytes": 2 * (root / "loras" / "style-0.safetensors").stat().st_size}
    return cache, lambda i: {"loras": [LoraRef(name=f"style-{i % SETS}")]}


def _controlnet_sets(root: Path) -> tuple[dict, Callable[[int], dict]]:
    """4 copies of the demo SD1 ControlNet under `root`/controlnet; the mode's cache (2 of them, in fp32 as
    the cache counts them) and a request's one control unit."""
    import torch
    from PIL import Image

    from serve_app.api.adapter_catalog import AdapterCatalog
    from serve_app.api.schemas.controlnet import ControlUnit
    from serve_app.model.demo.demo_controlnets import demo_controlnet_paths
    from serve_app.model.inspection.adapter_inspect import AdapterKind

    single = demo_controlnet_paths(root)[1]  # the SD1 one as one file
    for i in range(SETS):
        shutil.copyfile(single, root / "controlnet" / f"bench-cn-{i}.safetensors")
    nets = {a.name: a for a in AdapterCatalog(root).of_kind(AdapterKind.CONTROLNET)}
    parameters = nets["bench-cn-0"].parameters or 0
    fp32 = torch.empty((), dtype=torch.float32).element_size()
    cache = {"dtype": "fp32", "control_cache_bytes": 2 * parameters * fp32}
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    return cache, lambda i: {"controls": [ControlUnit(model=f"bench-cn-{i % SETS}", image=image, preprocessor="none")]}


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
    parser.add_argument("--adapter", choices=("lora", "controlnet"), default="lora",
                        help="what the 4 sets in rotation are: one LoRA or one ControlNet unit each")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import ray
    import yaml
    from ray import serve

    from serve_app.api.adapter_catalog import AdapterCatalog
    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.app_builder import build_app
    from serve_app.config.modes_file import ModesFile
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.families import Family

    root = Path(tempfile.mkdtemp(prefix="dreamlab-bench-affinity-"))
    write_demo_models(root, (Family.SD1,))
    cache, adapter_fields = (_controlnet_sets if args.adapter == "controlnet" else _lora_sets)(root)
    modes = _modes(cache)
    (root / "modes.yaml").write_text(yaml.safe_dump(modes))
    mode = ModesFile.model_validate(modes).modes[0]
    catalog = AdapterCatalog(root)
    requests = [resolve_request(Txt2ImgRequest(prompt="fox", seed=i, **adapter_fields(i)),
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
    kind = "ControlNet" if args.adapter == "controlnet" else "LoRA"
    print(f"{args.requests} requests, {SETS} {kind} sets in rotation, 2 replicas keeping 2 sets each: "
          f"{kind} loads with affinity {counts[True]} (target <= {TARGET}), without {counts[False]}")
    return 0 if counts[True] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
