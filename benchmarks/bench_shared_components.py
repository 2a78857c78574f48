"""Host memory of modes that share component files: N mode processes on one node, each loading a FLUX mode
whose text encoders (and, for schnell, VAE) come from the same component files, measured by the kernel.

    python benchmarks/bench_shared_components.py [--processes 4] [--fine-tunes] [--dtype fp32] [--keep DIR]

Each process (a separate interpreter, as Serve's mode replicas are) loads its mode on the CPU, reads every
weight once (so every page is resident) and reports its proportional set size (PSS: a page shared by k
processes counts 1/k in each) and unique set size (USS) before and after the load. The sum of the PSS
deltas is what the node really holds (it also counts the libraries each process imports while loading: a few
MiB of noise per process); the PSS of the mappings of the component files alone, summed, is exact.
The same run with `--private` (each process copies its mapped
weights into its own memory, which is what a load did before component weights were mapped) is the
one-copy-per-mode baseline; both are printed, with the bytes of the mapped component files.

`--fine-tunes`: one process per SDXL all-in-one file instead, a base and fine-tunes of it that keep its VAE and
text encoders (only their UNets differ): the parts shared by content (`mapped_folder`) against N full copies.

`--dtype fp16` makes each process load fp32 component files as fp16: the first writes one converted copy
(in the conversion cache), every process maps it. Linux only (PSS comes from /proc/<pid>/smaps_rollup).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024**2
MODES = ("flux", "flux-schnell")


def _runner(models: Path, mode_name: str, dtype: str) -> Any:
    """The runner of a demo mode, or (`mode_name` a .safetensors path) of that single file."""
    if mode_name.endswith(".safetensors"):
        return _file_runner(Path(mode_name), dtype)
    from serve_app.config.mode_families import component_paths
    from serve_app.config.modes_file import load_modes_file

    modes = {m.name: m for m in load_modes_file(Path(__file__).resolve().parents[1] / "configs/demo_modes.yaml").modes}
    mode = modes[mode_name].model_copy(update={"dtype": dtype})
    from serve_app.model.generation.runner import ModelRunner

    checkpoint = models / mode.checkpoint
    return ModelRunner(mode, checkpoint, components=component_paths(mode, models))


def _file_runner(path: Path, dtype: str) -> Any:
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.runner import ModelRunner

    return ModelRunner(ModeConfig(name=path.stem, checkpoint=str(path), dtype=dtype), path)


def _mapped_pss(inodes: set[int]) -> int:
    """Bytes of PSS of this process's mappings of the files with these inodes (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            inside = fields[4].isdigit() and int(fields[4]) in inodes
        elif inside and fields and fields[0] == "Pss:":
            total += int(fields[1]) * 1024
    return total


def _child(models: str, mode_name: str, dtype: str, private: bool, out: Any, go: Any, done: Any) -> None:
    import psutil
    import torch

    torch.set_num_threads(1)
    runner = _runner(Path(models), mode_name, dtype)
    me = psutil.Process()
    before = me.memory_full_info()
    runner.load()
    assert runner._pipes is not None
    if private:  # what a load did before: the weights in this process's own memory
        for part in runner._pipes.mapped:
            for param, _ in part.tensors:
                param.data = param.data.clone()
        runner._pipes.mapped.clear()  # no reference to the mapped tensors left: their pages are not counted
    touched = sum(float(t.detach().float().sum()) for m in runner._pipes.modules() for t in m.parameters())
    out.put(None)  # loaded: PSS is read once every process has its pages (a page's share depends on all)
    go.wait()
    after = me.memory_full_info()
    inodes = {int(c.identity.split(":")[1]) for c in runner.host_components()}
    out.put({"mode": mode_name, "pss": after.pss - before.pss, "uss": after.uss - before.uss,
             "file_pss": _mapped_pss(inodes),
             "params": runner.parameter_bytes(), "mapped": sum(c.host_bytes for c in runner.host_components()),
             "components": {c.identity: c.host_bytes for c in runner.host_components()}, "touched": touched})
    done.wait()


