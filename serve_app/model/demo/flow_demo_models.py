"""The tiny SD3 and FLUX.1 demo checkpoints (`flow_architectures`) as files, in the layouts people have them:

- `tiny-sd3/` and `tiny-flux/`: diffusers folders (all-in-one);
- `tiny-flux-schnell.safetensors`: a transformer-only FLUX.1 schnell file (the layout of a diffusers
  `transformer/` weight file), its configs in Dream Lab's `dreamlab.diffusers_config` metadata, and its parts in
  `components/`: `tiny-flux-clip-l.safetensors` (transformers layout with `text_model.`, as ComfyUI ships
  `clip_l`), `tiny-t5xxl.safetensors` (transformers T5 layout, `shared.weight`, as `t5xxl_fp16`) and
  `tiny-flux-ae.safetensors` (the original LDM layout of BFL's `ae.safetensors`); each carries its config
  (and tokenizer) in its metadata. Two demo modes share the text-encoder files;
- `tiny-flux-fill.safetensors`: a transformer-only FLUX.1 Fill file (input width 384: latents, masked-image
  latents and the packed mask) in Black Forest Labs' original key layout (`double_blocks`, `img_in`, ...), as
  `flux1-fill-dev.safetensors` is shipped; its mode takes all three component files above;
- `loras/tiny-flux-lora.safetensors`: a FLUX LoRA in the diffusers/PEFT layout (every attention projection).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from serve_app.model.inspection.single_file_layout import METADATA_DIFFUSERS_CONFIG

logger = logging.getLogger(__name__)

FLUX_FOLDER, SD3_FOLDER, FLUX_SPLIT = "tiny-flux", "tiny-sd3", "tiny-flux-schnell.safetensors"
FLUX_FILL = "tiny-flux-fill.safetensors"
COMPONENTS = "components"
CLIP_L_FILE, T5_FILE = "tiny-flux-clip-l.safetensors", "tiny-t5xxl.safetensors"
FLUX_AE_FILE = "tiny-flux-ae.safetensors"
FLUX_LORA = "tiny-flux-lora"
_LORA_RANK = 4


def _config_files(save: Any) -> str:
    """JSON of {relative path: text} of what `save(folder)` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        return json.dumps({p.relative_to(tmp).as_posix(): p.read_text(encoding="utf-8") for p in files},
                          sort_keys=True)


def _save(path: Path, tensors: dict[str, torch.Tensor], config: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={METADATA_DIFFUSERS_CONFIG: config})


def _text_encoder_file(encoder: Any, tokenizer: Any, path: Path, key_prefix: str = "") -> None:
    def save(folder: Path) -> None:
        encoder.config.save_pretrained(folder / "component")
        tokenizer.save_pretrained(folder / "tokenizer")

    state = {key_prefix + k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    _save(path, state, _config_files(save))


def write_flux_split(out: Path) -> list[Path]:
    """The transformer-only schnell file and its component files."""
    from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline
    from serve_app.model.loading.single_file_writer import _vae_to_original

    pipe = build_tiny_flux_pipeline(guidance=False, seed=7)
    parts = out / COMPONENTS
    clip, t5, ae, single = parts / CLIP_L_FILE, parts / T5_FILE, parts / FLUX_AE_FILE, out / FLUX_SPLIT

    if not clip.is_file():
        _text_encoder_file(pipe.text_encoder, pipe.tokenizer, clip, key_prefix="text_model.")
    if not t5.is_file():
        _text_encoder_file(pipe.text_encoder_2, pipe.tokenizer_2, t5)
    if not ae.is_file():
        _save(ae, _vae_to_original(pipe.vae), _config_files(lambda f: pipe.vae.save_config(f / "component")))
    if not single.is_file():
        _transformer_file(pipe, single)
    return [single, clip, t5, ae]


def _transformer_file(pipe: Any, path: Path, original: bool = False) -> None:
    """`pipe`'s transformer alone (BFL's key layout when `original`), the pipeline's configs embedded."""
    from serve_app.model.demo.flux_original_layout import flux_to_original

    def save_configs(folder: Path) -> None:
        pipe.save_config(folder)
        pipe.transformer.save_config(folder / "transformer")
        pipe.scheduler.save_config(folder / "scheduler")

    state = pipe.transformer.state_dict()
    _save(path, flux_to_original(state) if original else state, _config_files(save_configs))


def write_flux_fill(out: Path) -> Path:
    """The transformer-only FLUX.1 Fill file in BFL's layout (as `flux1-fill-dev.safetensors` is shipped); its
    modes take the text encoders and VAE of the schnell file (`write_flux_split`)."""
    from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline

    path = out / FLUX_FILL
    if not path.is_file():
        _transformer_file(build_tiny_flux_pipeline(fill=True, seed=8), path, original=True)
        logger.info("demo checkpoint %s written", path)
    return path


def flux_lora(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA for every attention projection of the demo FLUX transformer (diffusers/PEFT keys, fp16)."""
    from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline

    transformer = build_tiny_flux_pipeline(guidance=True).transformer
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn." in f".{name}" and name.rsplit(".", 1)[-1] in (
                "to_q", "to_k", "to_v"):
            down = torch.randn(_LORA_RANK, module.in_features, generator=generator) * 0.1
            up = torch.randn(module.out_features, _LORA_RANK, generator=generator) * 0.1
            tensors |= {f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up}
    return {k: v.to(torch.float16) for k, v in tensors.items()}


def write_flow_demo_models(out: Path) -> list[Path]:
    """Write the flow-family demo checkpoints, components and LoRA under `out` when missing."""
    from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

    written = []
    for name, build in ((FLUX_FOLDER, lambda: build_tiny_flux_pipeline(guidance=True)),
                        (SD3_FOLDER, build_tiny_sd3_pipeline)):
        folder = out / name
        if not folder.is_dir():
            build().save_pretrained(folder, safe_serialization=True)
            logger.info("demo checkpoint %s written", folder)
        written.append(folder)
    written += [*write_flux_split(out), write_flux_fill(out)]
    lora = out / "loras" / f"{FLUX_LORA}.safetensors"
    if not lora.is_file():
        lora.parent.mkdir(parents=True, exist_ok=True)
        save_file(flux_lora(), str(lora))
    return [*written, lora]


def flow_demo_models_present(out: Path) -> bool:
    return all(p.exists() for p in (out / FLUX_FOLDER, out / SD3_FOLDER, out / FLUX_SPLIT, out / FLUX_FILL,
                                    out / COMPONENTS / T5_FILE, out / "loras" / f"{FLUX_LORA}.safetensors"))
