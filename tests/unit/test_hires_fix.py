"""Hires fix on the real tiny pipelines: each upscaler returns the larger size (and a different image than
the plain upscale), sizes past the mode's limits are refused naming the field, and A1111's fields map."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
from serve_app.api.schemas.native import HiresFix, Img2ImgRequest, Txt2ImgRequest
from serve_app.core.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import mode_for


@pytest.fixture(scope="module", params=["tiny-sd1", "tiny-sdxl"])
def runner(request, demo_models_dir: Path):
    runner = ModelRunner(mode_for(demo_models_dir / request.param), demo_models_dir / request.param,
                         device=torch.device("cpu"))
    runner.load()
    yield runner
    runner.unload()


@pytest.mark.parametrize("upscaler", ["latent", "latent_nearest", "lanczos", "nearest"])
def test_each_upscaler_makes_the_larger_image(runner: ModelRunner, upscaler: str) -> None:
    steps = []
    body = Txt2ImgRequest(prompt="a fox", seed=1, width=64, height=48, steps=3,
                          hires=HiresFix(scale=2, upscaler=upscaler, steps=4, strength=0.5))
    result = runner.generate(resolve_request(body, runner.mode, runner.family),
                             progress=lambda step, total: steps.append((step, total)))
    assert (result.width, result.height) == (128, 96)
    assert Image.open(io.BytesIO(result.images[0].data)).size == (128, 96)
    assert steps == [(i, 5) for i in range(1, 6)]  # 3 first-pass steps, then int(4 * 0.5) = 2, one bar


def test_hires_sizes_are_checked_naming_the_field() -> None:
    mode = mode_for(Path("tiny-sd1"))  # largest size 256x256
    def resolve(body):
        return resolve_request(body, mode, Family.SD1)
    with pytest.raises(RequestValidationError, match=r"`hires.scale` makes 512x384, past .* 256x256") as info:
        resolve(Txt2ImgRequest(prompt="x", width=128, height=96, hires=HiresFix(scale=4)))
    assert info.value.param == "hires.scale"
    assert resolve(Txt2ImgRequest(prompt="x", width=64, height=48, hires=HiresFix(width=128))).hires.height == 96
    with pytest.raises(RequestValidationError, match="txt2img only"):
        resolve(Img2ImgRequest(prompt="x", image="aGk=", hires=HiresFix()))
    a1111 = A1111Txt2ImgRequest(prompt="x", width=64, height=64, enable_hr=True, hr_scale=8).to_native(None)
    with pytest.raises(RequestValidationError, match="`hr_scale` makes 512x512") as info:
        resolve(a1111)
    assert info.value.param == "hr_scale"
    with pytest.raises(RequestValidationError, match="`hr_upscaler` 'R-ESRGAN 4x\\+' is not offered"):
        A1111Txt2ImgRequest(prompt="x", enable_hr=True, hr_upscaler="R-ESRGAN 4x+").to_native(None)
    with pytest.raises(RequestValidationError, match="`denoising_strength`") as info:
        A1111Txt2ImgRequest(prompt="x", enable_hr=True, denoising_strength=3).to_native(None)
    plain = resolve(A1111Txt2ImgRequest(prompt="x", width=64, height=64, enable_hr=True, hr_upscaler="Lanczos",
                                        hr_resize_x=128, hr_resize_y=96).to_native(None)).hires
    assert (plain.width, plain.height, plain.upscaler, plain.strength) == (128, 96, "lanczos", 0.7)


def test_a1111_second_pass_checkpoint_and_refiner_fields() -> None:
    with pytest.raises(RequestValidationError, match="`hr_checkpoint_name` 'sd2': a second pass on another mode"):
        A1111Txt2ImgRequest(prompt="x", enable_hr=True, hr_checkpoint_name="sd2").to_native("sd1")
    assert A1111Txt2ImgRequest(prompt="x", enable_hr=True, hr_checkpoint_name="sd1").to_native("sd1").hires
    native = A1111Txt2ImgRequest(prompt="x", refiner_checkpoint="sdxl-refiner [0a1b2c3d4e]",
                                 refiner_switch_at=0.7).to_native("sdxl")
    assert (native.refiner.mode, native.refiner.switch_at) == ("sdxl-refiner", 0.7)


@pytest.mark.parametrize("family", [Family.SD3, Family.FLUX])
def test_transformer_families_take_sizes_in_multiples_of_16(family: Family) -> None:
    """SD3 and FLUX pack latents in 2x2 patches: a side that is not a multiple of 16 is a 422 naming the field
    (SD3's pipeline raised in the replica, FLUX's silently made another size); a hires size rounds to 16."""
    mode = mode_for(Path("tiny-flux"))
    with pytest.raises(RequestValidationError, match="`height` must be a positive multiple of 16") as info:
        resolve_request(Txt2ImgRequest(prompt="x", width=64, height=56), mode, family)
    assert info.value.param == "height"
    body = Txt2ImgRequest(prompt="x", width=64, height=48, hires=HiresFix(scale=1.5, upscaler="lanczos"))
    hires = resolve_request(body, mode, family).hires
    assert (hires.width, hires.height) == (96, 64)  # 72 rounds to 64, not the 72 a UNet family takes
    assert resolve_request(Txt2ImgRequest(prompt="x", width=64, height=56), mode, Family.SD1).height == 56
