"""Tiny demo transformer ControlNets (random weights) for the demo FLUX.1 and SD3 transformers
(`flow_architectures`): their widths, rotary axes and attention layout, one double and one single block (FLUX),
two joint blocks (SD3), with the zero-initialised projections made random so that they change an image.

Written under MODEL_ROOT's `controlnet/`: FLUX's as a diffusers folder (`FluxControlNetModel`, config.json),
SD3's as one file in the diffusers key layout without a config (read from its tensors, `flow_control_inspect`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

from serve_app.model.demo.flow_demo_models import FLUX_FOLDER, SD3_FOLDER
from serve_app.model.families import Family

logger = logging.getLogger(__name__)

FLUX_CONTROLNET, SD3_CONTROLNET = f"{FLUX_FOLDER}-controlnet", f"{SD3_FOLDER}-controlnet"
_SEEDS = {Family.FLUX: 21, Family.SD3: 22}


def _randomise(modules: list[Any]) -> None:
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.normal_(0.0, 0.2)


def demo_flow_controlnet(family: Family, num_mode: int | None = None, extra_channels: int = 0) -> Any:
    """The tiny ControlNet of the FLUX or SD3 demo transformer (deterministic); `num_mode`: a FLUX Union one,
    `extra_channels` 1: an SD3 inpainting one."""
    torch.manual_seed(_SEEDS[family])
    if family is Family.FLUX:
        from diffusers import FluxControlNetModel

        flux: Any = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=4096,
                                        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[4, 6, 6],
                                        num_mode=num_mode)
        _randomise([*flux.controlnet_blocks, *flux.controlnet_single_blocks, flux.controlnet_x_embedder])
        return flux
    from diffusers import SD3ControlNetModel

    sd3: Any = SD3ControlNetModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=4096,
                                  caption_projection_dim=32, pooled_projection_dim=768 + 1280, pos_embed_max_size=32,
                                  extra_conditioning_channels=extra_channels, dual_attention_layers=(0,),
                                  qk_norm="rms_norm")
    _randomise([*sd3.controlnet_blocks, sd3.pos_embed_input])
    return sd3


def flow_demo_controlnet_paths(model_root: str | Path) -> tuple[Path, Path]:
    """Where the FLUX (folder) and SD3 (file) demo ControlNets are."""
    folder = Path(model_root) / "controlnet"
    return folder / FLUX_CONTROLNET, folder / f"{SD3_CONTROLNET}.safetensors"


def flow_demo_controlnets_present(model_root: str | Path) -> bool:
    flux, sd3 = flow_demo_controlnet_paths(model_root)
    return (flux / "config.json").is_file() and sd3.is_file()


def write_flow_demo_controlnets(model_root: str | Path) -> list[Path]:
    """Write the FLUX and SD3 demo ControlNets when missing; return their paths."""
    from safetensors.torch import save_file

    flux, sd3 = flow_demo_controlnet_paths(model_root)
    if not (flux / "config.json").is_file():
        demo_flow_controlnet(Family.FLUX).save_pretrained(str(flux), safe_serialization=True)
        logger.info("demo ControlNet %s written", flux)
    if not sd3.is_file():
        net = cast(torch.nn.Module, demo_flow_controlnet(Family.SD3))
        sd3.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(sd3))
        logger.info("demo ControlNet %s written", sd3)
    return [flux, sd3]
