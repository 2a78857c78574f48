"""Prompt encoding benchmark (a script, not a test): `python benchmarks/bench_prompts.py [--runs 20]`.

On the tiny demo models, in process: the cost of A1111 weighting and of long-prompt chunking, each as the
extra encoding time over diffusers' own encoding of a plain short prompt, relative to a whole plain 4-step
generation (target: under 5%). Also says whether our encoding of a plain short prompt equals diffusers' bit
for bit (it must: the same image as before).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.05
PLAIN = "a red fox in the snow, golden hour, highly detailed"
WEIGHTED = "a (red fox:1.3) in the ((snow)), [blurry], golden hour, (highly detailed:1.2)"
# 3 chunks on the demo's byte-level tokenizer (a token per character): what a ~200-token prompt takes with a
# real CLIP tokenizer, the length of typical community prompts
LONG = ", ".join(["(masterpiece:1.2), best quality, a red fox in the snow", "golden hour light", "[blurry]",
                  "highly detailed fur, sharp focus, bokeh background", "cinematic composition",
                  "(film grain:0.8), depth of field, 35mm photograph"])


def _median_s(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where there is one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import torch

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.demo.demo_models import write_demo_models
    from serve_app.model.families import Family
    from serve_app.model.generation.runner import ModelRunner
    from serve_app.model.prompts.encoding import chunk_count, encode_prompts

    root = Path(tempfile.mkdtemp(prefix="dreamlab-bench-prompts-"))
    write_demo_models(root, (Family.SD1, Family.SDXL))
    ok = True
    for checkpoint in ("tiny-sd1", "tiny-sdxl"):
        path = root / checkpoint
        runner = ModelRunner(ModeConfig(name=checkpoint, checkpoint=str(path)), path,
                             device=torch.device(args.device))
        runner.load()
        pipe, family = runner.pipelines().txt2img, runner.family
        params = resolve_request(Txt2ImgRequest(prompt=PLAIN, negative_prompt="lowres", seed=3, steps=args.steps,
                                                width=64, height=64), runner.mode, runner.family)
        generation = _median_s(lambda: runner.generate(params), args.runs)

        def theirs() -> object:
            with torch.inference_mode():
                if family is Family.SDXL:
                    return pipe.encode_prompt(PLAIN, negative_prompt="lowres", device=runner.device,
                                              num_images_per_prompt=1, do_classifier_free_guidance=True)
                return pipe.encode_prompt(PLAIN, runner.device, 1, True, negative_prompt="lowres")

        def ours(text: str) -> Callable[[], object]:
            return lambda: encode_prompts(pipe, family, text, "lowres")

        base = _median_s(theirs, args.runs)
        same = torch.equal(encode_prompts(pipe, family, PLAIN, "lowres").prompt_embeds, theirs()[0])  # type: ignore[index]
        ok &= same
        print(f"{checkpoint} on {args.device}: plain {args.steps}-step 64x64 generation {generation * 1000:.0f} ms; "
              f"diffusers' encoding of a plain prompt {base * 1000:.1f} ms; ours equals it: {same}")
        for label, text in (("plain", PLAIN), ("weighted", WEIGHTED), ("long weighted", LONG)):
            cost = _median_s(ours(text), args.runs)
            extra = max(cost - base, 0.0) / generation
            ok &= extra < TARGET
            print(f"  {label:>13} ({chunk_count(pipe, family, text)} chunk(s)): encoding {cost * 1000:.1f} ms, "
                  f"+{(cost - base) * 1000:.1f} ms = {extra:.1%} of the generation (target < {TARGET:.0%})")
        runner.unload()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
