"""Serving benchmark (a script, not a test): `python benchmarks/bench_serving.py [--requests N]`.

Prints, on tiny demo models:
  1. serving overhead at concurrency 1: client latency minus the replica's own pipeline + encode time
     (p50/p99), and the in-process pipeline call for reference (target: overhead p50 <= 15 ms); and the
     same overhead of a minimal two-deployment Serve app (a FastAPI ingress calling a worker deployment
     that runs the same pipeline), measured side by side in the same run, with Dream Lab's ratio to it
     (target <= 1.1x);
  2. throughput at concurrency 8 with 1 replica and with 2 replicas;
  3. cold start of a scaled-to-zero mode (first request vs a warm one);
  4. mode switch by eviction on one simulated GPU whose budget fits one of two modes: the evicted mode
     comes back from the RAM tier, and (RAM tier off) from disk.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import yaml

PORT = 8124
REQ = {"prompt": "benchmark", "width": 64, "height": 64, "steps": 2, "seed": 1}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def deploy(name: str, modes: dict, root: Path, tmp: Path, registry: dict | None = None) -> str:
    from ray import serve

    from serve_app.app_builder import build_app

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(modes))
    serve.run(build_app({"modes_file": str(path), "model_root": str(root), "registry": registry or {},
                         "placement": {"default_num_gpus": 0}}),  # modes naming no num_gpus run on the CPU
              name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{PORT}/{name}"


def mode(name: str, checkpoint: str, **extra) -> dict:
    return {"name": name, "checkpoint": checkpoint, "defaults": {"width": 64, "height": 64, "steps": 2}, **extra}


def in_process_runner(root: Path):
    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.runner import ModelRunner

    cfg = ModeConfig(**mode("sd1", "tiny-sd1"))
    runner = ModelRunner(cfg, root / "tiny-sd1")
    runner.load()
    params = resolve_request(Txt2ImgRequest(**REQ), cfg, runner.family)
    return lambda: runner.generate(params)


def deploy_bare(root: Path) -> str:
    """The baseline: a minimal two-deployment Serve app. A FastAPI ingress (no validation beyond pydantic,
    no queue, no access check, no metrics) hands the request to a worker deployment that runs the same
    tiny pipeline as Dream Lab's mode worker (in a thread, like it) and answers the PNG base64 and its
    job time."""
    import base64

    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8)
    class BareWorker:
        def __init__(self, root: str) -> None:
            self.call = in_process_runner(Path(root))

        async def generate(self, body: dict) -> tuple[str, float]:
            started = time.perf_counter()
            result = await asyncio.to_thread(self.call)
            return base64.b64encode(result.images[0].data).decode(), time.perf_counter() - started

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    @serve.ingress(app)
    class BareIngress:
        def __init__(self, worker) -> None:
            self.worker = worker

        @app.post("/v1/txt2img")
        async def txt2img(self, body: dict) -> dict:
            image, job_s = await self.worker.generate.remote(body)
            return {"images": [{"image": image}], "timings": {"job_s": job_s}}

    serve.run(BareIngress.bind(BareWorker.bind(str(root))), name="bare", route_prefix="/bare")
    return f"http://127.0.0.1:{PORT}/bare"


def overhead(url: str, call_in_process, n: int, bare_url: str | None = None) -> dict[str, list[float]]:
    """Paired, interleaved: each HTTP request, the bare app's request and an in-process call of the same
    request run back to back, so all see the same background load (Ray's processes share the 2 cores)."""
    out: dict[str, list[float]] = {"http": [], "inproc": [], "over_inproc": [], "over_replica": [], "bare_http": [],
                                   "bare_over_replica": []}
    with httpx.Client(base_url=url, timeout=300) as client, httpx.Client(base_url=bare_url or url,
                                                                          timeout=300) as bare:
        for i in range(n + 3):
            started = time.perf_counter()
            r = client.post("/v1/txt2img", json=REQ)
            elapsed = time.perf_counter() - started
            r.raise_for_status()
            if bare_url is not None:
                started = time.perf_counter()
                b = bare.post("/v1/txt2img", json=REQ)
                bare_elapsed = time.perf_counter() - started
                b.raise_for_status()
            started = time.perf_counter()
            call_in_process()
            local = time.perf_counter() - started
            if i >= 3:
                out["http"].append(elapsed)
                out["inproc"].append(local)
                out["over_inproc"].append(elapsed - local)
                out["over_replica"].append(elapsed - r.json()["timings"]["job_s"])
                if bare_url is not None:
                    out["bare_http"].append(bare_elapsed)
                    out["bare_over_replica"].append(bare_elapsed - b.json()["timings"]["job_s"])
    return out


def throughput(url: str, n: int, concurrency: int = 8) -> float:
    async def run() -> float:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            async def one(i: int) -> None:
                async with sem:
                    (await client.post("/v1/txt2img", json={**REQ, "seed": i})).raise_for_status()

            await asyncio.gather(*(one(i) for i in range(concurrency)))  # warm every replica
            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return n / (time.perf_counter() - started)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--overhead-only", action="store_true", help="stop after the overhead measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray import serve

    from serve_app.model.demo.demo_models import demo_models_present, write_demo_models

    root = Path(os.environ.get("MODEL_ROOT", "./models")).resolve()
    if not demo_models_present(root):
        write_demo_models(root)
    tmp = Path(tempfile.mkdtemp())
    n = args.requests

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        url = deploy("one", {"modes": [mode("sd1", "tiny-sd1", deployment={"num_replicas": 1})]}, root, tmp)
        bare_url = deploy_bare(root)
        o = overhead(url, in_process_runner(root), n, bare_url)
        serve.delete("bare")
        ms = lambda v: f"{pct(v, .5) * 1000:7.1f} / {pct(v, .99) * 1000:.1f} ms"  # noqa: E731
        print(f"in-process pipeline call p50/p99  {ms(o['inproc'])}")
        print(f"HTTP latency p50/p99              {ms(o['http'])}")
        print(f"overhead over in-process p50/p99  {ms(o['over_inproc'])}   (target p50 <= 15 ms: "
              f"{pct(o['over_inproc'], .5) * 1000 / 15:.2f}x of target)")
        print(f"overhead outside the replica's job p50/p99 {ms(o['over_replica'])}")
        print(f"bare two-deployment Serve app: HTTP latency p50/p99 {ms(o['bare_http'])}, overhead outside its "
              f"job p50/p99 {ms(o['bare_over_replica'])}")
        ratio = pct(o["over_replica"], .5) / pct(o["bare_over_replica"], .5)
        print(f"Dream Lab overhead / bare Serve app overhead (p50): {ratio:.2f}x   (target <= 1.1x)")
        if args.overhead_only:
            return

        tput1 = throughput(url, n)
        url = deploy("one", {"modes": [mode("sd1", "tiny-sd1", deployment={"num_replicas": 2})]}, root, tmp)
        time.sleep(5)
        tput2 = throughput(url, n)
        print(f"throughput c=8, 1 replica         {tput1:8.2f} img/s")
        print(f"throughput c=8, 2 replicas        {tput2:8.2f} img/s   ({tput2 / tput1:.2f}x; 2 CPU cores shared)")
        serve.delete("one")

        zero = {"autoscaling_config": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1,
                                       "downscale_delay_s": 600}}
        url = deploy("cold", {"modes": [mode("sd1", "tiny-sd1", deployment=zero)]}, root, tmp)
        with httpx.Client(base_url=url, timeout=600) as client:
            started = time.perf_counter()
            client.post("/v1/txt2img", json=REQ).raise_for_status()
            cold = time.perf_counter() - started
            started = time.perf_counter()
            client.post("/v1/txt2img", json=REQ).raise_for_status()
            warm = time.perf_counter() - started
        print(f"cold start (scaled to zero)       {cold:8.2f} s    (warm request {warm * 1000:.0f} ms)")
        serve.delete("cold")

        gpu = {"ray_actor_options": {"num_cpus": 0, "num_gpus": 0.4}}
        modes = {"modes": [mode("a", "tiny-sd1", load_on_start=False, deployment=gpu),
                           mode("b", "tiny-sdxl.safetensors", load_on_start=False, deployment=gpu)]}
        from serve_app.api.mode_catalog import ModeCatalog
        from serve_app.config.modes_file import ModesFile

        est = {k: m.estimate_bytes() for k, m in ModeCatalog(ModesFile.model_validate(modes), root).modes.items()}
        switch = {}
        for tier, ram_budget in (("ram", 8 * 2**30), ("disk", 0)):  # evicted models kept in RAM, or dropped
            url = deploy(f"switch-{tier}", modes, root, tmp, registry={
                "budget_bytes": max(est.values()) + 8 * 2**20, "heartbeat_interval_s": 0.2,
                "ram_budget_bytes": ram_budget})
            switches, loads, warm_times = [], [], []
            with httpx.Client(base_url=url, timeout=600) as client:
                for m in ["a", "b"] * 2:  # first loads
                    client.post("/v1/txt2img", json={**REQ, "mode": m}).raise_for_status()
                for m in ["a", "b"] * 4:
                    started = time.perf_counter()
                    r = client.post("/v1/txt2img", json={**REQ, "mode": m})
                    switches.append(time.perf_counter() - started)
                    r.raise_for_status()
                    assert r.json()["timings"]["load_tier"] == tier, r.json()["timings"]
                    loads.append(r.json()["timings"]["load_s"])
                    started = time.perf_counter()
                    client.post("/v1/txt2img", json={**REQ, "mode": m}).raise_for_status()
                    warm_times.append(time.perf_counter() - started)
            switch[tier] = (pct(switches, .5), pct(loads, .5))
            print(f"mode switch by eviction, from {tier:4}  {switch[tier][0]:8.2f} s    "
                  f"(its load {switch[tier][1]:.3f} s; warm request p50 {pct(warm_times, .5) * 1000:.0f} ms)")
            serve.delete(f"switch-{tier}")
        print(f"switch back from the RAM tier vs from disk: {switch['ram'][0] / switch['disk'][0]:.2f}x of the "
              f"request, {switch['ram'][1] / switch['disk'][1]:.3f}x of the load (target 0.1x)")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
