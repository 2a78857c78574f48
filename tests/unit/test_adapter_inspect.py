"""Adapter files (LoRA, embedding, VAE) inspected from their headers: family from the tensors, layout, rank,
and a clear error naming the file for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.core.errors import AdapterFileError, CorruptCheckpointError, PickleCheckpointError
from serve_app.model.demo.demo_adapters import DEMO_LORA_RANK, write_demo_adapters
from serve_app.model.families import Family
from serve_app.model.inspection.adapter_inspect import AdapterFormat, AdapterKind, discover_adapters, inspect_adapter


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    write_demo_adapters(root)
    return root


def _file(tmp_path: Path, name: str, shapes: dict[str, tuple[int, ...]]) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()}, str(path))
    return path


def test_the_demo_adapters_are_recognised(demo_root: Path) -> None:
    found, problems = discover_adapters(demo_root)
    assert problems == []
    by_name = {a.name: a for a in found}
    for family in (Family.SD1, Family.SD2, Family.SDXL):
        lora = by_name[f"tiny-{family.value}-lora"]
        assert (lora.kind, lora.family, lora.format, lora.rank) == (
            AdapterKind.LORA, family, AdapterFormat.DIFFUSERS, DEMO_LORA_RANK)
        assert lora.dtype == "float16" and lora.file_bytes > 0 and lora.text_encoders == 0
    kohya = by_name["tiny-sd1-lora-kohya"]
    assert (kohya.format, kohya.family, kohya.rank) == (AdapterFormat.KOHYA, Family.SD1, DEMO_LORA_RANK)
    assert (by_name["tiny-sd1-embedding"].family, by_name["tiny-sd1-embedding"].vectors) == (Family.SD1, 2)
    assert by_name["tiny-sdxl-embedding"].family is Family.SDXL
    vae = by_name["tiny-vae"]
    assert (vae.kind, vae.family, vae.latent_channels, vae.format) == (
        AdapterKind.VAE, None, 4, AdapterFormat.DIFFUSERS)
    assert [a.kind for a in found] == sorted((a.kind for a in found), key=list(AdapterKind).index)


@pytest.mark.parametrize(("dim", "family"), [(768, Family.SD1), (1024, Family.SD2), (2048, Family.SDXL),
                                             (1280, Family.SDXL_REFINER)])
def test_a_kohya_lora_family_is_its_cross_attention_width(tmp_path: Path, dim: int, family: Family) -> None:
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    te = "text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
    path = _file(tmp_path, "style", {f"{key}.lora_down.weight": (8, dim), f"{key}.lora_up.weight": (320, 8),
                                     f"lora_te1_{te}": (8, 768), f"lora_te2_{te}": (8, 1280)})
    info = inspect_adapter(path, AdapterKind.LORA)
    assert (info.family, info.format, info.rank, info.text_encoders) == (family, AdapterFormat.KOHYA, 8, 2)


def test_a_peft_lora_with_both_text_encoders(tmp_path: Path) -> None:
    te = "text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"
    path = _file(tmp_path, "xl", {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
                                  (16, 2048), f"text_encoder.{te}": (16, 768), f"text_encoder_2.{te}": (16, 1280)})
    info = inspect_adapter(path, AdapterKind.LORA)
    assert (info.family, info.format, info.rank, info.text_encoders) == (Family.SDXL, AdapterFormat.DIFFUSERS, 16, 2)


@pytest.mark.parametrize(("shapes", "match"), [
    ({"lora_unet_x_attn2_to_k.hada_w1_a": (4, 768)}, "LyCORIS"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "not a LoRA"),
    ({"lora_unet_x_attn1_to_q.lora_down.weight": (4, 320)}, "cannot be told"),
    ({"lora_unet_x_attn2_to_k.lora_down.weight": (4, 512)}, "dim 512; supported: 768"),
])
def test_unusable_loras_are_refused_naming_the_file(tmp_path: Path, shapes: dict, match: str) -> None:
    path = _file(tmp_path, "bad", shapes)
    with pytest.raises(AdapterFileError, match=match) as info:
        inspect_adapter(path, AdapterKind.LORA)
    assert str(path) in info.value.message and info.value.param == "lora" and info.value.status_code == 422


@pytest.mark.parametrize(("shapes", "family", "vectors", "fmt"), [
    ({"emb_params": (3, 1024)}, Family.SD2, 3, AdapterFormat.A1111),
    ({"<cat-toy>": (768,)}, Family.SD1, 1, AdapterFormat.DIFFUSERS),
])
def test_embeddings(tmp_path: Path, shapes: dict, family: Family, vectors: int, fmt: AdapterFormat) -> None:
    info = inspect_adapter(_file(tmp_path, "emb", shapes), AdapterKind.EMBEDDING)
    assert (info.family, info.vectors, info.format) == (family, vectors, fmt)


def test_an_embedding_of_an_unknown_width_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match=r"shape \[2, 512\]"):
        inspect_adapter(_file(tmp_path, "emb", {"emb_params": (2, 512)}), AdapterKind.EMBEDDING)


def test_a_vae_in_the_original_layout(tmp_path: Path) -> None:
    path = _file(tmp_path, "vae", {"first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
                                   "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3)})
    info = inspect_adapter(path, AdapterKind.VAE)
    assert (info.format, info.latent_channels, info.family) == (AdapterFormat.ORIGINAL, 4, None)
    with pytest.raises(AdapterFileError, match="not a VAE"):
        inspect_adapter(_file(tmp_path, "nope", {"emb_params": (2, 768)}), AdapterKind.VAE)


def test_bad_files_are_listed_as_problems_and_the_rest_still_found(tmp_path: Path) -> None:
    write_demo_adapters(tmp_path)
    (tmp_path / "loras" / "old.ckpt").write_bytes(b"\x80\x04pickle")
    (tmp_path / "loras" / "broken.safetensors").write_bytes(b"\xff" * 16)
    found, problems = discover_adapters(tmp_path)
    assert len(found) == 7
    assert {Path(p.path).name: p.kind for p in problems} == {"old.ckpt": AdapterKind.LORA,
                                                             "broken.safetensors": AdapterKind.LORA}
    assert any("pickle" in p.error for p in problems)
    with pytest.raises(PickleCheckpointError) as info:
        inspect_adapter(tmp_path / "loras" / "old.ckpt", AdapterKind.LORA)
    assert info.value.param == "lora"
    with pytest.raises(CorruptCheckpointError):
        inspect_adapter(tmp_path / "loras" / "broken.safetensors", AdapterKind.LORA)
