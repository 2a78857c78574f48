"""Model-layer benchmark: header-only inspection of a >= 1 GB single file, and load time vs raw read time.

    python benchmarks/bench_model_layer.py [--size-gb 1.1] [--runs 20] [--keep DIR]

1. Writes a single-file checkpoint in the original (LDM) layout of at least `--size-gb` GB: the demo SDXL
   file's tensors plus enough extra `model.diffusion_model.*` tensors to reach the size and a realistic
   tensor count (the real SDXL base file has ~2,500). Tensor bytes are streamed from one reusable buffer,
   so writing takes about as long as the disk needs. Then times `inspect_checkpoint` on it (median of
   `--runs`), against a 50 ms target.
2. For each demo checkpoint format of a family, times `ModelRunner.load` against reading every byte of the
   checkpoint's files, and prints the ratio. A single file's first load converts its layout and writes the
   conversion cache; the later (cold) loads read the cache: both are shown, against a 3x-of-raw-read target.
3. For the same checkpoints, a switch back from the RAM tier (`offload` then `load`) against a load from
   disk, against a 0.1x target.
4. With `--full-size`: the same first / cached load of a full-size random-weight SD1.5 single file (2.1 GB
   fp16, built from the shipped family config; about a minute to build), loaded in fp16, where reading the
   bytes rather than building the pipeline is what a load costs.
5. Cold load time of the tiny SD3 / FLUX demo checkpoints (folders, and FLUX schnell from component files).

Offline; everything is written under a temporary folder that is removed afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_checkpoints import files_under, read_files

INSPECT_TARGET_S = 0.050
LOAD_TARGET_RATIO = 3.0  # a single file's cold load after its first, vs a raw read of the file
RAM_TARGET_RATIO = 0.1  # a switch back from the RAM tier, vs a load from disk
UNET = "model.diffusion_model."
CHUNK = 16 * 1024 * 1024


def write_big_single_file(source: Path, target: Path, size_bytes: int, min_tensors: int = 2600) -> tuple[int, int]:
    """Copy `source`'s tensors into `target` and pad with UNet tensors until the file has `size_bytes`.

    Returns (file bytes, tensor count). The header is built by hand (what `safetensors.save_file` writes:
    8-byte little-endian length, JSON, then the tensors back to back), so no tensor is ever materialised.
    """
    with source.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data_start = 8 + n
    metadata = header.pop("__metadata__", {})
    entries: dict[str, dict] = {}
    copies: list[tuple[int, int]] = []  # (source offset, length) in the order written
    offset = 0
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = t["data_offsets"]
        entries[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [offset, offset + end - begin]}
        copies.append((data_start + begin, end - begin))
        offset += end - begin
    # padding: fp16 conv/linear weights of UNet-like shapes, as many as needed for the count and the size
    n_pad = max(min_tensors - len(entries), 1)
    remaining = max(size_bytes - offset, 0)
    per = max(remaining // n_pad // 2 * 2, 2)
    pad_sizes: list[int] = []
    for i in range(n_pad):
        elems = per // 2
        name = f"{UNET}output_blocks.{i // 64}.{i % 64}.bench_pad.weight"
        entries[name] = {"dtype": "F16", "shape": [elems], "data_offsets": [offset, offset + elems * 2]}
        pad_sizes.append(elems * 2)
        offset += elems * 2
    header_out = dict(entries)
    header_out["__metadata__"] = metadata
    raw = json.dumps(header_out, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data start to 8 bytes
    buf = (bytes(range(256)) * (CHUNK // 256))  # non-zero, so the file is not sparse
    with source.open("rb") as src, target.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for pos, length in copies:
            src.seek(pos)
            out.write(src.read(length))
        mv = memoryview(buf)
        for size in pad_sizes:
            while size:
                step = min(size, CHUNK)
                out.write(mv[:step])
                size -= step
    return target.stat().st_size, len(entries)


def median_time(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def read_all_bytes(path: Path) -> int:
    return read_files(files_under(path))[0]


def median_load(runner, runs: int, reset) -> float:
    """Median seconds of `runner.load()` over `runs`, each after `reset()` (an unload, or an offload to RAM)."""
    times = []
    for _ in range(runs):
        reset()
        started = time.perf_counter()
        runner.load()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_full_size_sd15(work: Path) -> Path:
    """A full-size SD1.5 single file with seeded random fp16 weights (the GPU benchmark's builder)."""
    from gpu_checkpoints import build_full_size_pipeline

    from serve_app.model.families import Family
    from serve_app.model.loading.single_file_writer import write_single_file

    path = work / "full-sd15.safetensors"
    started = time.perf_counter()
    write_single_file(build_full_size_pipeline("sd1", seed=0), Family.SD1, path)
    print(f"full-size SD1.5 single file: {path.stat().st_size / 1e9:.2f} GB, built in "
          f"{time.perf_counter() - started:.0f}s")
    return path


def flow_load_times(demo: Path, runs: int) -> None:
    """Cold load time of the tiny SD3 / FLUX demo checkpoints, as the demo modes load them."""
    import torch

    from serve_app.config.mode_families import component_paths
    from serve_app.config.modes_file import ModeComponents, ModeConfig
    from serve_app.model.generation.runner import ModelRunner

    shared = ["components/tiny-flux-clip-l.safetensors", "components/tiny-t5xxl.safetensors"]
    for name, checkpoint, components in (
            ("sd3", "tiny-sd3", None), ("flux", "tiny-flux", ModeComponents(text_encoders=shared)),
            ("flux-schnell", "tiny-flux-schnell.safetensors",
             ModeComponents(text_encoders=shared, vae="components/tiny-flux-ae.safetensors")),
            ("flux-fill", "tiny-flux-fill.safetensors",  # BFL's original layout: converted on every load
             ModeComponents(text_encoders=shared, vae="components/tiny-flux-ae.safetensors"))):
        mode = ModeConfig(name=name, checkpoint=checkpoint, components=components)
        runner = ModelRunner(mode, demo / checkpoint, device=torch.device("cpu"),
                             components=component_paths(mode, demo))
        started = time.perf_counter()
        runner.load()
        first = time.perf_counter() - started
        load_med = median_load(runner, runs, reset=runner.unload)
        runner.unload()
        print(f"{name} ({checkpoint}{' + component files' if components else ''}): first load {first * 1000:.0f} ms; "
              f"later cold loads median {load_med * 1000:.0f} ms over {runs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.1, help="size of the big single file (GB, 1e9 bytes)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--load-runs", type=int, default=3, help="timed loads per checkpoint")
    parser.add_argument("--family", default="sdxl", help="demo family for the load benchmark")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    parser.add_argument("--full-size", action="store_true", help="also measure a full-size SD1.5 single file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.families import Family
    from serve_app.model.generation.runner import ModelRunner
    from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dreamlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    try:
        started = time.perf_counter()
        write_demo_models(work / "demo")
        print(f"demo checkpoints ready in {time.perf_counter() - started:.1f}s")

        # 1. inspection of a >= 1 GB single file reads its header only
        big = work / "big-sdxl.safetensors"
        started = time.perf_counter()
        size, count = write_big_single_file(work / "demo" / "tiny-sdxl.safetensors", big, int(args.size_gb * 1e9))
        write_s = time.perf_counter() - started
        print(f"big single file: {size / 1e9:.2f} GB, {count} tensors, header "
              f"{struct.unpack('<Q', big.open('rb').read(8))[0] / 1024:.0f} KiB, written in {write_s:.1f}s "
              f"({size / 1e9 / write_s:.2f} GB/s)")
        info = inspect_checkpoint(big)  # warm-up (imports, page cache of the header)
        assert info.family is Family.SDXL and info.file_bytes == size, info
        med, times = median_time(lambda: inspect_checkpoint(big), args.runs)
        print(f"inspect_checkpoint(big): median {med * 1000:.2f} ms over {args.runs} runs "
              f"(min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f}); target {INSPECT_TARGET_S * 1000:.0f} ms; "
              f"ratio to target {med / INSPECT_TARGET_S:.3f} ({'PASS' if med < INSPECT_TARGET_S else 'FAIL'})")
        print(f"  for scale: reading all {size / 1e9:.2f} GB of it takes "
              f"{median_time(lambda: read_all_bytes(big), 1)[0]:.2f}s (page cache warm)")
        big.unlink()

        # 2. load time vs the time to read the checkpoint's bytes
        family = Family(args.family)
        checkpoints = [(work / "demo" / f"tiny-{family.value}", "auto"),
                       (work / "demo" / f"tiny-{family.value}.safetensors", "auto")]
        if args.full_size:
            checkpoints.append((write_full_size_sd15(work), "fp16"))
        for path, dtype in checkpoints:
            name = path.name
            nbytes = read_all_bytes(path)  # warms the page cache, as a load right after a download would see it
            read_med, _ = median_time(lambda: read_all_bytes(path), args.runs)
            mode = ModeConfig(name="bench", checkpoint=str(path), dtype=dtype)
            runner = ModelRunner(mode, path, device=torch.device("cpu"))
            started = time.perf_counter()
            runner.load()  # first load: imports, config materialisation and, for a single file, the conversion
            first = time.perf_counter() - started
            load_med = median_load(runner, args.load_runs, reset=runner.unload)
            print(f"{name}: {nbytes / 1e6:.1f} MB on disk; first load {first * 1000:.0f} ms; later cold loads "
                  f"median {load_med * 1000:.0f} ms over {args.load_runs}; raw read of all bytes median "
                  f"{read_med * 1000:.2f} ms over {args.runs} ({nbytes / 1e9 / read_med:.2f} GB/s); "
                  f"load/read ratio {load_med / read_med:.1f}x (target {LOAD_TARGET_RATIO:.0f}x for single files)")
            ram_med = median_load(runner, args.load_runs, reset=runner.offload)
            runner.unload()
            print(f"{name}: switch back from the RAM tier median {ram_med * 1000:.2f} ms vs {load_med * 1000:.0f} ms "
                  f"from disk: {ram_med / load_med:.4f}x (target {RAM_TARGET_RATIO}x)")

        # 3. the tiny flow-matching families: SD3 and FLUX folders, and the split FLUX schnell (component files)
        flow_load_times(work / "demo", args.load_runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
