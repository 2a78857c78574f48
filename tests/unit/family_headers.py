"""Header-only fixtures: safetensors headers (key names and full-size shapes, no tensor data) of each family's
checkpoint layouts, as `read_safetensors_header` returns them, and a writer of header-only files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from serve_app.model.inspection.safetensors_header import TensorHeader

Shapes = dict[str, list[int]]


def headers(shapes: Shapes, dtype: str = "BF16") -> dict[str, TensorHeader]:
    return {k: TensorHeader(dtype=dtype, shape=v, data_offsets=(0, 0)) for k, v in shapes.items()}


def prefixed(prefix: str, shapes: Shapes) -> Shapes:
    return {prefix + k: v for k, v in shapes.items()}


def write_header_file(path: Path, shapes: Shapes, dtype: str = "BF16", metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file whose tensors hold no bytes (offsets 0..0): enough for every header reader."""
    header: dict[str, object] = {k: {"dtype": dtype, "shape": v, "data_offsets": [0, 0]} for k, v in shapes.items()}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def sd_unet(context: int, in_channels: int = 4, base: int = 320, sdxl: bool = False) -> Shapes:
    out: Shapes = {"input_blocks.0.0.weight": [base, in_channels, 3, 3], "input_blocks.0.0.bias": [base],
                   "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [base, context],
                   "out.2.weight": [4, base, 3, 3]}
    if sdxl:
        out["label_emb.0.0.weight"] = [1280, 2816 if context == 2048 else 2560]
    return out


VAE: Shapes = {"encoder.conv_in.weight": [128, 3, 3, 3], "decoder.conv_out.weight": [3, 128, 3, 3]}
CLIP_L: Shapes = {"text_model.embeddings.token_embedding.weight": [49408, 768]}
OPENCLIP: Shapes = {"text_projection": [1280, 1280], "token_embedding.weight": [49408, 1280]}
T5: Shapes = {"encoder.block.0.layer.0.SelfAttention.q.weight": [4096, 4096], "shared.weight": [32128, 4096]}


def sd1_all_in_one(in_channels: int = 4) -> Shapes:
    return (prefixed("model.diffusion_model.", sd_unet(768, in_channels)) | prefixed("first_stage_model.", VAE)
            | prefixed("cond_stage_model.transformer.", CLIP_L))


def sdxl_all_in_one(context: int = 2048) -> Shapes:
    encoders = (prefixed("conditioner.embedders.0.transformer.", CLIP_L)
                | prefixed("conditioner.embedders.1.model.", OPENCLIP)) if context == 2048 else \
        prefixed("conditioner.embedders.0.model.", OPENCLIP)
    return (prefixed("model.diffusion_model.", sd_unet(context, sdxl=True)) | prefixed("first_stage_model.", VAE)
            | encoders)


def sd3_mmdit(depth: int = 24, hidden: int = 1536, dual: int = 0, qk_norm: bool = False) -> Shapes:
    out: Shapes = {"x_embedder.proj.weight": [hidden, 16, 2, 2], "context_embedder.weight": [hidden, 4096],
                   "pos_embed": [1, 36864, hidden], "final_layer.linear.weight": [64, hidden]}
    for i in range(depth):
        b = f"joint_blocks.{i}."
        out[b + "x_block.attn.qkv.weight"] = [3 * hidden, hidden]
        out[b + "context_block.attn.qkv.weight"] = [3 * hidden, hidden]
        out[b + "x_block.mlp.fc1.weight"] = [4 * hidden, hidden]
        if qk_norm:
            out[b + "x_block.attn.ln_q.weight"] = [64]
        if i < dual:
            out[b + "x_block.attn2.qkv.weight"] = [3 * hidden, hidden]
    return out


def sd3_diffusers(depth: int = 24, hidden: int = 1536) -> Shapes:
    out: Shapes = {"pos_embed.proj.weight": [hidden, 16, 2, 2], "context_embedder.weight": [hidden, 4096]}
    for i in range(depth):
        out[f"transformer_blocks.{i}.attn.to_q.weight"] = [hidden, hidden]
        out[f"transformer_blocks.{i}.attn.add_q_proj.weight"] = [hidden, hidden]
    return out


def flux_bfl(in_features: int = 64, guidance: bool = True, double: int = 19, single: int = 38) -> Shapes:
    hidden = 3072
    out: Shapes = {"img_in.weight": [hidden, in_features], "txt_in.weight": [hidden, 4096],
                   "vector_in.in_layer.weight": [hidden, 768], "time_in.in_layer.weight": [hidden, 256],
                   "final_layer.linear.weight": [64, hidden]}
    if guidance:
        out["guidance_in.in_layer.weight"] = [hidden, 256]
    for i in range(double):
        out[f"double_blocks.{i}.img_attn.qkv.weight"] = [3 * hidden, hidden]
        out[f"double_blocks.{i}.txt_attn.qkv.weight"] = [3 * hidden, hidden]
        out[f"double_blocks.{i}.img_mlp.0.weight"] = [4 * hidden, hidden]
    for i in range(single):
        out[f"single_blocks.{i}.linear1.weight"] = [21504, hidden]
        out[f"single_blocks.{i}.linear2.weight"] = [hidden, 15360]
    return out


def flux_diffusers(in_features: int = 64, guidance: bool = True, double: int = 19, single: int = 38) -> Shapes:
    hidden = 3072
    out: Shapes = {"x_embedder.weight": [hidden, in_features], "context_embedder.weight": [hidden, 4096],
                   "time_text_embed.text_embedder.linear_1.weight": [hidden, 768]}
    if guidance:
        out["time_text_embed.guidance_embedder.linear_1.weight"] = [hidden, 256]
    for i in range(double):
        out[f"transformer_blocks.{i}.attn.to_q.weight"] = [hidden, hidden]
    for i in range(single):
        out[f"single_transformer_blocks.{i}.proj_mlp.weight"] = [4 * hidden, hidden]
    return out


def flux_comfy_all_in_one() -> Shapes:
    return (prefixed("model.diffusion_model.", flux_bfl()) | prefixed("first_stage_model.", VAE)
            | prefixed("text_encoders.clip_l.transformer.", CLIP_L) | prefixed("text_encoders.t5xxl.transformer.", T5))
