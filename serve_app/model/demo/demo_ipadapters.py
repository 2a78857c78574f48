"""A tiny demo IP-Adapter for the SD1 demo model and a tiny CLIP image encoder for it (random weights): the
adapter's decoupled cross-attention matrices have the demo UNet's real widths (768 text context), its image
projection takes the encoder's projection dim. Written as `ipadapter/tiny-sd1-ipadapter.safetensors`
(diffusers' single-file layout) and `clip_vision/tiny-clip-vision/` (a transformers folder)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from serve_app.model.demo.architectures import demo_name, unet_config
from serve_app.model.families import Family

logger = logging.getLogger(__name__)

ENCODER_NAME = "tiny-clip-vision"
IMAGE_TOKENS = 4  # a plain IP-Adapter's image tokens
_ENCODER: dict[str, Any] = dict(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                                num_attention_heads=4, image_size=32, patch_size=8)


def demo_image_encoder() -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(21)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**_ENCODER))


def demo_ipadapter(family: Family = Family.SD1) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter's tensors for the family's demo UNet (keys as diffusers' `load_ip_adapter` reads)."""
    from diffusers import UNet2DConditionModel

    config = unet_config(family)
    unet: Any = UNet2DConditionModel(**config)
    cross, channels = config["cross_attention_dim"], config["block_out_channels"]
    generator = torch.Generator().manual_seed(22)
    tensors = {
        "image_proj.proj.weight": torch.randn(cross * IMAGE_TOKENS, _ENCODER["projection_dim"], generator=generator),
        "image_proj.proj.bias": torch.zeros(cross * IMAGE_TOKENS),
        "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else -1
        hidden = channels[-1] if block < 0 else channels[block] if name.startswith("down") else channels[::-1][block]
        for proj in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{proj}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.2
        key_id += 2
    return {k: v.contiguous() for k, v in tensors.items()}


def demo_ipadapter_paths(model_root: str | Path) -> tuple[Path, Path]:
    root = Path(model_root)
    return root / "ipadapter" / f"{demo_name(Family.SD1)}-ipadapter.safetensors", root / "clip_vision" / ENCODER_NAME


def write_demo_ipadapters(model_root: str | Path) -> list[Path]:
    """Write the demo IP-Adapter and image encoder under `model_root` when missing; return their paths."""
    from safetensors.torch import save_file

    adapter, encoder = demo_ipadapter_paths(model_root)
    if not adapter.is_file():
        adapter.parent.mkdir(parents=True, exist_ok=True)
        save_file(demo_ipadapter(), str(adapter))
        logger.info("demo IP-Adapter %s written", adapter)
    if not (encoder / "config.json").is_file():
        demo_image_encoder().save_pretrained(str(encoder), safe_serialization=True)
        logger.info("demo image encoder %s written", encoder)
    return [adapter, encoder]
