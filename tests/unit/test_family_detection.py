"""Family detection from header-only fixtures: every family in the original (A1111/SAI/BFL), ComfyUI
(`model.diffusion_model.` prefix) and diffusers key layouts, markers, fp8, and unknown layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.core.errors import NotACheckpointError, UnsupportedCheckpointError
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from serve_app.model.inspection.family_detection import detect_family
from tests.unit.family_headers import (
    CLIP_L,
    T5,
    VAE,
    flux_bfl,
    flux_comfy_all_in_one,
    flux_diffusers,
    headers,
    prefixed,
    sd1_all_in_one,
    sd3_diffusers,
    sd3_mmdit,
    sd_unet,
    sdxl_all_in_one,
    write_header_file,
)

COMFY = "model.diffusion_model."


@pytest.mark.parametrize(("shapes", "family", "variant"), [
    (sd1_all_in_one(), Family.SD1, "sd1"),
    (sd1_all_in_one(in_channels=9), Family.SD1, "sd1-inpaint"),
    (prefixed(COMFY, sd_unet(1024)), Family.SD2, "sd2"),
    (sdxl_all_in_one(), Family.SDXL, "sdxl-base"),
    (sdxl_all_in_one(1280), Family.SDXL_REFINER, "sdxl-refiner"),
    (prefixed(COMFY, sd_unet(2048, in_channels=9, sdxl=True)), Family.SDXL, "sdxl-base-inpaint"),
], ids=["sd1", "sd1-inpaint", "sd2", "sdxl", "sdxl-refiner", "sdxl-inpaint"])
def test_unet_families(shapes: dict, family: Family, variant: str) -> None:
    verdict = detect_family(headers(shapes))
    assert (verdict.family, verdict.variant, verdict.layout) == (family, variant, "original")
    assert verdict.inpainting is variant.endswith("inpaint")


def test_unet_components_of_all_in_one_and_unet_only_files() -> None:
    full = detect_family(headers(sdxl_all_in_one()))
    assert full.components == ["unet", "vae", "clip_l", "clip_g"] and full.missing_components == []
    refiner = detect_family(headers(sdxl_all_in_one(1280)))
    assert refiner.components == ["unet", "vae", "clip_g"] and refiner.missing_components == []
    bare = detect_family(headers(sd_unet(768)))  # a UNet-only file without any prefix
    assert bare.family is Family.SD1 and bare.prefix == "" and bare.missing_components == ["vae", "clip_l"]


def test_diffusers_unet_file() -> None:
    shapes = {"conv_in.weight": [320, 4, 3, 3],
              "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": [320, 1024]}
    verdict = detect_family(headers(shapes))
    assert (verdict.family, verdict.layout, verdict.context_dim) == (Family.SD2, "diffusers", 1024)


def test_sdxl_v_prediction_and_ztsnr_markers() -> None:
    shapes = sdxl_all_in_one() | {"v_pred": [0], "ztsnr": [0]}
    verdict = detect_family(headers(shapes))
    assert verdict.family is Family.SDXL and verdict.variant == "sdxl-base-v"
    assert verdict.prediction_type == "v_prediction" and verdict.zero_terminal_snr
    plain = detect_family(headers(sdxl_all_in_one()))
    assert plain.prediction_type is None and not plain.zero_terminal_snr


def test_sd2_v_prediction_from_modelspec_metadata() -> None:
    shapes = prefixed(COMFY, sd_unet(1024))
    assert detect_family(headers(shapes), {"modelspec.prediction_type": "v"}).variant == "sd2-v"
    assert detect_family(headers(shapes), {"modelspec.prediction_type": "epsilon"}).prediction_type == "epsilon"


@pytest.mark.parametrize(("shapes", "variant"), [
    (sd3_mmdit(), "sd3-medium"),
    (sd3_mmdit(dual=13, qk_norm=True), "sd3.5-medium"),
    (sd3_mmdit(depth=38, hidden=2432, qk_norm=True), "sd3.5-large"),
], ids=["sd3-medium", "sd3.5-medium", "sd3.5-large"])
@pytest.mark.parametrize("prefix", ["", COMFY], ids=["original", "comfy"])
def test_sd3_variants(shapes: dict, variant: str, prefix: str) -> None:
    verdict = detect_family(headers(prefixed(prefix, shapes)))
    assert (verdict.family, verdict.variant, verdict.prefix) == (Family.SD3, variant, prefix)
    assert verdict.context_dim == 4096 and verdict.in_channels == 16
    assert verdict.components == ["transformer"]
    assert verdict.missing_components == ["vae", "clip_l", "clip_g", "t5xxl"]


def test_sd3_diffusers_transformer_file() -> None:
    verdict = detect_family(headers(sd3_diffusers(depth=38, hidden=2432)))
    assert (verdict.family, verdict.layout, verdict.depth, verdict.hidden_size) == (Family.SD3, "diffusers", 38, 2432)


def test_sd3_all_in_one_file_has_every_component() -> None:
    shapes = (prefixed(COMFY, sd3_mmdit()) | prefixed("first_stage_model.", VAE)
              | prefixed("text_encoders.clip_l.transformer.", CLIP_L)
              | prefixed("text_encoders.clip_g.transformer.", CLIP_L)
              | prefixed("text_encoders.t5xxl.transformer.", T5))
    verdict = detect_family(headers(shapes))
    assert verdict.components == ["transformer", "vae", "clip_l", "clip_g", "t5xxl"]
    assert verdict.missing_components == []


@pytest.mark.parametrize(("build", "layout"), [(flux_bfl, "original"), (flux_diffusers, "diffusers")])
@pytest.mark.parametrize(("in_features", "guidance", "variant"), [
    (64, True, "flux-dev"), (64, False, "flux-schnell"), (384, True, "flux-fill"), (128, True, "flux-control"),
])
def test_flux_variants(build, layout: str, in_features: int, guidance: bool, variant: str) -> None:
    verdict = detect_family(headers(build(in_features=in_features, guidance=guidance)))
    assert (verdict.family, verdict.variant, verdict.layout) == (Family.FLUX, variant, layout)
    assert verdict.depth == 19 + 38 and verdict.hidden_size == 3072 and verdict.context_dim == 4096
    assert verdict.inpainting is (variant == "flux-fill")


def test_flux_transformer_only_file_lacks_its_encoders_and_vae() -> None:
    verdict = detect_family(headers(flux_bfl()))
    assert verdict.components == ["transformer"]
    assert verdict.missing_components == ["vae", "clip_l", "t5xxl"]


def test_flux_comfy_all_in_one_file() -> None:
    verdict = detect_family(headers(flux_comfy_all_in_one()))
    assert (verdict.family, verdict.variant, verdict.prefix) == (Family.FLUX, "flux-dev", COMFY)
    assert verdict.missing_components == []


def test_flux_odd_input_width_is_unsupported_with_the_width() -> None:
    verdict = detect_family(headers(flux_bfl(in_features=96)))
    assert verdict.family is None and verdict.reason is not None and "96" in verdict.reason


def test_unknown_architecture_says_what_was_found() -> None:
    shapes = {"blocks.0.attn.qkv.weight": [3072, 1024], "blocks.1.attn.qkv.weight": [3072, 1024],
              "patch_embed.proj.weight": [1024, 3, 14, 14]}
    verdict = detect_family(headers(shapes))
    assert verdict.family is None and verdict.layout == "unknown"
    assert verdict.reason is not None and "3 tensors" in verdict.reason and "blocks (2)" in verdict.reason


def test_unet_without_cross_attention_and_odd_in_channels_are_unsupported() -> None:
    no_cross = {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]}
    assert "without cross-attention" in (detect_family(headers(no_cross)).reason or "")
    pix2pix = detect_family(headers(sd1_all_in_one(in_channels=8)))
    assert pix2pix.family is None and "in_channels 8" in (pix2pix.reason or "")


# -- through inspect_checkpoint: header-only files ---------------------------------------------------------------


def test_fp8_flux_file_is_inspected(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "flux1-dev-fp8.safetensors", flux_comfy_all_in_one(), dtype="F8_E4M3")
    info = inspect_checkpoint(path)
    assert info.family is Family.FLUX and info.variant == "flux-dev" and info.dtype == "float8_e4m3fn"
    assert info.serving_refusal is not None and "components: {config" in info.serving_refusal  # no T5 tokenizer


def test_transformer_only_flux_refusal_names_the_missing_files(tmp_path: Path) -> None:
    info = inspect_checkpoint(write_header_file(tmp_path / "flux1-schnell.safetensors", flux_bfl(guidance=False)))
    assert info.variant == "flux-schnell" and info.missing_components == ["vae", "clip_l", "t5xxl"]
    assert info.serving_refusal is not None
    for part in ("flux-schnell", "T5-XXL", "CLIP-L", "VAE", "components:"):
        assert part in info.serving_refusal


def test_unet_only_sd_file_is_refused_for_its_missing_components(tmp_path: Path) -> None:
    info = inspect_checkpoint(write_header_file(tmp_path / "unet.safetensors", prefixed(COMFY, sd_unet(768))))
    assert info.family is Family.SD1 and info.serving_refusal is not None
    assert "VAE" in info.serving_refusal and "CLIP-L" in info.serving_refusal


def test_served_sdxl_v_file_carries_its_markers(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "noob-vpred.safetensors", sdxl_all_in_one() | {"v_pred": [0], "ztsnr": [0]})
    info = inspect_checkpoint(path)
    assert info.serving_refusal is None
    assert (info.prediction_type, info.zero_terminal_snr, info.variant) == ("v_prediction", True, "sdxl-base-v")


def test_unknown_file_is_not_a_checkpoint_and_names_what_it_holds(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "clip_l.safetensors", prefixed("text_model.", CLIP_L))
    with pytest.raises(NotACheckpointError) as err:
        inspect_checkpoint(path)
    assert "no denoiser found" in err.value.message and "text (1)" in err.value.message


def test_pix2pix_file_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCheckpointError) as err:
        inspect_checkpoint(write_header_file(tmp_path / "ip2p.safetensors", sd1_all_in_one(in_channels=8)))
    assert "in_channels 8" in err.value.message


@pytest.mark.parametrize(("pipeline", "transformer", "family", "variant"), [
    ("FluxPipeline", {"_class_name": "FluxTransformer2DModel", "guidance_embeds": False, "in_channels": 64,
                      "num_attention_heads": 24, "attention_head_dim": 128}, Family.FLUX, "flux-schnell"),
    ("FluxFillPipeline", {"_class_name": "FluxTransformer2DModel", "guidance_embeds": True, "in_channels": 384,
                          "num_attention_heads": 24, "attention_head_dim": 128}, Family.FLUX, "flux-fill"),
    ("StableDiffusion3Pipeline", {"_class_name": "SD3Transformer2DModel", "num_layers": 38, "qk_norm": "rms_norm",
                                  "num_attention_heads": 38, "attention_head_dim": 64}, Family.SD3, "sd3.5-large"),
])
def test_diffusers_transformer_folders(tmp_path: Path, pipeline: str, transformer: dict, family: Family,
                                       variant: str) -> None:
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    write_header_file(folder / "transformer" / "diffusion_pytorch_model.safetensors", {"x": [4, 4]})
    (folder / "text_encoder").mkdir()
    write_header_file(folder / "text_encoder" / "model.safetensors", CLIP_L)
    info = inspect_checkpoint(folder)
    assert (info.family, info.variant, info.layout) == (family, variant, "diffusers")
    assert info.components == ["clip_l", "transformer"]
    assert "vae" in info.missing_components and info.serving_refusal is not None


def test_diffusers_folder_with_an_unknown_transformer(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    with pytest.raises(UnsupportedCheckpointError) as err:
        inspect_checkpoint(folder)
    assert "PixArtTransformer2DModel" in err.value.message and "FluxTransformer2DModel" in err.value.message


def test_inpainting_single_file_is_recognised_and_refused_with_the_way_out(tmp_path: Path) -> None:
    info = inspect_checkpoint(write_header_file(tmp_path / "sd15-inpainting.safetensors", sd1_all_in_one(9)))
    assert info.variant == "sd1-inpaint" and info.serving_refusal is not None
    assert "diffusers folder" in info.serving_refusal


@pytest.mark.parametrize(("marker", "name"), [("single_stream_modulation.lin.weight", "FLUX.2"),
                                              ("distilled_guidance_layer.in_proj.weight", "Chroma")])
def test_flux_relatives_are_not_taken_for_flux1(marker: str, name: str) -> None:
    verdict = detect_family(headers(prefixed(COMFY, flux_bfl(in_features=128) | {marker: [3072, 64]})))
    assert verdict.family is None and verdict.reason is not None and name in verdict.reason


def test_real_diffusers_transformers_are_detected_from_their_own_keys() -> None:
    """Tiny real-architecture diffusers transformers (random weights): their state-dict keys and shapes."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    def header_of(model) -> dict:
        return headers({k: list(v.shape) for k, v in model.state_dict().items()})

    flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=(2, 2, 4))
    verdict = detect_family(header_of(flux))
    assert (verdict.family, verdict.variant, verdict.layout, verdict.depth) == (Family.FLUX, "flux-schnell",
                                                                                "diffusers", 3)
    sd35 = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                 pooled_projection_dim=16, out_channels=16, pos_embed_max_size=32,
                                 dual_attention_layers=(0,), qk_norm="rms_norm")
    verdict = detect_family(header_of(sd35))
    assert (verdict.family, verdict.layout, verdict.depth, verdict.context_dim) == (Family.SD3, "diffusers", 2, 32)
    assert verdict.variant == "sd3-depth2-dual-attention"
