"""Component weights are mapped from one file per node: the demo's `flux` and `flux-schnell` modes hold their
shared text encoders as the same mapped file (same identity), their parameters inside that mapping; a mode in
another dtype maps one converted copy written once in the conversion cache; an offload points the weights
back at the mapping instead of keeping a private copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serve_app.config.mode_families import component_paths
from serve_app.config.modes_file import ModeConfig, load_modes_file
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.loading.mapped_weights import COMPONENTS_DIR, host_file, needs_conversion, restore_mapping

DEMO_MODES = Path(__file__).resolve().parents[2] / "configs" / "demo_modes.yaml"


def _mode(name: str, **update: object) -> ModeConfig:
    mode = next(m for m in load_modes_file(DEMO_MODES).modes if m.name == name)
    return mode.model_copy(update=update)


def _runner(models: Path, name: str, **update: object) -> ModelRunner:
    mode = _mode(name, **update)
    return ModelRunner(mode, models / mode.checkpoint, components=component_paths(mode, models),
                       device=torch.device("cpu"))


def _encoders(runner: ModelRunner) -> dict[str, str]:
    return {c.kind: c.identity for c in runner.host_components() if c.kind in ("clip_l", "t5xxl")}


@pytest.fixture(scope="module")
def loaded(demo_models_dir: Path) -> tuple[ModelRunner, ModelRunner]:
    flux, schnell = _runner(demo_models_dir, "flux"), _runner(demo_models_dir, "flux-schnell")
    flux.load()
    schnell.load()
    return flux, schnell


def test_two_modes_map_the_same_text_encoder_files(loaded: tuple[ModelRunner, ModelRunner]) -> None:
    flux, schnell = loaded
    assert set(_encoders(flux)) == {"clip_l", "t5xxl"} and _encoders(flux) == _encoders(schnell)
    t5 = next(c for c in flux.host_components() if c.kind == "t5xxl")
    encoder = flux._pipes.base.text_encoder_2  # type: ignore[union-attr]
    assert t5.path.endswith("tiny-t5xxl.safetensors")
    assert t5.host_bytes == sum(p.numel() * p.element_size() for p in encoder.parameters())  # all of it mapped
    assert "vae" in {c.kind for c in schnell.host_components()}  # its VAE file too
    assert flux.own_host_bytes() == flux.parameter_bytes() - sum(c.host_bytes for c in flux.host_components())


def test_an_offload_points_the_weights_back_at_the_mapping(loaded: tuple[ModelRunner, ModelRunner]) -> None:
    flux, _ = loaded
    pipes = flux._pipes
    assert pipes is not None
    part = next(p for p in pipes.mapped if p.component.kind == "t5xxl")
    mapped_ptrs = [t.data_ptr() for _, t in part.tensors]
    for param, _ in part.tensors:  # what a copy to a device and back leaves: private memory
        param.data = param.data.clone()
    assert [p.data_ptr() for p, _ in part.tensors] != mapped_ptrs
    restore_mapping(part)
    assert [p.data_ptr() for p, _ in part.tensors] == mapped_ptrs


def test_another_dtype_maps_one_converted_copy_written_once(demo_models_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    t5 = demo_models_dir / "components" / "tiny-t5xxl.safetensors"
    assert needs_conversion(t5, "", torch.bfloat16) and not needs_conversion(t5, "", torch.float32)
    assert host_file(t5, "", torch.float32) == t5  # stored in the mode's dtype: the file itself
    first, second = (_runner(demo_models_dir, name, dtype="bf16") for name in ("flux", "flux-schnell"))
    first.load()
    cache = tmp_path / "cache" / COMPONENTS_DIR
    copies = sorted([*cache.glob("tiny-t5xxl-bf16-*"), *cache.glob("tiny-flux-clip-l-bf16-*")])
    stamps = [p.stat().st_mtime_ns for p in copies]
    second.load()
    assert len(copies) == 2 and [p.stat().st_mtime_ns for p in copies] == stamps  # written once, by the first
    assert {"transformer", "vae"} <= {c.kind for c in second.host_components()}  # its own files (diffusers keys)
    assert _encoders(first) == _encoders(second) and set(_encoders(first)) == {"clip_l", "t5xxl"}
    encoder = second._pipes.base.text_encoder_2  # type: ignore[union-attr]
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    first.unload()
    second.unload()
