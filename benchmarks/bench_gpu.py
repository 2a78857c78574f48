"""GPU benchmark (a script, not a test) on full-size random-weight SD1.5 and SDXL checkpoints.

    python benchmarks/bench_gpu.py [--work DIR] [--format folder|single] [--steps 20] [--requests 5]
    python benchmarks/bench_gpu.py --allow-cpu --size 64 --steps 1 --requests 1 --max-images 1 --switches 1

1. Builds one checkpoint per family (sd1 as mode `sd15`, sdxl as mode `sdxl`) from the shipped diffusers configs
   (`serve_app/model/loading/family_configs/`): real architectures and parameter counts, seeded random weights in fp16,
   the demo models' byte-level CLIP tokenizer (`demo_models.byte_level_clip_tokenizer`), nothing downloaded. They
   are written into --work as diffusers folders (`--format folder`) or original-layout single files (`single`,
   via `single_file_writer.write_single_file`); what already exists there is reused. Without --work a temporary
   folder is used and removed at the end (unless --keep).
2. Serves both through the app (Ray Serve on 127.0.0.1:8125, one replica per mode with num_gpus 0.5, fp16,
   load_on_start false) with a registry budget that fits only one of the two, and measures:
   - the load from disk (each mode's first request: `timings.load_s`, `load_tier` disk; and again at the end as
     an operator unload + load on an empty device, without the replica's first-time imports) against a raw read
     of the checkpoint's files in the same page-cache state (--page-cache warm|cold);
   - the registry's accounting right after that load (the first request is the mode's largest: max size x
     max_num_images): `/v1/registry` used_bytes vs the driver's view (`reported_used_bytes` minus its value
     before any load), and each model's measured_bytes vs its parameter bytes (target: within 5%);
   - served it/s (steps / `timings.inference_s`) over --requests requests at the mode's size;
   - RAM-tier switches: alternating the modes evicts the other one each time; the switch back answers
     `load_tier` ram. Its load_s includes evicting the other model to host memory;
   - the ledger vs the driver after that mixed workload: each device's lines from `/v1/registry` (models, the
     replicas' CUDA contexts and allocator caches, unaccounted = other processes, reserved) and their sum against
     the driver's used (`reported_used_bytes`).
3. Then in this process, with Serve stopped: pinned host<->device bandwidth (a ~1 GiB tensor), and per model
   a `ModelRunner` load (parameter bytes, allocated bytes), it/s of `ModelRunner.generate` at the same request
   as served, the peak allocated memory of the largest request vs `estimate_vram`, and a RAM-tier restore
   (offload, load) alone.
Last, a summary of the ratios against their targets (RAM-tier switch <= 2x the copy bound: model bytes / pinned
H2D bandwidth; registry accounting within 5%).

Needs one NVIDIA GPU; without CUDA it exits unless --allow-cpu (same flow on the CPU, to smoke-test the code
path; the checkpoints are still full-size: ~9 GB on disk, ~7 GB of RAM for SDXL, so keep --size/--steps small).

Helpers in this folder: gpu_checkpoints.py (modes, checkpoints, page cache), gpu_in_process.py, gpu_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_checkpoints import (
    MODES,
    PEAK_STEPS,
    PROMPT,
    GiB,
    MiB,
    build_checkpoints,
    mode_entry,
    prepare_page_cache,
    raw_read,
)
from gpu_in_process import copy_bandwidth, in_process_phase
from gpu_report import fmt_s, report

logger = logging.getLogger("bench_gpu")

PORT = 8125
APP = "benchgpu"
SWITCH_STEPS = 2  # a switch request measures its load; its denoising is not the point


# -- serving ------------------------------------------------------------------------------------------------------
def registry_settings(estimates: dict[str, int], param_bytes: dict[str, int], cuda: bool) -> dict[str, Any]:
    """A budget that fits either model alone (its load estimate) but not both (half the smaller one short)."""
    budget = max(estimates.values()) + min(estimates.values()) // 2
    settings: dict[str, Any] = {
        "budget_bytes": budget,
        "ram_budget_bytes": sum(param_bytes.values()) + GiB,  # the RAM tier can always take the evicted one
        "heartbeat_interval_s": 0.2,
        "reserve_timeout_s": 600.0,
        "working_timeout_s": 120.0,
    }
    if not cuda:
        settings["simulated_vram_bytes"] = max(2 * budget, 8 * GiB)
    return settings


def post(client: Any, mode: str, size: int, steps: int, seed: int, num_images: int = 1) -> dict[str, Any]:
    body = {"prompt": PROMPT, "mode": mode, "width": size, "height": size, "steps": steps, "seed": seed,
            "num_images": num_images, "output_format": "jpeg"}
    started = time.perf_counter()
    r = client.post("/v1/txt2img", json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{mode}: HTTP {r.status_code}: {r.text[:1000]} (replica logs: "
                           "/tmp/ray/session_latest/logs/serve/)")
    out = r.json()
    out["client_s"] = time.perf_counter() - started
    return out


def operator(client: Any, mode: str, action: str) -> dict[str, Any]:
    """`POST /v1/modes/{mode}/load` or `/unload` (open: the bench app configures no keys)."""
    r = client.post(f"/v1/modes/{mode}/{action}")
    if r.status_code != 200:
        raise RuntimeError(f"{mode}: {action}: HTTP {r.status_code}: {r.text[:1000]}")
    return r.json()


def registry(client: Any) -> dict[str, Any]:
    r = client.get("/v1/registry")
    r.raise_for_status()
    return r.json()


def device_with(stats: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    """The device holding `mode`'s model (any device when None or not found)."""
    for dev in stats["devices"]:
        if mode is None or any(m["mode"] == mode for m in dev["models"]):
            return dev
    return stats["devices"][0]


