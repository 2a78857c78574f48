"""GPU benchmark (a script, not a test) on full-size random-weight SD1.5 and SDXL checkpoints.

    python benchmarks/bench_gpu.py [--work DIR] [--format folder|single] [--steps 20] [--requests 5]
    python benchmarks/bench_gpu.py --allow-cpu --size 64 --steps 1 --requests 1 --max-images 1 --switches 1

1. Builds one checkpoint per family (sd1 as mode `sd15`, sdxl as mode `sdxl`) from the shipped diffusers configs
   (`serve_app/model/family_configs/`): real architectures and parameter counts, seeded random weights in fp16,
   the demo models' byte-level CLIP tokenizer (`demo_models.byte_level_clip_tokenizer`), nothing downloaded. They
   are written into --work as diffusers folders (`--format folder`) or original-layout single files (`single`,
   via `single_file_writer.write_single_file`); what already exists there is reused. Without --work a temporary
   folder is used and removed at the end (unless --keep).
2. Serves both through the app (Ray Serve on 127.0.0.1:8125, one replica per mode with num_gpus 0.5, fp16,
   load_on_start false) with a registry budget that fits only one of the two, and measures:
   - the load from disk (each mode's first request: `timings.load_s`, `load_tier` disk) against a raw read of
     the checkpoint's files in the same page-cache state (--page-cache warm|cold);
   - the registry's accounting right after that load (the first request is the mode's largest: max size x
     max_num_images): `/v1/registry` used_bytes vs the driver's view (`reported_used_bytes` minus its value
     before any load), and each model's measured_bytes vs its parameter bytes (target: within 5%);
   - served it/s (steps / `timings.inference_s`) over --requests requests at the mode's size;
   - RAM-tier switches: alternating the modes evicts the other one each time; the switch back answers
     `load_tier` ram. Its load_s includes evicting the other model to host memory.
3. Then in this process, with Serve stopped: pinned host<->device bandwidth (a ~1 GiB tensor), and per model
   a `ModelRunner` load (parameter bytes, allocated bytes), it/s of `ModelRunner.generate` at the same request
   as served, the peak allocated memory of the largest request vs `estimate_vram`, and a RAM-tier restore
   (offload, load) alone.
Last, a summary of the ratios against their targets (RAM-tier switch <= 2x the copy bound: model bytes / pinned
H2D bandwidth; registry accounting within 5%).

Needs one NVIDIA GPU; without CUDA it exits unless --allow-cpu (same flow on the CPU, to smoke-test the code
path; the checkpoints are still full-size: ~9 GB on disk, ~7 GB of RAM for SDXL, so keep --size/--steps small).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench_gpu")

PORT = 8125
APP = "benchgpu"
PROMPT = "a lighthouse on a cliff at dusk, oil painting, detailed"
PEAK_STEPS = 2  # the largest request's peak memory does not depend on the step count
SWITCH_STEPS = 2  # a switch request measures its load; its denoising is not the point
SWITCH_TARGET = 2.0  # RAM-tier switch <= 2x the host->device copy bound
ACCOUNTING_TARGET_PCT = 5.0
GiB = 1024**3
MiB = 1024**2
CHUNK = 16 * MiB


@dataclasses.dataclass(frozen=True)
class BenchMode:
    name: str
    family: str  # a `Family` value
    size: int  # default (and largest) width and height


MODES = (BenchMode("sd15", "sd1", 512), BenchMode("sdxl", "sdxl", 1024))


# -- building the checkpoints -----------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Build modules directly in `dtype` (SDXL's UNet in fp32 would need 10 GB of RAM just to be cast)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_full_size_pipeline(family: str, seed: int) -> Any:
    """The family's diffusers pipeline from its shipped config folder, with seeded random fp16 weights.

    Each component gets its own seed (from `seed`, the family and the component name), so the weights do not
    depend on build order. Tokenizers are the demo models' byte-level CLIP tokenizer with the family's pad
    token (its ids fit in the real 49408-token embedding).
    """
    import diffusers
    import torch
    import transformers

    from serve_app.model.demo_models import byte_level_clip_tokenizer
    from serve_app.model.family_configs import config_dir

    root = Path(config_dir(family))
    index = json.loads((root / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list):
            continue
        library, class_name = spec
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        folder = root / name
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(f"{family}/{name}".encode()))
        if issubclass(cls, diffusers.SchedulerMixin):
            components[name] = cls.from_config(cls.load_config(folder))
        elif issubclass(cls, diffusers.ModelMixin):
            with default_dtype(torch.float16):
                components[name] = cls.from_config(cls.load_config(folder))
        elif issubclass(cls, transformers.PreTrainedModel):
            with default_dtype(torch.float16):
                components[name] = cls(cls.config_class.from_pretrained(folder))
        elif "Tokenizer" in class_name:
            pad = json.loads((folder / "tokenizer_config.json").read_text()).get("pad_token", "<|endoftext|>")
            components[name] = byte_level_clip_tokenizer(pad_token=pad)
        else:
            raise ValueError(f"{root}: no builder for component {name!r} ({library}.{class_name})")
    options = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    return getattr(diffusers, index["_class_name"])(**components, **options)


def checkpoint_path(work: Path, mode: BenchMode, fmt: str) -> Path:
    return work / (f"full-{mode.name}" if fmt == "folder" else f"full-{mode.name}.safetensors")


def build_checkpoints(work: Path, fmt: str, seed: int) -> dict[str, Path]:
    """Write the missing checkpoints into `work`; return mode name -> checkpoint path."""
    import torch

    from serve_app.model.families import Family
    from serve_app.model.single_file_writer import write_single_file

    paths: dict[str, Path] = {}
    for mode in MODES:
        target = paths[mode.name] = checkpoint_path(work, mode, fmt)
        if (target / "model_index.json").is_file() or target.is_file():
            print(f"[build] {mode.name}: reusing {target}")
            continue
        started = time.perf_counter()
        pipe = build_full_size_pipeline(mode.family, seed)
        built_s = time.perf_counter() - started
        counts = {name: sum(p.numel() for p in c.parameters()) for name, c in pipe.components.items()
                  if isinstance(c, torch.nn.Module)}
        started = time.perf_counter()
        if fmt == "folder":
            partial = work / f".{target.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            pipe.save_pretrained(partial, safe_serialization=True)
            os.replace(partial, target)  # atomic: a folder that exists is complete
        else:
            write_single_file(pipe, Family(mode.family), target, dtype=torch.float16)
        write_s = time.perf_counter() - started
        del pipe
        gc.collect()
        print(f"[build] {mode.name}: {sum(counts.values()) / 1e9:.3f} B parameters "
              f"({', '.join(f'{k} {v / 1e6:.1f} M' for k, v in sorted(counts.items()))}); built in {built_s:.1f}s, "
              f"{file_bytes(target) / 1e9:.2f} GB written in {write_s:.1f}s -> {target}")
    return paths


# -- files and the page cache -------------------------------------------------------------------------------------
def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []


def file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in files_under(path))


def load_files(path: Path) -> list[Path]:
    """What a load of `path` reads: its files; for a single file also its conversion cache (what cold loads read)."""
    files = files_under(path)
    if path.is_file():
        from serve_app.model.converted_cache import resolve_cache_dir

        cache = resolve_cache_dir(path)
        if cache is not None:
            files += files_under(cache)
    return files


def read_files(files: list[Path]) -> tuple[int, float]:
    """Read every byte (unbuffered, 16 MiB chunks): (bytes, seconds)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    for f in files:
        with f.open("rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total, time.perf_counter() - started


def drop_page_cache(files: list[Path]) -> bool:
    """Evict the files' pages from the page cache (fsync first: dirty pages are not evicted); False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def prepare_page_cache(path: Path, page_cache: str) -> None:
    """Put the files a load of `path` reads in the `page_cache` state (warm: read once; cold: evicted)."""
    files = load_files(path)
    if page_cache == "cold":
        drop_page_cache(files)
    else:
        read_files(files)


def raw_read(path: Path, page_cache: str) -> tuple[int, float]:
    """Time a raw read of the checkpoint in the `page_cache` state, and leave the files in that state for a load."""
    files = load_files(path)
    if page_cache == "cold":
        if not drop_page_cache(files):
            logger.warning("posix_fadvise is missing: the 'cold' read is whatever the page cache holds")
        result = read_files(files)
        drop_page_cache(files)
        return result
    read_files(files)  # warm
    return read_files(files)


# -- serving ------------------------------------------------------------------------------------------------------
def mode_entry(mode: BenchMode, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    size = args.size or mode.size
    return {
        "name": mode.name,
        "checkpoint": path.name,
        "dtype": args.dtype,
        "load_on_start": False,
        "defaults": {"width": size, "height": size, "steps": args.steps},
        "limits": {"max_width": size, "max_height": size, "max_steps": max(100, args.steps),
                   "max_num_images": args.max_images},
        "deployment": {"num_replicas": 1, "graceful_shutdown_timeout_s": 10,
                       "ray_actor_options": {"num_gpus": 0.5, "num_cpus": 0}},
    }


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
                param_bytes: dict[str, int], cuda: bool) -> dict[str, Served]:
    import httpx
    import ray
    import yaml
    from ray import serve

    from serve_app.app_builder import build_app

    modes_path = work / "bench_gpu_modes.yaml"
    modes_path.write_text(yaml.safe_dump(
        {"default_mode": MODES[0].name, "modes": [mode_entry(m, paths[m.name], args) for m in MODES]}))
    settings = registry_settings(estimates, param_bytes, cuda)
    print(f"[serve] registry budget {settings['budget_bytes'] / GiB:.2f} GiB (estimates: "
          f"{', '.join(f'{k} {v / GiB:.2f} GiB' for k, v in estimates.items())}): one model fits, not both")
    results = {m.name: Served() for m in MODES}
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
            nodes = registry(client).get("nodes", [])
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
    return results


# -- in process ---------------------------------------------------------------------------------------------------
def copy_bandwidth(nbytes: int, reps: int = 5) -> tuple[float, float, float]:
    """(pinned host->device, pageable host->device, pinned device->host) bytes/s, median of `reps` copies."""
    import torch

    pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def timed(dst: Any, src: Any) -> float:
        dst.copy_(src, non_blocking=True)  # warm-up
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return nbytes / statistics.median(times)

    result = timed(device, pinned), timed(device, pageable), timed(pinned, device)
    del pinned, pageable, device
    torch.cuda.empty_cache()
    return result


@dataclasses.dataclass
class InProcess:
    load_s: float = 0.0
    param_bytes: int = 0
    allocated_delta: int = 0
    its: list[float] = dataclasses.field(default_factory=list)
    peak_request: str = ""
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    peak_base: int | None = None
    peak_error: str | None = None
    estimate: Any = None  # VramEstimate of the largest request
    restores: list[float] = dataclasses.field(default_factory=list)


def in_process_phase(args: argparse.Namespace, paths: dict[str, Path], cuda: bool) -> dict[str, InProcess]:
    import torch

    from serve_app.api.native_schemas import Txt2ImgRequest
    from serve_app.api.request_resolution import resolve_request
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.model_runner import ModelRunner
    from serve_app.model.vram_estimate import estimate_vram

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    results: dict[str, InProcess] = {}
    for mode in MODES:
        res = results[mode.name] = InProcess()
        cfg = ModeConfig.model_validate(mode_entry(mode, paths[mode.name], args))
        runner = ModelRunner(cfg, paths[mode.name])
        prepare_page_cache(paths[mode.name], args.page_cache)
        sync()
        before, started = allocated(), time.perf_counter()
        runner.load()
        sync()
        res.load_s, res.allocated_delta = time.perf_counter() - started, allocated() - before
        res.param_bytes = runner.parameter_bytes()
        size = args.size or mode.size
        request = resolve_request(Txt2ImgRequest(prompt=PROMPT, steps=args.steps, seed=1, output_format="jpeg"),
                                  cfg, runner.family)
        runner.generate(request)  # warm-up
        for i in range(args.requests):
            result = runner.generate(dataclasses.replace(request, seeds=[2 + i]))
            res.its.append(args.steps / result.timings.inference_s)
        largest = resolve_request(Txt2ImgRequest(prompt=PROMPT, width=size, height=size, steps=PEAK_STEPS, seed=0,
                                                 num_images=args.max_images, output_format="jpeg"), cfg, runner.family)
        res.peak_request = f"{size}x{size} x {args.max_images} image(s)"
        res.estimate = estimate_vram(runner.info, args.dtype, size, size, args.max_images)
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            res.peak_base = allocated()
        try:
            runner.generate(largest)
            sync()
            if cuda:
                res.peak_allocated = torch.cuda.max_memory_allocated()
                res.peak_reserved = torch.cuda.max_memory_reserved()
        except torch.cuda.OutOfMemoryError as exc:
            res.peak_error = f"out of memory: {str(exc).splitlines()[0]}"
        if cuda:  # the error's frames are gone: free what the failed request held
            gc.collect()
            torch.cuda.empty_cache()
        for _ in range(args.switches):
            runner.offload()
            sync()
            started = time.perf_counter()
            runner.load()
            sync()
            res.restores.append(time.perf_counter() - started)
        runner.unload()
        del runner
        gc.collect()
        print(f"[in-process] {mode.name}: load {res.load_s:.2f}s, {statistics.median(res.its):.2f} it/s, "
              f"RAM-tier restore {statistics.median(res.restores):.3f}s")
    return results


# -- report -------------------------------------------------------------------------------------------------------
def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def fmt_gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GiB:.3f} GiB"


def pct(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{(value - reference) / reference * 100:+.1f}%"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(args: argparse.Namespace, served: dict[str, Served], local: dict[str, InProcess],
           bandwidth: tuple[float, float, float] | None) -> None:
    h2d, d2h = (bandwidth[0], bandwidth[2]) if bandwidth else (None, None)
    print("\n== summary ==")
    if bandwidth:
        print(f"host->device: pinned {bandwidth[0] / 1e9:.1f} GB/s, pageable {bandwidth[1] / 1e9:.1f} GB/s; "
              f"device->host pinned {bandwidth[2] / 1e9:.1f} GB/s")
    else:
        print("no CUDA: copy bounds, the driver's view and peak memory are n/a")
    for mode in MODES:
        s, p = served[mode.name], local[mode.name]
        other = next(m.name for m in MODES if m is not mode)
        bound = p.param_bytes / h2d if h2d else None
        switch_bound = bound + local[other].param_bytes / d2h if bound is not None and d2h else None
        ram, restore = median(s.ram_loads), median(p.restores)
        ram_ok = None if ram is None or bound is None else ram <= SWITCH_TARGET * bound
        acc_ok = None
        if s.driver_delta_bytes:
            acc_ok = abs(s.device_used_bytes - s.driver_delta_bytes) / s.driver_delta_bytes * 100 \
                <= ACCOUNTING_TARGET_PCT
        size = args.size or mode.size
        print(f"\n-- {mode.name} ({mode.family}): {p.param_bytes / 1e9:.3f} GB of parameters and buffers at "
              f"{args.dtype}")
        print(f"  load from disk, served (first request)  {fmt_s(s.disk_load_s)} (tier {s.disk_tier}): "
              f"{ratio(s.disk_load_s, s.raw_read_s)} the raw read ({s.raw_read_bytes / 1e9:.2f} GB in "
              f"{s.raw_read_s:.3f}s, {args.page_cache} page cache), {ratio(s.disk_load_s, bound)} the copy bound; "
              "it includes the replica's first-time imports" + (f" and evicting {other}" if mode is MODES[1] else ""))
        print(f"  load from disk, served, repeated        {fmt_s(s.repeat_load_s)} (tier {s.repeat_tier}; operator "
              f"unload + load on an empty device): {ratio(s.repeat_load_s, s.raw_read_s)} the raw read")
        print(f"  load from disk, in-process              {fmt_s(p.load_s)}: {ratio(p.load_s, s.raw_read_s)} the "
              "raw read")
        print(f"  copy bound (bytes / pinned H2D)         {fmt_s(bound)}")
        print(f"  RAM-tier switch, served (median of {len(s.ram_loads)})  {fmt_s(ram)}: {ratio(ram, bound)} the "
              f"bound (target <= {SWITCH_TARGET:.0f}x) {verdict(ram_ok)}; it includes evicting {other} "
              f"(bound with its device->host copy {fmt_s(switch_bound)}: {ratio(ram, switch_bound)}); client "
              f"latency {fmt_s(median(s.switch_client_s))}")
        print(f"  RAM-tier restore alone, in-process      {fmt_s(restore)}: {ratio(restore, bound)} the bound")
        if s.other_tiers:
            print(f"  switches not served from the RAM tier: {s.other_tiers}")
        print(f"  registry measured_bytes {fmt_gib(s.measured_bytes)}: {pct(s.measured_bytes, p.param_bytes)} vs "
              f"the parameter bytes, {pct(s.measured_bytes, p.allocated_delta or None)} vs an in-process load's "
              f"allocation ({fmt_gib(p.allocated_delta or None)})")
        print(f"  registry device used_bytes {fmt_gib(s.device_used_bytes)} (footprint {fmt_gib(s.footprint_bytes)}"
              f" = measured + standing working memory; load estimate {fmt_gib(s.estimate_bytes)}) vs the driver's "
              f"view after the largest request {fmt_gib(s.driver_delta_bytes)} (reported_used - baseline): "
              f"{pct(s.device_used_bytes, s.driver_delta_bytes)} (target within {ACCOUNTING_TARGET_PCT:.0f}%) "
              f"{verdict(acc_ok)}; {s.snapshot}")
        est = p.estimate
        if p.peak_error:
            print(f"  largest request ({p.peak_request}): {p.peak_error}; estimate {fmt_gib(est.total_bytes)}")
        else:
            working = None if p.peak_allocated is None or p.peak_base is None else p.peak_allocated - p.peak_base
            print(f"  largest request ({p.peak_request}): peak allocated {fmt_gib(p.peak_allocated)} (reserved "
                  f"{fmt_gib(p.peak_reserved)}); estimate {fmt_gib(est.total_bytes)}: "
                  f"{pct(est.total_bytes, p.peak_allocated)}; working memory {fmt_gib(working)}, estimated "
                  f"{fmt_gib(est.working_bytes)}: {pct(est.working_bytes, working)}")
        served_its, local_its = median(s.its), median(p.its)
        print(f"  it/s at {size}x{size}, {args.steps} steps: served {served_its or 0:.2f}, in-process "
              f"{local_its or 0:.2f}: {ratio(served_its, local_its)}; served request wall time median "
              f"{fmt_s(median(s.request_s))}")


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
    if min(args.steps, args.requests, args.max_images, args.switches) < 1:
        parser.error("--steps, --requests, --max-images and --switches must be at least 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

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
    from serve_app.model.checkpoint_inspect import inspect_checkpoint
    from serve_app.model.vram_estimate import BYTES_PER_DTYPE

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    device = (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / GiB:.1f} GiB"
              if cuda else "CPU (--allow-cpu smoke test)")
    print(f"device: {device}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}, ray {ray.__version__}")

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
            from serve_app.model.pipeline_loader import load_pipelines

            for mode in MODES:
                started = time.perf_counter()
                info = inspect_checkpoint(paths[mode.name])
                load_pipelines(info, info.family, torch.float16, torch.device("cpu"))
                gc.collect()
                print(f"[convert] {mode.name}: conversion cache ready in {time.perf_counter() - started:.1f}s")

        served = serve_phase(args, work, paths, estimates, param_bytes, cuda)
        bandwidth = copy_bandwidth(args.h2d_mib * MiB) if cuda else None
        local = in_process_phase(args, paths, cuda)
        report(args, served, local, bandwidth)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
