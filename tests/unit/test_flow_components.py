"""Component files are told apart from their tensors and checked against the mode's family (a config error
naming the file and both families); the merged facts serve a transformer-only FLUX file; the VRAM estimate
counts the T5 encoder in the device dtype; family defaults and the family rules of a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.mode_families import inspect_mode, with_family
from serve_app.config.modes_file import ModeComponents, ModeConfig
from serve_app.core.errors import ConfigError, RequestValidationError
from serve_app.model.components.component_files import inspect_component
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from serve_app.model.inspection.vram_estimate import estimate_vram
from tests.unit.family_headers import CLIP_L, T5, flux_bfl, flux_comfy_all_in_one, write_header_file

T5_XXL_PARAMS = 4_762_310_656  # google/t5-v1_1-xxl encoder


def _flux_parts(root: Path) -> None:
    write_header_file(root / "flux1-schnell.safetensors", flux_bfl(guidance=False))
    write_header_file(root / "clip_l.safetensors", CLIP_L)  # ComfyUI keeps `text_model.`
    write_header_file(root / "t5xxl_fp8.safetensors", T5, dtype="F8_E4M3")
    write_header_file(root / "ae.safetensors", {"decoder.conv_in.weight": [512, 16, 3, 3],
                                                "encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3]})
    write_header_file(root / "sd_vae.safetensors", {"decoder.conv_in.weight": [512, 4, 3, 3]})


@pytest.mark.parametrize(("name", "kind", "families"), [
    ("clip_l.safetensors", "clip_l", {"sd1", "sdxl", "sd3", "flux"}),
    ("t5xxl_fp8.safetensors", "t5xxl", {"sd3", "flux"}),
    ("ae.safetensors", "vae", {"sd3", "flux"}),
    ("sd_vae.safetensors", "vae", {"sd1", "sd2", "sdxl", "sdxl-refiner"}),
    ("flux1-schnell.safetensors", "transformer", {"flux"}),
])
def test_component_files_are_told_from_their_tensors(tmp_path: Path, name: str, kind: str, families: set) -> None:
    _flux_parts(tmp_path)
    component = inspect_component(tmp_path / name)
    assert component.kind == kind and {f.value for f in component.families} == families


def test_a_transformer_only_flux_file_with_its_components_is_servable(tmp_path: Path) -> None:
    _flux_parts(tmp_path)
    mode = ModeConfig(name="schnell", checkpoint="flux1-schnell.safetensors", components=ModeComponents(
        text_encoders=["clip_l.safetensors", "t5xxl_fp8.safetensors"], vae="ae.safetensors"))
    alone = inspect_checkpoint(tmp_path / "flux1-schnell.safetensors")
    info, files = inspect_mode(mode, tmp_path / "flux1-schnell.safetensors", tmp_path)
    assert alone.missing_components and info.missing_components == [] and len(files) == 3
    assert set(info.component_files) == {"clip_l", "t5xxl", "vae"}
    # no T5 tokenizer and no configs in a hub file: the mode must name a diffusers folder for them
    assert info.serving_refusal is not None and "components: {config" in info.serving_refusal
    assert info.param_count == alone.param_count + sum(f.param_count for f in files)
    defaults = with_family(mode, info).defaults
    assert (defaults.steps, defaults.guidance_scale, defaults.width) == (4, 0.0, 1024)


@pytest.mark.parametrize(("components", "words"), [
    (ModeComponents(vae="sd_vae.safetensors"), ("sd_vae.safetensors", "4 latent channels", "flux")),
    (ModeComponents(text_encoders=["ae.safetensors"]), ("ae.safetensors", "not a text encoder")),
    (ModeComponents(text_encoders=["clip_l.safetensors", "clip_l.safetensors"]), ("second clip_l",)),
])
def test_component_files_of_another_family_are_refused(tmp_path: Path, components: ModeComponents,
                                                       words: tuple) -> None:
    _flux_parts(tmp_path)
    mode = ModeConfig(name="schnell", checkpoint="flux1-schnell.safetensors", components=components)
    with pytest.raises(ConfigError) as err:
        inspect_mode(mode, tmp_path / "flux1-schnell.safetensors", tmp_path)
    assert all(w in err.value.message for w in words) and "schnell" in err.value.message


def test_a_t5_file_on_an_sdxl_mode_names_both_families(tmp_path: Path) -> None:
    from tests.unit.family_headers import sdxl_all_in_one

    write_header_file(tmp_path / "xl.safetensors", sdxl_all_in_one())
    write_header_file(tmp_path / "t5.safetensors", T5)
    mode = ModeConfig(name="xl", checkpoint="xl.safetensors",
                      components=ModeComponents(text_encoders=["t5.safetensors"]))
    with pytest.raises(ConfigError) as err:
        inspect_mode(mode, tmp_path / "xl.safetensors", tmp_path)
    assert "T5-XXL" in err.value.message and "sd3, flux" in err.value.message and "is sdxl" in err.value.message


def test_vram_estimate_counts_fp8_t5_in_the_device_dtype(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "flux1-dev-fp8.safetensors", flux_comfy_all_in_one(), dtype="F8_E4M3")
    info = inspect_checkpoint(path)
    fp16 = estimate_vram(info, "fp16")
    assert info.dtype == "float8_e4m3fn" and fp16.weights_bytes == info.param_count * 2  # upcast on load
    assert pytest.approx(9.5, abs=0.1) == T5_XXL_PARAMS * 2 / 1e9  # T5-XXL alone in fp16
    assert estimate_vram(info, "fp32").weights_bytes == 2 * fp16.weights_bytes
    assert fp16.working_bytes > estimate_vram(info, "fp16", 512, 512).working_bytes


def test_a_flow_mode_refuses_unet_samplers_and_clip_skip() -> None:
    from serve_app.model.inspection.checkpoint_inspect import CheckpointFormat, CheckpointInfo

    info = CheckpointInfo(path="/m", format=CheckpointFormat.DIFFUSERS, family=Family.FLUX, cross_attention_dim=4096,
                          inpainting=False, unet_in_channels=64, dtype="bfloat16", param_count=1, param_bytes=2,
                          file_bytes=2, unet_base_channels=3072, vae_decoder_channels=128, variant="flux-dev")
    with pytest.raises(ConfigError) as err:
        with_family(ModeConfig(name="f", checkpoint="m", scheduler="dpmpp_2m"), info)
    assert "dpmpp_2m" in err.value.message and "flux" in err.value.message
    with pytest.raises(ConfigError):
        with_family(ModeConfig(name="f", checkpoint="m", defaults={"clip_skip": 2}), info)
    mode = with_family(ModeConfig(name="f", checkpoint="m", defaults={"steps": 9}), info)
    assert (mode.defaults.steps, mode.defaults.guidance_scale) == (9, 3.5)  # the file's choice kept
    req = resolve_request(Txt2ImgRequest(prompt="a \\(cat\\)"), mode, Family.FLUX, variant="flux-dev")
    assert req.prompt == "a \\(cat\\)" and req.scheduler == "euler"
    for body, param in ((Txt2ImgRequest(prompt="x", negative_prompt="y"), "negative_prompt"),
                        (Txt2ImgRequest(prompt="(x:1.2)"), "prompt"), (Txt2ImgRequest(prompt="x", clip_skip=2),
                                                                       "clip_skip")):
        with pytest.raises(RequestValidationError) as refused:
            resolve_request(body, mode, Family.FLUX, variant="flux-dev")
        assert refused.value.param == param and "flux" in refused.value.message
