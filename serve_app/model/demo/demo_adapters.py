"""Tiny demo adapters for the demo checkpoints (random weights, the demo models' real dims): a LoRA per
txt2img family in the diffusers/PEFT layout plus one in the kohya layout, textual-inversion embeddings in
the A1111 layouts (SD1's `emb_params`, SDXL's `clip_l` + `clip_g`) and a VAE in the diffusers layout.

They go into MODEL_ROOT's `loras/`, `embeddings/` and `vae/` folders, next to the demo checkpoints.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file

from serve_app.model.demo.architectures import demo_name, unet_config, vae_config
from serve_app.model.families import Family
from serve_app.model.inspection.adapter_inspect import ADAPTER_FOLDERS, AdapterKind

logger = logging.getLogger(__name__)

DEMO_LORA_RANK = 4
_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def _attention_linears(family: Family) -> list[tuple[str, torch.nn.Linear]]:
    """(module path, layer) of every attention projection of the family's demo UNet."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    unet = cast(torch.nn.Module, UNet2DConditionModel(**unet_config(family)))
    found: list[tuple[str, torch.nn.Linear]] = []
    for path, module in unet.named_modules():
        if isinstance(module, Attention):
            for proj in _PROJECTIONS:
                found.append((f"{path}.{proj}", cast(torch.nn.Linear, module.get_submodule(proj))))
    return found


def demo_lora(family: Family, kohya: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """LoRA tensors for every attention projection of the family's demo UNet (fp16)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in _attention_linears(family):
        down = torch.randn(DEMO_LORA_RANK, layer.in_features, generator=generator) * 0.1
        up = torch.randn(layer.out_features, DEMO_LORA_RANK, generator=generator) * 0.1
        if kohya:
            key = "lora_unet_" + path.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(float(DEMO_LORA_RANK))}
        else:
            tensors |= {f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up}
    return {k: v.to(torch.float16).contiguous() for k, v in tensors.items()}


def demo_embedding(family: Family, vectors: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if family is Family.SDXL:
        return {"clip_l": torch.randn(vectors, 768, generator=generator),
                "clip_g": torch.randn(vectors, 1280, generator=generator)}
    width = 768 if family is Family.SD1 else 1024
    return {"emb_params": torch.randn(vectors, width, generator=generator)}


def demo_vae(seed: int = 0) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = cast(torch.nn.Module, AutoencoderKL(**vae_config(Family.SD1)))
    return {k: v.contiguous() for k, v in vae.state_dict().items()}


def write_demo_adapters(model_root: str | Path) -> list[Path]:
    """Write the demo adapters under `model_root` when missing; return their paths."""
    root = Path(model_root)
    files: dict[tuple[AdapterKind, str], Callable[[], dict[str, torch.Tensor]]] = {
        **{(AdapterKind.LORA, f"{demo_name(f)}-lora"): functools.partial(demo_lora, f)
           for f in (Family.SD1, Family.SD2, Family.SDXL)},
        (AdapterKind.LORA, f"{demo_name(Family.SD1)}-lora-kohya"): lambda: demo_lora(Family.SD1, kohya=True, seed=1),
        (AdapterKind.EMBEDDING, f"{demo_name(Family.SD1)}-embedding"): lambda: demo_embedding(Family.SD1),
        (AdapterKind.EMBEDDING, f"{demo_name(Family.SDXL)}-embedding"): lambda: demo_embedding(Family.SDXL),
        (AdapterKind.VAE, "tiny-vae"): demo_vae,
    }
    written = []
    for (kind, name), make in files.items():
        path = root / ADAPTER_FOLDERS[kind] / f"{name}.safetensors"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(make(), str(path))
            logger.info("demo %s %s written", kind.value, path)
        written.append(path)
    return written