def measure(models: Path, targets: list[str], dtype: str, private: bool) -> list[dict[str, Any]]:
    """One process per target (a demo mode, or a single file's path), all loaded at once."""
    ctx = mp.get_context("spawn")
    out, go, done = ctx.Queue(), ctx.Event(), ctx.Event()
    children = [ctx.Process(target=_child, args=(str(models), target, dtype, private, out, go, done))
                for target in targets]
    for child in children:
        child.start()
    for _ in children:
        out.get(timeout=600)  # every process loaded
    go.set()
    results = [out.get(timeout=600) for _ in children]  # every process measured, all still alive
    done.set()
    for child in children:
        child.join()
    return results


def _fine_tunes(work: Path, count: int, dtype: str) -> list[str]:
    """A tiny SDXL single file and `count - 1` fine-tunes of it (their UNets nudged), each loaded once here so
    the conversion cache holds their entries (and cast copies) before the measured processes map them."""
    from serve_app.model.demo.architectures import build_demo_pipeline
    from serve_app.model.demo.demo_models import write_fine_tune
    from serve_app.model.families import Family
    from serve_app.model.loading.single_file_writer import write_single_file

    base = work / "base.safetensors"
    write_single_file(build_demo_pipeline(Family.SDXL), Family.SDXL, base)
    files = [base] + [write_fine_tune(base, work / f"fine-tune-{i}.safetensors", seed=i) for i in range(1, count)]
    for path in files:
        runner = _file_runner(path, dtype)
        runner.load()
        runner.unload()
    return [str(p) for p in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="mode processes (alternately flux, flux-schnell)")
    parser.add_argument("--fine-tunes", action="store_true",
                        help="instead: one process per SDXL all-in-one file, a base and its fine-tunes")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="the modes' dtype")
    parser.add_argument("--keep", default=None, help="write the demo models in this folder and keep it")
    args = parser.parse_args(argv)
    from serve_app.model.demo.flow_demo_models import write_flow_demo_models

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dreamlab-shared-"))
    try:
        if args.fine_tunes:
            targets = _fine_tunes(work, args.processes, args.dtype)
        else:
            write_flow_demo_models(work)
            targets = [MODES[i % 2] for i in range(args.processes)]
        rows = {}
        for private in (True, False):
            results = measure(work, targets, args.dtype, private)
            rows[private] = results
            label = "one copy per mode (private)" if private else "mapped component files (shared)"
            pss = sum(r["pss"] for r in results) / MiB
            print(f"{label:34s}: {args.processes} processes, total PSS delta {pss:7.1f} MiB, "
                  f"USS deltas {[round(r['uss'] / MiB, 1) for r in results]} MiB")
        shared = rows[False]
        users: dict[str, list[int]] = {}
        for r in shared:
            for identity, nbytes in r["components"].items():
                users.setdefault(identity, []).append(nbytes)
        ideal = sum(sum(b[1:]) for b in users.values()) / MiB  # every copy but one of each file
        saved = (sum(r["pss"] for r in rows[True]) - sum(r["pss"] for r in shared)) / MiB
        print(f"mapped component files: {len(users)}, {sum(b[0] for b in users.values()) / MiB:.1f} MiB; "
              f"parameters per process: {[round(r['params'] / MiB, 1) for r in shared]} MiB")
        full = sum(r["params"] for r in shared) / MiB
        held = sum(r["file_pss"] for r in shared) / MiB
        print(f"PSS of the mapped files, all processes together: {held:.1f} MiB (one copy of each file); "
              f"{args.processes} full copies: {full:.1f} MiB; ratio {held / full:.2f}")
        print(f"host memory saved by sharing: {saved:.1f} MiB (ideal {ideal:.1f} MiB: every copy but one of each "
              "shared file)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