def wait_for_replicas(client: Any, modes: list[str], cuda: bool, timeout_s: float = 600.0) -> dict[str, Any]:
    """Wait until every mode's replica reports (and, on CUDA, the driver's used bytes settle); return the device."""
    deadline = time.monotonic() + timeout_s
    previous: int | None = None
    while time.monotonic() < deadline:
        stats = registry(client)
        seen = {r["mode"] for r in stats["replicas"].values()}
        if set(modes) <= seen and stats["devices"]:
            dev = device_with(stats)
            used = dev["reported_used_bytes"]
            if not cuda or (used is not None and previous is not None and abs(used - previous) < 8 * MiB):
                return dev
            previous = used
        time.sleep(1.0)
    raise TimeoutError(f"the replicas of {modes} did not report to the registry within {timeout_s:.0f}s")


@dataclasses.dataclass
class Served:
    raw_read_bytes: int = 0
    raw_read_s: float = 0.0
    disk_load_s: float | None = None
    disk_tier: str | None = None
    repeat_load_s: float | None = None  # operator unload + load: no first-time imports, nothing to evict
    repeat_tier: str | None = None
    measured_bytes: int = 0
    footprint_bytes: int = 0
    estimate_bytes: int = 0
    device_used_bytes: int = 0
    driver_delta_bytes: int | None = None
    snapshot: str = ""  # where the models were when the accounting was read
    ram_loads: list[float] = dataclasses.field(default_factory=list)
    other_tiers: list[str] = dataclasses.field(default_factory=list)  # switch loads that did not come from RAM
    switch_client_s: list[float] = dataclasses.field(default_factory=list)
    its: list[float] = dataclasses.field(default_factory=list)
    request_s: list[float] = dataclasses.field(default_factory=list)


