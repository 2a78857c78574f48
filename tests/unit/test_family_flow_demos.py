"""The tiny FLUX.1 and SD3 pipelines are the real diffusers architectures: they generate, save and reload
offline, and a saved folder is detected as its family with every component, servable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from serve_app.model.families import Family
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint


@pytest.mark.parametrize(("build", "family", "variant", "components"), [
    (lambda: build_tiny_flux_pipeline(guidance=True), Family.FLUX, "flux-dev",
     ["clip_l", "t5xxl", "transformer", "vae"]),
    (lambda: build_tiny_flux_pipeline(guidance=False), Family.FLUX, "flux-schnell",
     ["clip_l", "t5xxl", "transformer", "vae"]),
    (build_tiny_sd3_pipeline, Family.SD3, "sd3-depth2",
     ["clip_l", "clip_g", "t5xxl", "transformer", "vae"]),
], ids=["flux-dev", "flux-schnell", "sd3"])
def test_tiny_flow_pipelines_generate_reload_and_are_detected(tmp_path: Path, build, family: Family, variant: str,
                                                               components: list[str]) -> None:
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"guidance_scale": 3.5} if family is Family.FLUX else {"guidance_scale": 4.0, "negative_prompt": "x"}
    image = pipe("a lighthouse", height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                 generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    assert image.size == (64, 64)
    folder = tmp_path / f"tiny-{variant}"
    pipe.save_pretrained(folder, safe_serialization=True)
    reloaded = type(pipe).from_pretrained(folder, local_files_only=True)
    assert type(reloaded.transformer) is type(pipe.transformer)
    info = inspect_checkpoint(folder)
    assert (info.family, info.layout, info.cross_attention_dim) == (family, "diffusers", 4096)
    assert info.variant.startswith(variant) and sorted(info.components) == sorted(components)
    assert info.missing_components == []
    assert info.serving_refusal is None
