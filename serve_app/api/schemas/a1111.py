"""Request and response bodies of the AUTOMATIC1111 `sdapi` front end, and its translation into native
requests.

A1111 clients send dozens of fields Dream Lab has no use for (hires fix, restore faces, scripts...); like
A1111's own API, unknown fields are ignored, while the fields we do use are validated.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.api.a1111_prompt_tags import split_lora_tags
from serve_app.api.schemas.a1111_controlnet import UNITS_FIELD, controlnet_units, is_controlnet_script
from serve_app.api.schemas.native import HiresFix, Img2ImgRequest, InpaintRequest, RefinerPass, Txt2ImgRequest
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import FieldError, describe_error, quote
from serve_app.model.generation.a1111_samplers import A1111_SAMPLER_TABLE, a1111_sampler
from serve_app.model.generation.job import MAX_SEED

# A1111 sampler name -> served sampler, and its aliases (the table: `a1111_samplers`)
A1111_SAMPLERS: dict[str, str] = {name: entry.scheduler for name, entry in A1111_SAMPLER_TABLE.items()}
A1111_SAMPLER_ALIASES: dict[str, list[str]] = {name: list(e.aliases) for name, e in A1111_SAMPLER_TABLE.items()}


# The A1111 field of each native field an A1111 request becomes: errors of the native request name the
# field the client sent (see `request_resolution.resolve_request`).
A1111_FIELD_NAMES: dict[str, str] = {
    "image": "init_images", "strength": "denoising_strength", "guidance_scale": "cfg_scale",
    "num_images": "batch_size", "loras": "prompt", "vae": "override_settings.sd_vae", "hires": "enable_hr",
    "hires.scale": "hr_scale", "hires.width": "hr_resize_x", "hires.height": "hr_resize_y",
    "hires.steps": "hr_second_pass_steps", "refiner.mode": "refiner_checkpoint", "scheduler": "sampler_name",
    "schedule_type": "scheduler", "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "controls": UNITS_FIELD, "ip_adapters": UNITS_FIELD,
}
# A1111 hires upscaler -> Dream Lab's (`None` in A1111 is a plain Lanczos resize)
A1111_HR_UPSCALERS: dict[str, str] = {
    "Latent": "latent", "Latent (antialiased)": "latent", "Latent (bicubic)": "latent",
    "Latent (bicubic antialiased)": "latent", "Latent (nearest)": "latent_nearest",
    "Latent (nearest-exact)": "latent_nearest", "None": "lanczos", "Lanczos": "lanczos", "Nearest": "nearest",
}
A1111_DEFAULT_VAES = ("automatic", "none", "")  # `sd_vae` values that keep the checkpoint's own VAE


def without_hash(title: str) -> str:
    """An A1111 checkpoint title (`name [hash]`) without its hash suffix."""
    return re.sub(r"\s*\[[0-9a-f]+\]$", "", title.strip())


class A1111NativeTxt2Img(Txt2ImgRequest):
    """The native request of an A1111 txt2img; its errors name the A1111 fields."""

    client_field_names: ClassVar[dict[str, str]] = A1111_FIELD_NAMES


class A1111NativeImg2Img(Img2ImgRequest):
    """The native request of an A1111 img2img; its errors name the A1111 fields (`init_images`, ...)."""

    client_field_names: ClassVar[dict[str, str]] = A1111_FIELD_NAMES


class A1111NativeInpaint(InpaintRequest):
    """The native request of an A1111 img2img with a mask."""

    client_field_names: ClassVar[dict[str, str]] = A1111_FIELD_NAMES


MASKED_CONTENT = ("fill", "original", "latent_noise", "latent_nothing")  # by A1111's inpainting_fill


def _script_asks(entry: object) -> bool:
    """Whether an `alwayson_scripts` entry asks for anything: args that are not all disabled units."""
    args = entry.get("args") if isinstance(entry, dict) else entry
    if not args:
        return False
    if isinstance(args, list):
        return any(not (isinstance(a, dict) and a.get("enabled") is False) for a in args)
    return True


class A1111Txt2ImgRequest(BaseModel):
    """`POST /sdapi/v1/txt2img`: the A1111 fields Dream Lab uses; other A1111 fields are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    prompt: str = Field("", description="What to draw.")
    negative_prompt: str | None = Field(None, description="What to avoid.")
    seed: int = Field(-1, description="-1 = random.")
    steps: int | None = Field(None, description="Denoising steps.")
    cfg_scale: float | None = Field(None, description="Guidance scale.")
    width: int | None = Field(None, description="Width in pixels.")
    height: int | None = Field(None, description="Height in pixels.")
    batch_size: int = Field(1, ge=1, description="Images per batch.")
    n_iter: int = Field(1, ge=1, le=16, description="Batches.")
    sampler_name: str | None = Field(None, description="A1111 sampler name (see /sdapi/v1/samplers).")
    sampler_index: str | None = Field(None, description="Old name of sampler_name.")
    scheduler: str | None = Field(None, description="A1111 >= 1.9 schedule type (see /sdapi/v1/schedulers); "
                                  "Automatic: the sampler's own.")
    denoising_strength: float | None = Field(None, description="img2img: how much to change the image; txt2img: "
                                             "how much the hires pass does (default 0.7).")
    enable_hr: bool = Field(False, description="Hires fix: upscale and denoise again.")
    hr_scale: float = Field(2.0, description="Hires upscale factor.")
    hr_resize_x: int = Field(0, description="Hires width (0: from hr_scale).")
    hr_resize_y: int = Field(0, description="Hires height (0: from hr_scale).")
    hr_upscaler: str = Field("Latent", description="Latent (+ variants), Lanczos, Nearest or None.")
    hr_second_pass_steps: int = Field(0, ge=0, description="0: the same steps as the first pass.")
    hr_checkpoint_name: str | None = Field(None, description="Not served: empty, or the request's own mode.")
    refiner_checkpoint: str | None = Field(None, description="An sdxl-refiner mode to finish an sdxl image.")
    refiner_switch_at: float = Field(0.8, gt=0, lt=1, description="Fraction of the steps the base runs.")
    override_settings: dict[str, Any] | None = Field(None, description="`sd_model_checkpoint` picks the mode; "
                                                     "`sd_vae` a VAE of the mode (`Automatic`: its own); "
                                                     "`CLIP_stop_at_last_layers` the clip skip.")
    clip_skip: int | None = Field(None, ge=1, le=12, description="Clip skip, as some A1111-compatible clients send "
                                  "it; `override_settings.CLIP_stop_at_last_layers` wins.")
    # Fields that would change the image and are not served: refused (422) rather than silently dropped.
    alwayson_scripts: dict[str, Any] | None = Field(None, description="`controlnet`: the ControlNet extension's "
                                                    "units; any other entry that asks for something (ADetailer, "
                                                    "...) is not served: a 422.")
    script_name: str | None = Field(None, description="Not served: a script is a 422.")
    restore_faces: bool | None = Field(None, description="Not served: true is a 422.")
    tiling: bool | None = Field(None, description="Not served: true is a 422.")
    subseed: int = Field(-1, description="Variation seed; -1 = random.")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="Variation strength (txt2img).")
    styles: list[str] | None = Field(None, description="Not served: saved styles are a 422.")

    @model_validator(mode="after")
    def _nothing_dropped_that_changes_the_image(self) -> A1111Txt2ImgRequest:
        for name, asked in (("restore_faces", bool(self.restore_faces)), ("tiling", bool(self.tiling)),
                            ("styles", bool(self.styles)),
                            ("script_name", bool(self.script_name))):
            if asked:
                raise FieldError((name,), getattr(self, name), "is not served by this server (it would change "
                                 "the image); leave it out")
        for script, entry in (self.alwayson_scripts or {}).items():
            if not is_controlnet_script(script) and _script_asks(entry):
                raise FieldError(("alwayson_scripts", script), script, "is not served by this server (it would "
                                 "change the image); leave it out or disable its units")
        return self

    @field_validator("scheduler", "override_settings")
    @classmethod
    def _encodable(cls, value: object) -> object:
        """Echoed back in `parameters`: text a UTF-8 response cannot carry (lone surrogates) is refused here."""
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError: a 422 naming the field
        return value

    @model_validator(mode="after")
    def _seeds_fit(self) -> A1111Txt2ImgRequest:
        """Every image of every batch gets a seed within range (image i uses seed + i), checked before the
        first batch runs, naming the client's own value."""
        count = self.batch_size * self.n_iter
        if self.seed == -1:
            if count > MAX_SEED + 1:
                raise FieldError(("batch_size",), self.batch_size,
                                 f"batch_size * n_iter must be at most {MAX_SEED + 1} images")
        elif not 0 <= self.seed <= MAX_SEED - count + 1:
            room = "" if count == 1 else f" (image i uses seed + i, for batch_size * n_iter = {count} images)"
            raise FieldError(("seed",), self.seed, f"must be -1 (random) or between 0 and {MAX_SEED - count + 1}"
                                                   f"{room}")
        if self.subseed != -1 and not 0 <= self.subseed <= MAX_SEED - count + 1:
            raise FieldError(("subseed",), self.subseed, "must be -1 (random) or between 0 and "
                                                         f"{MAX_SEED - count + 1}")
        return self

    def native_fields(self, checkpoint_param: str = "override_settings.sd_model_checkpoint") -> dict[str, Any]:
        sampler_field = "sampler_name" if self.sampler_name else "sampler_index"
        scheduler, schedule_type = a1111_sampler(self.sampler_name or self.sampler_index, self.scheduler,
                                                 sampler_field)
        prompt, loras = split_lora_tags(self.prompt)
        return dict(prompt=prompt, loras=loras, negative_prompt=self.negative_prompt, vae=self.vae(),
                    seed=None if self.seed == -1 else self.seed, steps=self.steps, guidance_scale=self.cfg_scale,
                    subseed=None if self.subseed == -1 else self.subseed, subseed_strength=self.subseed_strength,
                    width=self.width, height=self.height, num_images=self.batch_size,
                    clip_skip=self.clip_skip_value(),
                    scheduler=scheduler, schedule_type=schedule_type,
                    controls=controlnet_units(self.alwayson_scripts, self.init_image()))

    def init_image(self) -> str | None:
        """The img2img init image (a ControlNet unit without an image uses it); None on txt2img."""
        return None

    def clip_skip_value(self) -> int | None:
        """`override_settings.CLIP_stop_at_last_layers`, else `clip_skip`; None keeps the mode's."""
        value = (self.override_settings or {}).get("CLIP_stop_at_last_layers")
        if value is None:
            return self.clip_skip
        whole = isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)
        if not whole or not 1 <= value <= 12:
            field = "override_settings.CLIP_stop_at_last_layers"
            raise RequestValidationError(f"`{field}` must be a whole number from 1 to 12, got {quote(value)}",
                                         param=field)
        return int(value)

    def checkpoint(self) -> str | None:
        value = (self.override_settings or {}).get("sd_model_checkpoint")
        return str(value) if value else None

    def vae(self) -> str | None:
        value = str((self.override_settings or {}).get("sd_vae") or "")
        return None if value.lower() in A1111_DEFAULT_VAES else value.removesuffix(".safetensors")

    def hires(self) -> HiresFix | None:
        if not self.enable_hr:
            return None
        upscaler = A1111_HR_UPSCALERS.get(self.hr_upscaler)
        if upscaler is None:
            raise RequestValidationError(f"`hr_upscaler` {quote(self.hr_upscaler)} is not offered; use one of: "
                                         f"{', '.join(A1111_HR_UPSCALERS)}", param="hr_upscaler")
        fields = dict(scale=self.hr_scale, width=self.hr_resize_x or None, height=self.hr_resize_y or None,
                      upscaler=upscaler, steps=self.hr_second_pass_steps or None,
                      strength=0.7 if self.denoising_strength is None else self.denoising_strength)
        try:
            return HiresFix(**fields)
        except ValidationError as exc:  # named as the client sent it
            field, message = describe_error(dict(exc.errors()[0]))
            a1111 = A1111_FIELD_NAMES.get(f"hires.{field}", "denoising_strength")
            raise RequestValidationError(message.replace(f"`{field}`", f"`{a1111}`", 1), param=a1111) from exc

    def to_native(self, mode: str | None) -> Txt2ImgRequest:
        if self.enable_hr and self.hr_checkpoint_name not in (None, "", "Use same checkpoint", mode):
            raise RequestValidationError(f"`hr_checkpoint_name` {quote(self.hr_checkpoint_name)}: a second pass on "
                                         "another mode is not served; leave it empty", param="hr_checkpoint_name")
        refiner = None
        if self.refiner_checkpoint:  # an A1111 title "name [hash]" names the mode `name`
            name = without_hash(self.refiner_checkpoint).removesuffix(".safetensors")
            refiner = RefinerPass(mode=name, switch_at=self.refiner_switch_at)
        return A1111NativeTxt2Img(mode=mode, hires=self.hires(), refiner=refiner, **self.native_fields())


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    """`POST /sdapi/v1/img2img`."""

    init_images: list[str] = Field(default_factory=list, description="Base64 init images (the first is used).")
    mask: str | None = Field(None, description="Inpainting: base64 mask, white = repaint.")
    mask_blur: int = Field(4, ge=0, le=64, description="Blur of the mask's edge, pixels.")
    inpainting_fill: int = Field(0, ge=0, le=3, description="Masked content: 0 fill, 1 original, 2 latent noise, "
                                 "3 latent nothing.")
    inpaint_full_res: bool = Field(True, description="Inpaint the masked area only, at full resolution.")
    inpaint_full_res_padding: int = Field(0, ge=0, le=256, description="Margin around it, pixels.")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint where the mask is black.")

    def init_image(self) -> str | None:
        return self.init_images[0] if self.init_images else None

    def to_native(self, mode: str | None) -> Img2ImgRequest:
        if not self.init_images:
            raise RequestValidationError("`init_images` must hold one base64 image, got []", param="init_images")
        common = dict(mode=mode, image=self.init_images[0], strength=self.denoising_strength, **self.native_fields())
        if self.mask is None:
            return A1111NativeImg2Img(**common)
        return A1111NativeInpaint(mask=self.mask, mask_blur=self.mask_blur,
                                  mask_invert=bool(self.inpainting_mask_invert),
                                  masked_content=MASKED_CONTENT[self.inpainting_fill],
                                  inpaint_full_res=self.inpaint_full_res,
                                  inpaint_full_res_padding=self.inpaint_full_res_padding, **common)


