"""Request and response bodies of the OpenAI images API front end, and its translation into native requests.

OpenAI's request is strict like ours: unknown fields are errors.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from serve_app.api.native_schemas import LoraRef, Txt2ImgRequest
from serve_app.config.modes_file import MAX_LORAS_PER_REQUEST
from serve_app.errors import RequestValidationError
from serve_app.model.generation import OutputFormat
from serve_app.model.schedulers import SchedulerName
from serve_app.strict_model import StrictModel, quote


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
        width = height = None
        if self.size not in (None, "auto"):
            match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", self.size)
            if not match:
                raise RequestValidationError(f"`size` must look like '512x512' or be 'auto', got {quote(self.size)}",
                                             param="size")
            width, height = int(match[1]), int(match[2])
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
