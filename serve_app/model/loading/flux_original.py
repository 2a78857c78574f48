"""A FLUX.1 transformer in Black Forest Labs' original key layout converted to diffusers' layout, at any width.

diffusers' `convert_flux_transformer_checkpoint_to_diffusers` splits each single block's fused `linear1`
(q, k, v and the MLP input) at FLUX.1's full width (3072, MLP 4x) whatever the file holds, so a transformer of
the FLUX architecture at another width (the demo's tiny one, pruned or distilled ones) fails there. Here those
`linear1` tensors are split at the block's own width, read from its `linear2` (width x (width + MLP)), and
diffusers converts the rest (it is handed an empty stand-in for each `linear1` it would split wrongly).
"""

from __future__ import annotations

import torch

_PREFIX = "model.diffusion_model."
_DIFFUSERS_WIDTH, _DIFFUSERS_MLP = 3072, 4 * 3072  # what diffusers' converter assumes


def _split_single_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The diffusers tensors of every single block whose width is not diffusers' assumed one; their `linear1`
    in `state` is replaced by an empty stand-in of the assumed shape (no storage for weights)."""
    split: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.startswith("single_blocks.") and ".linear1." in k]:
        block, kind = key.split(".linear1.")
        projection = state.get(f"{block}.linear2.weight")
        if projection is None:
            continue  # diffusers names what is missing
        width = projection.shape[0]
        mlp = state[key].shape[0] - 3 * width
        if (width, mlp) == (_DIFFUSERS_WIDTH, _DIFFUSERS_MLP):
            continue
        index = block.split(".")[1]
        q, k, v, proj_mlp = torch.split(state[key], [width, width, width, mlp], dim=0)
        target = f"single_transformer_blocks.{index}."
        split |= {f"{target}attn.to_q.{kind}": q, f"{target}attn.to_k.{kind}": k, f"{target}attn.to_v.{kind}": v,
                  f"{target}proj_mlp.{kind}": proj_mlp}
        rows = 3 * _DIFFUSERS_WIDTH + _DIFFUSERS_MLP
        state[key] = torch.empty((rows, 0) if kind == "weight" else (rows,), dtype=state[key].dtype)
    return split


def convert_flux_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (BFL keys, with or without the `model.diffusion_model.` prefix) in diffusers' layout."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    state = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    split = _split_single_blocks(state)
    return convert_flux_transformer_checkpoint_to_diffusers(state) | split
