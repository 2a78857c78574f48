"""Resolution of a generation request against a mode's defaults and limits.

`resolve_request` turns a client request into a `GenerationRequest` (every value filled in and checked,
the init image decoded and sized), raising `RequestValidationError` that names the field and its value,
in the style of diffusers' `check_inputs`. The router calls it once, before queueing (bad input never
takes a queue slot); the mode worker runs what it returns.

Every rule the checkpoint's facts decide is checked here too, not after the queue and the Ray hop: the job
kind against the family (the refiner does no txt2img), hires only on txt2img and never on an inpainting
checkpoint (it has no second pass), and a base -> refiner split (`resolve_refiner_base`) only from an sdxl
base to an sdxl-refiner, neither an inpainting checkpoint, as a plain txt2img.

Bounds, cheapest first: the prompts' length (`max_prompt_chars`) and their text (no lone surrogates, which
no tokenizer can encode); then the init image, which `decode_image` bounds before it decodes any pixel:
its base64 length (`MAX_IMAGE_BYTES`), then, from the header alone, its format (PNG/JPEG/WebP) and its size,
at most `INIT_IMAGE_SCALE` times the mode's `max_width` x `max_height` (it is resized to the requested
size, which is within them; the factor leaves room for a larger source, e.g. a 2048 photo for a 1024
mode, and bounds the decode at 4x the mode's largest frame).

A request a front end translated into a native one (A1111's) may carry `client_field_names` (a class
attribute: native field -> the client's own field), so errors name the field the client sent.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from collections.abc import Callable, Mapping

from PIL import Image, ImageOps

from serve_app.api.adapter_catalog import NO_ADAPTERS, AdapterCatalog
from serve_app.api.control_resolution import resolve_controls, resolve_ip_adapters, split_ip_adapter_units
from serve_app.api.family_rules import check_family_request
from serve_app.api.mode_catalog import ServedMode
from serve_app.api.schemas.native import HiresFix, Img2ImgRequest, InpaintRequest, Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeLimits
from serve_app.core.errors import RequestTooLargeError, RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.families import Family
from serve_app.model.generation.inpainting import InpaintingFill, fill_masked
from serve_app.model.generation.job import (
    MAX_SEED,
    GenerationRequest,
    HiresPass,
    Img2Img,
    Inpaint,
    Job,
    Txt2Img,
    random_seed,
)
from serve_app.model.generation.schedulers import scheduler_key

MAX_IMAGE_BYTES = 32 * 1024 * 1024  # an encoded init image, before base64
INIT_IMAGE_SCALE = 2  # an init image may be this many times the mode's max_width / max_height
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# What PIL raises on an image it cannot read, short of a bug of ours
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)


def _invalid(field: str, value: object, why: str) -> RequestValidationError:
    return RequestValidationError(f"`{field}` {why}, got {quote(value)}", param=field)


def decode_image(data: str, field: str = "image", limits: ModeLimits | None = None,
                 pil_mode: str = "RGB") -> Image.Image:
    """Decode a base64 (or data URL) PNG/JPEG/WebP image, naming `field` on failure.

    Bounded before any pixel is decoded: the base64 length (413 past MAX_IMAGE_BYTES), then, from the
    header, the format and the size (`limits`, the mode's, default ModeLimits(); at most INIT_IMAGE_SCALE
    times its max_width x max_height). PIL's decompression-bomb guard answers a 422 too, never a 500.
    """
    limits = limits or ModeLimits()
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestTooLargeError(f"`{field}` is larger than {MAX_IMAGE_BYTES} bytes ({len(payload)} characters "
                                   "of base64)", param=field)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestValidationError(f"`{field}` is not valid base64 ({exc})", param=field) from exc
    max_w, max_h = INIT_IMAGE_SCALE * limits.max_width, INIT_IMAGE_SCALE * limits.max_height
    with warnings.catch_warnings():
        # PIL warns past Image.MAX_IMAGE_PIXELS (and raises past twice that): a client's image is refused
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestValidationError(f"`{field}` is too large to decode ({exc}); this mode takes init images "
                                         f"up to {max_w}x{max_h}", param=field) from exc
        except _UNREADABLE as exc:
            raise RequestValidationError(f"`{field}` is not a decodable PNG/JPEG/WebP image, got {len(raw)} "
                                         f"bytes starting {quote(raw[:8])}", param=field) from exc
        if img.width > max_w or img.height > max_h:
            raise RequestValidationError(
                f"`{field}` is {img.width}x{img.height} pixels; this mode takes init images up to {max_w}x{max_h} "
                f"({INIT_IMAGE_SCALE}x its largest output, {limits.max_width}x{limits.max_height})", param=field)
        try:
            img.load()
            return img.convert(pil_mode)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestValidationError(f"`{field}` is too large to decode ({exc})", param=field) from exc
        except _UNREADABLE as exc:
            raise RequestValidationError(f"`{field}` is not a decodable {img.format} image ({exc})",
                                         param=field) from exc


def _check_text(field: str, text: str, limit: int) -> None:
    """A prompt's length, then its text: a lone surrogate (JSON allows "\\ud800") cannot be tokenized."""
    if len(text) > limit:
        raise _invalid(field, text, f"must be at most {limit} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(field, text, f"must be valid Unicode text, not a lone surrogate ({text[exc.start]!r} at "
                                    f"index {exc.start})") from None


def _check_size(field: str, value: int, limit: int, multiple: int, from_image: bool = False) -> None:
    if value < multiple or value % multiple:
        raise _invalid(field, value, f"must be a positive multiple of {multiple} for this mode")
    if value > limit:
        source = f" (taken from the init image: send `{field}` to resize it)" if from_image else ""
        raise _invalid(field, value, f"must be at most {limit} for this mode{source}")


def resolve_request(req: Txt2ImgRequest, mode: ModeConfig, family: Family, request_id: str = "-",
                    adapters: AdapterCatalog = NO_ADAPTERS, *, inpainting: bool = False,
                    variant: str = "") -> GenerationRequest:
    """Fill defaults from `mode` and check every value against its limits (adapters against `adapters`), and
    the job against the checkpoint's facts (`family`; `inpainting`: a 9-channel UNet, which has no second
    pass). The kind of job follows the body's type: `InpaintRequest`, `Img2ImgRequest`, else txt2img."""
    d, lim = mode.defaults, mode.limits
    is_img2img = isinstance(req, Img2ImgRequest)
    is_inpaint = isinstance(req, InpaintRequest)
    names: Mapping[str, str] = getattr(req, "client_field_names", {})

    def name(field: str) -> str:  # the client's own name of a native field
        return names.get(field, field)

    job_kind = "inpaint" if is_inpaint else "img2img" if is_img2img else "txt2img"
    family.check_job(job_kind, mode.name)
    if req.hires is not None:
        if is_img2img:
            raise _invalid(name("hires"), "set", "applies to txt2img only")
        if inpainting:
            raise RequestValidationError(f"`{name('hires')}`: mode {mode.name!r} is an inpainting checkpoint, which "
                                         "has no second pass; use an ordinary one", param=name("hires"))
    _check_text(name("prompt"), req.prompt, lim.max_prompt_chars)
    if req.negative_prompt is not None:
        _check_text(name("negative_prompt"), req.negative_prompt, lim.max_prompt_chars)
    init_image = decode_image(req.image, name("image"), lim) if isinstance(req, Img2ImgRequest) else None
    if init_image is not None:
        step = family.size_multiple
        default_w, default_h = max(step, init_image.width // step * step), max(step, init_image.height // step * step)
    else:
        default_w, default_h = d.width, d.height
    # `is None`, not `or`: an explicit 0 is a bad value to report, not a request for the default
    width = default_w if req.width is None else req.width
    height = default_h if req.height is None else req.height
    _check_size(name("width"), width, lim.max_width, family.size_multiple,
                from_image=init_image is not None and req.width is None)
    _check_size(name("height"), height, lim.max_height, family.size_multiple,
                from_image=init_image is not None and req.height is None)
    steps = d.steps if req.steps is None else req.steps
    if not 1 <= steps <= lim.max_steps:
        raise _invalid(name("steps"), steps, f"must be between 1 and {lim.max_steps}")
    guidance = d.guidance_scale if req.guidance_scale is None else req.guidance_scale
    if not 0.0 <= guidance <= 50.0:
        raise _invalid(name("guidance_scale"), guidance, "must be between 0 and 50")
    num_images = 1 if req.num_images is None else req.num_images
    if not 1 <= num_images <= lim.max_num_images:
        raise _invalid(name("num_images"), num_images, f"must be between 1 and {lim.max_num_images}")
    seed = random_seed(num_images) if req.seed is None else req.seed
    if not 0 <= seed <= MAX_SEED - num_images + 1:
        room = "" if num_images == 1 else f" (image i uses seed + i, for {num_images} images)"
        raise _invalid(name("seed"), seed, f"must be between 0 and {MAX_SEED - num_images + 1}{room}")
    subseeds = _variation_seeds(req, family, num_images, name) if req.subseed_strength > 0 else []
    loras = adapters.resolve_loras(req.loras, mode, family, name) if req.loras else []
    negative_prompt = d.negative_prompt if req.negative_prompt is None else req.negative_prompt
    check_family_request(req, mode, family, variant, negative_prompt, adapters, name)
    embeddings = adapters.resolve_embeddings(family, req.prompt, negative_prompt)
    vae = adapters.resolve_vae(req.vae, mode, name("vae")) if req.vae is not None else None
    units, ip_units = split_ip_adapter_units(req.controls, adapters)
    ip_units += req.ip_adapters
    if ip_units and req.hires is not None:
        raise _invalid(name("ip_adapters"), ip_units[0].model, "does not go with a hires fix (`hires`)")
    controls = resolve_controls(units, adapters, mode, family, decode_image, name, job=job_kind, variant=variant,
                                full_res=bool(getattr(req, "inpaint_full_res", False)),
                                true_cfg_scale=req.true_cfg_scale) if units else []
    ips = resolve_ip_adapters(ip_units, adapters, mode, family, decode_image, name) if ip_units else []
    job: Job
    if isinstance(req, Img2ImgRequest):
        assert init_image is not None
        job = _image_job(req, init_image, (width, height), d.strength, seed, lim, name)
    else:
        hires = None if req.hires is None else _hires(req.hires, width, height, steps, lim, name,
                                                      family.size_multiple)
        job = Txt2Img(hires=hires)
    return GenerationRequest(
        job=job,
        prompt=req.prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seeds=[seed + i for i in range(num_images)],
        scheduler=scheduler_key(req.scheduler or mode.scheduler,
                                req.schedule_type or ("automatic" if req.scheduler else mode.schedule_type),
                                name("schedule_type"), family, mode.name, name("scheduler")),
        clip_skip=req.clip_skip or d.clip_skip,
        subseeds=subseeds,
        subseed_strength=req.subseed_strength if subseeds else 0.0,
        true_cfg_scale=req.true_cfg_scale,
        prompt_syntax=mode.prompt_syntax,
        output_format=req.output_format,
        request_id=request_id,
        loras=loras,
        embeddings=embeddings,
        vae=vae,
        controls=controls,
        ip_adapters=ips,
    )


def _variation_seeds(req: Txt2ImgRequest, family: Family, num_images: int, name: Callable[[str], str]) -> list[int]:
    """Image i's variation seed (subseed + i); variation noise starts a txt2img of a UNet family only."""
    if isinstance(req, Img2ImgRequest):
        raise _invalid(name("subseed_strength"), req.subseed_strength, "is served on txt2img only (an edit starts "
                       "from its init image, not from noise)")
    if family.flow:
        raise _invalid(name("subseed_strength"), req.subseed_strength, f"is not served for family {family.value} "
                       "(its noise is packed differently)")
    subseed = random_seed(num_images) if req.subseed is None else req.subseed
    if not 0 <= subseed <= MAX_SEED - num_images + 1:
        room = "" if num_images == 1 else f" (image i uses subseed + i, for {num_images} images)"
        raise _invalid(name("subseed"), subseed, f"must be between 0 and {MAX_SEED - num_images + 1}{room}")
    return [subseed + i for i in range(num_images)]


def _image_job(req: Img2ImgRequest, init_image: Image.Image, size: tuple[int, int], default_strength: float,
               seed: int, lim: ModeLimits, name: Callable[[str], str]) -> Img2Img | Inpaint:
    """An img2img or inpaint job: the init image at the output size, the strength checked, the mask made."""
    strength = default_strength if req.strength is None else req.strength
    if not 0.0 < strength <= 1.0:
        raise _invalid(name("strength"), strength, "must be in (0, 1]")
    if init_image.size != size:
        init_image = init_image.resize(size, Image.Resampling.LANCZOS)
    if not isinstance(req, InpaintRequest):
        return Img2Img(init_image=init_image, strength=strength)
    mask = _mask(req, name, lim, size)
    if req.masked_content != "original":
        init_image = fill_masked(init_image, mask, InpaintingFill[req.masked_content.upper()], seed)
    return Inpaint(init_image=init_image, mask=mask, strength=strength, mask_blur=req.mask_blur,
                   padding=req.inpaint_full_res_padding if req.inpaint_full_res else None)


def resolve_refiner_base(req: Txt2ImgRequest, base: ServedMode, refiner: ServedMode, request_id: str = "-",
                         adapters: AdapterCatalog = NO_ADAPTERS) -> GenerationRequest:
    """The base's request of an SDXL base -> refiner generation (`req.refiner`: it stops at `switch_at` and
    answers latents, which `GenerationRequest.refiner_finish` hands to `refiner`), every rule checked here:
    an sdxl base and an sdxl-refiner refiner, neither an inpainting checkpoint, a plain txt2img."""
    assert req.refiner is not None
    if (base.family is not Family.SDXL or refiner.family is not Family.SDXL_REFINER
            or base.info.inpainting or refiner.info.inpainting):
        what = {m.name: m.family.value + (" (inpainting)" if m.info.inpainting else "") for m in (base, refiner)}
        raise RequestValidationError(
            f"`refiner.mode` {refiner.name!r} is {what[refiner.name]}, mode {base.name!r} is {what[base.name]}: "
            "a refiner pass needs an sdxl mode and an sdxl-refiner mode (neither an inpainting checkpoint)",
            param="refiner.mode")
    if isinstance(req, Img2ImgRequest) or req.hires is not None or req.controls or req.ip_adapters:
        raise RequestValidationError("`refiner` goes with a plain txt2img (no image, hires, controls, IP-Adapters)",
                                     param="refiner")
    request = resolve_request(req.model_copy(update={"refiner": None}), base.config, base.family, request_id,
                              adapters, inpainting=base.info.inpainting)
    request.job = Txt2Img(denoising_end=req.refiner.switch_at)
    return request


def _hires(h: HiresFix, width: int, height: int, steps: int, lim: ModeLimits,
           name: Callable[[str], str], step: int) -> HiresPass:
    """The hires pass's final size (`width`/`height`, else `scale` times the first pass's, to a multiple of
    `step`: 8, or 16 for the transformer families)."""
    if h.width is None and h.height is None:
        field = name("hires.scale")
        target = (round(width * h.scale / step) * step, round(height * h.scale / step) * step)
    elif h.width is not None:
        field = name("hires.width")
        target = (h.width, h.height or round(h.width * height / width / step) * step)
    else:
        assert h.height is not None
        field = name("hires.height")
        target = (round(h.height * width / height / step) * step, h.height)
    if any(v % step or v < step for v in target):
        raise _invalid(field, h.width or h.height, f"must make a positive multiple of {step} for this mode")
    if target[0] > lim.max_width or target[1] > lim.max_height:
        raise _invalid(field, h.width or h.height or h.scale, f"makes {target[0]}x{target[1]}, past this mode's "
                       f"largest size {lim.max_width}x{lim.max_height}")
    hires_steps = steps if h.steps is None else h.steps
    if hires_steps > lim.max_steps:
        raise _invalid(name("hires.steps"), hires_steps, f"must be at most {lim.max_steps}")
    return HiresPass(width=target[0], height=target[1], upscaler=h.upscaler, steps=hires_steps, strength=h.strength)


def _mask(req: InpaintRequest, name: Callable[[str], str], lim: ModeLimits, size: tuple[int, int]) -> Image.Image:
    """The request's mask as grayscale at the output size (white = repaint); an empty one is refused."""
    if req.mask_alpha:
        mask = ImageOps.invert(decode_image(req.mask, name("mask"), lim, "RGBA").getchannel("A"))
    else:
        mask = decode_image(req.mask, name("mask"), lim, "L")
    if req.mask_invert:
        mask = ImageOps.invert(mask)
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    if mask.getextrema()[1] == 0:
        where = "no transparent pixel" if req.mask_alpha else "all black"
        raise RequestValidationError(f"`{name('mask')}` is empty ({where}): nothing to repaint; "
                                     f"{'transparent' if req.mask_alpha else 'white'} marks the area to repaint",
                                     param=name("mask"))
    return mask

