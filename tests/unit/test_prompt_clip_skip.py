"""Clip skip and the prompt syntax setting, from the request (native and A1111) and the mode, to the image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.core.errors import RequestValidationError
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import pixels


def _mode(path: Path, **kw) -> ModeConfig:
    defaults = kw.pop("defaults", {})
    return ModeConfig(name="tiny-sd1", checkpoint=str(path), scheduler="euler",
                      defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0, **defaults),
                      limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4), **kw)


@pytest.fixture(scope="module")
def runner(demo_models_dir: Path) -> Iterator[ModelRunner]:
    runner = ModelRunner(_mode(demo_models_dir / "tiny-sd1"), demo_models_dir / "tiny-sd1", device=torch.device("cpu"))
    runner.load()
    yield runner
    runner.unload()


def _image(runner: ModelRunner, req: Txt2ImgRequest, mode: ModeConfig | None = None) -> bytes:
    return pixels(runner.generate(resolve_request(req, mode or runner.mode, runner.family)).images[0].data)


def test_clip_skip_2_changes_the_image_and_the_mode_default_applies(runner: ModelRunner, demo_models_dir: Path) -> None:
    plain = _image(runner, Txt2ImgRequest(prompt="a red fox", seed=1))
    assert _image(runner, Txt2ImgRequest(prompt="a red fox", seed=1, clip_skip=1)) == plain
    skipped = _image(runner, Txt2ImgRequest(prompt="a red fox", seed=1, clip_skip=2))
    assert skipped != plain
    mode = _mode(demo_models_dir / "tiny-sd1", defaults={"clip_skip": 2})
    assert resolve_request(Txt2ImgRequest(prompt="a"), mode, runner.family).clip_skip == 2
    assert _image(runner, Txt2ImgRequest(prompt="a red fox", seed=1), mode) == skipped


def test_a1111_clip_skip_comes_from_override_settings(runner: ModelRunner) -> None:
    body = A1111Txt2ImgRequest(prompt="a red fox", seed=1, override_settings={"CLIP_stop_at_last_layers": 2})
    assert body.to_native(mode=None).clip_skip == 2
    assert A1111Txt2ImgRequest(prompt="a", clip_skip=2).to_native(mode=None).clip_skip == 2
    assert A1111Txt2ImgRequest(prompt="a").to_native(mode=None).clip_skip is None
    for bad in ("two", 0, 13, 1.5, True):
        with pytest.raises(RequestValidationError) as err:
            A1111Txt2ImgRequest(prompt="a", override_settings={"CLIP_stop_at_last_layers": bad}).to_native(None)
        assert err.value.param == "override_settings.CLIP_stop_at_last_layers"


def test_a_clip_skip_out_of_range_is_refused_naming_it(runner: ModelRunner) -> None:
    with pytest.raises(ValidationError, match="clip_skip"):
        Txt2ImgRequest(prompt="a", clip_skip=0)
    with pytest.raises(RequestValidationError, match="more than this text encoder has layers") as err:
        _image(runner, Txt2ImgRequest(prompt="a", clip_skip=4))  # the tiny encoder has 2 layers
    assert err.value.param == "clip_skip"


def test_the_plain_syntax_keeps_brackets_literal(runner: ModelRunner, demo_models_dir: Path) -> None:
    plain_mode = _mode(demo_models_dir / "tiny-sd1", prompt_syntax="plain")
    weighted = Txt2ImgRequest(prompt="a (red:1.5) fox", seed=1)
    assert _image(runner, weighted, plain_mode) != _image(runner, weighted)
    assert _image(runner, weighted, plain_mode) == _image(runner, Txt2ImgRequest(prompt="a \\(red:1.5\\) fox", seed=1))
