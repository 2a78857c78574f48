"""LoRAs of the transformer families (FLUX.1, SD3): their kohya, diffusers/PEFT and ComfyUI/BFL key layouts,
told from key names alone, so such a file is named for what it is rather than "not a LoRA"."""

from __future__ import annotations

from collections.abc import Iterable

from serve_app.model.families import Family

# (key start or fragment, family, layout): the first match wins
_SIGNATURES: tuple[tuple[str, Family, str], ...] = (
    ("lora_unet_double_blocks_", Family.FLUX, "kohya"),
    ("lora_unet_single_blocks_", Family.FLUX, "kohya"),
    ("lora_unet_joint_blocks_", Family.SD3, "kohya"),
    ("transformer.single_transformer_blocks.", Family.FLUX, "diffusers"),
    ("diffusion_model.double_blocks.", Family.FLUX, "comfy"),
    ("diffusion_model.single_blocks.", Family.FLUX, "comfy"),
    ("diffusion_model.joint_blocks.", Family.SD3, "comfy"),
    ("transformer.transformer_blocks.", Family.SD3, "diffusers"),  # after FLUX's: SD3 has no single blocks
)


def transformer_lora_family(keys: Iterable[str]) -> tuple[Family, str] | None:
    """(family, layout) of a FLUX or SD3 LoRA's keys; None when they are not one."""
    names = list(keys)
    for start, family, layout in _SIGNATURES:
        if any(k.startswith(start) or k.startswith("lora_transformer_" + start) for k in names):
            return family, layout
    return None
