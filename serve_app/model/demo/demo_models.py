"""Tiny demo checkpoints: random weights, real architectures, real cross-attention widths.

`write_demo_models(dir)` writes, for each family, a diffusers folder `tiny-<family>/` and a single-file
`tiny-<family>.safetensors` in the original (LDM / A1111) key layout. Everything is made locally and
deterministically (fixed seeds, see `architectures`): no hub, no network.
"""

from __future__ import annotations

import logging
from pathlib import Path

from serve_app.model.demo.architectures import DEMO_INPAINTING, build_demo_pipeline, demo_name
from serve_app.model.demo.demo_adapters import write_demo_adapters
from serve_app.model.demo.demo_controlnets import demo_controlnets_present, write_demo_controlnets
from serve_app.model.demo.demo_ipadapters import demo_ipadapter_paths, write_demo_ipadapters
from serve_app.model.families import UNET_FAMILIES, Family

logger = logging.getLogger(__name__)

def write_demo_models(directory: str | Path, families: tuple[Family, ...] = UNET_FAMILIES) -> list[Path]:
    """Write every family's demo checkpoint as a diffusers folder and as a single file, and the demo adapters
    (`demo_adapters`); return the paths.

    Existing checkpoints are kept (the output is deterministic, so rewriting would change nothing).
    """
    from serve_app.model.loading.single_file_writer import write_single_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for family in families:
        folder = out / demo_name(family)
        single = out / f"{demo_name(family)}.safetensors"
        if folder.is_dir() and single.is_file():
            written += [folder, single]
            continue
        pipe = build_demo_pipeline(family)
        if not folder.is_dir():
            pipe.save_pretrained(folder, safe_serialization=True)
        if not single.is_file():
            write_single_file(pipe, family, single)
        logger.info("demo checkpoint %s written to %s", family.value, out)
        written += [folder, single]
    inpainting = out / DEMO_INPAINTING
    if Family.SD1 in families:
        if not inpainting.is_dir():
            build_demo_pipeline(Family.SD1, inpainting=True).save_pretrained(inpainting, safe_serialization=True)
        written.append(inpainting)
    from serve_app.model.demo.flow_demo_models import write_flow_demo_models

    return (written + write_demo_adapters(out) + write_demo_controlnets(out) + write_demo_ipadapters(out)
            + write_flow_demo_models(out))


def demo_models_present(directory: str | Path) -> bool:
    from serve_app.model.demo.flow_demo_models import flow_demo_models_present

    out = Path(directory)
    return (out / DEMO_INPAINTING).is_dir() and flow_demo_models_present(out) and demo_controlnets_present(out) and all(
        p.exists() for p in demo_ipadapter_paths(out)) and all(
        (out / demo_name(f)).is_dir() and (out / f"{demo_name(f)}.safetensors").is_file() for f in UNET_FAMILIES
    )


def write_fine_tune(source: Path, target: Path, seed: int, unet_prefix: str = "model.diffusion_model.") -> Path:
    """`source` (an all-in-one single file) with its UNet weights nudged and its VAE and text encoders kept, as a
    fine-tune of a base model is: what sharing parts by content (`mapped_folder`) is measured and tested on."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    with safe_open(str(source), framework="pt") as fh:
        metadata = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a safe_open handle is not a mapping)
    for key, tensor in state.items():
        if key.startswith(unet_prefix) and tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator) * 0.05
            state[key] = (tensor.float() + noise).to(tensor.dtype)
    save_file(state, str(target), metadata=metadata)
    return target

