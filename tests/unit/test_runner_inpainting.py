"""Inpainting on the real tiny pipelines: every family repaints the masked area and gives the unmasked
pixels back exactly; an inpainting checkpoint (UNet in_channels 9) serves inpaint, txt2img and img2img;
masks are checked before a pixel is decoded and an empty one is refused."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import HiresFix, Img2ImgRequest, InpaintRequest, Txt2ImgRequest
from serve_app.core.errors import RequestValidationError
from serve_app.model.demo.architectures import DEMO_INPAINTING
from serve_app.model.families import Family
from serve_app.model.generation.job import Inpaint, Txt2Img
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import mode_for, png_b64

SIZE = 64


def _picture() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _mask(box: tuple[int, int, int, int] = (16, 16, 48, 48), size: int = SIZE) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def _runner(models: Path, name: str) -> ModelRunner:
    runner = ModelRunner(mode_for(models / name), models / name, device=torch.device("cpu"))
    runner.load()
    return runner


def _inpaint(runner: ModelRunner, **fields) -> Image.Image:
    body = InpaintRequest(prompt="a red fox", image=png_b64(_picture()), mask=png_b64(fields.pop("mask", _mask())),
                          seed=3, width=SIZE, height=SIZE, strength=fields.pop("strength", 0.9), **fields)
    result = runner.generate(resolve_request(body, runner.mode, runner.family))
    return Image.open(io.BytesIO(result.images[0].data)).convert("RGB")


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sdxl", "tiny-sdxl-refiner", DEMO_INPAINTING])
def test_every_family_repaints_the_mask_and_keeps_the_rest_exactly(demo_models_dir: Path, checkpoint: str) -> None:
    runner = _runner(demo_models_dir, checkpoint)
    out = np.asarray(_inpaint(runner, mask_blur=2)).astype(int)
    source = np.asarray(_picture()).astype(int)
    untouched = np.asarray(_mask().filter(ImageFilter.GaussianBlur(2))) == 0
    assert np.abs(out - source)[untouched].max() == 0  # tolerance 0: composited back through the mask
    assert np.abs(out - source)[~untouched].mean() > 5  # the masked area was repainted
    runner.unload()


def test_full_resolution_inpainting_and_masked_content(demo_models_dir: Path) -> None:
    runner = _runner(demo_models_dir, "tiny-sd1")
    plain = np.asarray(_inpaint(runner))
    full_res = np.asarray(_inpaint(runner, inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=0))
    outside = np.asarray(_mask()) == 0
    assert full_res.shape == plain.shape and (full_res[outside] == np.asarray(_picture())[outside]).all()
    assert not (full_res == plain).all()
    for content in ("fill", "latent_noise", "latent_nothing"):
        assert not (np.asarray(_inpaint(runner, masked_content=content)) == plain).all()
    runner.unload()


def test_an_inpainting_checkpoint_also_serves_txt2img_and_img2img(demo_models_dir: Path) -> None:
    runner = _runner(demo_models_dir, DEMO_INPAINTING)
    assert runner.info.inpainting and runner.pipelines().inpainting_only
    txt = runner.generate(resolve_request(Txt2ImgRequest(prompt="x", seed=1, width=SIZE, height=SIZE),
                                          runner.mode, runner.family))
    img = runner.generate(resolve_request(Img2ImgRequest(prompt="x", seed=1, image=png_b64(_picture()), strength=0.5),
                                          runner.mode, runner.family))
    assert (txt.width, txt.height) == (img.width, img.height) == (SIZE, SIZE)
    assert runner.self_check()
    runner.unload()


def _resolve(**fields) -> Inpaint:
    body = InpaintRequest(prompt="x", image=png_b64(_picture()), **fields)
    job = resolve_request(body, mode_for(Path("tiny-sd1")), Family.SD1).job
    assert isinstance(job, Inpaint)
    return job


def test_masks_are_checked_resized_inverted_and_read_from_alpha() -> None:
    with pytest.raises(RequestValidationError, match="`mask` is empty .*white marks") as info:
        _resolve(mask=png_b64(_mask((0, 0, 0, 0))))
    assert info.value.param == "mask"
    with pytest.raises(RequestValidationError, match="`mask` is not a decodable"):
        _resolve(mask=base64.b64encode(b"GIF89a-not-a-mask").decode())
    with pytest.raises(RequestValidationError, match="`mask` is 4096x4096 pixels"):
        _resolve(mask=png_b64(Image.new("L", (4096, 4096))))
    small = _resolve(mask=png_b64(_mask((4, 4, 12, 12), size=16)))  # resized to the image, nearest neighbour
    assert small.mask.size == (SIZE, SIZE) and small.mask.getpixel((20, 20)) == 255
    assert small.mask.getpixel((8, 8)) == 0
    inverted = _resolve(mask=png_b64(_mask()), mask_invert=True)
    assert inverted.mask.getpixel((0, 0)) == 255 and inverted.mask.getpixel((32, 32)) == 0
    rgba = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 8))  # transparent = repaint
    alpha = _resolve(mask=png_b64(rgba), mask_alpha=True)
    assert alpha.mask.getpixel((2, 2)) == 255 and alpha.mask.getpixel((30, 30)) == 0
    with pytest.raises(RequestValidationError, match="no transparent pixel"):
        _resolve(mask=png_b64(Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))), mask_alpha=True)


def test_an_inpainting_checkpoint_refuses_hires_before_the_queue_and_in_the_runner(demo_models_dir: Path) -> None:
    runner = _runner(demo_models_dir, DEMO_INPAINTING)
    body = Txt2ImgRequest(prompt="x", seed=1, width=SIZE, height=SIZE, hires=HiresFix(scale=2))
    with pytest.raises(RequestValidationError, match="inpainting checkpoint, which has no second pass") as err:
        resolve_request(body, runner.mode, runner.family, inpainting=runner.info.inpainting)
    assert err.value.param == "hires"
    # a hand-built request that skipped resolution is refused the same way by the runner's input builder
    request = resolve_request(body, runner.mode, runner.family)
    assert isinstance(request.job, Txt2Img) and request.job.hires is not None
    with pytest.raises(RequestValidationError, match="no second pass") as err:
        runner.generate(request)
    assert err.value.param == "hires"
    runner.unload()
