"""Look at a checkpoint without loading it: format, family, dtype, sizes.

A single `.safetensors` file is inspected from its JSON header alone (8-byte length + JSON), so a
multi-GB file costs one small read. A diffusers folder is inspected from `model_index.json`,
`unet/config.json` and the headers of its weight files.
"""

from __future__ import annotations

import json
from collections import Counter
from enum import Enum
from pathlib import Path

from pydantic import Field

from serve_app.core.errors import (
    CheckpointNotFoundError,
    NotACheckpointError,
    PickleCheckpointError,
    UnsupportedCheckpointError,
)
from serve_app.core.strict_model import StrictModel
from serve_app.model.families import (
    FAMILY_BY_CROSS_ATTENTION_DIM,
    REQUIRED_COMPONENTS,
    Family,
    supported_dims_text,
)
from serve_app.model.inspection.family_detection import FamilyVerdict, PredictionType, detect_family
from serve_app.model.inspection.folder_family import FolderFamily, folder_family
from serve_app.model.inspection.safetensors_header import TensorHeader, parameter_count, read_safetensors_header
from serve_app.model.inspection.serving_support import serving_refusal
from serve_app.model.inspection.single_file_layout import UNET_PREFIX, VAE_PREFIX

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class CheckpointFormat(str, Enum):
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single-file"


class CheckpointInfo(StrictModel):
    """What a checkpoint is, read from its metadata only."""

    path: str = Field(description="Absolute path of the checkpoint.")
    format: CheckpointFormat = Field(description="`diffusers` folder or original-layout `single-file`.")
    family: Family = Field(description="Detected from the UNet's cross-attention dim.")
    cross_attention_dim: int = Field(description="Width of the text context the UNet attends to.")
    inpainting: bool = Field(description="UNet in_channels == 9.")
    unet_in_channels: int = Field(description="Input channels of the UNet.")
    dtype: str = Field(description="Stored dtype of most weight bytes (float16, bfloat16, float32).")
    param_count: int = Field(description="Number of stored parameters (all components).")
    param_bytes: int = Field(description="Bytes of stored parameters.")
    file_bytes: int = Field(description="Bytes on disk (all files of the checkpoint).")
    unet_base_channels: int = Field(description="Channels of the UNet's first level (drives working memory).")
    vae_decoder_channels: int = Field(description="Channels of the VAE decoder at full resolution.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Single-file `__metadata__` strings.")
    variant: str = Field("", description="Finer family name: sd2-v, sdxl-inpaint, sd3.5-large, flux-dev, ...")
    layout: str = Field("original", description="Denoiser key layout: `original` (A1111/ComfyUI/BFL) or `diffusers`.")
    prediction_type: PredictionType | None = Field(
        None, description="From the file's markers (`v_pred`, `modelspec.prediction_type`); None: family default.")
    zero_terminal_snr: bool = Field(False, description="The file carries the `ztsnr` marker.")
    components: list[str] = Field(default_factory=list, description="Components the checkpoint contains.")
    missing_components: list[str] = Field(default_factory=list, description="Components its family needs that it "
                                          "lacks.")
    serving_refusal: str | None = Field(None, description="Why Dream Lab cannot serve it (None: servable).")
    component_files: dict[str, str] = Field(default_factory=dict, description="Components its mode takes from "
                                            "separate files: component -> absolute path.")
    config_folder: str | None = Field(None, description="A diffusers folder its mode takes configs and tokenizers "
                                      "from (single files without Dream Lab's embedded configs).")


def pickle_refusal(path: Path, param: str = "checkpoint") -> PickleCheckpointError:
    return PickleCheckpointError(
        f"{path}: '{path.suffix}' is a pickle checkpoint and is refused: loading a pickle runs arbitrary code "
        "from the file. Convert it once, in a sandbox you trust, to safetensors, e.g. "
        "`python -c \"import torch, safetensors.torch as st; sd = torch.load('model.ckpt', weights_only=True); "
        "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items() "
        "if hasattr(v, 'contiguous')}, 'model.safetensors')\"` (or diffusers' `save_pretrained`).",
        param=param,
    )


def dominant_dtype(tensors: list[TensorHeader]) -> str:
    by_bytes: Counter[str] = Counter()
    for t in tensors:
        by_bytes[t.dtype] += t.numel * _DTYPE_BYTES.get(t.dtype, 4)
    if not by_bytes:
        return "unknown"
    top = by_bytes.most_common(1)[0][0]
    return _DTYPE_NAMES.get(top, top.lower())


def _family_for(path: Path, dim: int) -> Family:
    family = FAMILY_BY_CROSS_ATTENTION_DIM.get(dim)
    if family is None:
        raise UnsupportedCheckpointError(
            f"{path}: unsupported checkpoint: UNet cross_attention_dim is {dim}; supported: {supported_dims_text()}",
            param="checkpoint")
    return family


def _unsupported(path: Path, verdict: FamilyVerdict) -> NotACheckpointError | UnsupportedCheckpointError:
    if verdict.layout == "unknown":
        return NotACheckpointError(
            f"{path}: not a Stable Diffusion checkpoint: {verdict.reason} (looked for them with and without the "
            f"'{UNET_PREFIX}' prefix; a LoRA, VAE or embedding file cannot be served as a mode)", param="checkpoint")
    return UnsupportedCheckpointError(f"{path}: unsupported checkpoint: {verdict.reason}", param="checkpoint")


