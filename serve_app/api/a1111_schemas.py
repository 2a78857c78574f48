"""Request and response bodies of the AUTOMATIC1111 `sdapi` front end, and its translation into native
requests.

A1111 clients send dozens of fields Dream Lab has no use for (hires fix, restore faces, scripts...); like
A1111's own API, unknown fields are ignored, while the fields we do use are validated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.native_schemas import Img2ImgRequest, Txt2ImgRequest
from serve_app.errors import RequestValidationError
from serve_app.model.generation import MAX_SEED

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


# -- responses ---------------------------------------------------------------------------------------
class A1111GenerationResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs.")
    parameters: dict[str, Any] = Field(description="The request as understood.")
    info: str = Field(description="JSON string: seed, all_seeds, sd_model_name, ...")


class A1111SdModel(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None = None


class A1111Options(BaseModel):
    sd_model_checkpoint: str
    sd_checkpoint_hash: str
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
