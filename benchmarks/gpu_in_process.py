"""In-process measurements for `bench_gpu.py`, with Serve stopped: pinned/pageable host<->device copy bandwidth, and
per mode a `ModelRunner` load, it/s, the largest request's peak memory vs `estimate_vram` and a RAM-tier restore.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
from pathlib import Path
from typing import Any

from gpu_checkpoints import MODES, PEAK_STEPS, PROMPT, mode_entry, prepare_page_cache


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

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.runner import ModelRunner
    from serve_app.model.inspection.vram_estimate import estimate_vram

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    import diffusers

    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline",
                 "StableDiffusionXLImg2ImgPipeline"):
        getattr(diffusers, name)  # diffusers imports lazily: keep that out of the first load's time
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
