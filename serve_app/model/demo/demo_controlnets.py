"""Tiny demo ControlNets (random weights, the demo UNets' real widths): one per txt2img family that has
ControlNet pipelines, built from the family's demo UNet (`ControlNetModel.from_unet`, as ControlNets are
trained) with their zero convolutions made random, so they do change an image.

Written under MODEL_ROOT's `controlnet/`: SD1's as a diffusers folder and, the same weights, as one file in
the original (A1111, `control_model.*`) key layout; SDXL's as one file in the diffusers key layout. The single
files carry their config in their metadata (`dreamlab.controlnet_config`). The FLUX and SD3 ones are written
with them (`flow_demo_controlnets`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch

from serve_app.model.control.control_inspect import METADATA_CONTROLNET_CONFIG
from serve_app.model.demo.architectures import demo_name, unet_config
from serve_app.model.demo.flow_demo_controlnets import flow_demo_controlnets_present, write_flow_demo_controlnets
from serve_app.model.families import Family
from serve_app.model.loading.single_file_writer import encoder_half_module_map

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


def _original_module_map(net: Any) -> dict[str, str]:
    """diffusers module path -> original (ldm ControlNet) module path, the inverse of diffusers'
    `convert_controlnet_checkpoint`."""
    table = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_mid_block": "middle_block_out.0"}
    hint_blocks = len(net.controlnet_cond_embedding.blocks)
    for k in range(hint_blocks):
        table[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * (k + 1)}"
    table["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (hint_blocks + 1)}"
    for i in range(len(net.controlnet_down_blocks)):
        table[f"controlnet_down_blocks.{i}"] = f"zero_convs.{i}.0"
    return table | encoder_half_module_map(net)


def original_state_dict(net: Any) -> dict[str, torch.Tensor]:
    """`net`'s weights in the original key layout A1111 users share (`control_model.` prefix)."""
    table = _original_module_map(net)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in cast(torch.nn.Module, net).state_dict().items():
        parts = key.split(".")
        module = next(".".join(parts[:cut]) for cut in range(len(parts) - 1, 0, -1) if ".".join(parts[:cut]) in table)
        out["control_model." + ".".join([table[module], *parts[len(module.split(".")):]])] = tensor.contiguous()
    return out


def demo_controlnet_paths(model_root: str | Path) -> tuple[Path, Path, Path]:
    """Where the SD1 (folder, original-layout file) and SDXL (file) demo ControlNets are."""
    folder, names = Path(model_root) / CONTROL_FOLDER, demo_controlnet_names()
    return (folder / names[Family.SD1], folder / f"{names[Family.SD1]}-original.safetensors",
            folder / f"{names[Family.SDXL]}.safetensors")


def demo_controlnets_present(model_root: str | Path) -> bool:
    sd1, original, sdxl = demo_controlnet_paths(model_root)
    return (sd1 / "config.json").is_file() and original.is_file() and sdxl.is_file() and \
        flow_demo_controlnets_present(model_root)


def _config(net: Any) -> str:
    return json.dumps({k: v for k, v in dict(net.config).items() if not k.startswith("_")})


def write_demo_controlnets(model_root: str | Path) -> list[Path]:
    """Write the demo ControlNets under `model_root`/controlnet when missing; return their paths."""
    from safetensors.torch import save_file

    sd1, original, sdxl = demo_controlnet_paths(model_root)
    if not (sd1 / "config.json").is_file() or not original.is_file():
        net = demo_controlnet(Family.SD1)
        net.save_pretrained(str(sd1), safe_serialization=True)
        save_file(original_state_dict(net), str(original), metadata={METADATA_CONTROLNET_CONFIG: _config(net)})
        logger.info("demo ControlNets %s and %s written", sd1, original)
    if not sdxl.is_file():
        net = demo_controlnet(Family.SDXL)
        state = {k: v.contiguous() for k, v in cast(torch.nn.Module, net).state_dict().items()}
        save_file(state, str(sdxl), metadata={METADATA_CONTROLNET_CONFIG: _config(net)})
        logger.info("demo ControlNet %s written", sdxl)
    return [sd1, original, sdxl, *write_flow_demo_controlnets(model_root)]
