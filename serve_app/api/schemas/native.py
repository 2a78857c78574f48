"""Request and response bodies of the native API (`/v1/...`), as `/openapi.json` shows them."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidatorFunctionWrapHandler, model_validator

from serve_app.api.schemas.controlnet import MAX_CONTROLS, MAX_IP_ADAPTERS, ControlUnit, IpAdapterUnit
from serve_app.api.schemas.error_paths import inner, relocated
from serve_app.config.modes_file import MAX_LORAS_PER_REQUEST, ModeDefaults, ModeLimits
from serve_app.core.strict_model import StrictModel
from serve_app.model.generation.job import MAX_SEED, GenerationResult, OutputFormat, Upscaler
from serve_app.model.generation.schedulers import SchedulerName, ScheduleType
from serve_app.model.inspection.adapter_inspect import AdapterInfo, AdapterProblem
from serve_app.model.inspection.checkpoint_problems import CheckpointProblem
from serve_app.model.model_state import ModelState, Tier


class LoraRef(StrictModel):
    """A LoRA from MODEL_ROOT's `loras/` (see `GET /v1/adapters`) and the weight to apply it at."""

    name: str = Field(max_length=128, description="File name without `.safetensors`.")
    weight: float = Field(1.0, description="Within the mode's `max_lora_weight` either way; 0 changes nothing.")


class HiresFix(StrictModel):
    """A second, larger pass (A1111's hires fix): the image is upscaled and denoised again by `strength`."""

    scale: float = Field(2.0, gt=1, le=8, description="Upscale factor (ignored when width/height are given).")
    width: int | None = Field(None, description="Final width (a multiple of 8, 16 for SD3 and FLUX, within the "
                                                "mode's limit).")
    height: int | None = Field(None, description="Final height; a missing one follows the first pass's aspect.")
    upscaler: Upscaler = Field("latent", description="latent / latent_nearest (in latent space), lanczos / nearest "
                               "(in pixels).")
    steps: int | None = Field(None, ge=1, description="Steps of the second pass (default: the request's).")
    strength: float = Field(0.7, gt=0, le=1, description="How much the second pass changes the image.")


class RefinerPass(StrictModel):
    """SDXL base -> refiner as one request: the base denoises up to `switch_at`, the refiner mode finishes."""

    mode: str = Field(max_length=128, description="An sdxl-refiner mode (name or alias).")
    switch_at: float = Field(0.8, gt=0, lt=1, description="Fraction of the steps the base runs.")


class Txt2ImgRequest(StrictModel):
    """Text-to-image. Fields left out take the mode's defaults."""

    prompt: str = Field(description="What to draw.")
    negative_prompt: str | None = Field(None, description="What to avoid.")
    mode: str | None = Field(None, max_length=128,
                             description="Mode name or alias; the default mode when left out.")
    width: int | None = Field(None, description="Width in pixels, a multiple of 8 (16 for SD3 and FLUX) within "
                                                "the mode's limit.")
    height: int | None = Field(None, description="Height in pixels, a multiple of 8 (16 for SD3 and FLUX) within "
                                                 "the mode's limit.")
    steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale (0-50); on FLUX the "
                                         "embedded (distilled) guidance, which takes no negative prompt.")
    true_cfg_scale: float | None = Field(None, description="FLUX only: true classifier-free guidance (> 1 runs the "
                                         "negative prompt too, at twice the cost); a negative prompt on FLUX needs it.")
    seed: int | None = Field(None, description=f"0..{MAX_SEED}; image i uses seed+i. Random when left out.")
    subseed: int | None = Field(None, description=f"Variation seed, 0..{MAX_SEED}; image i uses subseed+i. Random "
                                "when left out (and `subseed_strength` is above 0).")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="How far each image's starting noise moves "
                                    "towards its variation seed's (0: none; 1: the variation seed's image). "
                                    "txt2img only.")
    num_images: int | None = Field(None, description="Images to make (default 1).")
    scheduler: SchedulerName | None = Field(None, description="Sampler; the mode's default when left out.")
    schedule_type: ScheduleType | None = Field(None, description="Noise schedule of the sampler (karras, "
                                               "exponential, ...; see the README's table); `automatic` (the "
                                               "sampler's own) when `scheduler` is given, else the mode's.")
    clip_skip: int | None = Field(None, ge=1, le=12, description="A1111's clip skip: 1 = the text encoder's last "
                                  "layer, 2 = the penultimate one; the mode's default when left out.")
    output_format: OutputFormat = Field("png", description="Encoding of the returned images.")
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS_PER_REQUEST,
                                 description="LoRAs to apply, at most the mode's `max_loras`. Textual-inversion "
                                 "embeddings need no field: an embedding's name in `prompt` or `negative_prompt` "
                                 "uses it.")
    vae: str | None = Field(None, max_length=128,
                            description="A VAE from MODEL_ROOT's `vae/`, one of the mode's `vaes`; the checkpoint's "
                            "own when left out.")
    hires: HiresFix | None = Field(None, description="txt2img only: a second, larger pass (hires fix).")
    refiner: RefinerPass | None = Field(None, description="txt2img on an sdxl mode only: hand the latents to a "
                                        "refiner mode at `switch_at` (not streamed).")
    controls: list[ControlUnit] = Field(default_factory=list, max_length=MAX_CONTROLS,
                                        description="ControlNet units (several: MultiControlNet); a hires fix's "
                                        "second pass runs without them. A unit whose `model` is an IP-Adapter "
                                        "is one of `ip_adapters` (A1111 sends them so).")
    ip_adapters: list[IpAdapterUnit] = Field(default_factory=list, max_length=MAX_IP_ADAPTERS,
                                             description="IP-Adapters: images as prompts (not with a hires fix).")


