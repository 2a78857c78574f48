"""Resolution of a generation request against a mode's defaults and limits.

`resolve_request` turns a client request into a `GenerationRequest` (every value filled in and checked,
the init image decoded and sized), raising `RequestValidationError` that names the field and its value,
in the style of diffusers' `check_inputs`. The router calls it once, before queueing (bad input never
takes a queue slot); the mode worker runs what it returns.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from serve_app.api.native_schemas import Img2ImgRequest, Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig
from serve_app.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation import MAX_SEED, GenerationRequest, random_seed
from serve_app.strict_model import StrictModel, describe_error

MAX_IMAGE_BYTES = 32 * 1024 * 1024


def _invalid(field: str, value: object, why: str) -> RequestValidationError:
    return RequestValidationError(f"`{field}` {why}, got {value!r}", param=field)


def decode_image(data: str, field: str = "image") -> Image.Image:
    """Decode a base64 (or data URL) image, naming the field on failure."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestValidationError(f"`{field}` is larger than {MAX_IMAGE_BYTES} bytes", param=field)
    try:
        raw = base64.b64decode(payload, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, ValueError) as exc:
        raise RequestValidationError(f"`{field}` is not valid base64 ({exc})", param=field) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestValidationError(f"`{field}` is not a decodable PNG/JPEG/WebP image", param=field) from exc
    return img.convert("RGB")


def _check_size(field: str, value: int, limit: int) -> None:
    if value < 8 or value % 8:
        raise _invalid(field, value, "must be a positive multiple of 8")
    if value > limit:
        raise _invalid(field, value, f"must be at most {limit} for this mode")


def resolve_request(req: Txt2ImgRequest, mode: ModeConfig, family: Family,
                    request_id: str = "-") -> GenerationRequest:
    """Fill defaults from `mode` and check every value against its limits."""
    d, lim = mode.defaults, mode.limits
    is_img2img = isinstance(req, Img2ImgRequest)
    family.check_job("img2img" if is_img2img else "txt2img", mode.name)
    if len(req.prompt) > lim.max_prompt_chars:
        raise _invalid("prompt", f"{req.prompt[:40]}... ({len(req.prompt)} chars)",
                       f"must be at most {lim.max_prompt_chars} characters")
    init_image = decode_image(req.image) if is_img2img else None
    if init_image is not None:
        default_w, default_h = max(8, init_image.width // 8 * 8), max(8, init_image.height // 8 * 8)
    else:
        default_w, default_h = d.width, d.height
    # `is None`, not `or`: an explicit 0 is a bad value to report, not a request for the default
    width = default_w if req.width is None else req.width
    height = default_h if req.height is None else req.height
    _check_size("width", width, lim.max_width)
    _check_size("height", height, lim.max_height)
    steps = d.steps if req.steps is None else req.steps
    if not 1 <= steps <= lim.max_steps:
        raise _invalid("steps", steps, f"must be between 1 and {lim.max_steps}")
    guidance = d.guidance_scale if req.guidance_scale is None else req.guidance_scale
    if not 0.0 <= guidance <= 50.0:
        raise _invalid("guidance_scale", guidance, "must be between 0 and 50")
    num_images = 1 if req.num_images is None else req.num_images
    if not 1 <= num_images <= lim.max_num_images:
        raise _invalid("num_images", num_images, f"must be between 1 and {lim.max_num_images}")
    seed = random_seed(num_images) if req.seed is None else req.seed
    if not 0 <= seed <= MAX_SEED - num_images + 1:
        raise _invalid("seed", seed, f"must be between 0 and {MAX_SEED}")
    strength = None
    if is_img2img:
        strength = d.strength if req.strength is None else req.strength
        if not 0.0 < strength <= 1.0:
            raise _invalid("strength", strength, "must be in (0, 1]")
        if init_image.size != (width, height):
            init_image = init_image.resize((width, height), Image.LANCZOS)
    return GenerationRequest(
        kind="img2img" if is_img2img else "txt2img",
        prompt=req.prompt,
        negative_prompt=d.negative_prompt if req.negative_prompt is None else req.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seeds=[seed + i for i in range(num_images)],
        scheduler=req.scheduler or mode.scheduler,
        output_format=req.output_format,
        init_image=init_image,
        strength=strength,
        request_id=request_id,
    )


def parse_request(model: type[StrictModel], payload: object) -> StrictModel:
    """Validate a raw payload (a job's JSON) into `model`, naming the first bad field and its value."""
    from pydantic import ValidationError

    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        field, message = describe_error(exc.errors()[0])
        raise RequestValidationError(message, param=field or "body") from exc
