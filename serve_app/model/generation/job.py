"""What a generation is called with and what it returns.

`GenerationRequest` is fully resolved (every default filled in, every value checked, the init image
decoded): the router builds it once and it crosses to the mode worker as is. The result is torch-free
on purpose: the router unpickles it and must not import torch.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from serve_app.model.prompts.attention_syntax import PromptSyntax

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

JobKind = Literal["txt2img", "img2img", "inpaint"]
OutputFormat = Literal["png", "jpeg", "webp"]
Upscaler = Literal["latent", "latent_nearest", "lanczos", "nearest"]
LATENT_UPSCALERS = ("latent", "latent_nearest")

MAX_SEED = 2**32 - 1


def random_seed(count: int = 1) -> int:
    """A random first seed that leaves room for `count` consecutive seeds (image i uses seed + i)."""
    return secrets.randbelow(MAX_SEED - count + 2)


@dataclass(frozen=True)
class AdapterFile:
    """An embedding or VAE file (from MODEL_ROOT's `embeddings/` or `vae/`) a generation uses."""

    name: str
    path: str
    file_bytes: int


@dataclass(frozen=True)
class LoraUse:
    """One LoRA a generation applies: its file (from MODEL_ROOT's `loras/`) and weight."""

    name: str
    path: str
    weight: float
    file_bytes: int


@dataclass(frozen=True)
class HiresPass:
    """The second pass of a hires fix: the size it upscales to, how, and how much it denoises again."""

    width: int
    height: int
    upscaler: Upscaler
    steps: int
    strength: float


@dataclass
class GenerationRequest:
    """A resolved, validated generation: what the pipeline is called with."""

    kind: JobKind
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: list[int]
    scheduler: str
    output_format: OutputFormat
    init_image: Image.Image | None = None
    strength: float | None = None
    mask: Image.Image | None = None  # inpaint: grayscale, white = repaint, already the output size
    mask_blur: int = 0  # pixels of Gaussian blur on the mask's edge
    inpaint_padding: int | None = None  # inpaint only the masked area plus this margin, at full resolution
    hires: HiresPass | None = None  # txt2img only
    # the SDXL base -> refiner split ("ensemble of expert denoisers"): the base stops at `denoising_end` and
    # answers its latents; the refiner starts from them at `denoising_start`
    denoising_end: float | None = None
    denoising_start: float | None = None
    init_latents: np.ndarray | None = None
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers: 1 = the text encoder's last layer
    prompt_syntax: PromptSyntax = "a1111"  # plain: brackets and BREAK are literal text

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images it makes: the hires size when it has a hires pass."""
        return (self.hires.width, self.hires.height) if self.hires else (self.width, self.height)
    request_id: str = "-"
    loras: list[LoraUse] = field(default_factory=list)
    embeddings: list[AdapterFile] = field(default_factory=list)  # those whose names the prompts use
    vae: AdapterFile | None = None  # None: the checkpoint's own

    def adapter_set_id(self) -> str:
        """Names the adapter files a replica must hold for this request (its LoRAs and VAE, not their
        weights); "" when it has none. Requests with the same id prefer the same replicas."""
        files = sorted(f"{lora.path}:{lora.file_bytes}" for lora in self.loras)
        if self.vae is not None:
            files.append(f"vae={self.vae.path}:{self.vae.file_bytes}")
        return "adapters-" + hashlib.sha1("|".join(files).encode()).hexdigest()[:16] if files else ""


@dataclass
class GeneratedImage:
    data: bytes
    seed: int
    format: OutputFormat


@dataclass
class GenerationTimings:
    """Seconds spent where. `job_s` is everything the replica did; `load_s`/`replica_start_s` only when the
    request paid for a load or was the replica's first."""

    inference_s: float = 0.0
    encode_s: float = 0.0
    job_s: float = 0.0
    load_s: float | None = None
    load_tier: str | None = None  # where that load came from: "disk", or "ram" (a device copy)
    replica_start_s: float | None = None
    adapter_loads: int = 0  # adapter files (LoRAs, embeddings, VAEs) this request read from disk


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    width: int
    height: int
    steps: int
    scheduler: str
    timings: GenerationTimings = field(default_factory=GenerationTimings)
    latents: np.ndarray | None = None  # instead of images, for a request with `denoising_end`
    stages: list[tuple[str, GenerationTimings]] = field(default_factory=list)  # (mode, its timings) per stage


@dataclass
class ProgressEvent:
    """One denoising step done, streamed while a generation runs."""

    step: int
    total: int
    elapsed_s: float
    eta_s: float
