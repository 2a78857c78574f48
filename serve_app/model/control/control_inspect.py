"""What a ControlNet is, from its safetensors header: its key layout and the family it was trained for.

Layouts:
- `diffusers`: a folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`), or one file with the
  diffusers keys (`controlnet_cond_embedding.*`, `down_blocks.*`, `controlnet_down_blocks.*`);
- `original`: the ldm layout A1111 users share (`control_model.input_hint_block.*`, `input_blocks.*`,
  `zero_convs.*`, with or without the `control_model.` prefix);
- the transformer ControlNets of FLUX.1 and SD3 in diffusers keys (folder or one file): `flow_control_inspect`.

The family is read from the tensors, never the name: a cross-attention `to_k` matrix takes the text context
as input, so its input width is the family's cross-attention dim (768 SD1, 1024 SD2, 2048 SDXL), as for
LoRAs; a transformer ControlNet's latent, text and pooled-prompt widths (`flow_control_inspect`). No model is
loaded here (the router inspects; it never imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.control.flow_control_inspect import flow_controlnet_architecture, flow_controlnet_fields
from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM, Family
from serve_app.model.inspection.safetensors_header import TensorHeader, parameter_count, read_safetensors_header

UNET_CONTROL_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL)  # UNet ControlNets, told by cross-attention width
CONTROL_FAMILIES = (*UNET_CONTROL_FAMILIES, Family.SD3, Family.FLUX)  # the families with ControlNet pipelines
METADATA_CONTROLNET_CONFIG = "dreamlab.controlnet_config"  # a single file may carry its diffusers config
_FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
_ORIGINAL_PREFIX = "control_model."


def folder_weights(folder: Path) -> Path:
    """The weights file of a diffusers ControlNet folder."""
    if not (folder / "config.json").is_file():
        raise AdapterFileError(f"{folder}: a folder without config.json is not a diffusers ControlNet",
                               param="controlnet")
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise AdapterFileError(f"{folder}: no {' or '.join(_FOLDER_WEIGHTS)} (pickle .bin weights are refused)",
                           param="controlnet")


def controlnet_layout(keys: list[str]) -> str:
    """`diffusers` or `original`; raises for a file that is not a ControlNet."""
    if any(k.startswith("controlnet_cond_embedding.") for k in keys) or flow_controlnet_architecture(keys):
        return "diffusers"
    if any(k.removeprefix(_ORIGINAL_PREFIX).startswith("input_hint_block.") for k in keys):
        return "original"
    lora = any("lora" in k for k in keys[:50])
    hint = " (a Control-LoRA or other LoRA-style file: not served)" if lora else ""
    raise AdapterFileError(f"not a ControlNet: no controlnet_cond_embedding.* (diffusers), input_hint_block.* "
                           f"(original), controlnet_x_embedder.* (FLUX) or pos_embed_input.* (SD3) keys{hint}; "
                           f"it starts with {sorted(keys)[:3]}", param="controlnet")


def controlnet_fields(path: Path, tensors: dict[str, TensorHeader], metadata: dict[str, str]) -> dict[str, Any]:
    """The AdapterInfo fields of a ControlNet file's header (format, family, parameters)."""
    try:
        layout = controlnet_layout(list(tensors))
    except AdapterFileError as exc:
        raise AdapterFileError(f"{path}: {exc.message}", param="controlnet") from None
    _check_config_metadata(path, metadata)
    if flow_controlnet_architecture(list(tensors)) is not None:
        return dict(format=layout, parameters=parameter_count(tensors.values()),
                    **flow_controlnet_fields(path, tensors))
    to_k = [k for k in tensors if k.endswith("attn2.to_k.weight") and len(tensors[k].shape) == 2]
    if not to_k:
        raise AdapterFileError(f"{path}: a ControlNet without cross-attention (attn2.to_k): the family it was "
                               "trained for cannot be told from its tensors", param="controlnet")
    dim = tensors[to_k[0]].shape[1]
    family = FAMILY_BY_CROSS_ATTENTION_DIM.get(dim)
    if family not in UNET_CONTROL_FAMILIES:
        served = ", ".join(f"{d} ({f.value})" for d, f in FAMILY_BY_CROSS_ATTENTION_DIM.items()
                           if f in UNET_CONTROL_FAMILIES)
        raise AdapterFileError(f"{path}: a ControlNet for cross-attention dim {dim}; served: {served}",
                               param="controlnet")
    return dict(format=layout, family=family, parameters=parameter_count(tensors.values()))


def _check_config_metadata(path: Path, metadata: dict[str, str]) -> None:
    if METADATA_CONTROLNET_CONFIG in metadata:
        try:
            json.loads(metadata[METADATA_CONTROLNET_CONFIG])
        except ValueError as exc:
            raise AdapterFileError(f"{path}: its {METADATA_CONTROLNET_CONFIG} metadata is not JSON ({exc})",
                                   param="controlnet") from None


def read_controlnet_header(path: Path) -> tuple[Path, dict[str, TensorHeader], dict[str, str]]:
    """(weights file, tensors, metadata) of a ControlNet file or diffusers folder."""
    weights = folder_weights(path) if path.is_dir() else path
    tensors, metadata = read_safetensors_header(weights)
    return weights, tensors, metadata
