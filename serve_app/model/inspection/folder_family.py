"""Which family a diffusers folder is, from its JSON configs (`_class_name`, the denoiser's config): a UNet
pipeline by its cross-attention width, SD3 and FLUX by their transformer's class and shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from serve_app.core.errors import NotACheckpointError, UnsupportedCheckpointError
from serve_app.core.strict_model import StrictModel
from serve_app.model.families import INPAINTING_IN_CHANNELS, Family
from serve_app.model.inspection.family_detection import PredictionType, sd3_variant

# diffusers component folder -> the component name `family_detection` uses, per family
_COMPONENT_NAMES: dict[Family, dict[str, str]] = {
    Family.SD1: {"text_encoder": "clip_l"},
    Family.SD2: {"text_encoder": "openclip_h"},
    Family.SDXL: {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    Family.SDXL_REFINER: {"text_encoder_2": "clip_g"},
    Family.SD3: {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    Family.FLUX: {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}
_TRANSFORMERS = {"SD3Transformer2DModel": Family.SD3, "FluxTransformer2DModel": Family.FLUX}


class FolderFamily(StrictModel):
    family: Family = Field(description="Detected family.")
    variant: str = Field(description="Finer name (see family_detection).")
    context_dim: int = Field(description="Text context width of the denoiser.")
    in_channels: int = Field(description="Denoiser input width.")
    hidden_size: int = Field(description="UNet first-level channels or transformer width.")
    inpainting: bool = Field(description="Inpainting / fill variant.")
    prediction_type: PredictionType | None = Field(None, description="From the scheduler config, when it says.")
    component_names: dict[str, str] = Field(description="Component folder -> component name.")


def _scheduler_prediction(path: Path) -> PredictionType | None:
    try:
        value = json.loads((path / "scheduler" / "scheduler_config.json").read_text()).get("prediction_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if value in ("epsilon", "v_prediction") else None


def folder_family(path: Path, model_index: dict, read_json: Callable[[Path], dict],
                  family_for_dim: Callable[[Path, int], Family]) -> FolderFamily:
    """The family of the diffusers folder `path` whose model_index.json is `model_index`."""
    if (path / "unet" / "config.json").is_file():
        cfg = read_json(path / "unet" / "config.json")
        dim = cfg.get("cross_attention_dim")
        if isinstance(dim, list):
            dim = dim[0]
        if not isinstance(dim, int):
            raise NotACheckpointError(f"{path / 'unet' / 'config.json'}: no integer cross_attention_dim",
                                      param="checkpoint")
        family = family_for_dim(path, dim)
        in_channels = cfg.get("in_channels", 4)
        prediction = _scheduler_prediction(path)
        variant = {Family.SDXL: "sdxl-base"}.get(family, family.value)
        variant += ("-inpaint" if in_channels == INPAINTING_IN_CHANNELS else "")
        variant += ("-v" if prediction == "v_prediction" else "")
        return FolderFamily(family=family, variant=variant, context_dim=dim, in_channels=in_channels,
                            hidden_size=cfg.get("block_out_channels", [320])[0],
                            inpainting=in_channels == INPAINTING_IN_CHANNELS, prediction_type=prediction,
                            component_names=_COMPONENT_NAMES[family])
    if not (path / "transformer" / "config.json").is_file():
        raise NotACheckpointError(
            f"{path}: not a checkpoint: a diffusers folder needs model_index.json and unet/config.json "
            "(or transformer/config.json)", param="checkpoint")
    cfg = read_json(path / "transformer" / "config.json")
    class_name = str(cfg.get("_class_name"))
    found = _TRANSFORMERS.get(class_name)
    if found is None:
        raise UnsupportedCheckpointError(
            f"{path}: unsupported checkpoint: pipeline {model_index.get('_class_name')!r} with a {class_name!r} "
            f"transformer; supported transformers: {', '.join(_TRANSFORMERS)}", param="checkpoint")
    family = found
    width = int(cfg.get("num_attention_heads", 0)) * int(cfg.get("attention_head_dim", 0))
    in_channels = int(cfg.get("in_channels", 16 if family is Family.SD3 else 64))
    if family is Family.FLUX:
        fill = in_channels == 384 or model_index.get("_class_name") == "FluxFillPipeline"
        variant = "flux-fill" if fill else "flux-dev" if cfg.get("guidance_embeds") else "flux-schnell"
    else:
        fill = False
        variant = sd3_variant(int(cfg.get("num_layers", 0)), bool(cfg.get("dual_attention_layers")),
                              bool(cfg.get("qk_norm")))
    return FolderFamily(family=family, variant=variant, context_dim=int(cfg.get("joint_attention_dim", 4096)),
                        in_channels=in_channels, hidden_size=width, inpainting=fill,
                        component_names=_COMPONENT_NAMES[family])
