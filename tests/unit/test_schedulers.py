"""Everything advertised works: every sampler with every schedule type it is listed with, and every A1111
sampler that `/sdapi/v1/samplers` lists, runs a real generation on the tiny demo sd1 checkpoint (2 steps,
64x64) and gives a PNG of finite pixels (LMS and Beta need scipy, DPM++ SDE torchsde: a missing dependency
fails here, not on a replica). What is not served is refused naming the field and value, never replaced.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deployments.router.frontends.a1111 import sdapi_samplers, sdapi_schedulers
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111_SAMPLER_ALIASES, A1111_SAMPLERS, A1111Txt2ImgRequest
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.core.errors import RequestValidationError
from serve_app.model.generation.a1111_samplers import A1111_SAMPLER_TABLE, A1111_SCHEDULE_TYPES, a1111_sampler
from serve_app.model.generation.job import GenerationResult
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.generation.schedulers import (
    _SCHEDULE_CONFIG,
    _SCHEDULERS,
    SCHEDULER_NAMES,
    make_scheduler,
    schedule_types_for,
)
from tests.unit.runner_helpers import pixels

SIZE, STEPS = 64, 2


class FiniteWatch:
    """Forward hooks on the UNet and the VAE decoder: whether every output of the last generation was finite
    (a NaN becomes a black PNG, which still decodes)."""

    def __init__(self, runner: ModelRunner) -> None:
        pipe = runner.pipelines().txt2img
        self.outputs: list[bool] = []
        for module in (pipe.unet, pipe.vae.decoder):
            module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        self.outputs.append(bool(torch.isfinite(tensor).all()))

    def reset(self) -> None:
        self.outputs.clear()


@pytest.fixture(scope="module")
def sd1(demo_models_dir: Path) -> Iterator[tuple[ModelRunner, FiniteWatch]]:
    """The tiny sd1 demo model, loaded once for the module, with a watch on its outputs."""
    path = demo_models_dir / "tiny-sd1"
    mode = ModeConfig(name="tiny-sd1", checkpoint=str(path), scheduler="euler",
                      defaults=ModeDefaults(width=SIZE, height=SIZE, steps=STEPS, guidance_scale=5.0),
                      limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4,
                                        max_prompt_chars=200))
    runner = ModelRunner(mode, path, device=torch.device("cpu"))
    runner.load()
    watch = FiniteWatch(runner)
    yield runner, watch
    runner.unload()


def _generate(sd1: tuple[ModelRunner, FiniteWatch], req: Txt2ImgRequest) -> GenerationResult:
    runner, watch = sd1
    watch.reset()
    result = runner.generate(resolve_request(req, runner.mode, runner.family))
    # the UNet ran at least once per step (Heun twice), then the decoder once; all of it finite
    assert len(watch.outputs) >= STEPS + 1 and all(watch.outputs), watch.outputs
    (image,) = result.images
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(image.data))
    img.load()
    assert img.format == "PNG" and img.size == (SIZE, SIZE)
    assert len(set(img.getdata())) > 1  # a real picture, not a constant (black) fill
    return result


PAIRS = [(name, schedule) for name in SCHEDULER_NAMES for schedule in schedule_types_for(name)]


@pytest.mark.parametrize(("name", "schedule"), PAIRS)
def test_every_sampler_generates_with_every_schedule_type_it_takes(sd1, name: str, schedule: str) -> None:
    result = _generate(sd1, Txt2ImgRequest(prompt="a lighthouse", seed=5, scheduler=name, schedule_type=schedule,
                                           steps=STEPS, width=SIZE, height=SIZE))
    assert result.scheduler == (name if schedule == "automatic" else f"{name}:{schedule}")
    assert result.steps == STEPS


@pytest.mark.parametrize("sampler", list(A1111_SAMPLERS))
def test_every_a1111_sampler_generates(sd1, sampler: str) -> None:
    body = A1111Txt2ImgRequest(prompt="a lighthouse", seed=5, sampler_name=sampler, steps=STEPS, width=SIZE,
                               height=SIZE)
    native = body.to_native(mode=None)
    assert native.scheduler == A1111_SAMPLERS[sampler]
    result = _generate(sd1, native)
    default = A1111_SAMPLER_TABLE[sampler].schedule  # A1111's "Automatic" for this sampler
    assert result.scheduler == A1111_SAMPLERS[sampler] + ("" if default == "automatic" else f":{default}")


def test_a_schedule_type_changes_the_image(sd1) -> None:
    def image(**kw) -> bytes:
        req = Txt2ImgRequest(prompt="a lighthouse", seed=5, steps=4, width=SIZE, height=SIZE, **kw)
        return pixels(_generate(sd1, req).images[0].data)

    plain = image(scheduler="dpmpp_2m")
    karras = image(scheduler="dpmpp_2m", schedule_type="karras")
    assert karras != plain and image(scheduler="dpmpp_2m", schedule_type="exponential") not in (plain, karras)
    assert image(scheduler="dpmpp_2m_karras") == karras  # the older name: the same sampler


def test_a1111_names_schedule_types_and_older_names() -> None:
    assert a1111_sampler("DPM++ 2M SDE", "Karras") == ("dpmpp_2m_sde", "karras")
    assert a1111_sampler("DPM++ 2M SDE", None) == ("dpmpp_2m_sde", "exponential")  # A1111's Automatic for it
    assert a1111_sampler("DPM++ 2M SDE", "Automatic") == ("dpmpp_2m_sde", "exponential")
    assert a1111_sampler("DPM++ 2M SDE Karras", None) == ("dpmpp_2m_sde", "karras")
    assert a1111_sampler("DPM++ 2M Karras", None) == ("dpmpp_2m", "karras")
    assert a1111_sampler("DPM2 a Karras", None) == ("dpm2_a", "karras")
    assert a1111_sampler("Euler", "sgm_uniform") == ("euler", "sgm_uniform")
    assert a1111_sampler("euler a", None) == ("euler_a", "automatic")
    assert a1111_sampler(None, "Karras") == (None, "karras")  # the mode's sampler, Karras
    assert a1111_sampler(None, None) == (None, None)
    for sampler, entry in A1111_SAMPLER_TABLE.items():
        for alias in entry.aliases:
            assert a1111_sampler(alias, None)[0] == A1111_SAMPLERS[sampler], alias


@pytest.mark.parametrize(("sampler", "schedule", "param", "value"), [
    ("DPM++ 2S a", None, "sampler_name", "DPM++ 2S a"),
    ("Restart", None, "sampler_name", "Restart"),
    ("Euler a", "Karras", "scheduler", "Karras"),
    ("Euler", "Align Your Steps", "scheduler", "Align Your Steps"),
])
def test_what_is_not_served_is_a_422_naming_it(sampler: str, schedule: str | None, param: str, value: str) -> None:
    body = A1111Txt2ImgRequest(prompt="a", sampler_name=sampler, scheduler=schedule)
    with pytest.raises(RequestValidationError) as err:
        body.to_native(mode=None)
    message = str(err.value)
    assert err.value.param == param and repr(value) in message
    assert "use one of: " in message or "it takes: Automatic, Uniform, SGM Uniform" in message


def test_native_requests_name_the_field_of_a_pair_not_served(sd1) -> None:
    runner, _ = sd1
    with pytest.raises(ValidationError, match="scheduler"):
        Txt2ImgRequest(prompt="a", scheduler="bogus")  # type: ignore[arg-type]
    with pytest.raises(RequestValidationError, match="'karras' is not available with sampler 'euler_a'") as err:
        resolve_request(Txt2ImgRequest(prompt="a", scheduler="euler_a", schedule_type="karras"), runner.mode,
                        runner.family)
    assert err.value.param == "schedule_type"
    body = A1111Txt2ImgRequest(prompt="a", sampler_name="Euler a", scheduler="Uniform")
    request = resolve_request(body.to_native(mode=None), runner.mode, runner.family)
    assert request.scheduler == "euler_a:uniform"


def test_a_mode_schedule_type_must_suit_its_sampler(demo_models_dir: Path) -> None:
    mode = dict(name="m", checkpoint=str(demo_models_dir / "tiny-sd1"))
    assert ModeConfig(**mode, scheduler="dpmpp_2m_sde", schedule_type="karras").schedule_type == "karras"
    with pytest.raises(ValidationError, match="not available with scheduler 'ddim'"):
        ModeConfig(**mode, scheduler="ddim", schedule_type="karras")


def test_the_written_out_support_table_matches_the_diffusers_classes() -> None:
    import inspect

    import diffusers

    for name, (class_name, _) in _SCHEDULERS.items():
        if name == "dpmpp_2m_karras":
            continue
        params = inspect.signature(getattr(diffusers, class_name).__init__).parameters
        takes = tuple(s for s, config in _SCHEDULE_CONFIG.items() if all(k in params for k in config))
        assert schedule_types_for(name) == takes, name


def test_a_schedule_type_replaces_the_checkpoints_own_spacing() -> None:
    base = {"num_train_timesteps": 1000, "use_karras_sigmas": True}
    assert make_scheduler("euler:exponential", base).config.use_karras_sigmas is False
    assert make_scheduler("euler:exponential", base).config.use_exponential_sigmas is True
    assert make_scheduler("euler", base).config.use_karras_sigmas is True  # automatic: the checkpoint's own
    assert make_scheduler("ddim:sgm_uniform", base).config.timestep_spacing == "trailing"


def test_the_routes_list_exactly_what_is_served() -> None:
    listed = asyncio.run(sdapi_samplers())  # the routes read no state: no Serve, no gateway
    assert [s.name for s in listed] == list(A1111_SAMPLERS)
    assert {s.name: s.aliases for s in listed} == A1111_SAMPLER_ALIASES
    assert {"DPM++ 2M SDE", "DPM++ 3M SDE", "DPM++ SDE", "DPM2 a", "LCM", "DEIS", "PLMS"} <= set(A1111_SAMPLERS)
    schedules = asyncio.run(sdapi_schedulers())
    assert [(s.name, s.label) for s in schedules] == [(n, label) for n, (label, _) in A1111_SCHEDULE_TYPES.items()]
