"""Load an SD3 or FLUX.1 pipeline from its parts: a diffusers folder, or a single file (all-in-one or
transformer-only), plus the component files its mode names (text encoders, VAE, transformer).

Where each part comes from, first match:
- a component file the mode names (`info.component_files`), with the config it carries in its
  `dreamlab.diffusers_config` metadata (`config.json`, `tokenizer/`), else the family config folder's;
- the checkpoint: a diffusers folder's subfolder (`from_pretrained`, the folder's parts replaced by the
  component files), or the single file's tensors under the component's prefix (`model.diffusion_model.`,
  `vae.`, `text_encoders.clip_l.transformer.`, ...: the ComfyUI all-in-one layout).
Configs, tokenizers and the scheduler of a single file come from its embedded configs (Dream Lab's files)
or the mode's `components.config` diffusers folder; nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from serve_app.core.errors import UnsupportedCheckpointError
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointFormat, CheckpointInfo
from serve_app.model.inspection.family_detection import COMPONENT_PREFIXES
from serve_app.model.inspection.safetensors_header import read_safetensors_header
from serve_app.model.inspection.single_file_layout import METADATA_DIFFUSERS_CONFIG
from serve_app.model.loading.component_weights import build_diffusers_model, build_text_encoder
from serve_app.model.loading.mapped_weights import MappedPart, mapped_part, read_mapped

logger = logging.getLogger(__name__)

# component -> pipeline attribute, per family
ENCODER_ATTRIBUTES: dict[Family, dict[str, str]] = {
    Family.FLUX: {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"},
    Family.SD3: {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"},
}
_TOKENIZER = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
_TRANSFORMER_CLASS = {Family.FLUX: "FluxTransformer2DModel", Family.SD3: "SD3Transformer2DModel"}
_TRANSFORMERS_SUFFIX = "transformer."  # ComfyUI's text_encoders.<name>.transformer.<transformers keys>


def _embedded_dir(path: str | Path) -> Path | None:
    _, metadata = read_safetensors_header(Path(path))
    embedded = metadata.get(METADATA_DIFFUSERS_CONFIG)
    if embedded is None:
        return None
    from serve_app.model.loading.single_file_writer import embedded_config_dir

    return embedded_config_dir(embedded)


def _config_root(info: CheckpointInfo) -> Path | None:
    """Where the pipeline's configs, tokenizers and scheduler are: the folder itself, the single file's
    embedded configs, or the mode's `components.config` folder."""
    if info.format is CheckpointFormat.DIFFUSERS:
        return Path(info.path)
    return _embedded_dir(info.path) or (Path(info.config_folder) if info.config_folder else None)


def _part_config(component_dir: Path | None, root: Path | None, attr: str, what: str) -> Path:
    for candidate in (component_dir, root / attr if root is not None else None):
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    raise UnsupportedCheckpointError(f"{what}: no config for its {attr}: name a diffusers folder of the family as "
                                     "the mode's `components.config`", param="components")


def _build(kind: str, attr: str, family: Family, path: str, prefix: str, original: bool, cfg: Path,
           dtype: torch.dtype, mapped: list[MappedPart]) -> Any:
    """The part `kind` from `path`'s tensors under `prefix`; its weights that stay in the file's mapping (see
    `mapped_weights`) are added to `mapped`."""
    what = f"{Path(path).name} ({kind})"
    read = read_mapped(path, prefix, dtype, converted_layout=original and kind == "transformer")
    if kind in ENCODER_ATTRIBUTES[family]:
        model = build_text_encoder(cfg, read.state, dtype, what, projection=family is Family.SD3)
    else:
        cls = "AutoencoderKL" if kind == "vae" else _TRANSFORMER_CLASS[family]
        model = build_diffusers_model(cls, cfg, read.state, original, dtype, what)
    part = mapped_part(read, model, path, kind)
    if part is not None:
        mapped.append(part)
    return model


