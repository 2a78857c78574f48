"""Hires fix: a txt2img at the requested size, upscaled (in latent space, or in pixels with Lanczos or
nearest neighbour), then denoised again at the larger size by the img2img pipeline (`strength` of it), as
A1111's `enable_hr` does. Latent upscaling keeps the first pass's latents and skips a VAE round trip."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from PIL import Image

from serve_app.model.generation.job import LATENT_UPSCALERS, HiresPass

VAE_SCALE = 8  # pixels per latent of every supported family
CONTROL_ARGS = ("control_image", "control_mode", "control_mask", "controlnet_conditioning_scale",
                "control_guidance_start", "control_guidance_end")  # the second pass runs without ControlNets


def second_pass_steps(hires: HiresPass) -> int:
    """Denoising steps the second pass really runs (img2img runs `steps * strength` of them)."""
    return max(1, min(int(hires.steps * hires.strength), hires.steps))


def upscale(first: Any, hires: HiresPass) -> Any:
    """The first pass's output (latents for a latent upscaler, else PIL images) at the hires size."""
    if hires.upscaler in LATENT_UPSCALERS:
        mode = "nearest" if hires.upscaler == "latent_nearest" else "bilinear"
        size = (hires.height // VAE_SCALE, hires.width // VAE_SCALE)
        return torch.nn.functional.interpolate(first, size=size, mode=mode)
    resample = Image.Resampling.NEAREST if hires.upscaler == "nearest" else Image.Resampling.LANCZOS
    return [img.resize((hires.width, hires.height), resample) for img in first]


def second_pass(pipe: Any, first: Any, hires: HiresPass, call: dict[str, Any]) -> list[Image.Image]:
    """Denoise the upscaled first pass again with `pipe` (img2img); `call` holds the first pass's arguments."""
    call = {k: v for k, v in call.items() if k not in ("width", "height", "output_type", *CONTROL_ARGS)}
    call.update(image=upscale(first, hires), strength=hires.strength, num_inference_steps=hires.steps)
    if "height" in inspect.signature(pipe.__call__).parameters:  # SD3 / FLUX img2img: the size is not the image's
        call.update(width=hires.width, height=hires.height)
    return pipe(**call).images
