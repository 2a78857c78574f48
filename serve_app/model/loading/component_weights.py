"""One pipeline component (a text encoder, a VAE, a transformer) built from a safetensors file: its tensors
under a key prefix, converted from the original (LDM / SAI / BFL) layout where needed, cast to the compute
dtype (fp8 weights widen exactly), and loaded into the architecture its diffusers/transformers config names.

The model is built empty (`accelerate.init_empty_weights`: no random initialisation of billions of weights)
and its parameters are the loaded tensors themselves (`load_state_dict(assign=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from serve_app.core.errors import UnsupportedCheckpointError

_TEXT_PREFIXES = ("text_model.",)  # ComfyUI's clip_l/clip_g files keep transformers 4's `text_model.` level


def _assign(model: Any, state: dict[str, torch.Tensor], what: str, allowed_missing: tuple[str, ...] = ()) -> Any:
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith(allowed_missing)]
    if missing or result.unexpected_keys:
        raise UnsupportedCheckpointError(
            f"{what}: its tensors do not fit the architecture of its config: missing {missing[:3]}, unexpected "
            f"{list(result.unexpected_keys)[:3]}", param="components")
    return model


def build_text_encoder(config_dir: Path, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str,
                       projection: bool = False) -> Any:
    """A transformers text encoder from `config_dir`: T5EncoderModel, or CLIPTextModel (`projection`: with its
    text projection, as SD3 reads CLIP)."""
    import transformers
    from accelerate import init_empty_weights

    config = json.loads((config_dir / "config.json").read_text())
    cls: Any = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    if config.get("model_type") == "t5":
        cls = transformers.T5EncoderModel
    cfg = cls.config_class.from_pretrained(str(config_dir))
    with init_empty_weights():
        model = cls(cfg)
    names = set(model.state_dict())
    for old in _TEXT_PREFIXES:
        if any(k.startswith(old) for k in state) and not any(n.startswith(old) for n in names):
            state = {k.removeprefix(old): v for k, v in state.items()}
    tied = "encoder.embed_tokens.weight"
    if tied in names and tied not in state and "shared.weight" in state:
        state[tied] = state["shared.weight"]  # T5's tied input embedding
    state = {k: v for k, v in state.items() if k in names}  # (e.g. a stored `position_ids` buffer)
    model = _assign(model, state, what, allowed_missing=("position_ids",))
    model.tie_weights()
    _materialize_buffers(model)
    return model.to(dtype).eval()


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers left on the meta device (CLIP's `position_ids`) rebuilt as a plain range."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()


def build_diffusers_model(cls_name: str, config_dir: Path, state: dict[str, torch.Tensor], original: bool,
                          dtype: torch.dtype, what: str) -> Any:
    """A diffusers model (AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel) from `config_dir`,
    its `state` converted from the original layout when `original`
    (a FLUX transformer at its own width: see `flux_original`)."""
    import diffusers
    from accelerate import init_empty_weights
    from diffusers.loaders import single_file_utils as sfu

    from serve_app.model.loading.flux_original import convert_flux_original

    cls = getattr(diffusers, cls_name)
    config = cls.load_config(str(config_dir))
    if original:
        convert: Any = {"AutoencoderKL": lambda s: sfu.convert_ldm_vae_checkpoint(s, config),
                   "FluxTransformer2DModel": convert_flux_original,
                   "SD3Transformer2DModel": sfu.convert_sd3_transformer_checkpoint_to_diffusers}[cls_name]
        state = convert(state)
    with init_empty_weights():
        model = cls.from_config(config)
    model = _assign(model, state, what)
    if any(p.dtype != dtype for p in model.parameters()):  # (a no-op `.to` still warns about fp32 modules)
        model = model.to(dtype)
    return model.eval()
