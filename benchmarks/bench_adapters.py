"""LoRA and ControlNet benchmark (a script, not a test): `python benchmarks/bench_adapters.py [--runs 10]`.

On the tiny demo models, in process: the cost of applying an already loaded LoRA set (the request's
inference time with the set vs without it; target <= 5%), the time to load a LoRA from disk vs the mode's
own load (target <= 0.2x), and that a LoRA at weight 0 gives the same image as none (same seed). ControlNets:
a load from disk vs the mode's load, and the per-step cost of one and two units vs none (the fastest inference
time of the runs / steps, the ControlNets already loaded; the control image's preprocessing is outside it),
for SD 1.x, SDXL, SD3 and FLUX.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

APPLY_TARGET = 0.05
LOAD_TARGET = 0.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import torch
    from PIL import Image

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.adapters.lora_set import adapter_name
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.generation.job import LoraUse
    from serve_app.model.generation.runner import ModelRunner

    root = Path(tempfile.mkdtemp(prefix="dreamlab-bench-adapters-"))
    write_demo_models(root)
    ok = True
    for mode_name, checkpoint in (("sd1", "tiny-sd1"), ("sdxl", "tiny-sdxl")):
        path = root / checkpoint
        runner = ModelRunner(ModeConfig(name=mode_name, checkpoint=str(path)), path, device=torch.device("cpu"))
        runner.load()
        runner.unload()
        started = time.perf_counter()
        runner.load()
        mode_load = time.perf_counter() - started
        lora_path = root / "loras" / f"{checkpoint}-lora.safetensors"
        lora = LoraUse(name=lora_path.stem, path=str(lora_path), weight=0.8, file_bytes=lora_path.stat().st_size)
        params = resolve_request(Txt2ImgRequest(prompt="a red fox", seed=3, steps=args.steps, width=64, height=64),
                                 runner.mode, runner.family)

        def run(loras: list[LoraUse]) -> tuple[float, bytes]:
            """Inference time and the image's pixels (its PNG's infotext names the LoRAs, weight 0 too)."""
            params.loras = loras
            result = runner.generate(params)
            return result.timings.inference_s, Image.open(io.BytesIO(result.images[0].data)).tobytes()

        def apply(loras: list[LoraUse]) -> float:
            started = time.perf_counter()
            runner.run_exclusive(lambda: runner.loras.apply(runner.pipelines().base, loras))
            return time.perf_counter() - started

        plain_image = run([])[1]
        lora_load = apply([lora])  # from disk
        applies = [apply([lora]) for _ in range(args.runs)]  # cached: set_adapters
        plain = [run([])[0] for _ in range(args.runs)]
        apply_cost = statistics.median(applies) / statistics.median(plain)
        zero_same = run([LoraUse(lora.name, lora.path, 0.0, lora.file_bytes)])[1] == plain_image
        assert adapter_name(lora) in runner.loras.loaded
        print(f"{mode_name}: applying a cached LoRA {statistics.median(applies) * 1000:.1f} ms vs inference "
              f"{statistics.median(plain) * 1000:.0f} ms: {apply_cost:.1%} (target <= {APPLY_TARGET:.0%}); "
              f"LoRA load from disk {lora_load * 1000:.0f} ms vs mode load "
              f"{mode_load * 1000:.0f} ms: {lora_load / mode_load:.2f}x (target {LOAD_TARGET}x); "
              f"weight 0 == no LoRA: {zero_same}")
        ok &= zero_same
        bench_controlnets(runner, root, params, mode_load, args.runs)
        runner.unload()
    for mode_name in ("sd3", "flux"):  # ControlNets of the transformer families, on the demo's modes
        runner = _demo_runner(root, mode_name)
        runner.load()
        runner.unload()
        started = time.perf_counter()
        runner.load()
        mode_load = time.perf_counter() - started
        params = resolve_request(Txt2ImgRequest(prompt="a red fox", seed=3, steps=args.steps, width=64, height=64),
                                 runner.mode, runner.family)
        bench_controlnets(runner, root, params, mode_load, args.runs)
        runner.unload()
    return 0 if ok else 1


def _demo_runner(root: Path, name: str):
    """The runner of the demo's mode `name` (with its component files) over the demo models in `root`."""
    import torch

    from serve_app.config.mode_families import component_paths
    from serve_app.config.modes_file import load_modes_file
    from serve_app.model.generation.runner import ModelRunner

    modes = load_modes_file(Path(__file__).resolve().parents[1] / "configs" / "demo_modes.yaml").modes
    mode = next(m for m in modes if m.name == name)
    return ModelRunner(mode, root / mode.checkpoint, components=component_paths(mode, root),
                       device=torch.device("cpu"))


def bench_controlnets(runner, root: Path, params, mode_load: float, runs: int) -> None:
    from PIL import Image, ImageDraw

    from serve_app.model.generation.job import ControlUse
    from serve_app.model.inspection.adapter_inspect import AdapterKind, discover_adapters

    net = next(a for a in discover_adapters(root)[0] if a.kind is AdapterKind.CONTROLNET and a.family is runner.family)
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((12, 16, 50, 44), fill="white")
    unit = ControlUse(name=net.name, path=net.path, file_bytes=net.file_bytes, parameters=net.parameters or 0,
                      image=image, preprocessor="canny")
    params.loras = []
    runner.controls.clear()
    started = time.perf_counter()
    runner.run_exclusive(lambda: runner.controls.models([unit], cfg=True))
    load = time.perf_counter() - started

    def per_step(controls: list) -> float:
        params.controls = controls
        runner.generate(params)  # warm-up (first calls of a pipeline class pay one-off costs)
        times = [runner.generate(params).timings.inference_s for _ in range(runs)]
        return min(times) / params.steps  # the fastest: the least disturbed by other processes

    none, one, two = per_step([]), per_step([unit]), per_step([unit, unit])
    params.controls = []
    print(f"{runner.mode.name}: ControlNet load from disk {load * 1000:.0f} ms vs mode load {mode_load * 1000:.0f} ms: "
          f"{load / mode_load:.2f}x; per step: none {none * 1000:.1f} ms, one unit {one * 1000:.1f} ms "
          f"({one / none:.2f}x), two units {two * 1000:.1f} ms ({two / none:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