def serve_phase(args: argparse.Namespace, work: Path, paths: dict[str, Path], estimates: dict[str, int],
                param_bytes: dict[str, int], cuda: bool) -> tuple[dict[str, Served], list[dict[str, Any]]]:
    """The served measurements per mode, and the registry's devices after the mixed workload (the ledger's lines
    beside the driver's used)."""
    import httpx
    import ray
    import yaml
    from ray import serve

    from serve_app.app_builder import build_app

    if not logger.isEnabledFor(logging.INFO):  # Serve's own INFO lines, unless --verbose
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    modes_path = work / "bench_gpu_modes.yaml"
    modes_path.write_text(yaml.safe_dump(
        {"default_mode": MODES[0].name, "modes": [mode_entry(m, paths[m.name], args) for m in MODES]}))
    settings = registry_settings(estimates, param_bytes, cuda)
    print(f"[serve] registry budget {settings['budget_bytes'] / GiB:.2f} GiB (estimates: "
          f"{', '.join(f'{k} {v / GiB:.2f} GiB' for k, v in estimates.items())}): one model fits, not both")
    results = {m.name: Served() for m in MODES}
    ledger: list[dict[str, Any]] = []
    ray.init(address="local", num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app({"modes_file": str(modes_path), "model_root": str(work), "registry": settings}),
                  name=APP, route_prefix=f"/{APP}")
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}/{APP}", timeout=3600) as client:
            baseline = wait_for_replicas(client, [m.name for m in MODES], cuda)["reported_used_bytes"]
            if baseline is not None:
                print(f"[serve] device in use before any load (CUDA contexts): {baseline / GiB:.2f} GiB")
            settle_s = 4 * settings["heartbeat_interval_s"] + 0.5
            for mode in MODES:
                res, size = results[mode.name], args.size or mode.size
                res.raw_read_bytes, res.raw_read_s = raw_read(paths[mode.name], args.page_cache)
                first = post(client, mode.name, size, PEAK_STEPS, seed=0, num_images=args.max_images)
                res.disk_load_s, res.disk_tier = first["timings"]["load_s"], first["timings"]["load_tier"]
                time.sleep(settle_s)  # heartbeats carry the device's own view after the request
                stats = registry(client)
                dev = device_with(stats, mode.name)
                model = next(m for m in dev["models"] if m["mode"] == mode.name)
                res.measured_bytes, res.footprint_bytes = model["measured_bytes"], model["footprint_bytes"]
                res.estimate_bytes, res.device_used_bytes = model["estimate_bytes"], dev["used_bytes"]
                if baseline is not None and dev["reported_used_bytes"] is not None:
                    res.driver_delta_bytes = dev["reported_used_bytes"] - baseline
                in_ram = [m["mode"] for node in stats.get("nodes", []) for m in node["models"]]
                res.snapshot = f"on the device: {[m['mode'] for m in dev['models']]}, in the RAM tier: {in_ram}"
                print(f"[serve] {mode.name}: disk load {fmt_s(res.disk_load_s)} (tier {res.disk_tier}); raw read "
                      f"{res.raw_read_bytes / 1e9:.2f} GB in {res.raw_read_s:.2f}s ({args.page_cache} page cache); "
                      f"{res.snapshot}")
                post(client, mode.name, size, args.steps, seed=1)  # warm-up at the measured request
                for i in range(args.requests):
                    out = post(client, mode.name, size, args.steps, seed=2 + i)
                    res.its.append(args.steps / out["timings"]["inference_s"])
                    res.request_s.append(out["client_s"])
                print(f"[serve] {mode.name}: {statistics.median(res.its):.2f} it/s at {size}x{size}, "
                      f"{args.steps} steps (median of {args.requests})")
            for _ in range(args.switches):
                for mode in MODES:
                    out = post(client, mode.name, args.size or mode.size, SWITCH_STEPS, seed=0)
                    t = out["timings"]
                    res = results[mode.name]
                    if t["load_tier"] == "ram":
                        res.ram_loads.append(t["load_s"])
                        res.switch_client_s.append(out["client_s"])
                    else:
                        res.other_tiers.append(str(t["load_tier"]))
            time.sleep(settle_s)  # the replicas' next heartbeats carry their contexts and caches after the mix
            after_mix = registry(client)
            ledger, nodes = after_mix["devices"], after_mix.get("nodes", [])
            for mode in MODES:
                res = results[mode.name]
                print(f"[serve] {mode.name}: RAM-tier switches {[round(v, 3) for v in res.ram_loads]} s")
                if res.other_tiers:
                    print(f"[serve] {mode.name}: {len(res.other_tiers)} switch(es) did not load from RAM: "
                          f"{res.other_tiers} (RAM tier: {nodes})")
            # a disk load again, as an operator action on an empty device: no first-time imports, no eviction
            for mode in MODES:
                operator(client, mode.name, "unload")
            for mode in MODES:
                res = results[mode.name]
                prepare_page_cache(paths[mode.name], args.page_cache)
                answer = operator(client, mode.name, "load")
                res.repeat_load_s, res.repeat_tier = answer["load_s"], answer["load_tier"]
                operator(client, mode.name, "unload")
                print(f"[serve] {mode.name}: repeat disk load {fmt_s(res.repeat_load_s)} (tier {res.repeat_tier})")
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    return results, ledger


