"""A diffusers FLUX.1 transformer's state dict in Black Forest Labs' original key layout (the layout of
`flux1-dev.safetensors`, `flux1-fill-dev.safetensors`): the inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers`, so the demo has transformer files as BFL ships them.

BFL fuses what diffusers splits: a double block's image and text attention each hold one `qkv` projection, a
single block's `linear1` holds q, k, v and the MLP input; the final layer's modulation is (shift, scale) where
diffusers stores (scale, shift).
"""

from __future__ import annotations

import torch

ORIGINAL_PREFIX = "model.diffusion_model."  # the all-in-one (and ComfyUI) prefix of the transformer's keys

_RENAMES = {  # diffusers -> BFL, outside the blocks
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {  # inside transformer_blocks.N -> double_blocks.N
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_NORMS = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale",
                 "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
                 "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
                 "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
_DOUBLE_FUSED: dict[str, tuple[str, ...]] = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_SINGLE_FUSED: dict[str, tuple[str, ...]] = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def _block(state: dict[str, torch.Tensor], out: dict[str, torch.Tensor], src: str, dst: str,
           renames: dict[str, str], norms: dict[str, str], fused: dict[str, tuple[str, ...]]) -> None:
    for old, new in renames.items():
        for suffix in ("weight", "bias"):
            out[f"{dst}{new}.{suffix}"] = state.pop(f"{src}{old}.{suffix}")
    for old, new in norms.items():
        out[dst + new] = state.pop(src + old)
    for new, parts in fused.items():
        for suffix in ("weight", "bias"):
            out[f"{dst}{new}.{suffix}"] = torch.cat([state.pop(f"{src}{p}.{suffix}") for p in parts], dim=0)


def flux_to_original(diffusers_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """`diffusers_state` (a FluxTransformer2DModel's) in BFL's layout, every key under `prefix`.

    Raises ValueError naming the keys it did not map (an architecture this layout does not describe)."""
    state = dict(diffusers_state)
    out: dict[str, torch.Tensor] = {}
    for old, new in _RENAMES.items():
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in state:
                out[f"{new}.{suffix}"] = state.pop(f"{old}.{suffix}")
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(state.pop(f"norm_out.linear.{suffix}"))
    for i in range(_block_count(state, "transformer_blocks.")):
        _block(state, out, f"transformer_blocks.{i}.", f"double_blocks.{i}.", _DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED)
    for i in range(_block_count(state, "single_transformer_blocks.")):
        _block(state, out, f"single_transformer_blocks.{i}.", f"single_blocks.{i}.", _SINGLE, _SINGLE_NORMS,
               _SINGLE_FUSED)
    if state:
        raise ValueError(f"FLUX transformer keys without a BFL name: {sorted(state)[:5]}")
    return {prefix + k: v for k, v in out.items()}