def _inspect_single_file(path: Path) -> CheckpointInfo:
    tensors, metadata = read_safetensors_header(path)
    verdict = detect_family(tensors, metadata)
    if verdict.family is None:
        raise _unsupported(path, verdict)
    denoiser = [t for k, t in tensors.items() if k.startswith(verdict.prefix) and not k.startswith(
        ("first_stage_model.", "vae.", "cond_stage_model.", "conditioner.", "text_encoders."))]
    vae_out = tensors.get(VAE_PREFIX + "decoder.conv_out.weight") or tensors.get("vae.decoder.conv_out.weight")
    info = CheckpointInfo(
        path=str(path),
        format=CheckpointFormat.SINGLE_FILE,
        family=verdict.family,
        cross_attention_dim=verdict.context_dim,
        inpainting=verdict.inpainting,
        unet_in_channels=verdict.in_channels,
        dtype=dominant_dtype(denoiser),
        param_count=parameter_count(tensors.values()),
        param_bytes=sum(t.data_offsets[1] - t.data_offsets[0] for t in tensors.values()),
        file_bytes=path.stat().st_size,
        unet_base_channels=verdict.hidden_size,
        vae_decoder_channels=vae_out.shape[1] if vae_out is not None else 128,
        metadata=metadata,
        **_verdict_fields(verdict),
    )
    return info.model_copy(update={"serving_refusal": serving_refusal(info)})


def _verdict_fields(verdict: FamilyVerdict) -> dict:
    return {"variant": verdict.variant, "layout": verdict.layout, "prediction_type": verdict.prediction_type,
            "zero_terminal_snr": verdict.zero_terminal_snr, "components": verdict.components,
            "missing_components": verdict.missing_components}


def _weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files of one component, preferring the plain files over variants (`x.fp16.safetensors`)."""
    files = sorted(component_dir.glob("*.safetensors"))
    plain = [f for f in files if f.name.count(".") == 1 or "-of-" in f.name]
    return plain or files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NotACheckpointError(f"{path}: unreadable JSON ({exc})", param="checkpoint") from exc
    if not isinstance(data, dict):
        raise NotACheckpointError(f"{path}: expected a JSON object", param="checkpoint")
    return data


def _inspect_folder(path: Path) -> CheckpointInfo:
    if not (path / "model_index.json").is_file():
        raise NotACheckpointError(
            f"{path}: not a checkpoint: a diffusers folder needs model_index.json and unet/config.json "
            "(or transformer/config.json)", param="checkpoint")
    found: FolderFamily = folder_family(path, _read_json(path / "model_index.json"), _read_json, _family_for)
    components = [p for p in sorted(path.iterdir()) if p.is_dir()]
    all_headers: list[TensorHeader] = []
    denoiser_headers: list[TensorHeader] = []
    vae_channels = 128
    with_weights: list[str] = []
    file_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    for comp in components:
        files = _weight_files(comp)
        if not files and any(comp.glob("*.bin")):
            raise pickle_refusal(next(comp.glob("*.bin")))
        if files:
            with_weights.append(comp.name)
        for f in files:
            tensors, _ = read_safetensors_header(f)
            all_headers += tensors.values()
            if comp.name == found.family.denoiser:
                denoiser_headers += tensors.values()
            if comp.name == "vae" and "decoder.conv_out.weight" in tensors:
                vae_channels = tensors["decoder.conv_out.weight"].shape[1]
    present = [found.component_names.get(c, c) for c in with_weights]
    info = CheckpointInfo(
        path=str(path),
        format=CheckpointFormat.DIFFUSERS,
        family=found.family,
        cross_attention_dim=found.context_dim,
        inpainting=found.inpainting,
        unet_in_channels=found.in_channels,
        dtype=dominant_dtype(denoiser_headers),
        param_count=parameter_count(all_headers),
        param_bytes=sum(t.data_offsets[1] - t.data_offsets[0] for t in all_headers),
        file_bytes=file_bytes,
        unet_base_channels=found.hidden_size,
        vae_decoder_channels=vae_channels,
        variant=found.variant,
        layout="diffusers",
        prediction_type=found.prediction_type,
        components=present,
        missing_components=[c for c in REQUIRED_COMPONENTS[found.family] if c not in present],
    )
    return info.model_copy(update={"serving_refusal": serving_refusal(info)})


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Inspect a diffusers folder or a single-file `.safetensors`; raise a typed CheckpointError otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(f"{p}: checkpoint path does not exist", param="checkpoint")
    p = p.resolve()
    if p.is_dir():
        return _inspect_folder(p)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(p)
    if p.suffix.lower() != ".safetensors":
        raise NotACheckpointError(
            f"{p}: not a checkpoint: expected a diffusers folder or a .safetensors file, got '{p.suffix or p.name}'",
            param="checkpoint")
    return _inspect_single_file(p)


def is_checkpoint_candidate(path: Path) -> bool:
    """Cheap test used by discovery: does this path look like something inspect_checkpoint accepts?"""
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return path.suffix.lower() == ".safetensors"
