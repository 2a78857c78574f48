"""Request schemas of the compatibility front ends (OpenAI images API, AUTOMATIC1111 sdapi) and their
translation into native requests.

OpenAI's request is strict like ours (unknown fields are errors). A1111 clients send dozens of fields
Dream Lab has no use for (hires fix, restore faces, scripts...); like A1111's own API, unknown fields
are ignored there, while the fields we do use are validated.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import RequestValidationError
from serve_app.generation_request import MAX_SEED, Img2ImgRequest, Txt2ImgRequest
from serve_app.schedulers import SchedulerName
from serve_app.strict_model import StrictModel

# A1111 sampler name -> Dream Lab scheduler. Karras variants also come as sampler + scheduler "Karras".
A1111_SAMPLERS: dict[str, str] = {
    "Euler": "euler",
    "Euler a": "euler_a",
    "DDIM": "ddim",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "Heun": "heun",
    "LMS": "lms",
    "PLMS": "pndm",
    "UniPC": "unipc",
}
A1111_SAMPLER_ALIASES: dict[str, list[str]] = {
    "Euler": ["k_euler"], "Euler a": ["k_euler_a", "k_euler_ancestral"], "DDIM": [],
    "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"], "Heun": ["k_heun"], "LMS": ["k_lms"],
    "PLMS": [], "UniPC": [],
}


class OpenAIImageRequest(StrictModel):
    """`POST /v1/images/generations`. Dream Lab extras: seed, steps, negative_prompt, guidance_scale, scheduler."""

    prompt: str = Field(description="What to draw.")
    model: str | None = Field(None, description="A mode name or alias; the default mode when left out.")
    n: int = Field(1, ge=1, description="Number of images.")
    size: str | None = Field(None, description="`WxH` (e.g. 512x512) or `auto` (the mode's default).")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="Inline base64 or a URL here.")
    quality: str | None = Field(None, description="Accepted for compatibility; ignored.")
    style: str | None = Field(None, description="Accepted for compatibility; ignored.")
    user: str | None = Field(None, description="Accepted for compatibility; logged.")
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Image encoding.")
    seed: int | None = Field(None, description="Dream Lab extra: seed of the first image.")
    steps: int | None = Field(None, description="Dream Lab extra: denoising steps.")
    negative_prompt: str | None = Field(None, description="Dream Lab extra.")
    guidance_scale: float | None = Field(None, description="Dream Lab extra.")
    scheduler: SchedulerName | None = Field(None, description="Dream Lab extra: sampler.")

    def to_native(self) -> Txt2ImgRequest:
        width = height = None
        if self.size not in (None, "auto"):
            match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", self.size)
            if not match:
                raise RequestValidationError(f"`size` must look like '512x512' or be 'auto', got {self.size!r}",
                                             param="size")
            width, height = int(match[1]), int(match[2])
        return Txt2ImgRequest(prompt=self.prompt, mode=self.model, num_images=self.n, width=width, height=height,
                              seed=self.seed, steps=self.steps, negative_prompt=self.negative_prompt,
                              guidance_scale=self.guidance_scale, scheduler=self.scheduler,
                              output_format=self.output_format)


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
    scheduler: str | None = Field(None, description="A1111 >= 1.9 schedule type; 'Karras' picks Karras sigmas.")
    override_settings: dict[str, Any] | None = Field(None, description="`sd_model_checkpoint` picks the mode.")

    def native_fields(self, checkpoint_param: str = "override_settings.sd_model_checkpoint") -> dict[str, Any]:
        if self.seed < -1 or self.seed > MAX_SEED:
            raise RequestValidationError(f"`seed` must be -1 (random) or 0..{MAX_SEED}, got {self.seed}",
                                         param="seed")
        return dict(prompt=self.prompt, negative_prompt=self.negative_prompt,
                    seed=None if self.seed == -1 else self.seed, steps=self.steps, guidance_scale=self.cfg_scale,
                    width=self.width, height=self.height, num_images=self.batch_size,
                    scheduler=a1111_scheduler(self.sampler_name or self.sampler_index, self.scheduler))

    def checkpoint(self) -> str | None:
        value = (self.override_settings or {}).get("sd_model_checkpoint")
        return str(value) if value else None

    def to_native(self, mode: str | None) -> Txt2ImgRequest:
        return Txt2ImgRequest(mode=mode, **self.native_fields())


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    """`POST /sdapi/v1/img2img`."""

    init_images: list[str] = Field(default_factory=list, description="Base64 init images (the first is used).")
    denoising_strength: float | None = Field(None, description="How much to change the image.")

    def to_native(self, mode: str | None) -> Img2ImgRequest:
        if not self.init_images:
            raise RequestValidationError("`init_images` must hold one base64 image, got []", param="init_images")
        return Img2ImgRequest(mode=mode, image=self.init_images[0], strength=self.denoising_strength,
                              **self.native_fields())


def a1111_scheduler(sampler: str | None, schedule: str | None) -> str | None:
    """Map an A1111 sampler (and schedule type) onto a Dream Lab scheduler; None keeps the mode's."""
    if not sampler:
        return None
    by_alias = {alias: name for name, aliases in A1111_SAMPLER_ALIASES.items() for alias in aliases}
    name = sampler if sampler in A1111_SAMPLERS else by_alias.get(sampler)
    if name is None:
        raise RequestValidationError(
            f"`sampler_name` {sampler!r} is not supported; use one of: {', '.join(A1111_SAMPLERS)}",
            param="sampler_name")
    if (schedule or "").lower() == "karras" and name == "DPM++ 2M":
        name = "DPM++ 2M Karras"
    return A1111_SAMPLERS[name]