class Img2ImgRequest(Txt2ImgRequest):
    """Image-to-image: `image` (base64, data URL allowed) is re-noised by `strength` and denoised."""

    image: str = Field(description="Init image, base64 (PNG/JPEG/WebP), data URL allowed.")
    strength: float | None = Field(None, description="How much to change the image, in (0, 1].")


class InpaintRequest(Img2ImgRequest):
    """Inpainting (and outpainting: mask the area beyond the picture): `image` is repainted where `mask` is
    white, by `strength`; pixels the (blurred) mask leaves black come back exactly as sent."""

    mask: str = Field(description="Mask image, base64 (PNG/JPEG/WebP): white = repaint, black = keep; a mask of "
                      "another size is resized to the image's (nearest neighbour).")
    mask_alpha: bool = Field(False, description="Take the mask from the mask image's alpha channel instead: "
                             "transparent = repaint (OpenAI's convention).")
    mask_invert: bool = Field(False, description="Repaint where the mask is black instead.")
    mask_blur: int = Field(4, ge=0, le=64, description="Gaussian blur of the mask's edge, in pixels.")
    masked_content: Literal["original", "fill", "latent_noise", "latent_nothing"] = Field(
        "original", description="What the masked area starts from: the image, its blurred surroundings, noise "
        "or flat grey (A1111's inpainting_fill 1, 0, 2, 3).")
    inpaint_full_res: bool = Field(False, description="Repaint only the masked area plus `inpaint_full_res_padding` "
                                   "at the full output size, then paste it back (more detail in small areas).")
    inpaint_full_res_padding: int = Field(32, ge=0, le=256, description="Margin around the masked area, pixels.")


class JobRequest(StrictModel):
    """A custom job: which mode runs it and the job's own JSON payload."""

    mode: str | None = Field(None, max_length=128,
                             description="Mode name or alias; the default mode when left out.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Passed to the job function as is.")


