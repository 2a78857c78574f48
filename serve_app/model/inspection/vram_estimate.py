"""VRAM estimate of a checkpoint at a target dtype, plus working memory for a resolution and batch.

Formula (bytes):

    weights  = param_count * bytes_per(dtype)
    unet_act = batch * cfg(2) * (H/8) * (W/8) * unet_base_channels * UNET_ACTIVATION_FACTOR * bytes_per(dtype)
    vae_act  = batch * H * W * vae_decoder_channels * VAE_ACTIVATION_FACTOR * bytes_per(dtype)
    working  = max(unet_act, vae_act)          # the UNet loop and the VAE decode do not overlap
    total    = weights + working + ALLOCATOR_SLACK

SD3 and FLUX (transformer denoisers) replace `unet_act` by the transformer's:

    tokens   = (H/16) * (W/16) + TEXT_TOKENS      # 2x2 patches of the 1/8 latents, plus the T5 tokens
    dit_act  = batch * cfg * tokens * width * TRANSFORMER_ACTIVATION_FACTOR * bytes_per(dtype)

with cfg 2 for SD3 (classifier-free guidance) and 1 for FLUX (embedded guidance).

Each ControlNet unit of a request adds `CONTROLNET_ACTIVATION_SHARE` of the denoiser's activations to the
denoising stage: a ControlNet is a copy of the denoiser's encoder half (or of a few of its transformer blocks)
run on the same latents at every step, and its residuals live until the denoiser has added them. (Its
weights are reserved apart, as an adapter's.) The weights include every
component the mode loads, its component files too: a T5-XXL encoder alone is 4.76 B parameters, ~9.5 GB in
fp16. fp8 files are counted in the dtype they will have on the device (they are upcast on load).

`unet_base_channels` is the UNet's first-level width (320 for SD/SDXL), `vae_decoder_channels` the VAE
decoder's full-resolution width (128). The factors are conservative counts of the live activation tensors
at the peak of each stage with PyTorch's memory-efficient attention (no H*W x H*W attention matrix); they
are not yet calibrated on real GPUs. The GPU test compares the estimate with `torch.cuda.memory_allocated`
after a real load. The registry replaces the estimate by the measured footprint once a model is loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from serve_app.core.strict_model import StrictModel
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo

DTypeName = Literal["fp32", "fp16", "bf16"]
BYTES_PER_DTYPE: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
UNET_ACTIVATION_FACTOR = 24
VAE_ACTIVATION_FACTOR = 4
ALLOCATOR_SLACK = 64 * 1024 * 1024
TRANSFORMER_ACTIVATION_FACTOR = 16
CONTROLNET_ACTIVATION_SHARE = 0.5
TEXT_TOKENS = {Family.SD3: 333, Family.FLUX: 512}  # SD3: 77 CLIP + 256 T5; FLUX: 512 T5
DEFAULT_RESOLUTION: dict[Family, int] = {Family.SD1: 512, Family.SD2: 768, Family.SDXL: 1024, Family.SDXL_REFINER: 1024,
                                         Family.SD3: 1024, Family.FLUX: 1024}


class VramEstimate(StrictModel):
    dtype: DTypeName = Field(description="Target dtype of the loaded weights.")
    width: int = Field(description="Image width the working memory is sized for.")
    height: int = Field(description="Image height the working memory is sized for.")
    batch_size: int = Field(description="Images per denoising batch.")
    weights_bytes: int = Field(description="Parameters at the target dtype.")
    working_bytes: int = Field(description="Peak activations during generation.")
    total_bytes: int = Field(description="weights + working + allocator slack.")


def estimate_vram(
    info: CheckpointInfo,
    dtype: DTypeName = "fp16",
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    control_units: int = 0,
) -> VramEstimate:
    """Estimate the bytes a load of `info` takes on a GPU, working memory for a generation of that size and
    batch with `control_units` ControlNet units included (see the module docstring for the formula)."""
    side = DEFAULT_RESOLUTION[info.family]
    width, height = width or side, height or side
    per = BYTES_PER_DTYPE[dtype]
    weights = info.param_count * per
    if info.family.flow:
        tokens = (height // 16) * (width // 16) + TEXT_TOKENS[info.family]
        cfg = 2 if info.family is Family.SD3 else 1
        unet_act = batch_size * cfg * tokens * info.unet_base_channels * TRANSFORMER_ACTIVATION_FACTOR * per
    else:
        latents = (height // 8) * (width // 8)
        unet_act = batch_size * 2 * latents * info.unet_base_channels * UNET_ACTIVATION_FACTOR * per
    unet_act = round(unet_act * (1 + CONTROLNET_ACTIVATION_SHARE * control_units))
    vae_act = batch_size * height * width * info.vae_decoder_channels * VAE_ACTIVATION_FACTOR * per
    working = max(unet_act, vae_act)
    return VramEstimate(
        dtype=dtype, width=width, height=height, batch_size=batch_size,
        weights_bytes=weights, working_bytes=working, total_bytes=weights + working + ALLOCATOR_SLACK,
    )
