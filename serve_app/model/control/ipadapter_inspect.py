"""What an IP-Adapter (an image as prompt) and a CLIP image encoder are, from their safetensors headers.

- An IP-Adapter file (`ipadapter/`, diffusers' single-file layout: `image_proj.*` + `ip_adapter.*`): its
  family from the decoupled cross-attention `to_k_ip` matrices, whose input width is the family's
  cross-attention dim (768 SD1, 1024 SD2, 2048 SDXL); the image embedding it takes: a plain IP-Adapter
  projects the encoder's image embeds (`image_proj.proj`, input width = the encoder's projection dim), a
  "plus" one resamples its hidden states (`image_proj.proj_in`, input width = the encoder's hidden size).
- An image encoder (`clip_vision/`: a transformers folder, `config.json` + `model.safetensors`, or one file
  with the transformers keys): a CLIP vision model with projection; its hidden size, projection dim, depth
  and image size from the tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.control.control_inspect import UNET_CONTROL_FAMILIES
from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM
from serve_app.model.inspection.safetensors_header import TensorHeader, read_safetensors_header

ENCODER_WEIGHTS = "model.safetensors"


def ipadapter_fields(path: Path, tensors: dict[str, TensorHeader]) -> dict[str, Any]:
    """The AdapterInfo fields of an IP-Adapter file's header."""
    if not any(k.startswith("image_proj.") for k in tensors) or not any(k.startswith("ip_adapter.") for k in tensors):
        raise AdapterFileError(f"{path}: not an IP-Adapter: no image_proj.* and ip_adapter.* keys (diffusers' "
                               f"single-file layout); it starts with {sorted(tensors)[:3]}", param="ip_adapters")
    to_k = [t for k, t in tensors.items() if k.endswith(".to_k_ip.weight") and len(t.shape) == 2]
    if not to_k:
        raise AdapterFileError(f"{path}: an IP-Adapter without to_k_ip matrices", param="ip_adapters")
    dim = to_k[0].shape[1]
    family = FAMILY_BY_CROSS_ATTENTION_DIM.get(dim)
    if family not in UNET_CONTROL_FAMILIES:
        raise AdapterFileError(f"{path}: an IP-Adapter for cross-attention dim {dim}; served: 768 (sd1), 1024 (sd2), "
                               "2048 (sdxl)", param="ip_adapters")
    if "image_proj.proj.weight" in tensors and "image_proj.norm.weight" in tensors:
        return dict(format="diffusers", family=family, embed_dim=tensors["image_proj.proj.weight"].shape[1])
    if "image_proj.proj_in.weight" in tensors and "image_proj.latents" in tensors:
        return dict(format="diffusers", family=family, hidden_dim=tensors["image_proj.proj_in.weight"].shape[1])
    raise AdapterFileError(f"{path}: an IP-Adapter variant that is not served (FaceID, full-face): only plain and "
                           "plus IP-Adapters are", param="ip_adapters")


def encoder_weights(path: Path) -> Path:
    if path.is_dir():
        if not (path / "config.json").is_file() or not (path / ENCODER_WEIGHTS).is_file():
            raise AdapterFileError(f"{path}: an image encoder folder needs config.json and {ENCODER_WEIGHTS}",
                                   param="ip_adapters")
        return path / ENCODER_WEIGHTS
    return path


def clip_vision_fields(path: Path, tensors: dict[str, TensorHeader]) -> dict[str, Any]:
    """The AdapterInfo fields of a CLIP vision encoder's header (its projection dim and hidden size)."""
    names = {k.removeprefix("model."): t for k, t in tensors.items()}
    patch = names.get("vision_model.embeddings.patch_embedding.weight")
    projection = names.get("visual_projection.weight")
    if patch is None or projection is None:
        raise AdapterFileError(f"{path}: not a CLIP image encoder with projection (transformers' "
                               "CLIPVisionModelWithProjection keys: vision_model.*, visual_projection.weight)",
                               param="ip_adapters")
    return dict(format="diffusers", family=None, embed_dim=projection.shape[0], hidden_dim=patch.shape[0])


def encoder_config(tensors: dict[str, TensorHeader]) -> dict[str, Any]:
    """A CLIPVisionConfig for an encoder file without one: sizes from the tensors, 16 attention heads (ViT-L,
    ViT-H and ViT-bigG all have 16; a head count is not in the weights)."""
    names = {k.removeprefix("model."): t for k, t in tensors.items()}
    patch = names["vision_model.embeddings.patch_embedding.weight"]
    positions = names["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = {int(m.group(1)) for k in names if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    side = round((positions - 1) ** 0.5) * patch.shape[-1]
    return dict(hidden_size=patch.shape[0], patch_size=patch.shape[-1], image_size=side,
                projection_dim=names["visual_projection.weight"].shape[0], num_hidden_layers=len(layers),
                intermediate_size=names["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                num_attention_heads=16)


def read_encoder_header(path: Path) -> tuple[Path, dict[str, TensorHeader], dict[str, str]]:
    weights = encoder_weights(path)
    tensors, metadata = read_safetensors_header(weights)
    return weights, tensors, metadata