class _GenerationJobRequest(StrictModel):
    """A generation as a job (`/v1/jobs/txt2img`, ...): `payload` is that route's body; an error in it names
    the field as that route would (`steps`, not `payload.steps`)."""

    mode: str | None = Field(None, max_length=128,
                             description="Mode name or alias; the default mode when left out.")

    @model_validator(mode="wrap")
    @classmethod
    def _errors_as_the_route_names_them(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise relocated(exc, _PAYLOAD) from None


_PAYLOAD = inner("payload")


class Txt2ImgJobRequest(_GenerationJobRequest):
    payload: Txt2ImgRequest = Field(description="The body of `POST /v1/txt2img`.")


class Img2ImgJobRequest(_GenerationJobRequest):
    payload: Img2ImgRequest = Field(description="The body of `POST /v1/img2img`.")


class InpaintJobRequest(_GenerationJobRequest):
    payload: InpaintRequest = Field(description="The body of `POST /v1/inpaint`.")


# -- responses ---------------------------------------------------------------------------------------
# OpenAPI `content` of a route that answers image bytes.
IMAGE_CONTENT: dict[str, Any] = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


class ImageOut(BaseModel):
    b64: str = Field(description="The encoded image, base64.")
    seed: int = Field(description="Seed that made it.")
    format: OutputFormat = Field(description="Encoding.")
    infotext: str | None = Field(None, description="The generation parameters in A1111's infotext format (a PNG "
                                 "also carries them in its `parameters` text chunk).")


class StageOut(BaseModel):
    mode: str
    inference_s: float
    job_s: float
    load_s: float | None = None


class TimingsOut(BaseModel):
    """Seconds. `load_s` / `replica_start_s` appear only when the request paid for a load or a cold start."""

    inference_s: float = Field(description="Denoising loop and VAE decode.")
    encode_s: float = Field(description="Image encoding.")
    job_s: float = Field(description="Everything the mode replica did for this request.")
    total_s: float = Field(description="Router to router, as the router measured it.")
    overhead_s: float = Field(description="Router, queue and transport: total_s - job_s.")
    load_s: float | None = Field(None, description="Model load this request waited for.")
    load_tier: Tier | None = Field(None, description="Where that load came from: `disk`, or `ram` (a device copy).")
    replica_start_s: float | None = Field(None, description="Start of the replica, on its first request.")
    adapter_loads: int = Field(0, description="Adapter files (LoRAs, embeddings, VAEs, ControlNets, IP-Adapters) "
                               "read from disk for this request; 0 when the replica held them all.")
    stages: list[StageOut] | None = Field(None, description="Per mode, when several ran it (base -> refiner); "
                                          "the other fields are their sums.")


class GenerationResponse(BaseModel):
    request_id: str = Field(description="Also in the X-Request-Id response header.")
    mode: str = Field(description="The mode that ran the request.")
    family: str = Field(description="The mode's checkpoint family.")
    width: int
    height: int
    steps: int
    scheduler: str
    images: list[ImageOut]
    timings: TimingsOut


class JobResponse(BaseModel):
    request_id: str
    mode: str
    job_type: str
    result: Any = Field(description="What the job returned (JSON).")


class ModeOut(BaseModel):
    name: str
    family: str
    variant: str = Field("", description="The finer kind its tensors tell: sd2-v, sdxl-inpaint, sdxl-vpred, "
                         "sd3.5-large, flux-dev, flux-schnell, flux-fill, ...")
    checkpoint: str = Field(description="Relative to MODEL_ROOT.")
    format: str = Field(description="`diffusers` folder or `single-file`.")
    aliases: list[str]
    default: bool = Field(description="The application's current default mode.")
    state: ModelState = Field(description="ready when a replica holds it on its device; offloaded when the best "
                              "a replica holds is a copy in its node's host memory (the RAM tier).")
    tier: Tier = Field(description="vram (on a device), ram (in host memory: a device copy away) or disk (cold).")
    replicas: int = Field(description="Replicas the registry hears from.")
    loaded_replicas: int
    measured_bytes: int | None = Field(description="What a load really took (largest replica), once loaded.")
    estimated_bytes: int = Field(description="Estimate before a load (weights + working memory).")
    scheduler: str
    defaults: ModeDefaults = Field(description="What a request gets for the fields it leaves out.")
    limits: ModeLimits = Field(description="The bounds a request must stay within.")
    jobs: list[str] = Field(description="What the mode runs: txt2img (not on a refiner), img2img, inpaint and its "
                            "custom job types.")
    queued: int = Field(0, description="Requests waiting in this router replica's queue of the mode.")
    samplers: dict[str, list[str]] = Field(default_factory=dict, description="The samplers (`scheduler`) the mode "
                                           "serves, each with the schedule types (`schedule_type`) it takes.")


class AdaptersResponse(BaseModel):
    adapters: list[AdapterInfo] = Field(description="LoRAs, embeddings, VAEs and ControlNets under MODEL_ROOT, "
                                        "with the family each is made for.")
    problems: list[AdapterProblem] = Field(description="Files there that cannot be used, and why.")


class ModesResponse(BaseModel):
    default_mode: str
    modes: list[ModeOut]
    problems: list[CheckpointProblem] = Field(
        default_factory=list, description="Checkpoints discovery found under MODEL_ROOT and does not serve, each "
        "with the reason (an unsupported family, missing component files, a pickle or corrupt file).")


class ModesRefreshResponse(BaseModel):
    """What a checkpoint refresh (`POST /v1/modes/refresh`, A1111's refresh-checkpoints) changed."""

    discover: bool = Field(description="Whether the modes come from discovery; when false nothing was rescanned.")
    added: list[str] = Field(default_factory=list, description="Modes added (each its own Serve application; "
                             "its replicas load on their own).")
    removed: list[str] = Field(default_factory=list, description="Modes whose checkpoint left MODEL_ROOT: an added "
                               "one's application is deleted (its replicas drain), a configured one is unloaded "
                               "and no longer served.")
    problems: list[CheckpointProblem] = Field(default_factory=list, description="Files under MODEL_ROOT that are "
                                              "not served, each with the reason (also modes that could not be "
                                              "placed or deployed).")


class HealthResponse(BaseModel):
    status: str = Field(description="`ok`, `ready`, `not_ready`, `draining` or `registry_unreachable`.")
    default_mode: str | None = None
    mode: str | None = Field(None, description="The mode asked about (`/readyz?mode=`).")
    state: ModelState | None = None


def generation_response(result: GenerationResult, mode: str, family: str, request_id: str,
                        total_s: float) -> GenerationResponse:
    """A worker's result as the native response; `overhead_s` is what the router saw beyond the replica's job."""
    t = result.timings
    return GenerationResponse(
        request_id=request_id, mode=mode, family=family, width=result.width, height=result.height,
        steps=result.steps, scheduler=result.scheduler,
        images=[ImageOut(b64=base64.b64encode(img.data).decode(), seed=img.seed, format=img.format,
                         infotext=img.infotext)
                for img in result.images],
        timings=TimingsOut(inference_s=t.inference_s, encode_s=t.encode_s, job_s=t.job_s, total_s=round(total_s, 4),
                           overhead_s=round(max(0.0, total_s - t.job_s), 4), load_s=t.load_s,
                           load_tier=t.load_tier, replica_start_s=t.replica_start_s,
                           adapter_loads=t.adapter_loads,
                           stages=[StageOut(mode=m, inference_s=st.inference_s, job_s=st.job_s, load_s=st.load_s)
                                   for m, st in result.stages] or None))
