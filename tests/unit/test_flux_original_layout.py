"""A transformer-only FLUX.1 file in Black Forest Labs' original layout (`double_blocks.N.img_attn.qkv`,
`single_blocks.N.linear1`, `img_in`, `txt_in`, `time_in`, `guidance_in`, `final_layer`), with or without the
`model.diffusion_model.` prefix, loads like the diffusers-layout file it was written from and makes the same
image for the same seed; diffusers' converter alone assumes FLUX.1's full width and fails on the tiny one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from serve_app.config.mode_families import inspect_mode
from serve_app.config.modes_file import ModeComponents, ModeConfig
from serve_app.model.demo.flow_demo_models import CLIP_L_FILE, COMPONENTS, FLUX_AE_FILE, FLUX_SPLIT, T5_FILE
from serve_app.model.demo.flux_original_layout import ORIGINAL_PREFIX, flux_to_original
from serve_app.model.loading.flux_original import convert_flux_original
from serve_app.model.loading.pipeline_loader import LoadedPipelines, load_pipelines

CPU = torch.device("cpu")


def _original_copy(src: Path, dst: Path, prefix: str) -> Path:
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()  # the embedded configs, as Dream Lab's demo files carry them
    save_file(flux_to_original(load_file(str(src)), prefix), str(dst), metadata=metadata)
    return dst


def _load(models: Path, checkpoint: Path, cache: Path) -> tuple[str, LoadedPipelines]:
    parts = ModeComponents(text_encoders=[f"{COMPONENTS}/{CLIP_L_FILE}", f"{COMPONENTS}/{T5_FILE}"],
                           vae=f"{COMPONENTS}/{FLUX_AE_FILE}")
    mode = ModeConfig(name="schnell", checkpoint=checkpoint.name, components=parts)
    info, _ = inspect_mode(mode, checkpoint, models)
    assert info.serving_refusal is None and info.variant == "flux-schnell"
    return info.layout, load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)


def _image(pipes: LoadedPipelines) -> np.ndarray:
    return pipes.txt2img("a lighthouse", height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                         max_sequence_length=32, generator=torch.Generator().manual_seed(11),
                         output_type="np").images[0]


@pytest.mark.parametrize("prefix", ["", ORIGINAL_PREFIX], ids=["bare", "model.diffusion_model"])
def test_an_original_layout_flux_file_loads_and_makes_the_same_image(tmp_path: Path, demo_models_dir: Path,
                                                                      prefix: str) -> None:
    source = demo_models_dir / FLUX_SPLIT
    original = _original_copy(source, tmp_path / "flux1-schnell-bfl.safetensors", prefix)
    keys = set(load_file(str(original)))
    assert {prefix + k for k in ("img_in.weight", "txt_in.weight", "time_in.in_layer.weight",
                                 "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
                                 "final_layer.adaLN_modulation.1.weight")} <= keys
    layout, pipes = _load(demo_models_dir, original, tmp_path / "cache")
    reference_layout, reference = _load(demo_models_dir, source, tmp_path / "cache")
    assert (layout, reference_layout) == ("original", "diffusers")
    ours, theirs = pipes.base.transformer.state_dict(), reference.base.transformer.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    np.testing.assert_allclose(_image(pipes), _image(reference), atol=1e-5)


def test_the_dev_guidance_embedder_round_trips(demo_models_dir: Path) -> None:
    from serve_app.model.demo.flow_architectures import build_tiny_flux_pipeline

    state = build_tiny_flux_pipeline(guidance=True).transformer.state_dict()
    original = flux_to_original(state, ORIGINAL_PREFIX)
    assert ORIGINAL_PREFIX + "guidance_in.in_layer.weight" in original
    back = convert_flux_original(dict(original))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="without a BFL name"):
        flux_to_original({**state, "extra.weight": torch.zeros(1)})
