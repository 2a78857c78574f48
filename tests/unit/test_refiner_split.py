"""The SDXL base -> refiner split on the real tiny pipelines: the base stops at `switch_at` and answers its
latents (no images), the refiner finishes them; the result equals the same split run in one process with
diffusers directly, so nothing is lost in the hand-off (the latents are plain numpy, as they travel)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import mode_for


def test_base_latents_finish_on_the_refiner(demo_models_dir: Path) -> None:
    base = ModelRunner(mode_for(demo_models_dir / "tiny-sdxl"), demo_models_dir / "tiny-sdxl",
                       device=torch.device("cpu"))
    refiner = ModelRunner(mode_for(demo_models_dir / "tiny-sdxl-refiner"), demo_models_dir / "tiny-sdxl-refiner",
                          device=torch.device("cpu"))
    base.load()
    refiner.load()
    request = resolve_request(Txt2ImgRequest(prompt="a castle", seed=4, steps=5, num_images=2), base.mode,
                              base.family)
    request.denoising_end = 0.6
    first = base.generate(request)
    assert first.images == [] and isinstance(first.latents, np.ndarray) and first.latents.shape[0] == 2
    finish = dataclasses.replace(request, kind="img2img", init_latents=first.latents, denoising_end=None,
                                 denoising_start=0.6)
    second = refiner.generate(finish)
    assert len(second.images) == 2 and (second.width, second.height) == (request.width, request.height)

    # the same split with diffusers in one process, the latents never leaving torch
    generators = [torch.Generator("cpu").manual_seed(s) for s in request.seeds]
    common = dict(prompt=[request.prompt] * 2, negative_prompt=[request.negative_prompt] * 2,
                  num_inference_steps=5, guidance_scale=request.guidance_scale)
    base_pipe, refiner_pipe = base.pipelines().txt2img, refiner.pipelines().img2img
    latents = base_pipe(**common, width=request.width, height=request.height, generator=generators,
                        denoising_end=0.6, output_type="latent").images
    direct = refiner_pipe(**common, image=latents, denoising_start=0.6, generator=generators).images
    served = [np.asarray(Image.open(io.BytesIO(img.data))) for img in second.images]
    assert all((np.asarray(d) == s).all() for d, s in zip(direct, served))
    base.unload()
    refiner.unload()