# -- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoints (kept and reused); "
                        "default: a temporary folder, removed at the end")
    parser.add_argument("--keep", action="store_true", help="keep the default temporary folder")
    parser.add_argument("--format", choices=("folder", "single"), default="folder",
                        help="checkpoint format: diffusers folder or original-layout single file (default folder)")
    parser.add_argument("--build-only", action="store_true", help="build the checkpoints into --work and stop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="serving dtype")
    parser.add_argument("--size", type=int, default=None,
                        help="width = height for both modes (default: SD1.5 512, SDXL 1024); a multiple of 8")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the it/s requests")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per mode, served and in-process")
    parser.add_argument("--max-images", type=int, default=4, help="the modes' max_num_images (the largest request)")
    parser.add_argument("--switches", type=int, default=3, help="RAM-tier round trips (each mode loads once a trip)")
    parser.add_argument("--page-cache", choices=("warm", "cold"), default="warm",
                        help="page-cache state of the checkpoint before the disk load and the raw read "
                        "(cold: posix_fadvise DONTNEED)")
    parser.add_argument("--h2d-mib", type=int, default=1024, help="size of the bandwidth test tensor (MiB)")
    parser.add_argument("--port", type=int, default=PORT, help="Serve HTTP port")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without CUDA (a smoke test of the code path; use small --size and --steps)")
    parser.add_argument("-v", "--verbose", action="store_true", help="diagnostic logging")
    args = parser.parse_args(argv)
    if args.size is not None and (args.size < 8 or args.size % 8):
        parser.error(f"--size must be a positive multiple of 8, got {args.size}")
    if args.build_only and args.work is None:
        parser.error("--build-only needs --work (the default temporary folder is removed at the end)")
    if min(args.steps, args.requests, args.max_images, args.switches) < 1:
        parser.error("--steps, --requests, --max-images and --switches must be at least 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' deprecation notices

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(f"bench_gpu: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): this "
              "benchmark needs an NVIDIA GPU. Pass --allow-cpu to smoke-test the code path on the CPU, e.g. "
              "--allow-cpu --size 64 --steps 1 --requests 1 --max-images 1 --switches 1.", file=sys.stderr)
        return 2
    if not cuda and args.size is None:
        logger.warning("running on the CPU at the full default sizes: this takes very long; pass --size 64")

    import diffusers
    import ray
    import transformers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
    from serve_app.model.inspection.vram_estimate import BYTES_PER_DTYPE

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    # the device is named after serving: this process keeps no CUDA context while the replicas are measured
    print(f"{'CUDA' if cuda else 'CPU (--allow-cpu smoke test)'}; torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")

    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="dreamlab-bench-gpu-")) if temporary else args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}")
    try:
        paths = build_checkpoints(work, args.format, args.seed)
        if args.build_only:
            return 0
        estimates, param_bytes = {}, {}
        for mode in MODES:
            info = inspect_checkpoint(paths[mode.name])
            cfg = ModeConfig.model_validate(mode_entry(mode, paths[mode.name], args))
            estimates[mode.name] = cfg.vram_estimate(info, args.dtype).total_bytes
            param_bytes[mode.name] = info.param_count * BYTES_PER_DTYPE[args.dtype]
            print(f"[inspect] {mode.name}: {info.family.value}, {info.format.value}, {info.param_count / 1e9:.3f} B "
                  f"parameters, {info.file_bytes / 1e9:.2f} GB on disk, estimate {estimates[mode.name] / GiB:.2f} GiB")
        if args.format == "single":  # convert once now, so the served disk loads read the conversion cache
            from serve_app.model.loading.pipeline_loader import load_pipelines

            for mode in MODES:
                started = time.perf_counter()
                info = inspect_checkpoint(paths[mode.name])
                load_pipelines(info, info.family, torch.float16, torch.device("cpu"))
                gc.collect()
                print(f"[convert] {mode.name}: conversion cache ready in {time.perf_counter() - started:.1f}s")

        served, ledger = serve_phase(args, work, paths, estimates, param_bytes, cuda)
        if cuda:
            props = torch.cuda.get_device_properties(0)
            print(f"device: {props.name}, {props.total_memory / GiB:.1f} GiB")
        bandwidth = copy_bandwidth(args.h2d_mib * MiB) if cuda else None
        local = in_process_phase(args, paths, cuda)
        report(args, served, local, bandwidth, ledger)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
