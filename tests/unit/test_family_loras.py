"""LoRAs of FLUX and SD3 in the kohya, diffusers/PEFT and ComfyUI layouts are detected as LoRAs of their family
(not "not a LoRA"), with their layout and rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.model.inspection.adapter_inspect import AdapterKind, inspect_adapter
from tests.unit.family_headers import write_header_file


@pytest.mark.parametrize(("key", "family", "layout"), [
    ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "flux", "kohya"),
    ("lora_unet_single_blocks_3_linear1.lora_down.weight", "flux", "kohya"),
    ("transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight", "flux", "diffusers"),
    ("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight", "flux", "comfy"),
    ("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight", "sd3", "kohya"),
    ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "sd3", "diffusers"),
])
def test_transformer_family_loras_are_named(tmp_path: Path, key: str, family: str, layout: str) -> None:
    path = write_header_file(tmp_path / "style.safetensors", {key: [16, 3072]})
    info = inspect_adapter(path, AdapterKind.LORA)
    assert (info.family.value if info.family else None, info.format.value, info.rank) == (family, layout, 16)


def test_sd_loras_are_unaffected(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "sd.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768],
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 4]})
    assert inspect_adapter(path, AdapterKind.LORA).family is not None
