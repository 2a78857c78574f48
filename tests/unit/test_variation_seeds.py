"""Variation seeds: strength 0 is the seed's own image, a small strength a nearby variation, 1 the variation
seed's own image; the same request gives the same pixels; the infotext and A1111 fields carry them; they are
refused where they cannot apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
from serve_app.api.schemas.native import Img2ImgRequest, Txt2ImgRequest
from serve_app.core.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation.infotext import parse_infotext
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.generation.variation_noise import slerp, variation_latents
from tests.unit.runner_helpers import mode_for, pixels, txt2img


@pytest.fixture(scope="module")
def runner(demo_models_dir: Path) -> ModelRunner:
    r = ModelRunner(mode_for(demo_models_dir / "tiny-sd1.safetensors"), demo_models_dir / "tiny-sd1.safetensors",
                    device=torch.device("cpu"))
    r.load()
    return r


def _array(data: bytes) -> np.ndarray:
    return np.frombuffer(pixels(data), dtype=np.uint8).astype(np.int16)


def test_slerp_ends_are_the_two_noises_and_the_middle_keeps_the_norm() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn((1, 4, 8, 8), generator=g), torch.randn((1, 4, 8, 8), generator=g)
    assert torch.allclose(slerp(0.0, a, b), a, atol=1e-6) and torch.allclose(slerp(1.0, a, b), b, atol=1e-6)
    typical = (float(a.norm()) + float(b.norm())) / 2
    assert abs(float(slerp(0.5, a, b).norm()) - typical) / typical < 0.1
    assert float((0.5 * (a + b)).norm()) < 0.8 * typical  # a straight line would lose ~30% of the noise


def test_variation_latents_at_strength_0_are_the_seeds_own_noise() -> None:
    mine = variation_latents([5, 6], [9, 10], 0.0, (4, 8, 8), torch.float32)
    diffusers_way = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(s))
                               for s in (5, 6)])
    assert torch.equal(mine, diffusers_way)


def test_strength_moves_the_image_from_the_seed_to_the_variation_seed(runner: ModelRunner) -> None:
    own = _array(txt2img(runner, seed=5).images[0].data)
    other = _array(txt2img(runner, seed=9).images[0].data)
    zero = _array(txt2img(runner, seed=5, subseed=9, subseed_strength=0.0).images[0].data)
    small = txt2img(runner, seed=5, subseed=9, subseed_strength=0.1)
    again = txt2img(runner, seed=5, subseed=9, subseed_strength=0.1)
    full = _array(txt2img(runner, seed=5, subseed=9, subseed_strength=1.0).images[0].data)
    near = _array(small.images[0].data)
    assert np.array_equal(zero, own)
    assert pixels(small.images[0].data) == pixels(again.images[0].data)  # deterministic per (seed, subseed)
    assert not np.array_equal(near, own)
    assert np.abs(near - own).mean() < np.abs(near - other).mean()  # a variation of the seed's image
    assert np.abs(full - other).mean() < 2.0  # the variation seed's own image (up to float rounding)
    fields = parse_infotext(small.images[0].infotext or "")
    assert fields["Variation seed"] == "9" and fields["Variation seed strength"] == "0.1"


def test_a_batch_gives_each_image_its_own_variation_seed(runner: ModelRunner) -> None:
    batch = txt2img(runner, seed=5, subseed=9, subseed_strength=0.5, num_images=2)
    seeds = [parse_infotext(img.infotext or "")["Variation seed"] for img in batch.images]
    assert seeds == ["9", "10"]


def test_variation_seeds_are_refused_where_they_cannot_apply(runner: ModelRunner) -> None:
    from tests.unit.test_router_loop import _png_b64

    edit = Img2ImgRequest(prompt="x", image=_png_b64(), subseed_strength=0.3)
    with pytest.raises(RequestValidationError, match="`subseed_strength` is served on txt2img only"):
        resolve_request(edit, runner.mode, runner.family)
    with pytest.raises(RequestValidationError, match="not served for family flux"):
        resolve_request(Txt2ImgRequest(prompt="x", subseed_strength=0.3), runner.mode, Family.FLUX)
    with pytest.raises(RequestValidationError, match="`subseed` must be between"):
        resolve_request(Txt2ImgRequest(prompt="x", subseed=-5, subseed_strength=0.3), runner.mode, runner.family)


def test_a1111_fields_reach_the_native_request() -> None:
    native = A1111Txt2ImgRequest(prompt="x", seed=3, subseed=11, subseed_strength=0.25).native_fields()
    assert native["subseed"] == 11 and native["subseed_strength"] == 0.25
    assert A1111Txt2ImgRequest(prompt="x").native_fields()["subseed_strength"] == 0.0
