"""What a transformer ControlNet is (FLUX.1, SD3 / SD3.5), from its safetensors header, and the diffusers config
it loads with when its file carries none.

Key layouts (diffusers'; BFL/XLabs single files in another layout are not read):
- FLUX.1 (`FluxControlNetModel`, also the InstantX / Shakker-Labs Union ones with `controlnet_mode_embedder`):
  double-stream `transformer_blocks.*` + `single_transformer_blocks.*`, `controlnet_blocks.*`,
  `controlnet_single_blocks.*`, `controlnet_x_embedder.*`;
- SD3 (`SD3ControlNetModel`): MMDiT joint blocks `transformer_blocks.*`, `controlnet_blocks.*`,
  `pos_embed_input.*` (its latent input; 16 channels plus 1 for an inpainting ControlNet's mask).

The key layout only says which architecture to read; the family is what the tensors' widths say: a FLUX.1
ControlNet reads 16-channel latents packed 2x2 (64 wide), the CLIP-L pooled prompt (768) and T5 (4096); an
SD3 one 16-channel latents and the CLIP-L + OpenCLIP-G pooled prompt (2048). Other widths are refused with
what was found. No model is loaded here.
"""

from __future__ import annotations

import re
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.families import Family
from serve_app.model.inspection.safetensors_header import TensorHeader

FLUX_MARKERS = ("controlnet_x_embedder.", "controlnet_single_blocks.")
SD3_MARKERS = ("pos_embed_input.",)
_POOLED = "time_text_embed.text_embedder.linear_1.weight"
_LATENT_CHANNELS = 16
_FLUX_PACKED = _LATENT_CHANNELS * 4  # FLUX packs 2x2 latent patches into one token
_T5_WIDTH = 4096
_POOLED_WIDTH = {Family.FLUX: 768, Family.SD3: 768 + 1280}
_FLUX_ROPE_128 = [16, 56, 56]  # FLUX.1's rotary axes for its 128-wide heads
FLUX_UNION_TYPES = ("canny", "tile", "depth", "blur", "pose", "gray", "lq")  # InstantX / Shakker-Labs Union modes


def flow_controlnet_architecture(keys: list[str]) -> Family | None:
    """The transformer ControlNet architecture a key layout is (FLUX or SD3), None for another layout."""
    if any(k.startswith(FLUX_MARKERS) for k in keys):
        return Family.FLUX
    if any(k.startswith(SD3_MARKERS) for k in keys) and any(k.startswith("controlnet_blocks.") for k in keys):
        return Family.SD3
    return None


def _shape(tensors: dict[str, TensorHeader], key: str) -> list[int] | None:
    return tensors[key].shape if key in tensors else None


