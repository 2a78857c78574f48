"""The single-file writer is an exact inverse of diffusers' single-file loader, for every family."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from serve_app.model.families import UNET_FAMILIES, Family
from serve_app.model.loading.single_file_writer import (
    METADATA_DIFFUSERS_CONFIG,
    METADATA_FAMILY,
    TEXT_ENCODER_LAYOUTS,
    materialize_config_dir,
    original_state_dict,
    write_single_file,
)

TEXT_PREFIXES = {
    Family.SD1: ("cond_stage_model.transformer.text_model.",),
    Family.SD2: ("cond_stage_model.model.",),
    Family.SDXL: ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."),
    Family.SDXL_REFINER: ("conditioner.embedders.0.model.",),
}
CROSS_ATTENTION_DIM = {Family.SD1: 768, Family.SD2: 1024, Family.SDXL: 2048, Family.SDXL_REFINER: 1280}
MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _pipeline_class(family: Family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    return {
        Family.SD1: StableDiffusionPipeline,
        Family.SD2: StableDiffusionPipeline,
        Family.SDXL: StableDiffusionXLPipeline,
        Family.SDXL_REFINER: StableDiffusionXLImg2ImgPipeline,
    }[family]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", list(UNET_FAMILIES), ids=lambda f: f.value)
def test_demo_pipeline_round_trips_through_single_file(family: Family, tmp_path: Path) -> None:
    from serve_app.model.demo.architectures import build_demo_pipeline

    pipe = build_demo_pipeline(family)
    path = tmp_path / f"{family.value}.safetensors"
    write_single_file(pipe, family, path)

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
        attn2 = [k for k in keys if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")]
        assert attn2
        assert {f.get_slice(k).get_shape()[1] for k in attn2} == {CROSS_ATTENTION_DIM[family]}

    assert metadata[METADATA_FAMILY] == family.value
    assert dtypes == {"F16"}
    prefixes = ("model.diffusion_model.", "first_stage_model.", *TEXT_PREFIXES[family])
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in keys), prefix
    assert all(k.startswith(prefixes) for k in keys)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    if family.is_sdxl:
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
        assert f"{TEXT_PREFIXES[family][-1]}text_projection" in keys
        assert f"{TEXT_PREFIXES[family][-1]}transformer.resblocks.0.attn.in_proj_weight" in keys

    config_dir = materialize_config_dir(metadata[METADATA_DIFFUSERS_CONFIG], tmp_path / "config")
    assert (config_dir / "model_index.json").is_file()
    loaded = _pipeline_class(family).from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch.float32
    )

    for name in MODEL_COMPONENTS:
        original, reloaded = getattr(pipe, name, None), getattr(loaded, name, None)
        if original is None:
            assert reloaded is None, name
            continue
        want, got = original.state_dict(), reloaded.state_dict()
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            assert torch.equal(got[key], value.to(torch.float16).float()), f"{name}.{key}"

    for name in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is not None:
            prompt = "a tiny red fox, 4k"
            assert getattr(loaded, name)(prompt).input_ids == getattr(pipe, name)(prompt).input_ids
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.scheduler.config.beta_schedule == pipe.scheduler.config.beta_schedule


def test_materialize_config_dir_rejects_paths_outside_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        materialize_config_dir(json.dumps({"../evil.json": "{}"}), tmp_path)
    with pytest.raises(ValueError):
        materialize_config_dir(json.dumps({"/etc/evil.json": "{}"}), tmp_path)


# Real-sized architectures, built on the meta device (no memory, no weights): checks the layout that real
# A1111/ComfyUI checkpoints use, by feeding the written keys back through diffusers' own converters.
_REAL_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
)
_SD_UNET = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
)
_SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    projection_class_embeddings_input_dim=2816,
)
_REFINER_UNET = dict(
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24),
    cross_attention_dim=1280,
    projection_class_embeddings_input_dim=2560,
)
_XL_COMMON = dict(layers_per_block=2, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256)
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   hidden_act="gelu")
_OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      hidden_act="gelu", projection_dim=1280)
REAL = {
    Family.SD1: (dict(_SD_UNET, cross_attention_dim=768, attention_head_dim=8), {"text_encoder": _CLIP_L}, "v1"),
    Family.SD2: (
        dict(_SD_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
        {"text_encoder": _OPENCLIP_H},
        "v2",
    ),
    Family.SDXL: (dict(_SDXL_UNET, **_XL_COMMON), {"text_encoder": _CLIP_L, "text_encoder_2": _OPENCLIP_BIGG},
                  "xl_base"),
    Family.SDXL_REFINER: (dict(_REFINER_UNET, **_XL_COMMON), {"text_encoder_2": _OPENCLIP_BIGG}, "xl_refiner"),
}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("family", list(UNET_FAMILIES), ids=lambda f: f.value)
def test_real_sized_layout_matches_diffusers_single_file_converters(family: Family) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config, encoder_configs, model_type = REAL[family]
    with torch.device("meta"):
        pipe = SimpleNamespace(unet=UNet2DConditionModel(**unet_config), vae=AutoencoderKL(**_REAL_VAE))
        for name, config in encoder_configs.items():
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            setattr(pipe, name, cls(CLIPTextConfig(vocab_size=49408, **config)))

    checkpoint = original_state_dict(pipe, family)

    assert infer_diffusers_model_type(checkpoint) == model_type
    if family is Family.SD1:
        assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in checkpoint
    assert _shapes(convert_ldm_unet_checkpoint(checkpoint, pipe.unet.config)) == _shapes(pipe.unet.state_dict())
    assert _shapes(convert_ldm_vae_checkpoint(checkpoint, pipe.vae.config)) == _shapes(pipe.vae.state_dict())
    for name, (prefix, layout) in TEXT_ENCODER_LAYOUTS[family].items():
        encoder = getattr(pipe, name)
        if layout == "clip":
            converted = convert_ldm_clip_checkpoint(checkpoint)
        else:
            converted = convert_open_clip_checkpoint(encoder, checkpoint, prefix=prefix)
        if not hasattr(encoder, "text_model"):  # transformers >= 5.6 flattens CLIPTextModel
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        assert _shapes(converted) == _shapes(encoder.state_dict()), name
