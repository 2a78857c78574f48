"""Generation through `ModelRunner` with the real diffusers pipelines of the tiny demo checkpoints.

Every txt2img family is loaded from its diffusers folder and from its single file (one load each, shared
by the module); images are 64x48 with 2 steps, so the whole module runs in seconds on a CPU.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Img2ImgRequest, Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig
from serve_app.core.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation.job import GenerationRequest, Txt2Img
from serve_app.model.generation.runner import GenerationCancelledError, ModelRunner, ModelState
from tests.unit.runner_helpers import HEIGHT, STEPS, WIDTH, mode_for, pixels, png_b64, txt2img

TXT2IMG_CHECKPOINTS = ["tiny-sd1", "tiny-sd1.safetensors", "tiny-sd2", "tiny-sd2.safetensors",
                       "tiny-sdxl", "tiny-sdxl.safetensors"]
FAMILY_OF = {"tiny-sd1": Family.SD1, "tiny-sd2": Family.SD2, "tiny-sdxl": Family.SDXL,
             "tiny-sdxl-refiner": Family.SDXL_REFINER}


@pytest.fixture(scope="module")
def runner_for(demo_models_dir: Path) -> Iterator[Callable[[str], ModelRunner]]:
    """Loaded runners by checkpoint name, each loaded once for the whole module."""
    cache: dict[str, ModelRunner] = {}

    def get(name: str) -> ModelRunner:
        if name not in cache:
            path = demo_models_dir / name
            runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
            assert runner.load() is True
            cache[name] = runner
        return cache[name]

    yield get
    for runner in cache.values():
        runner.unload()


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


def _png_b64(width: int, height: int, color=(200, 40, 90)) -> str:
    return png_b64(Image.new("RGB", (width, height), color))


# -- txt2img: every family, both formats -------------------------------------------------------------------

@pytest.mark.parametrize("name", TXT2IMG_CHECKPOINTS)
def test_txt2img_png_size_seeds_and_determinism(runner_for, name: str) -> None:
    runner = runner_for(name)
    assert runner.family is FAMILY_OF[name.removesuffix(".safetensors")]
    assert runner.state is ModelState.READY and runner.loaded

    first = txt2img(runner, seed=7)
    assert (first.width, first.height, first.steps) == (WIDTH, HEIGHT, STEPS)
    assert [i.seed for i in first.images] == [7]
    img = _png(first.images[0].data)
    assert img.size == (WIDTH, HEIGHT) and img.mode == "RGB"
    assert len(set(img.getdata())) > 1  # a real picture, not a constant fill

    again = txt2img(runner, seed=7)
    assert again.images[0].data == first.images[0].data  # same seed -> same bytes

    other = txt2img(runner, seed=8)
    assert pixels(other.images[0].data) != pixels(first.images[0].data)  # different seed -> different image

    pair = txt2img(runner, seed=100, num_images=2)
    assert [i.seed for i in pair.images] == [100, 101]
    assert pixels(pair.images[0].data) != pixels(pair.images[1].data)
    assert all(_png(i.data).size == (WIDTH, HEIGHT) for i in pair.images)
    assert pair.timings.inference_s > 0 and pair.timings.encode_s > 0


def test_requested_size_is_honoured(runner_for) -> None:
    result = txt2img(runner_for("tiny-sd1"), seed=1, width=32, height=80, steps=1)
    assert _png(result.images[0].data).size == (32, 80)


def test_other_output_formats(runner_for) -> None:
    runner = runner_for("tiny-sd1")
    for fmt, pil_name in (("jpeg", "JPEG"), ("webp", "WEBP")):
        data = txt2img(runner, seed=1, steps=1, output_format=fmt).images[0].data
        img = Image.open(io.BytesIO(data))
        assert img.format == pil_name and img.size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("scheduler,cls", [("euler", "EulerDiscreteScheduler"),
                                           ("euler_a", "EulerAncestralDiscreteScheduler"),
                                           ("ddim", "DDIMScheduler"),
                                           ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_schedulers_run(runner_for, scheduler: str, cls: str) -> None:
    runner = runner_for("tiny-sd1")
    steps: list[tuple[int, int]] = []
    req = Txt2ImgRequest(prompt="a lighthouse", seed=5, scheduler=scheduler, steps=3)
    result = runner.generate(resolve_request(req, runner.mode, runner.family),
                             progress=lambda s, t: steps.append((s, t)))
    assert result.scheduler == scheduler
    assert type(runner.pipelines().txt2img.scheduler).__name__ == cls
    assert _png(result.images[0].data).size == (WIDTH, HEIGHT)
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_schedulers_change_the_image(runner_for) -> None:
    runner = runner_for("tiny-sd1")
    outputs = {s: pixels(txt2img(runner, seed=5, scheduler=s, steps=3).images[0].data) for s in ("euler", "ddim")}
    assert outputs["euler"] != outputs["ddim"]
    # and swapping back restores the first result exactly (no scheduler state leaks between requests)
    assert pixels(txt2img(runner, seed=5, scheduler="euler", steps=3).images[0].data) == outputs["euler"]


@pytest.mark.parametrize("name", ["tiny-sd2.safetensors", "tiny-sdxl"])
def test_progress_once_per_step(runner_for, name: str) -> None:
    runner = runner_for(name)
    calls: list[tuple[int, int]] = []
    req = Txt2ImgRequest(prompt="a boat", seed=3, steps=4, scheduler="dpmpp_2m")
    runner.generate(resolve_request(req, runner.mode, runner.family), progress=lambda s, t: calls.append((s, t)))
    assert calls == [(i, 4) for i in range(1, 5)]


def test_cancel_stops_after_the_current_step(runner_for) -> None:
    runner = runner_for("tiny-sd1")
    calls: list[int] = []
    req = Txt2ImgRequest(prompt="a boat", seed=3, steps=6)
    with pytest.raises(GenerationCancelledError):
        runner.generate(resolve_request(req, runner.mode, runner.family), progress=lambda s, t: calls.append(s),
                        cancelled=lambda: len(calls) >= 2)
    assert calls == [1, 2]
    assert runner.state is ModelState.READY  # still serves afterwards
    assert _png(txt2img(runner, seed=3, steps=1).images[0].data).size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl.safetensors"])
def test_img2img_on_a_txt2img_family(runner_for, name: str) -> None:
    runner = runner_for(name)
    req = Img2ImgRequest(prompt="a blue house", image=_png_b64(WIDTH, HEIGHT), strength=0.5, steps=4, seed=9)
    params = resolve_request(req, runner.mode, runner.family)
    a = runner.generate(params)
    assert _png(a.images[0].data).size == (WIDTH, HEIGHT)
    assert runner.generate(params).images[0].data == a.images[0].data


# -- the SDXL refiner: img2img only ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-sdxl-refiner", "tiny-sdxl-refiner.safetensors"])
def test_refiner_img2img(runner_for, name: str) -> None:
    runner = runner_for(name)
    assert runner.family is Family.SDXL_REFINER
    assert runner.pipelines().txt2img is None
    steps: list[tuple[int, int]] = []
    # the init image is 80x64; the request leaves the size out, so the output takes the image's size
    req = Img2ImgRequest(prompt="sharper details", image=_png_b64(80, 64), strength=0.5, steps=4, seed=21)
    params = resolve_request(req, runner.mode, runner.family)
    result = runner.generate(params, progress=lambda s, t: steps.append((s, t)))
    assert _png(result.images[0].data).size == (80, 64)
    assert steps == [(1, 2), (2, 2)]  # strength 0.5 of 4 steps
    assert runner.generate(params).images[0].data == result.images[0].data


def test_txt2img_on_the_refiner_is_refused(runner_for) -> None:
    runner = runner_for("tiny-sdxl-refiner")
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Txt2ImgRequest(prompt="a cat"), runner.mode, runner.family)
    assert err.value.param == "mode" and "img2img" in err.value.message and runner.mode.name in err.value.message
    # a hand-built txt2img params object reaching the runner is refused the same way, not an AttributeError
    params = GenerationRequest(job=Txt2Img(), prompt="a cat", negative_prompt="", width=64, height=64, steps=2,
                              guidance_scale=5.0, seeds=[1], scheduler="euler", output_format="png")
    with pytest.raises(RequestValidationError) as err:
        runner.generate(params)
    assert err.value.param == "mode"


# -- request validation names field and value ------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1_mode(demo_models_dir: Path) -> ModeConfig:
    return mode_for(demo_models_dir / "tiny-sd1")


@pytest.mark.parametrize(("fields", "param", "value"), [
    ({"width": 65}, "width", "65"),
    ({"height": 0}, "height", "0"),
    ({"width": 264}, "width", "264"),
    ({"height": 512}, "height", "512"),
    ({"steps": 0}, "steps", "0"),
    ({"steps": 51}, "steps", "51"),
    ({"num_images": 5}, "num_images", "5"),
    ({"num_images": 0}, "num_images", "0"),
    ({"guidance_scale": -1}, "guidance_scale", "-1"),
    ({"seed": -3}, "seed", "-3"),
    ({"prompt": "x" * 201}, "prompt", "201"),
])
def test_txt2img_validation(sd1_mode: ModeConfig, fields: dict, param: str, value: str) -> None:
    req = Txt2ImgRequest(**{"prompt": "a cat", **fields})
    with pytest.raises(RequestValidationError) as err:
        resolve_request(req, sd1_mode, Family.SD1)
    assert err.value.param == param
    assert f"`{param}`" in err.value.message and value in err.value.message
    assert err.value.status_code == 422


def test_limits_in_the_message(sd1_mode: ModeConfig) -> None:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Txt2ImgRequest(prompt="a", width=264), sd1_mode, Family.SD1)
    assert "256" in err.value.message  # says what the limit is


@pytest.mark.parametrize(("image", "why"), [
    ("this is not base64!!", "base64"),
    (base64.b64encode(b"plain text, not a picture").decode(), "image"),
    ("data:image/png;base64,%%%", "base64"),
])
def test_bad_init_image(sd1_mode: ModeConfig, image: str, why: str) -> None:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Img2ImgRequest(prompt="a", image=image), sd1_mode, Family.SD1)
    assert err.value.param == "image" and "`image`" in err.value.message and why in err.value.message


def test_bad_strength(sd1_mode: ModeConfig) -> None:
    for strength in (0.0, 1.5):
        with pytest.raises(RequestValidationError) as err:
            resolve_request(Img2ImgRequest(prompt="a", image=_png_b64(64, 64), strength=strength), sd1_mode,
                            Family.SD1)
        assert err.value.param == "strength" and str(strength) in err.value.message


def test_defaults_fill_what_the_request_leaves_out(sd1_mode: ModeConfig) -> None:
    params = resolve_request(Txt2ImgRequest(prompt="a"), sd1_mode, Family.SD1)
    d = sd1_mode.defaults
    assert (params.width, params.height, params.steps, params.guidance_scale, params.scheduler) == (
        d.width, d.height, d.steps, d.guidance_scale, sd1_mode.scheduler)
    assert len(params.seeds) == 1 and 0 <= params.seeds[0] < 2**32  # random seed when none is given


# -- unload frees, reload works ------------------------------------------------------------------------

def test_prediction_type_override_reaches_the_scheduler(demo_models_dir: Path, runner_for) -> None:
    path = demo_models_dir / "tiny-sd2"
    runner = ModelRunner(mode_for(path, prediction_type="v_prediction"), path, device=torch.device("cpu"))
    runner.load()
    try:
        overridden = pixels(txt2img(runner, seed=3).images[0].data)
        assert runner.pipelines().txt2img.scheduler.config.prediction_type == "v_prediction"  # the one just used
        assert overridden != pixels(txt2img(runner_for("tiny-sd2"), seed=3).images[0].data)
    finally:
        runner.unload()


# -- the self-check tells a broken pipeline from a bad request ---------------------------------------------

def test_self_check_passes_on_a_sound_pipeline_and_fails_on_a_broken_unet(demo_models_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))  # its own: this test breaks it
    assert runner.self_check() is False  # nothing loaded, nothing sound to find
    runner.load()
    try:
        assert runner.self_check() is True
        assert runner.self_check() is True  # repeatable, and leaves the runner serving
        assert _png(txt2img(runner, seed=1, steps=1).images[0].data).size == (WIDTH, HEIGHT)
        unet = runner.pipelines().txt2img.unet

        def exploding_forward(*args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        with monkeypatch.context() as patch:
            patch.setattr(unet, "forward", exploding_forward)
            assert runner.self_check() is False
        assert runner.self_check() is True  # the forward is back

        weight = next(unet.parameters())
        with torch.no_grad():
            weight.fill_(float("nan"))  # a corrupted weight: the pipeline runs, the pixels are NaN
        assert runner.self_check() is False
        assert runner.state is ModelState.READY  # the runner only answers; the mode worker decides
    finally:
        runner.unload()