def _count(tensors: dict[str, TensorHeader], prefix: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _refuse(path: object, arch: Family, found: str) -> AdapterFileError:
    return AdapterFileError(f"{path}: a {arch.value}-style ControlNet (diffusers keys) whose tensors are not "
                            f"{arch.value}'s: {found}", param="controlnet")


def flow_controlnet_fields(path: object, tensors: dict[str, TensorHeader]) -> dict[str, Any]:
    """Family, and what requests must know of it: `control_modes` (a FLUX Union ControlNet's number of control
    types), `conditioning_channels` (extra latent channels an SD3 ControlNet reads: 1 is an inpainting one)."""
    arch = flow_controlnet_architecture(list(tensors))
    if arch is None:
        raise AdapterFileError(f"{path}: not a FLUX or SD3 ControlNet", param="controlnet")
    pooled = _shape(tensors, _POOLED)
    pooled_width = pooled[1] if pooled and len(pooled) == 2 else None
    if arch is Family.FLUX:
        x_in = _shape(tensors, "controlnet_x_embedder.weight") or _shape(tensors, "x_embedder.weight")
        context = _shape(tensors, "context_embedder.weight")
        widths = (x_in[1] if x_in else None, context[1] if context else None, pooled_width)
        if widths != (_FLUX_PACKED, _T5_WIDTH, _POOLED_WIDTH[Family.FLUX]):
            raise _refuse(path, arch, f"latent input {widths[0]} (FLUX: {_FLUX_PACKED}), text context {widths[1]} "
                          f"(T5: {_T5_WIDTH}), pooled prompt {widths[2]} (CLIP-L: 768)")
        modes = _shape(tensors, "controlnet_mode_embedder.weight")
        return dict(family=Family.FLUX, control_modes=modes[0] if modes else None)
    proj = _shape(tensors, "pos_embed_input.proj.weight")
    channels = proj[1] if proj and len(proj) == 4 else None
    if channels is None or not _LATENT_CHANNELS <= channels <= _LATENT_CHANNELS + 1 or \
            pooled_width != _POOLED_WIDTH[Family.SD3]:
        raise _refuse(path, arch, f"latent input {channels} channels (SD3: 16, or 17 with a mask), pooled prompt "
                      f"{pooled_width} (CLIP-L + OpenCLIP-G: 2048)")
    return dict(family=Family.SD3, conditioning_channels=channels - _LATENT_CHANNELS)


def _head_dim(tensors: dict[str, TensorHeader], default: int) -> int:
    norm = _shape(tensors, "transformer_blocks.0.attn.norm_q.weight")
    return norm[0] if norm else default


def flow_controlnet_config(family: Family, tensors: dict[str, TensorHeader]) -> dict[str, Any]:
    """The diffusers config of a FLUX / SD3 ControlNet single file, read from its tensors (`flow_controlnet_fields`
    has checked them). FLUX rotary axes are known for 128-wide heads only: another file must carry its config."""
    inner = tensors["controlnet_blocks.0.weight"].shape[0]
    if family is Family.FLUX:
        head = _head_dim(tensors, 128)
        if head != 128:
            raise AdapterFileError(f"FLUX ControlNet with {head}-wide attention heads: its rotary axes are not in its "
                                   "tensors; serve it as a diffusers folder (with config.json)", param="controlnet")
        modes = _shape(tensors, "controlnet_mode_embedder.weight")
        hint = _shape(tensors, "input_hint_block.conv_in.weight")
        return dict(patch_size=1, in_channels=tensors["x_embedder.weight"].shape[1],
                    num_layers=_count(tensors, "controlnet_blocks."),
                    num_single_layers=_count(tensors, "controlnet_single_blocks."), attention_head_dim=head,
                    num_attention_heads=inner // head, joint_attention_dim=tensors["context_embedder.weight"].shape[1],
                    pooled_projection_dim=tensors[_POOLED].shape[1],
                    guidance_embeds=any(k.startswith("time_text_embed.guidance_embedder.") for k in tensors),
                    axes_dims_rope=_FLUX_ROPE_128, num_mode=modes[0] if modes else None,
                    conditioning_embedding_channels=hint[1] if hint else None)
    head = _head_dim(tensors, 64)
    proj = tensors["pos_embed_input.proj.weight"].shape
    context = _shape(tensors, "context_embedder.weight")
    grid = _shape(tensors, "pos_embed.pos_embed")
    use_pos_embed = "pos_embed.proj.weight" in tensors
    layers = _count(tensors, "controlnet_blocks.")
    return dict(sample_size=128, patch_size=proj[2], in_channels=_LATENT_CHANNELS, out_channels=_LATENT_CHANNELS,
                num_layers=layers, attention_head_dim=head, num_attention_heads=inner // head,
                joint_attention_dim=context[1] if context else None,
                caption_projection_dim=context[0] if context else inner,
                pooled_projection_dim=tensors[_POOLED].shape[1],
                pos_embed_max_size=round((grid[1]) ** 0.5) if grid else None,
                extra_conditioning_channels=proj[1] - _LATENT_CHANNELS,
                dual_attention_layers=[i for i in range(layers)
                                       if f"transformer_blocks.{i}.attn2.to_q.weight" in tensors],
                qk_norm=("layer_norm" if "transformer_blocks.0.attn.norm_q.bias" in tensors else "rms_norm")
                if "transformer_blocks.0.attn.norm_q.weight" in tensors else None,
                pos_embed_type="sincos" if use_pos_embed else None, use_pos_embed=use_pos_embed,
                # the InstantX SD3 ControlNets (with their own text context) read a zero pooled prompt, the SD3.5
                # Large ones (without) the prompt's (their config.json says so; a single file cannot)
                force_zeros_for_pooled_projection=context is not None)
