"""Base -> refiner benchmark (a script, not a test): `python benchmarks/bench_refiner.py [--requests 10]`.

On the tiny SDXL demo models at 64x64, 8 steps, switch at 0.6: the split in one process (both runners,
the latents never leaving torch) vs through two Serve deployments (the latents travel as numpy through the
router). The hand-off is what the served split costs beyond its two replica jobs and one plain request's
routing overhead; the target is <= 10% of the refiner stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import yaml

PORT = 8126
TARGET = 0.10
REQ = {"prompt": "a castle", "width": 64, "height": 64, "steps": 8, "seed": 1}
SWITCH = 0.6


def in_process(root: Path, runs: int) -> tuple[float, float]:
    """Median seconds of the base stage and of the refiner stage, in one process."""
    import torch

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.job import Txt2Img
    from serve_app.model.generation.runner import ModelRunner

    base, refiner = (ModelRunner(ModeConfig(name=n, checkpoint=n), root / n, device=torch.device("cpu"))
                     for n in ("tiny-sdxl", "tiny-sdxl-refiner"))
    base.load()
    refiner.load()
    request = resolve_request(Txt2ImgRequest(**REQ), base.mode, base.family)
    request.job = Txt2Img(denoising_end=SWITCH)
    base_s, refine_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        first = base.generate(request)
        base_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        refiner.generate(request.refiner_finish(first.latents))
        refine_s.append(time.perf_counter() - started)
    return statistics.median(base_s), statistics.median(refine_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import ray
    from ray import serve

    from serve_app.app_builder import build_app
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.families import Family

    root = Path(tempfile.mkdtemp(prefix="dreamlab-bench-refiner-"))
    write_demo_models(root, (Family.SDXL, Family.SDXL_REFINER))
    base_s, refine_s = in_process(root, args.requests)
    modes = {"default_mode": "sdxl", "modes": [
        {"name": "sdxl", "checkpoint": "tiny-sdxl", "deployment": {"ray_actor_options": {"num_cpus": 0.5}}},
        {"name": "refiner", "checkpoint": "tiny-sdxl-refiner",
         "deployment": {"ray_actor_options": {"num_cpus": 0.5}}}]}
    (root / "modes.yaml").write_text(yaml.safe_dump(modes))
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(build_app({"modes_file": str(root / "modes.yaml"), "model_root": str(root),
                             "placement": {"default_num_gpus": 0}}),  # the modes run on the CPU
                  name="refiner", route_prefix="/refiner")
        url = f"http://127.0.0.1:{PORT}/refiner/v1/txt2img"
        with httpx.Client(timeout=300) as client:
            client.post(url, json={**REQ, "refiner": {"mode": "refiner", "switch_at": SWITCH}})  # warm both
            plain = [client.post(url, json=REQ).json()["timings"] for _ in range(args.requests)]
            split = [client.post(url, json={**REQ, "refiner": {"mode": "refiner", "switch_at": SWITCH}}).json()
                     ["timings"] for _ in range(args.requests)]
    finally:
        serve.shutdown()
        ray.shutdown()
    routing = statistics.median(t["total_s"] - t["job_s"] for t in plain)
    handoff = statistics.median(t["total_s"] - t["job_s"] for t in split) - routing
    refine_served = statistics.median(t["stages"][1]["job_s"] for t in split)
    total = statistics.median(t["total_s"] for t in split)
    print(f"in one process: base {base_s * 1000:.0f} ms + refiner {refine_s * 1000:.0f} ms; through two "
          f"deployments: {total * 1000:.0f} ms end to end, refiner stage {refine_served * 1000:.0f} ms, latent "
          f"hand-off {handoff * 1000:.1f} ms = {handoff / refine_served:.1%} of the refiner stage "
          f"(target <= {TARGET:.0%}; a plain request's routing: {routing * 1000:.0f} ms)")
    return 0 if handoff <= TARGET * refine_served else 1


if __name__ == "__main__":
    sys.exit(main())
