"""Everything advertised works: every scheduler a request may name, and every A1111 sampler that
`/sdapi/v1/samplers` lists, runs a real generation on the tiny demo sd1 checkpoint (2 steps, 64x64) and
gives a PNG of finite pixels. LMS, for one, needs scipy: a missing dependency fails here, not on a replica.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from deployments.router.frontends.a1111 import sdapi_samplers
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111_SAMPLER_ALIASES, A1111_SAMPLERS, A1111Txt2ImgRequest, a1111_scheduler
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.model.generation.job import GenerationResult
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.generation.schedulers import SCHEDULER_NAMES

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


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_generates(sd1, name: str) -> None:
    result = _generate(sd1, Txt2ImgRequest(prompt="a lighthouse", seed=5, scheduler=name, steps=STEPS,
                                           width=SIZE, height=SIZE))
    assert result.scheduler == name and result.steps == STEPS


@pytest.mark.parametrize("sampler", list(A1111_SAMPLERS))
def test_every_a1111_sampler_generates(sd1, sampler: str) -> None:
    body = A1111Txt2ImgRequest(prompt="a lighthouse", seed=5, sampler_name=sampler, steps=STEPS, width=SIZE,
                               height=SIZE)
    result = _generate(sd1, body.to_native(mode=None))
    assert result.scheduler == A1111_SAMPLERS[sampler] == a1111_scheduler(sampler, None)


def test_karras_schedule_and_aliases_map_onto_served_schedulers() -> None:
    assert a1111_scheduler("DPM++ 2M", "Karras") == "dpmpp_2m_karras"
    assert set(A1111_SAMPLERS.values()) <= set(SCHEDULER_NAMES)
    assert A1111_SAMPLER_ALIASES.keys() == A1111_SAMPLERS.keys()
    for sampler, aliases in A1111_SAMPLER_ALIASES.items():
        for alias in aliases:
            assert a1111_scheduler(alias, None) == A1111_SAMPLERS[sampler], alias


def test_the_samplers_route_lists_exactly_the_supported_samplers() -> None:
    listed = asyncio.run(sdapi_samplers())  # the route reads no state: no Serve, no gateway
    assert [s.name for s in listed] == list(A1111_SAMPLERS)
    assert {s.name: s.aliases for s in listed} == A1111_SAMPLER_ALIASES
