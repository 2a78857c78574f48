"""The demo's FLUX.1 Fill file (transformer only, BFL's original layout, input width 384) is detected as FLUX
fill, its mode takes the family's Fill defaults (guidance 30), and the runner inpaints with it (the unmasked
pixels come back exactly); as any inpainting checkpoint, it runs txt2img and img2img as full-mask fills, and
refuses what its pipeline has no input for (true CFG, a full-resolution crop) naming the mode's variant."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Img2ImgRequest, InpaintRequest, Txt2ImgRequest
from serve_app.config.mode_families import component_paths, with_family
from serve_app.config.modes_file import load_modes_file
from serve_app.core.errors import RequestValidationError
from serve_app.model.demo.flow_demo_models import FLUX_FILL
from serve_app.model.families import Family
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from tests.unit.runner_helpers import png_b64

DEMO_MODES = Path(__file__).resolve().parents[2] / "configs" / "demo_modes.yaml"
SIZE = 64


def _picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")


def _mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


@pytest.fixture(scope="module")
def runner(demo_models_dir: Path) -> ModelRunner:
    mode = next(m for m in load_modes_file(DEMO_MODES).modes if m.name == "flux-fill")
    loaded = ModelRunner(mode, demo_models_dir / mode.checkpoint, components=component_paths(mode, demo_models_dir),
                         device=torch.device("cpu"))
    loaded.load()
    loaded.mode = with_family(mode, loaded.info)  # the family's defaults, as the worker applies them
    yield loaded
    loaded.unload()


def _run(runner: ModelRunner, body: Txt2ImgRequest) -> Image.Image:
    request = resolve_request(body, runner.mode, runner.family, inpainting=runner.info.inpainting,
                              variant=runner.info.variant)
    return Image.open(io.BytesIO(runner.generate(request).images[0].data)).convert("RGB")


def test_the_demo_fill_file_is_detected_as_flux_fill(demo_models_dir: Path) -> None:
    alone = inspect_checkpoint(demo_models_dir / FLUX_FILL)
    assert (alone.family, alone.variant, alone.layout, alone.inpainting) == (Family.FLUX, "flux-fill", "original", True)
    assert alone.unet_in_channels == 384 and sorted(alone.missing_components) == ["clip_l", "t5xxl", "vae"]


def test_the_fill_mode_inpaints_and_keeps_the_unmasked_pixels(runner: ModelRunner) -> None:
    assert runner.info.variant == "flux-fill" and runner.info.missing_components == []
    assert runner.pipelines().inpainting_only and type(runner.pipelines().inpaint).__name__ == "FluxFillPipeline"
    assert runner.mode.defaults.guidance_scale == 30.0
    body = InpaintRequest(prompt="a red fox", image=png_b64(_picture()), mask=png_b64(_mask()), seed=3, steps=2,
                          width=SIZE, height=SIZE, mask_blur=0)
    out, source = np.asarray(_run(runner, body)).astype(int), np.asarray(_picture()).astype(int)
    inside = np.asarray(_mask()) == 255
    assert np.abs(out - source)[~inside].max() == 0  # composited back through the mask
    assert np.abs(out - source)[inside].mean() > 10  # the masked square is repainted
    assert np.array_equal(np.asarray(_run(runner, body)), out)  # same seed, same image


def test_txt2img_and_img2img_run_as_full_mask_fills(runner: ModelRunner) -> None:
    common = {"prompt": "a lighthouse", "seed": 4, "steps": 2, "width": SIZE, "height": SIZE}
    made = _run(runner, Txt2ImgRequest(**common))
    redone = _run(runner, Img2ImgRequest(**common, image=png_b64(_picture()), strength=0.7))
    assert made.size == redone.size == (SIZE, SIZE)
    assert not np.array_equal(np.asarray(redone), np.asarray(_picture()))  # the whole image is repainted


@pytest.mark.parametrize(("fields", "param"), [({"true_cfg_scale": 3.0}, "true_cfg_scale"),
                                                ({"inpaint_full_res": True}, "inpaint_full_res")])
def test_what_the_fill_pipeline_has_no_input_for_is_refused(runner: ModelRunner, fields: dict, param: str) -> None:
    body = InpaintRequest(prompt="x", image=png_b64(_picture()), mask=png_b64(_mask()), **fields)
    with pytest.raises(RequestValidationError) as err:
        _run(runner, body)
    assert err.value.param == param and ("flux-fill" in err.value.message or "FLUX.1 Fill" in err.value.message)
