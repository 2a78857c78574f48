"""Write a diffusers Stable Diffusion pipeline as ONE `.safetensors` file in the original (LDM/A1111/ComfyUI) layout.

This is the inverse of diffusers' single-file conversion (`diffusers.loaders.single_file_utils`):

- UNet           -> `model.diffusion_model.*`  (input_blocks / middle_block / output_blocks / time_embed / label_emb)
- VAE            -> `first_stage_model.*`      (encoder.down.N.block.M, mid.attn_1 as 1x1 convs, decoder.up reversed)
- CLIP (HF)      -> `<prefix>.transformer.text_model.*`
- OpenCLIP       -> `<prefix>.model.*`         (transformer.resblocks.N with fused attn.in_proj_*, text_projection^T)

Block indices are derived from the models themselves, so tiny and real-sized configs are handled alike.
The diffusers config folder (model_index.json, component configs, scheduler, tokenizers) is stored in the
safetensors metadata so the file can be reloaded offline: `materialize_config_dir` writes it back out for
`<Pipeline>.from_single_file(path, config=<dir>, local_files_only=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import save_file

from serve_app.model.families import Family
from serve_app.model.inspection.single_file_layout import (
    METADATA_DIFFUSERS_CONFIG,
    METADATA_FAMILY,
    TEXT_ENCODER_LAYOUTS,
    UNET_PREFIX,
    VAE_PREFIX,
)

logger = logging.getLogger(__name__)

# diffusers' loader drops this OpenCLIP block under `cond_stage_model.model.` (SD2's unused last layer).
_SD2_IGNORED_RESBLOCK = 23

_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP_LEVEL = {
    f"{part}.{name}": f"{part}.{ldm}"
    for part in ("encoder", "decoder")
    for name, ldm in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"))
} | {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The original VAE's mid-block attention projections are 1x1 convs; diffusers' are linear layers.
_VAE_CONV_ATTENTION_WEIGHTS = tuple(f".mid.attn_1.{name}.weight" for name in ("q", "k", "v", "proj_out"))
_OPENCLIP_TOP_LEVEL = {
    "embeddings.token_embedding": "token_embedding",
    "final_layer_norm": "ln_final",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _add_submodules(table: dict[str, str], src: str, dst: str, renames: dict[str, str]) -> None:
    for name, ldm in renames.items():
        table[f"{src}.{name}"] = f"{dst}.{ldm}"


def encoder_half_module_map(net: Any) -> dict[str, str]:
    """diffusers module path -> original module path for the down and mid blocks of a UNet, or of a ControlNet
    (its copy of the UNet's encoder half, named the same way in both layouts)."""
    table: dict[str, str] = {}
    n = 1
    for i, block in enumerate(net.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            _add_submodules(table, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", _UNET_RESNET)
            if attentions is not None:
                table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
            n += 1
        if block.downsamplers is not None:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    for j in range(len(net.mid_block.resnets)):
        _add_submodules(table, f"mid_block.resnets.{j}", f"middle_block.{2 * j}", _UNET_RESNET)
    for j in range(len(getattr(net.mid_block, "attentions", ()))):
        table[f"mid_block.attentions.{j}"] = f"middle_block.{2 * j + 1}"
    return table


def _unet_module_map(unet: Any) -> dict[str, str]:
    """diffusers module path -> original module path for every UNet module holding parameters."""
    table = dict(_UNET_TOP_LEVEL) | encoder_half_module_map(unet)
    n = 0
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            _add_submodules(table, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", _UNET_RESNET)
            if attentions is not None:
                table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
            n += 1
        if block.upsamplers is not None:
            slot = 2 if attentions is not None else 1
            table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n - 1}.{slot}.conv"
    return table


def _vae_module_map(vae: Any) -> dict[str, str]:
    """diffusers module path -> original module path for every VAE module holding parameters."""
    table = dict(_VAE_TOP_LEVEL)
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            _add_submodules(table, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        if block.downsamplers is not None:
            table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    n_up = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = n_up - 1 - i  # the original decoder counts levels from the full-resolution end
        for j in range(len(block.resnets)):
            _add_submodules(table, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", _VAE_RESNET)
        if block.upsamplers is not None:
            table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    for part in ("encoder", "decoder"):
        mid = getattr(vae, part).mid_block
        for j in range(len(mid.resnets)):
            _add_submodules(table, f"{part}.mid_block.resnets.{j}", f"{part}.mid.block_{j + 1}", _VAE_RESNET)
        _add_submodules(table, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTENTION)
    return table


def _rename(state_dict: dict[str, torch.Tensor], table: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    """Rename each key by its longest module-path prefix found in `table`; fail on any key left unmapped."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in table:
                out[".".join([table[module], *parts[cut:]])] = tensor
                break
        else:
            raise ValueError(f"{what}: no original-layout name for {key!r}")
    return out


def _unet_to_original(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return _rename(unet.state_dict(), _unet_module_map(unet), "UNet")


def _vae_to_original(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = _rename(vae.state_dict(), _vae_module_map(vae), "VAE")
    for key, tensor in out.items():
        if key.endswith(_VAE_CONV_ATTENTION_WEIGHTS) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


def _text_model_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state dict with `text_model.`-relative keys (transformers >= 5.6 flattens CLIPTextModel)."""
    state = encoder.state_dict()
    if hasattr(encoder, "text_model"):
        return {k.removeprefix("text_model."): v for k, v in state.items()}
    return state


def _clip_to_original(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF CLIP layout, relative to `...transformer.`: every key lives under `text_model.`."""
    return {f"text_model.{k}": v for k, v in _text_model_state(encoder).items()}


def _openclip_to_original(encoder: Any) -> dict[str, torch.Tensor]:
    """OpenCLIP layout, relative to `...model.`: fused q/k/v in_proj, `text_projection` as (width, embed_dim)."""
    state = _text_model_state(encoder)
    table = dict(_OPENCLIP_TOP_LEVEL)
    for n in range(encoder.config.num_hidden_layers):
        _add_submodules(table, f"encoder.layers.{n}", f"transformer.resblocks.{n}", _OPENCLIP_LAYER)
        for param in ("weight", "bias"):
            qkv = [state.pop(f"encoder.layers.{n}.self_attn.{p}_proj.{param}") for p in "qkv"]
            state[f"encoder.layers.{n}.attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
        table[f"encoder.layers.{n}.attn"] = f"transformer.resblocks.{n}.attn"
    out: dict[str, torch.Tensor] = {}
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T
    out["positional_embedding"] = state.pop("embeddings.position_embedding.weight")
    return out | _rename(state, table, "OpenCLIP text encoder")


def original_state_dict(pipe: Any, family: Family, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights under original single-file keys, floating tensors cast to `dtype`."""
    parts: list[tuple[str, dict[str, torch.Tensor]]] = [
        (UNET_PREFIX, _unet_to_original(pipe.unet)),
        (VAE_PREFIX, _vae_to_original(pipe.vae)),
    ]
    for attr, (prefix, layout) in TEXT_ENCODER_LAYOUTS[family].items():
        encoder = getattr(pipe, attr)
        if layout == "clip":
            parts.append((prefix, _clip_to_original(encoder)))
            continue
        if family is Family.SD2 and encoder.config.num_hidden_layers > _SD2_IGNORED_RESBLOCK:
            logger.warning("diffusers drops %sresblocks.%d on load: it won't round-trip", prefix, _SD2_IGNORED_RESBLOCK)
        parts.append((prefix, _openclip_to_original(encoder)))
    out: dict[str, torch.Tensor] = {}
    for prefix, state in parts:
        for key, tensor in state.items():
            tensor = tensor.detach()
            out[prefix + key] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    return out


def _diffusers_config_files(pipe: Any) -> dict[str, str]:
    """The pipeline's diffusers config folder without weights: relative path -> file text."""
    from diffusers.configuration_utils import ConfigMixin
    from transformers import PreTrainedModel

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipe.save_config(root)  # model_index.json
        for name, component in pipe.components.items():
            if component is None:
                continue
            target = root / name
            if isinstance(component, ConfigMixin):  # diffusers models and schedulers
                component.save_config(target)
            elif isinstance(component, PreTrainedModel):
                component.config.save_pretrained(target)
            else:  # tokenizers, image processors
                component.save_pretrained(target)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


def write_single_file(pipe: Any, family: Family, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `pipe` as one original-layout `.safetensors` file carrying its diffusers config in the metadata."""
    written = {"unet", "vae", *TEXT_ENCODER_LAYOUTS[family]}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in written:
            logger.warning("%s: component %r is not stored in the single file", family.value, name)
    tensors = original_state_dict(pipe, family, dtype)
    metadata = {
        METADATA_FAMILY: family.value,
        METADATA_DIFFUSERS_CONFIG: json.dumps(_diffusers_config_files(pipe), sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    logger.info("single file %s written: %d tensors, family %s", path, len(tensors), family.value)


def embedded_config_dir(embedded: str) -> Path:
    """A folder holding the config files stored in a file's `dreamlab.diffusers_config` metadata (written once
    per content, in the temp folder)."""
    import hashlib
    import shutil
    import uuid

    digest = hashlib.sha256(embedded.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"dreamlab-configs-{os.getuid()}" / digest
    if not any(target.iterdir() if target.is_dir() else ()):
        # written aside and renamed: a concurrent loader never converts with (or caches) a half-written folder
        partial = target.with_name(f"{digest}.partial-{uuid.uuid4().hex[:8]}")
        materialize_config_dir(embedded, partial)
        try:
            os.rename(partial, target)
        except OSError:  # another loader materialised it first (or a crashed one left a partial folder)
            shutil.rmtree(partial, ignore_errors=True)
            if not any(target.iterdir() if target.is_dir() else ()):
                materialize_config_dir(embedded, target)
    return target


def materialize_config_dir(metadata_json: str, directory: Path) -> Path:
    """Write the config folder stored under `dreamlab.diffusers_config` into `directory`; return it."""
    files: dict[str, str] = json.loads(metadata_json)
    directory = Path(directory)
    for rel, text in files.items():
        rel_path = PurePosixPath(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise ValueError(f"unsafe path in single-file config metadata: {rel!r}")
        target = directory.joinpath(*rel_path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return directory
