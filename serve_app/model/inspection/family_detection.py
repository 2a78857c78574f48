"""Which family a checkpoint is, from its safetensors header alone (key names and shapes, never tensor data).

Signatures (the denoiser's keys, found with or without a `model.diffusion_model.` / `diffusion_model.` prefix):

- UNet: `input_blocks.0.0.weight` + `attn2.to_k` (original) or `conv_in` + `down_blocks` (diffusers):
  sd1 / sd2 / sdxl / sdxl-refiner by cross-attention width 768 / 1024 / 2048 / 1280; in_channels 9 = inpainting;
  v-prediction from the `v_pred` marker key or `modelspec.prediction_type`, zero-terminal-SNR from `ztsnr`.
- SD3 MMDiT: `joint_blocks.N` (original) or `transformer_blocks.N` + `pos_embed.proj` (diffusers): sd3-medium,
  sd3.5-medium (dual attention `attn2`), sd3.5-large (depth 38, qk-norm).
- FLUX: `double_blocks.N` + `single_blocks.N` (BFL original) or `transformer_blocks` + `single_transformer_blocks`
  (diffusers): guidance embedder = dev, none = schnell; input width 384 = fill, 128 = control.

Anything else is an "unsupported" verdict (`family` None) whose `reason` says what was found.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from serve_app.core.strict_model import StrictModel
from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM, INPAINTING_IN_CHANNELS, REQUIRED_COMPONENTS, Family
from serve_app.model.inspection.safetensors_header import TensorHeader

DENOISER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "")
# Where each component's tensors live in an all-in-one file (A1111 / ComfyUI / SAI layouts).
COMPONENT_PREFIXES: dict[str, tuple[str, ...]] = {
    "vae": ("first_stage_model.", "vae."),
    "clip_l": ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.", "text_encoders.clip_l."),
    "openclip_h": ("cond_stage_model.model.",),
    "clip_g": ("conditioner.embedders.1.model.", "text_encoders.clip_g."),
    "t5xxl": ("text_encoders.t5xxl.",),
}
V_PRED_MARKER, ZTSNR_MARKER = "v_pred", "ztsnr"
# Relatives of FLUX.1 whose files also hold double/single blocks: told apart by a key FLUX.1 lacks.
FLUX_RELATIVES = {
    "single_stream_modulation.lin.weight": "FLUX.2",
    "early_stream_modulations.image.lin.weight": "FLUX.3",
    "distilled_guidance_layer.in_proj.weight": "Chroma (a FLUX.1-schnell derivative without CLIP)",
}
PredictionType = Literal["epsilon", "v_prediction"]


class FamilyVerdict(StrictModel):
    """What a header says the checkpoint is; `family` None means unsupported, with `reason`."""

    family: Family | None = Field(description="Detected family; None: unsupported (see `reason`).")
    variant: str = Field(description="Finer name: sd2-v, sdxl-inpaint, sd3.5-large, flux-dev, flux-fill, ...")
    layout: Literal["original", "diffusers", "unknown"] = Field(
        description="Denoiser key names: `original` (LDM/SAI/BFL, as A1111 and ComfyUI save them) or `diffusers`.")
    prefix: str = Field("", description="Key prefix of the denoiser (`model.diffusion_model.` in ComfyUI/A1111 files).")
    in_channels: int = Field(0, description="Input width of the denoiser (UNet channels; packed FLUX features).")
    context_dim: int = Field(0, description="Width of the text context the denoiser attends to.")
    hidden_size: int = Field(0, description="UNet first-level channels, or the transformer's width.")
    depth: int = Field(0, description="Transformer blocks (MMDiT joint blocks; FLUX double+single); 0 for a UNet.")
    inpainting: bool = Field(False, description="An inpainting / fill variant (extra mask and image inputs).")
    prediction_type: PredictionType | None = Field(
        None, description="From the file's markers (`v_pred` key, `modelspec.prediction_type`); None: family default.")
    zero_terminal_snr: bool = Field(False, description="The file carries the `ztsnr` marker.")
    components: list[str] = Field(default_factory=list, description="Components the file contains.")
    missing_components: list[str] = Field(default_factory=list, description="Components the family needs that the "
                                          "file lacks (to come from separate files).")
    reason: str | None = Field(None, description="Why the file is unsupported (family None).")


def _find_prefix(keys: Mapping[str, TensorHeader], suffix: str) -> str | None:
    for prefix in DENOISER_PREFIXES:
        if prefix + suffix in keys:
            return prefix
    return None


def _count_blocks(keys: Mapping[str, TensorHeader], stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def _components(tensors: Mapping[str, TensorHeader], family: Family, denoiser: str) -> tuple[list[str], list[str]]:
    present = [denoiser] + [name for name, prefixes in COMPONENT_PREFIXES.items()
                            if any(k.startswith(prefixes) for k in tensors)]
    if family is Family.SDXL_REFINER and "conditioner.embedders.0.model.text_projection" in tensors:
        present.append("clip_g")  # the refiner's only encoder is OpenCLIP-G, at embedders.0
    present = sorted(set(present), key=present.index)
    return present, [c for c in REQUIRED_COMPONENTS[family] if c not in present]


def _markers(tensors: Mapping[str, TensorHeader], metadata: Mapping[str, str]) -> tuple[PredictionType | None, bool]:
    declared = metadata.get("modelspec.prediction_type", "").lower()
    prediction: PredictionType | None = None
    if V_PRED_MARKER in tensors or declared in ("v", "v_prediction", "v-prediction"):
        prediction = "v_prediction"
    elif declared in ("epsilon", "eps"):
        prediction = "epsilon"
    return prediction, ZTSNR_MARKER in tensors


def _unet(tensors: Mapping[str, TensorHeader], metadata: Mapping[str, str], prefix: str, layout: str,
          conv_in: TensorHeader) -> FamilyVerdict:
    to_k = next((t for k, t in tensors.items() if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        return _unsupported(f"a UNet ({layout} layout) without cross-attention (an upscaler or unconditional "
                            "model, not text-to-image)", layout=layout)
    dim = to_k.shape[1]
    family = FAMILY_BY_CROSS_ATTENTION_DIM.get(dim)
    if family is None:
        known = ", ".join(f"{d} ({f.value})" for d, f in FAMILY_BY_CROSS_ATTENTION_DIM.items())
        return _unsupported(f"UNet cross_attention_dim is {dim}; supported: {known}", layout=layout)
    in_channels = conv_in.shape[1]
    if in_channels not in (4, INPAINTING_IN_CHANNELS):
        return _unsupported(f"{family.value} UNet with in_channels {in_channels} (4 = txt2img/img2img, 9 = "
                            "inpainting; 8 is an instruct-pix2pix-style edit model): not served", layout=layout)
    prediction, ztsnr = _markers(tensors, metadata)
    inpainting = in_channels == INPAINTING_IN_CHANNELS
    variant = {Family.SDXL: "sdxl-base"}.get(family, family.value)
    variant += "-inpaint" if inpainting else ""
    variant += "-v" if prediction == "v_prediction" else ""
    present, missing = _components(tensors, family, "unet")
    return FamilyVerdict(family=family, variant=variant, layout=layout, prefix=prefix,
                         in_channels=in_channels, context_dim=dim, hidden_size=conv_in.shape[0],
                         inpainting=inpainting, prediction_type=prediction, zero_terminal_snr=ztsnr,
                         components=present, missing_components=missing)


def sd3_variant(depth: int, dual_attention: bool, qk_norm: bool) -> str:
    if depth == 38 and qk_norm:
        return "sd3.5-large"
    if depth == 24 and dual_attention:
        return "sd3.5-medium"
    if depth == 24 and not qk_norm:
        return "sd3-medium"
    return f"sd3-depth{depth}" + ("-dual-attention" if dual_attention else "")


def _sd3(tensors: Mapping[str, TensorHeader], metadata: Mapping[str, str], prefix: str, layout: str) -> FamilyVerdict:
    if layout == "original":
        patch, context = tensors[prefix + "x_embedder.proj.weight"], tensors.get(prefix + "context_embedder.weight")
        depth = _count_blocks(tensors, prefix + "joint_blocks")
        dual = any(k.startswith(prefix + "joint_blocks.") and ".x_block.attn2." in k for k in tensors)
        qk_norm = any(k.startswith(prefix + "joint_blocks.") and k.endswith("x_block.attn.ln_q.weight")
                      for k in tensors)
    else:
        patch, context = tensors[prefix + "pos_embed.proj.weight"], tensors.get(prefix + "context_embedder.weight")
        depth = _count_blocks(tensors, prefix + "transformer_blocks")
        dual = any(k.startswith(prefix + "transformer_blocks.") and ".attn2." in k for k in tensors)
        qk_norm = any(k.startswith(prefix + "transformer_blocks.") and k.endswith("attn.norm_q.weight")
                      for k in tensors)
    prediction, ztsnr = _markers(tensors, metadata)
    present, missing = _components(tensors, Family.SD3, "transformer")
    return FamilyVerdict(family=Family.SD3, variant=sd3_variant(depth, dual, qk_norm), layout=layout,
                         prefix=prefix, in_channels=patch.shape[1], context_dim=context.shape[1] if context else 0,
                         hidden_size=patch.shape[0], depth=depth, prediction_type=prediction, zero_terminal_snr=ztsnr,
                         components=present, missing_components=missing)


def _flux(tensors: Mapping[str, TensorHeader], prefix: str, layout: str) -> FamilyVerdict:
    if layout == "original":
        img_in, txt_in = tensors[prefix + "img_in.weight"], tensors.get(prefix + "txt_in.weight")
        guidance = prefix + "guidance_in.in_layer.weight" in tensors
        depth = _count_blocks(tensors, prefix + "double_blocks") + _count_blocks(tensors, prefix + "single_blocks")
    else:
        img_in, txt_in = tensors[prefix + "x_embedder.weight"], tensors.get(prefix + "context_embedder.weight")
        guidance = prefix + "time_text_embed.guidance_embedder.linear_1.weight" in tensors
        depth = (_count_blocks(tensors, prefix + "transformer_blocks")
                 + _count_blocks(tensors, prefix + "single_transformer_blocks"))
    in_features = img_in.shape[1]
    if in_features == 64:
        variant = "flux-dev" if guidance else "flux-schnell"
    elif in_features == 384:
        variant = "flux-fill"
    elif in_features == 128:
        variant = "flux-control"
    else:
        return _unsupported(f"a FLUX transformer with input width {in_features} (64 = dev/schnell, 384 = fill, "
                            "128 = canny/depth control)", layout=layout)
    present, missing = _components(tensors, Family.FLUX, "transformer")
    return FamilyVerdict(family=Family.FLUX, variant=variant, layout=layout, prefix=prefix,
                         in_channels=in_features, context_dim=txt_in.shape[1] if txt_in else 0,
                         hidden_size=img_in.shape[0], depth=depth, inpainting=variant == "flux-fill",
                         components=present, missing_components=missing)


def _unsupported(reason: str, layout: str = "unknown") -> FamilyVerdict:
    return FamilyVerdict(family=None, variant="unsupported", layout=layout, reason=reason)


def _what_was_found(tensors: Mapping[str, TensorHeader]) -> str:
    if not tensors:
        return "the file holds no tensors"
    tops = Counter(re.split(r"[._]", k, maxsplit=1)[0] for k in tensors)
    listed = ", ".join(f"{name} ({n})" for name, n in tops.most_common(6))
    return f"{len(tensors)} tensors, by first key part: {listed}"


def detect_family(tensors: Mapping[str, TensorHeader], metadata: Mapping[str, str] | None = None) -> FamilyVerdict:
    """The family verdict of a safetensors header (`read_safetensors_header`'s tensors and metadata)."""
    metadata = metadata or {}
    if (prefix := _find_prefix(tensors, "input_blocks.0.0.weight")) is not None:
        return _unet(tensors, metadata, prefix, "original", tensors[prefix + "input_blocks.0.0.weight"])
    if (prefix := _find_prefix(tensors, "joint_blocks.0.x_block.attn.qkv.weight")) is not None \
            and prefix + "x_embedder.proj.weight" in tensors:
        return _sd3(tensors, metadata, prefix, "original")
    for marker, relative in FLUX_RELATIVES.items():
        if _find_prefix(tensors, marker) is not None:
            return _unsupported(f"a {relative} transformer (its `{marker}`): a different architecture from "
                                "FLUX.1, not served", layout="original")
    if (prefix := _find_prefix(tensors, "double_blocks.0.img_attn.qkv.weight")) is not None \
            and prefix + "img_in.weight" in tensors:
        return _flux(tensors, prefix, "original")
    if (prefix := _find_prefix(tensors, "single_transformer_blocks.0.proj_mlp.weight")) is not None \
            and prefix + "x_embedder.weight" in tensors:
        return _flux(tensors, prefix, "diffusers")
    if (prefix := _find_prefix(tensors, "pos_embed.proj.weight")) is not None \
            and prefix + "transformer_blocks.0.attn.to_q.weight" in tensors:
        return _sd3(tensors, metadata, prefix, "diffusers")
    if (prefix := _find_prefix(tensors, "conv_in.weight")) is not None \
            and any(k.startswith(prefix + "down_blocks.") for k in tensors):
        return _unet(tensors, metadata, prefix, "diffusers", tensors[prefix + "conv_in.weight"])
    return _unsupported("no denoiser found: no UNet (`input_blocks` / `down_blocks`), SD3 MMDiT (`joint_blocks`) "
                        f"or FLUX (`double_blocks` + `single_blocks`) tensors; {_what_was_found(tensors)}")
