"""The SDXL base -> refiner split on the real tiny pipelines: the base stops at `switch_at` and answers its
latents (no images), the refiner finishes them; the result equals the same split run in one process with
diffusers directly, so nothing is lost in the hand-off (the latents are plain numpy, as they travel)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.api.mode_catalog import ServedMode
from serve_app.api.request_resolution import resolve_refiner_base, resolve_request
from serve_app.api.schemas.native import HiresFix, Img2ImgRequest, RefinerPass, Txt2ImgRequest
from serve_app.core.errors import RequestValidationError
from serve_app.model.demo.architectures import DEMO_INPAINTING
from serve_app.model.generation.job import RefinerFinish, Txt2Img
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
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
    request.job = Txt2Img(denoising_end=0.6)
    first = base.generate(request)
    assert first.images == [] and isinstance(first.latents, np.ndarray) and first.latents.shape[0] == 2
    finish = request.refiner_finish(first.latents)
    assert isinstance(finish.job, RefinerFinish) and finish.job.denoising_start == 0.6
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


def _served(models: Path, name: str) -> ServedMode:
    return ServedMode(mode_for(models / name), inspect_checkpoint(models / name))


def test_the_refiner_rules_are_checked_at_resolution(demo_models_dir: Path) -> None:
    sdxl, refiner, sd1 = (_served(demo_models_dir, n) for n in ("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sd1"))
    inpainting = _served(demo_models_dir, DEMO_INPAINTING)
    body = Txt2ImgRequest(prompt="a castle", seed=4, steps=5, refiner=RefinerPass(mode="r", switch_at=0.7))
    base = resolve_refiner_base(body, sdxl, refiner)
    assert base.job == Txt2Img(denoising_end=0.7) and base.answers_latents
    for wrong_base, wrong_refiner in ((sd1, refiner), (sdxl, sdxl), (inpainting, refiner)):
        with pytest.raises(RequestValidationError, match="needs an sdxl mode and an sdxl-refiner mode") as err:
            resolve_refiner_base(body, wrong_base, wrong_refiner)
        assert err.value.param == "refiner.mode"
    for other in (body.model_copy(update={"hires": HiresFix()}),
                  Img2ImgRequest(**body.model_dump(exclude_none=True), image="aGk=")):
        with pytest.raises(RequestValidationError, match="plain txt2img") as err:
            resolve_refiner_base(other, sdxl, refiner)
        assert err.value.param == "refiner"
    with pytest.raises(ValueError, match="hands latents"):
        resolve_request(body.model_copy(update={"refiner": None}), sdxl.config, sdxl.family).refiner_finish(None)
