"""A test mode for a demo checkpoint and a txt2img call, for the runner's unit tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.model.generation.job import GenerationResult
from serve_app.model.generation.runner import ModelRunner

WIDTH, HEIGHT, STEPS = 64, 48, 2


def mode_for(checkpoint: Path, **kw) -> ModeConfig:
    return ModeConfig(
        name=checkpoint.name.replace(".safetensors", "-file"), checkpoint=str(checkpoint), scheduler="euler",
        defaults=ModeDefaults(width=WIDTH, height=HEIGHT, steps=STEPS, guidance_scale=5.0),
        limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4, max_prompt_chars=200),
        **kw)


def txt2img(runner: ModelRunner, **fields) -> GenerationResult:
    req = Txt2ImgRequest(prompt=fields.pop("prompt", "a red fox in the snow"), **fields)
    return runner.generate(resolve_request(req, runner.mode, runner.family))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: Image.Image) -> str:
    """`image` as a request sends it: a base64 PNG."""
    return base64.b64encode(png_bytes(image)).decode()


def pixels(data: bytes) -> bytes:
    """An encoded image's pixels: what "changes the image" compares (a PNG's infotext differs whenever the
    request does)."""
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()
