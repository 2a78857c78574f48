"""What a generation is called with and what it returns.

`GenerationRequest` is fully resolved (every default filled in, every value checked, the init image
decoded): the router builds it once and it crosses to the mode worker as is. It holds the parameters every
generation has and one `Job` (`Txt2Img`, `Img2Img`, `Inpaint`, `RefinerFinish`) with what only that kind
has; the runner matches on the job. The result is torch-free
on purpose: the router unpickles it and must not import torch.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Literal

from serve_app.model.prompts.attention_syntax import PromptSyntax

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

JobKind = Literal["txt2img", "img2img", "inpaint", "refine"]
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


ControlMode = Literal["balanced", "prompt", "control"]


@dataclass(frozen=True)
class ControlUse:
    """One ControlNet unit of a generation: its model file (from MODEL_ROOT's `controlnet/`), the image (decoded,
    not yet preprocessed: the replica prepares it, see `control.control_image`) and how it steers."""

    name: str
    path: str
    file_bytes: int
    parameters: int  # weights: its loaded size is this times the dtype's width
    image: Image.Image
    preprocessor: str = "none"
    weight: float = 1.0
    start: float = 0.0  # fraction of the steps at which the unit starts
    end: float = 1.0  # ... and stops
    mode: ControlMode = "balanced"  # prompt: "My prompt is more important"; control: "ControlNet is more important"
    resize: Literal["just_resize", "crop", "fill"] = "crop"
    processor_res: int | None = None  # None: "pixel perfect" (at the output's scale)
    threshold_a: float | None = None
    threshold_b: float | None = None
    union_mode: int | None = None  # a FLUX Union ControlNet's control type (its mode index)

    @property
    def file_key(self) -> str:
        return f"{self.path}:{self.file_bytes}"


@dataclass(frozen=True)
class IpAdapterUse:
    """One IP-Adapter of a generation (an image as prompt): its file (MODEL_ROOT's `ipadapter/`), the CLIP image
    encoder it reads the image with (`clip_vision/`), the image and its weight."""

    name: str
    path: str
    file_bytes: int
    parameters: int
    encoder_path: str
    encoder_parameters: int
    image: Image.Image
    weight: float = 1.0

    @property
    def file_key(self) -> str:
        return f"{self.path}:{self.file_bytes}"


@dataclass(frozen=True)
class HiresPass:
    """The second pass of a hires fix: the size it upscales to, how, and how much it denoises again."""

    width: int
    height: int
    upscaler: Upscaler
    steps: int
    strength: float


@dataclass(frozen=True)
class Txt2Img:
    """Text to image, with an optional hires fix; or the SDXL base's half of a base -> refiner split
    ("ensemble of expert denoisers"): it stops at `denoising_end` and answers its latents, not images."""

    hires: HiresPass | None = None
    denoising_end: float | None = None
    kind: ClassVar[JobKind] = "txt2img"

    def __post_init__(self) -> None:
        if self.hires is not None and self.denoising_end is not None:
            raise ValueError("a txt2img job has a hires pass or stops at `denoising_end`, not both")


@dataclass(frozen=True)
class Img2Img:
    """The init image (already the output size) re-noised by `strength` and denoised."""

    init_image: Image.Image
    strength: float
    kind: ClassVar[JobKind] = "img2img"


@dataclass(frozen=True)
class Inpaint:
    """The init image repainted where `mask` is white (grayscale, already the output size)."""

    init_image: Image.Image
    mask: Image.Image
    strength: float
    mask_blur: int = 0  # pixels of Gaussian blur on the mask's edge
    padding: int | None = None  # inpaint only the masked area plus this margin, at full resolution
    kind: ClassVar[JobKind] = "inpaint"


@dataclass(frozen=True)
class RefinerFinish:
    """The SDXL refiner's half of a base -> refiner split: it denoises the base's latents from
    `denoising_start` on."""

    latents: np.ndarray
    denoising_start: float
    kind: ClassVar[JobKind] = "refine"


Job = Txt2Img | Img2Img | Inpaint | RefinerFinish


@dataclass
class GenerationRequest:
    """A resolved, validated generation: the parameters every job has, and the job."""

    job: Job
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: list[int]
    scheduler: str
    output_format: OutputFormat
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers: 1 = the text encoder's last layer
    subseeds: list[int] = field(default_factory=list)  # variation seeds, one per image (empty: none)
    subseed_strength: float = 0.0
    true_cfg_scale: float | None = None  # FLUX: true CFG with the negative prompt (None: embedded guidance only)
    prompt_syntax: PromptSyntax = "a1111"  # plain: brackets and BREAK are literal text
    request_id: str = "-"
    loras: list[LoraUse] = field(default_factory=list)
    embeddings: list[AdapterFile] = field(default_factory=list)  # those whose names the prompts use
    vae: AdapterFile | None = None  # None: the checkpoint's own
    controls: list[ControlUse] = field(default_factory=list)  # ControlNet units (several: MultiControlNet)
    ip_adapters: list[IpAdapterUse] = field(default_factory=list)

    @property
    def kind(self) -> JobKind:
        return self.job.kind

    @property
    def hires(self) -> HiresPass | None:
        return self.job.hires if isinstance(self.job, Txt2Img) else None

    @property
    def answers_latents(self) -> bool:
        """The base of a base -> refiner split: it answers latents instead of images."""
        return isinstance(self.job, Txt2Img) and self.job.denoising_end is not None

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images it makes: the hires size when it has a hires pass."""
        hires = self.hires
        return (hires.width, hires.height) if hires else (self.width, self.height)

    def adapter_set_id(self) -> str:
        """Names the adapter files a replica must hold for this request (its LoRAs and VAE, not their
        weights); "" when it has none. Requests with the same id prefer the same replicas."""
        files = sorted(f"{lora.path}:{lora.file_bytes}" for lora in self.loras)
        files += sorted({f"control={c.file_key}" for c in self.controls})
        files += sorted({f"ip={ip.file_key}" for ip in self.ip_adapters})
        if self.vae is not None:
            files.append(f"vae={self.vae.path}:{self.vae.file_bytes}")
        return "adapters-" + hashlib.sha1("|".join(files).encode()).hexdigest()[:16] if files else ""

    def refiner_finish(self, latents: np.ndarray | None) -> GenerationRequest:
        """The refiner's request that finishes this base request's `latents` (same prompts, seeds and steps;
        the refiner runs without the base's adapters)."""
        if not isinstance(self.job, Txt2Img) or self.job.denoising_end is None or latents is None:
            raise ValueError("only a txt2img job that stops at `denoising_end` hands latents to a refiner")
        return replace(self, job=RefinerFinish(latents, self.job.denoising_end), loras=[], embeddings=[], vae=None,
                       controls=[], ip_adapters=[])


@dataclass
class GeneratedImage:
    data: bytes
    seed: int
    format: OutputFormat
    infotext: str | None = None  # A1111's generation parameters (also in a PNG's `parameters` chunk)


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
    adapter_loads: int = 0  # adapter files (LoRAs, embeddings, VAEs, ControlNets, IP-Adapters) it read from disk


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    width: int
    height: int
    steps: int
    scheduler: str
    timings: GenerationTimings = field(default_factory=GenerationTimings)
    latents: np.ndarray | None = None  # instead of images, for a request with `denoising_end`
    model_hash: str | None = None  # A1111's short hash of the checkpoint, once known
    stages: list[tuple[str, GenerationTimings]] = field(default_factory=list)  # (mode, its timings) per stage


@dataclass
class ProgressEvent:
    """One denoising step done, streamed while a generation runs."""

    step: int
    total: int
    elapsed_s: float
    eta_s: float
