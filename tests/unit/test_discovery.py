"""Discovery never stops: every servable checkpoint under MODEL_ROOT becomes a mode, every other candidate a
problem with its reason (an unsupported family, missing components, a pickle, a corrupt or foreign file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serve_app.api.mode_catalog import ModeCatalog
from serve_app.config.modes_file import ModeConfig, ModesFile, discover_checkpoints, modes_from_environment
from serve_app.core.errors import ConfigError, UnsupportedCheckpointError
from tests.unit.family_headers import flux_bfl, prefixed, sd_unet, write_header_file


@pytest.fixture()
def mixed_root(tmp_path: Path, demo_models_dir: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(demo_models_dir / "tiny-sd1.safetensors", root / "tiny-sd1.safetensors")
    write_header_file(root / "flux1-dev.safetensors", flux_bfl())
    write_header_file(root / "unet-only.safetensors", prefixed("model.diffusion_model.", sd_unet(2048, sdxl=True)))
    (root / "old.ckpt").write_bytes(b"\x80\x02pickle")
    (root / "broken.safetensors").write_bytes(b"\x01")
    (root / "notes.txt").write_text("not a candidate: skipped silently")
    return root


def test_discovery_serves_the_good_file_and_lists_the_rest(mixed_root: Path) -> None:
    modes, problems = discover_checkpoints(mixed_root)
    assert [m.checkpoint for m in modes] == ["tiny-sd1.safetensors"]
    by_path = {p.path: p for p in problems}
    assert sorted(by_path) == ["broken.safetensors", "flux1-dev.safetensors", "old.ckpt", "unet-only.safetensors"]
    flux = by_path["flux1-dev.safetensors"]
    assert (flux.family, flux.variant, flux.error_type) == ("flux", "flux-dev", "unsupported_checkpoint")
    assert "T5-XXL" in flux.message and "components:" in flux.message
    assert by_path["old.ckpt"].error_type == "pickle_checkpoint"
    assert by_path["broken.safetensors"].error_type == "corrupt_checkpoint"
    assert "CLIP-L" in by_path["unet-only.safetensors"].message


def test_environment_discovery_carries_the_problems_to_the_catalog(mixed_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    modes, root = modes_from_environment(None, mixed_root)
    assert [m.name for m in modes.modes] == ["tiny-sd1"] and len(modes.problems) == 4
    # what the router gets: the modes file as JSON, validated again
    catalog = ModeCatalog(ModesFile.model_validate(modes.model_dump(mode="json")), root)
    assert catalog.names() == ["tiny-sd1"]
    assert {p.path for p in catalog.problems} == {p.path for p in modes.problems}


def test_no_servable_checkpoint_names_the_unserved_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    write_header_file(tmp_path / "flux1-schnell.safetensors", flux_bfl(guidance=False))
    with pytest.raises(ConfigError) as err:
        modes_from_environment(None, tmp_path)
    assert "flux1-schnell.safetensors" in err.value.message and "flux-schnell" in err.value.message


def test_a_named_mode_on_an_unservable_checkpoint_is_refused_with_the_reason(mixed_root: Path) -> None:
    modes = ModesFile(modes=[ModeConfig(name="flux", checkpoint="flux1-dev.safetensors")])
    with pytest.raises(UnsupportedCheckpointError) as err:
        ModeCatalog(modes, mixed_root)
    assert err.value.status_code == 422 and "mode flux" in err.value.message and "T5-XXL" in err.value.message
