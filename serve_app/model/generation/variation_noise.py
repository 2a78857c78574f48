"""Variation seeds (A1111's `subseed` / `subseed_strength`): each image's starting noise is its seed's noise
moved towards its variation seed's noise by spherical interpolation, so a small strength gives a nearby
variation of the same composition and 1 gives the variation seed's own image.

The noise is drawn exactly as diffusers draws it for a list of generators (one CPU generator per image,
shape (1, C, h, w), the pipeline's dtype), so the seed's side of the interpolation is the noise the seed
alone would have given."""

from __future__ import annotations

from typing import Any

import torch

from serve_app.model.generation.job import GenerationRequest, Txt2Img


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (t = 0) to `high` (t = 1), over each sample's flattened noise; nearly
    parallel noises fall back to a straight line (A1111 does the same, with the weights the other way round)."""
    a, b = low.flatten(1).double(), high.flatten(1).double()
    dot = ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(1).clamp(-1.0, 1.0)
    if float(dot.abs().mean()) > 0.9995:
        mixed = (1.0 - t) * a + t * b
    else:
        omega = torch.acos(dot).unsqueeze(1)
        mixed = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return mixed.reshape(low.shape).to(low.dtype)


def variation_latents(seeds: list[int], subseeds: list[int], strength: float,
                      shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """The starting latents of a batch, (len(seeds), *shape): image i's seed noise moved by `strength`
    towards its variation seed's."""
    def noise(seed: int) -> torch.Tensor:
        return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)

    return torch.cat([slerp(strength, noise(seed), noise(subseed)) for seed, subseed in zip(seeds, subseeds)])


def variation_start(pipe: Any, params: GenerationRequest) -> torch.Tensor | None:
    """The starting latents of `params` on `pipe` when it asks for variation seeds (resolution allows them on a
    UNet family's txt2img only), else None (the pipeline draws its own noise)."""
    if not params.subseeds or not isinstance(params.job, Txt2Img):
        return None
    shape = (pipe.vae.config.latent_channels, params.height // pipe.vae_scale_factor,
             params.width // pipe.vae_scale_factor)
    return variation_latents(params.seeds, params.subseeds, params.subseed_strength, shape, pipe.unet.dtype)