# -- responses ---------------------------------------------------------------------------------------
class A1111GenerationResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs.")
    parameters: dict[str, Any] = Field(description="The request as understood.")
    info: str = Field(description="JSON string: seed, all_seeds, sd_model_name, ...")


class A1111Lora(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class A1111Embedding(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int = Field(description="Vector width.")
    vectors: int


class A1111Embeddings(BaseModel):
    loaded: dict[str, A1111Embedding] = Field(description="Embeddings of the current default mode's family.")
    skipped: dict[str, A1111Embedding] = Field(description="Embeddings of other families.")


class A1111Vae(BaseModel):
    model_name: str
    filename: str


class A1111SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = Field(None, description="A1111's short hash (10 hex digits); null until a replica of the mode "
                             "has loaded it once and hashed the file.")
    sha256: str | None = None
    filename: str = Field(description="The checkpoint as the modes file names it (relative to MODEL_ROOT).")
    config: str | None = None


class A1111Options(BaseModel):
    sd_model_checkpoint: str
    sd_checkpoint_hash: str | None
    samples_format: str


class A1111ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    current_image: str | None = None
    textinfo: str | None = None
    state: A1111ProgressState


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class A1111Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float
    need_inner_model: bool


class A1111ExtraSingleImage(BaseModel):
    """`POST /sdapi/v1/extra-single-image`: upscaling in pixels (no face restoration: those fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="Base64 image.")
    resize_mode: int = Field(0, ge=0, le=1, description="0: by `upscaling_resize`; 1: to the _w/_h size.")
    upscaling_resize: float = Field(2.0, description="Scale factor.")
    upscaling_resize_w: int = Field(512, ge=1, description="Width with resize_mode 1.")
    upscaling_resize_h: int = Field(512, ge=1, description="Height with resize_mode 1.")
    upscaler_1: str = Field("None", description="None, Lanczos or Nearest (see /sdapi/v1/upscalers).")


class A1111ExtraResponse(BaseModel):
    html_info: str
    image: str = Field(description="Base64 PNG.")


class A1111Upscaler(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class A1111LatentUpscaleMode(BaseModel):
    name: str


class A1111PngInfoRequest(BaseModel):
    """`POST /sdapi/v1/png-info`."""

    model_config = ConfigDict(extra="ignore")
    image: str = Field(max_length=48 * 1024 * 1024, description="The image, base64 (data URL allowed).")


class A1111PngInfoResponse(BaseModel):
    info: str = Field(description="The infotext (empty when the image carries none).")
    items: dict[str, str] = Field(description="The image's text chunks A1111 shows (`parameters`).")
    parameters: dict[str, str] = Field(description="The infotext's fields (`Prompt`, `Steps`, `Seed`, ...).")
