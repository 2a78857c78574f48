"""Request and response bodies of the OpenAI images API front end, and its translation into native requests.

OpenAI's request is strict like ours: unknown fields are errors.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from fastapi import UploadFile
from pydantic import BaseModel, Field

from serve_app.api.schemas.native import InpaintRequest, LoraRef, Txt2ImgRequest
from serve_app.config.modes_file import MAX_LORAS_PER_REQUEST
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import StrictModel, quote
from serve_app.model.generation.job import OutputFormat
from serve_app.model.generation.schedulers import SchedulerName


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """OpenAI's `size` (`WxH`, `auto` or none) as (width, height); None: the mode's default."""
    if size in (None, "auto"):
        return None, None
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if not match:
        raise RequestValidationError(f"`size` must look like '512x512' or be 'auto', got {quote(size)}", param="size")
    return int(match[1]), int(match[2])


class OpenAIInpaint(InpaintRequest):
    """The native request of an OpenAI edit; its errors name the OpenAI fields."""

    client_field_names: ClassVar[dict[str, str]] = {"num_images": "n"}


class OpenAIImageAlphaInpaint(InpaintRequest):
    """An OpenAI edit without a mask: the image's own transparency is the mask."""

    client_field_names: ClassVar[dict[str, str]] = {"num_images": "n", "mask": "image"}


class OpenAIEdit(StrictModel):
    """`POST /v1/images/edits` (a multipart form, as `client.images.edit` sends it)."""

    image: UploadFile = Field(description="PNG/JPEG/WebP to edit.")
    mask: UploadFile | None = Field(None, description="PNG whose transparent pixels mark the area to edit; "
                                    "without it, the image's own transparency does.")
    prompt: str = Field(description="What to draw in the edited area.")
    model: str | None = Field(None, max_length=128, description="A mode name or alias.")
    n: int = Field(1, ge=1, description="Number of images.")
    size: str | None = Field(None, description="`WxH` or `auto` (the image's own size).")
    response_format: Literal["b64_json", "url"] = Field("b64_json")
    seed: int | None = Field(None, description="Dream Lab extra.")
    steps: int | None = Field(None, description="Dream Lab extra.")
    negative_prompt: str | None = Field(None, description="Dream Lab extra.")
    guidance_scale: float | None = Field(None, description="Dream Lab extra.")
    strength: float | None = Field(None, description="Dream Lab extra: how much the edited area changes (0, 1].")

    def to_native(self, image_b64: str, mask_b64: str | None) -> InpaintRequest:
        """Transparent pixels of the mask (or, without one, of the image) are the area to edit, as OpenAI
        defines it; they are repainted from scratch unless `strength` says otherwise."""
        width, height = parse_size(self.size)
        native = OpenAIInpaint if mask_b64 is not None else OpenAIImageAlphaInpaint
        return native(prompt=self.prompt, mode=self.model, num_images=self.n, width=width, height=height,
                      seed=self.seed, steps=self.steps, negative_prompt=self.negative_prompt,
                      guidance_scale=self.guidance_scale, image=image_b64, mask=mask_b64 or image_b64,
                      mask_alpha=True, strength=1.0 if self.strength is None else self.strength, mask_blur=0)


class OpenAIImageRequest(StrictModel):
    """`POST /v1/images/generations`. Dream Lab extras: seed, steps, negative_prompt, guidance_scale, scheduler."""

    prompt: str = Field(description="What to draw.")
    model: str | None = Field(None, max_length=128,
                              description="A mode name or alias; the default mode when left out.")
    n: int = Field(1, ge=1, description="Number of images.")
    size: str | None = Field(None, description="`WxH` (e.g. 512x512) or `auto` (the mode's default).")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="Inline base64 or a URL here.")
    quality: str | None = Field(None, description="Accepted for compatibility; ignored.")
    style: str | None = Field(None, description="Accepted for compatibility; ignored.")
    user: str | None = Field(None, description="Accepted for compatibility; logged.")
    output_format: OutputFormat = Field("png", description="Image encoding.")
    seed: int | None = Field(None, description="Dream Lab extra: seed of the first image.")
    steps: int | None = Field(None, description="Dream Lab extra: denoising steps.")
    negative_prompt: str | None = Field(None, description="Dream Lab extra.")
    guidance_scale: float | None = Field(None, description="Dream Lab extra.")
    scheduler: SchedulerName | None = Field(None, description="Dream Lab extra: sampler.")
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS_PER_REQUEST,
                                 description="Dream Lab extra: LoRAs to apply (`{name, weight}`).")
    vae: str | None = Field(None, max_length=128, description="Dream Lab extra: a VAE of the mode.")

    def to_native(self) -> Txt2ImgRequest:
        width, height = parse_size(self.size)
        return Txt2ImgRequest(prompt=self.prompt, mode=self.model, num_images=self.n, width=width, height=height,
                              seed=self.seed, steps=self.steps, negative_prompt=self.negative_prompt,
                              guidance_scale=self.guidance_scale, scheduler=self.scheduler,
                              output_format=self.output_format, loras=self.loras, vae=self.vae)


class OpenAIImage(BaseModel):
    b64_json: str | None = Field(None, description="With response_format b64_json.")
    url: str | None = Field(None, description="With response_format url: fetchable here for 10 minutes.")
    revised_prompt: str


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    model: str = Field(description="Dream Lab extra: the mode that ran.")
    seeds: list[int] = Field(description="Dream Lab extra: the seed of each image.")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    family: str | None = Field(None, description="Dream Lab extra.")
    aliases: list[str] | None = Field(None, description="Dream Lab extra.")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
