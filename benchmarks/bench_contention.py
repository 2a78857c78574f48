"""Contention benchmark (a script, not a test): `python benchmarks/bench_contention.py [--requests 200]`.

Four modes on two simulated GPUs whose registry budget fits 1.5 models each; `--requests` mixed requests
(every mode, sizes from the default up to the largest the modes allow, 1-4 images) at `--concurrency`.
Prints the answers by status and checks the targets: only 200, 503 and 507 (never a 500), and every
replica healthy afterwards (no restart: the replica ids before and after are the same).
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench_serving import PORT, deploy, pct

MAX_SIZE = 256
ALLOWED = {200, 503, 507}


def _mode(name: str, checkpoint: str) -> dict:
    return {"name": name, "checkpoint": checkpoint, "load_on_start": False,
            "defaults": {"width": 64, "height": 64, "steps": 2},
            "limits": {"max_width": MAX_SIZE, "max_height": MAX_SIZE, "max_num_images": 4, "max_steps": 4},
            "deployment": {"num_replicas": 1, "max_ongoing_requests": 2, "max_queued_requests": 16,
                           "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.5}}}


def _request(rng: random.Random, modes: list[str]) -> dict:
    size = rng.choice([64, 128, MAX_SIZE])
    return {"prompt": "contention", "mode": rng.choice(modes), "width": size, "height": size, "steps": 2,
            "num_images": rng.choice([1, 2, 4]), "seed": rng.randrange(1000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import ray
    from ray import serve

    from serve_app.api.mode_catalog import ModeCatalog
    from serve_app.config.modes_file import ModesFile
    from serve_app.model.demo.demo_models import write_demo_models

    tmp = Path(tempfile.mkdtemp(prefix="dreamlab-contention-"))
    root = tmp / "models"
    write_demo_models(root)
    modes = {"modes": [_mode("sd1", "tiny-sd1"), _mode("sd2", "tiny-sd2"), _mode("xl", "tiny-sdxl"),
                       _mode("xl-file", "tiny-sdxl.safetensors")]}
    estimates = {k: m.estimate_bytes() for k, m in ModeCatalog(ModesFile.model_validate(modes), root).modes.items()}
    budget = int(1.5 * sum(estimates.values()) / len(estimates))
    print(f"estimates {estimates}; budget per simulated GPU {budget} bytes (1.5 models)")

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        url = deploy("contention", modes, root, tmp, registry={"budget_bytes": budget, "heartbeat_interval_s": 0.2,
                                                                "working_timeout_s": 5})
        rng = random.Random(0)
        requests = [_request(rng, list(estimates)) for _ in range(args.requests)]
        with httpx.Client(base_url=url, timeout=600) as client:
            deadline = time.monotonic() + 300
            while len(replicas_before := set(client.get("/v1/registry").json()["replicas"])) < len(estimates):
                if time.monotonic() > deadline:
                    raise TimeoutError("the mode replicas did not come up")
                time.sleep(0.5)

            def send(body: dict) -> tuple[int, float, str]:
                started = time.perf_counter()
                r = client.post("/v1/txt2img", json=body)
                kind = r.json().get("error", {}).get("type", "") if r.status_code != 200 else ""
                return r.status_code, time.perf_counter() - started, kind

            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(send, requests))
            wall = time.perf_counter() - started
            time.sleep(2)
            modes_after = {m["name"]: m["state"] for m in client.get("/v1/modes").json()["modes"]}
            stats = client.get("/v1/registry").json()
        statuses = collections.Counter(s for s, _, _ in results)
        kinds = collections.Counter(k for _, _, k in results if k)
        ok = [t for s, t, _ in results if s == 200]
        print(f"{args.requests} requests at concurrency {args.concurrency} in {wall:.1f}s: {dict(statuses)} "
              f"(error types {dict(kinds)}); 200s p50 {pct(ok, .5):.2f}s p99 {pct(ok, .99):.2f}s")
        over = [d["device"] for d in stats["devices"] if d["used_bytes"] + d["reserved_bytes"] > d["budget_bytes"]]
        replicas_after = set(stats["replicas"])
        print(f"modes after: {modes_after}; devices over budget: {over or 'none'}; replicas kept: "
              f"{replicas_before <= replicas_after} ({len(replicas_after)} live)")
        passed = (set(statuses) <= ALLOWED and "failed" not in modes_after.values() and not over
                  and replicas_before <= replicas_after)
        print("targets met" if passed else "TARGETS MISSED")
        return 0 if passed else 1
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
