"""Tiny demo ControlNets (random weights, the demo UNets' real widths): one per txt2img family that has
ControlNet pipelines, built from the family's demo UNet (`ControlNetModel.from_unet`, as ControlNets are
trained) with their zero convolutions made random, so they do change an image.

Written under MODEL_ROOT's `controlnet/`: SD1's as a diffusers folder, SDXL's as one file in the diffusers
key layout carrying its config in its metadata (`dreamlab.controlnet_config`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch

from serve_app.model.control.control_inspect import METADATA_CONTROLNET_CONFIG
from serve_app.model.demo.architectures import demo_name, unet_config
from serve_app.model.families import Family

logger = logging.getLogger(__name__)

CONTROL_FOLDER = "controlnet"
_SEEDS = {Family.SD1: 11, Family.SD2: 12, Family.SDXL: 13}


def demo_controlnet(family: Family) -> Any:
    """The tiny ControlNet of `family` (deterministic)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(_SEEDS[family])
    unet = UNet2DConditionModel(**unet_config(family))
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    zero_init = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_init:
            conv.weight.normal_(0.0, 0.2)
            conv.bias.normal_(0.0, 0.05)
    return net


def demo_controlnet_names() -> dict[Family, str]:
    """The demo ControlNets' names (as requests ask for them)."""
    return {Family.SD1: f"{demo_name(Family.SD1)}-controlnet", Family.SDXL: f"{demo_name(Family.SDXL)}-controlnet"}


def demo_controlnet_paths(model_root: str | Path) -> tuple[Path, Path]:
    """Where the SD1 (folder) and SDXL (file) demo ControlNets are."""
    folder, names = Path(model_root) / CONTROL_FOLDER, demo_controlnet_names()
    return folder / names[Family.SD1], folder / f"{names[Family.SDXL]}.safetensors"


def demo_controlnets_present(model_root: str | Path) -> bool:
    sd1, sdxl = demo_controlnet_paths(model_root)
    return (sd1 / "config.json").is_file() and sdxl.is_file()


def write_demo_controlnets(model_root: str | Path) -> list[Path]:
    """Write the demo ControlNets under `model_root`/controlnet when missing; return their paths."""
    from safetensors.torch import save_file

    sd1, sdxl = demo_controlnet_paths(model_root)
    if not (sd1 / "config.json").is_file():
        demo_controlnet(Family.SD1).save_pretrained(str(sd1), safe_serialization=True)
        logger.info("demo ControlNet %s written", sd1)
    if not sdxl.is_file():
        net = demo_controlnet(Family.SDXL)
        config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
        state = {k: v.contiguous() for k, v in cast(torch.nn.Module, net).state_dict().items()}
        sdxl.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(sdxl), metadata={METADATA_CONTROLNET_CONFIG: json.dumps(config)})
        logger.info("demo ControlNet %s written", sdxl)
    return [sd1, sdxl]