def _component_file_part(info: CheckpointInfo, family: Family, kind: str, path: str, root: Path | None,
                         dtype: torch.dtype, mapped: list[MappedPart]) -> tuple[str, Any, Any]:
    """(pipeline attribute, model, its tokenizer or None) of one component file."""
    from serve_app.model.components.component_files import inspect_component

    component = inspect_component(Path(path))
    attr = ENCODER_ATTRIBUTES[family].get(kind, kind)
    own = _embedded_dir(path)
    cfg = _part_config(own / "component" if own else None, root, attr, Path(path).name)
    model = _build(kind, attr, family, path, component.prefix, component.layout == "original", cfg, dtype, mapped)
    tokenizer = None
    if attr in _TOKENIZER and own is not None and (own / "tokenizer").is_dir():
        tokenizer = _load_tokenizer(own / "tokenizer")
    logger.info("%s: %s (%s) loaded from the component file %s", info.path, attr, kind, path)
    return attr, model, tokenizer


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _single_file_parts(info: CheckpointInfo, family: Family, root: Path, have: dict[str, Any],
                       dtype: torch.dtype, mapped: list[MappedPart]) -> dict[str, Any]:
    """The parts of a single file its component files do not replace, from the file's own tensors."""
    tensors, _ = read_safetensors_header(Path(info.path))
    parts: dict[str, Any] = {}
    if "transformer" not in have:
        prefix = next((p for p in ("model.diffusion_model.", "diffusion_model.", "")
                       if any(k.startswith(p) for k in tensors)), "")
        parts["transformer"] = _build("transformer", "transformer", family, info.path, prefix,
                                      info.layout == "original", root / "transformer", dtype, mapped)
    for kind, attr in [("vae", "vae"), *ENCODER_ATTRIBUTES[family].items()]:
        if attr in have:
            continue
        found = next((p for p in COMPONENT_PREFIXES.get(kind, ()) if any(k.startswith(p) for k in tensors)), None)
        if found is None:
            raise UnsupportedCheckpointError(f"{info.path}: no {kind} in the file and no component file for it",
                                             param="components")
        prefix = found
        if kind != "vae" and any(k.startswith(prefix + _TRANSFORMERS_SUFFIX) for k in tensors):
            prefix += _TRANSFORMERS_SUFFIX
        original = kind == "vae" and any(k.startswith(prefix + "encoder.down.") for k in tensors)
        parts[attr] = _build(kind, attr, family, info.path, prefix, original, root / attr, dtype, mapped)
    return parts


def load_flow_pipeline(load_cls: Any, info: CheckpointInfo, family: Family, dtype: torch.dtype,
                       mapped: list[MappedPart] | None = None) -> Any:
    """`load_cls` (a FLUX or SD3 pipeline class) with every part loaded in `dtype` on the CPU; the parts whose
    weights stay mapped from their files are added to `mapped`."""
    mapped = [] if mapped is None else mapped
    root = _config_root(info)
    parts: dict[str, Any] = {}
    for kind, path in info.component_files.items():
        attr, model, tokenizer = _component_file_part(info, family, kind, path, root, dtype, mapped)
        parts[attr] = model
        if tokenizer is not None:
            parts[_TOKENIZER[attr]] = tokenizer
    if info.format is CheckpointFormat.DIFFUSERS:
        return load_cls.from_pretrained(info.path, dtype=dtype, local_files_only=True, **parts)
    if root is None:
        raise UnsupportedCheckpointError(f"{info.path}: {info.serving_refusal or 'no configs'}", param="checkpoint")
    parts.update(_single_file_parts(info, family, root, parts, dtype, mapped))
    for attr, tokenizer in _TOKENIZER.items():
        if attr in parts and tokenizer not in parts:
            parts[tokenizer] = _load_tokenizer(root / tokenizer)
    from diffusers import FlowMatchEulerDiscreteScheduler

    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(str(root), subfolder="scheduler")
    expected = set(load_cls._get_signature_keys(load_cls)[0])
    return load_cls(**{k: v for k, v in parts.items() if k in expected},
                    **{k: None for k in expected - parts.keys()})
