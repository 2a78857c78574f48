"""The conversion cache of single-file checkpoints: written once, used after, never trusted when stale or broken.

Conversions are counted by wrapping diffusers' real `from_single_file`; images are 64x64, 2 steps, through
`ModelRunner`, and must be byte-identical to those of a direct single-file load (cache `off`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults
from serve_app.core.errors import CheckpointNotFoundError
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from serve_app.model.inspection.safetensors_header import read_safetensors_header
from serve_app.model.loading.converted_cache import (
    CACHE_DIR_ENV,
    DEFAULT_CACHE_DIR_NAME,
    MANIFEST_NAME,
    CacheKey,
    ConvertedCache,
    resolve_cache_dir,
)
from serve_app.model.loading.mapped_folder import SHARED_DIR
from serve_app.model.loading.mapped_weights import COMPONENTS_DIR
from serve_app.model.loading.pipeline_loader import load_pipelines
from tests.unit.runner_helpers import pixels

SDXL_FILE = "tiny-sdxl.safetensors"
CPU = torch.device("cpu")


class Conversions:
    """Counts calls of diffusers' real `from_single_file` (the conversion the cache saves)."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Conversions:
    from diffusers.loaders.single_file import FromSingleFileMixin

    counter = Conversions()
    real = FromSingleFileMixin.__dict__["from_single_file"].__func__

    def counting(cls, *args, **kwargs):
        counter.count += 1
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(FromSingleFileMixin, "from_single_file", classmethod(counting))
    return counter


@pytest.fixture(autouse=True)
def _no_cache_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)


@pytest.fixture
def checkpoint(tmp_path: Path, demo_models_dir: Path) -> Path:
    """A private copy of the tiny SDXL single file (the tests change and delete it)."""
    target = tmp_path / "models" / SDXL_FILE
    target.parent.mkdir()
    shutil.copy2(demo_models_dir / SDXL_FILE, target)
    return target


def _runner(path: Path, cache_dir: str | Path | None) -> ModelRunner:
    mode = ModeConfig(name="cached", checkpoint=str(path), scheduler="euler",
                      defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0))
    return ModelRunner(mode, path, device=CPU, loader=functools.partial(load_pipelines, cache_dir=cache_dir))


def _image(path: Path, cache_dir: str | Path | None) -> bytes:
    """Load `path` (through the cache in `cache_dir`), make one 64x64 2-step image, unload."""
    runner = _runner(path, cache_dir)
    runner.load()
    try:
        req = Txt2ImgRequest(prompt="a lighthouse at dusk", seed=11)
        return pixels(runner.generate(resolve_request(req, runner.mode, runner.family)).images[0].data)
    finally:
        runner.unload()


@pytest.fixture(scope="module")
def reference_image(demo_models_dir: Path) -> bytes:
    """The image of a direct single-file load, without the cache."""
    return _image(demo_models_dir / SDXL_FILE, "off")


def _entries(root: Path) -> list[Path]:
    """The cache's entries (not its stores of shared parts and cast copies)."""
    stores = (SHARED_DIR, COMPONENTS_DIR)
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in stores) if root.is_dir() else []


def _only_entry(root: Path) -> Path:
    entries = _entries(root)
    assert len(entries) == 1, entries
    return entries[0]


# -- hits and misses -----------------------------------------------------------------------------------------

def test_first_load_converts_once_and_later_loads_use_the_entry(checkpoint: Path, conversions: Conversions,
                                                                reference_image: bytes) -> None:
    root = checkpoint.parent / DEFAULT_CACHE_DIR_NAME  # the default: next to the checkpoint
    assert _image(checkpoint, None) == reference_image
    assert conversions.count == 1
    entry = _only_entry(root)
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    assert manifest["key"]["source"] == str(checkpoint) and manifest["key"]["family"] == "sdxl"
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    assert _image(checkpoint, None) == reference_image
    assert _image(checkpoint, None) == reference_image
    assert conversions.count == 1  # the later loads converted nothing
    assert _entries(root) == [entry]


def test_a_touched_file_misses_and_its_stale_entry_is_pruned(checkpoint: Path, tmp_path: Path,
                                                             conversions: Conversions) -> None:
    info, cache = inspect_checkpoint(checkpoint), tmp_path / "cache"
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    first = _only_entry(cache)
    st = checkpoint.stat()
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    assert conversions.count == 2
    assert _only_entry(cache) != first  # the new entry replaced the stale one


def test_changed_tensor_bytes_are_loaded_not_the_old_entry(checkpoint: Path, tmp_path: Path,
                                                           conversions: Conversions) -> None:
    info, cache = inspect_checkpoint(checkpoint), tmp_path / "cache"
    before = load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache).base.unet.conv_in.weight
    assert before.abs().sum() > 0
    tensors, _ = read_safetensors_header(checkpoint)
    header_len = int.from_bytes(checkpoint.read_bytes()[:8], "little")
    begin, end = tensors["model.diffusion_model.input_blocks.0.0.weight"].data_offsets
    with checkpoint.open("r+b") as fh:  # zero the UNet's conv_in weight in place (same size, new mtime)
        fh.seek(8 + header_len + begin)
        fh.write(bytes(end - begin))
    after = load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache).base.unet.conv_in.weight
    assert conversions.count == 2
    assert after.abs().sum() == 0


def test_a_changed_header_misses_even_with_size_and_mtime_kept(checkpoint: Path, tmp_path: Path,
                                                               conversions: Conversions) -> None:
    info, cache = inspect_checkpoint(checkpoint), tmp_path / "cache"
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    st = checkpoint.stat()
    data = checkpoint.read_bytes()
    old = b'"dreamlab.family":"sdxl"'
    assert data.count(old) == 1
    checkpoint.write_bytes(data.replace(old, b'"dreamlab.family":"sdxL"'))  # a metadata value nothing reads
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoint.stat().st_size == st.st_size
    load_pipelines(inspect_checkpoint(checkpoint), info.family, torch.float32, CPU, cache_dir=cache)
    assert conversions.count == 2


# -- broken entries are rebuilt -----------------------------------------------------------------------------

def _truncate_weights(entry: Path) -> None:
    weights = entry / "unet" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)


def _garbage_weight_header(entry: Path) -> None:
    weights = entry / "text_encoder" / "model.safetensors"
    with weights.open("r+b") as fh:  # same size, header bytes overwritten
        fh.seek(8)
        fh.write(b"\x00garbage{")


def _broken_config_with_a_matching_manifest(entry: Path) -> None:
    """A manifest that vouches for a broken file: only the load itself can notice."""
    config = entry / "unet" / "config.json"
    config.write_text('{"_class_name": "UNet2DConditionModel", "block_out_channels": "not a list"}')
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    manifest["files"]["unet/config.json"] = {"bytes": config.stat().st_size,
                                             "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    (entry / MANIFEST_NAME).write_text(json.dumps(manifest))


CORRUPTIONS = {
    "truncated weight file": _truncate_weights,
    "deleted weight file": lambda entry: (entry / "vae" / "diffusion_pytorch_model.safetensors").unlink(),
    "garbage weight header": _garbage_weight_header,
    "deleted manifest": lambda entry: (entry / MANIFEST_NAME).unlink(),
    "garbage manifest": lambda entry: (entry / MANIFEST_NAME).write_text("{not json"),
    "manifest of another file": lambda entry: (entry / MANIFEST_NAME).write_text(
        (entry / MANIFEST_NAME).read_text().replace('"family": "sdxl"', '"family": "sd1"')),
    "entry that does not load": _broken_config_with_a_matching_manifest,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_broken_entry_is_rebuilt_and_gives_the_same_image(corruption: str, checkpoint: Path, tmp_path: Path,
                                                             conversions: Conversions, reference_image: bytes,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    info = inspect_checkpoint(checkpoint)
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    entry = _only_entry(cache)
    CORRUPTIONS[corruption](entry)

    with caplog.at_level(logging.WARNING, logger="serve_app.model.loading.converted_cache"):
        assert _image(checkpoint, cache) == reference_image
    assert conversions.count == 2
    assert any("discarding" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records)
    assert _only_entry(cache) == entry  # rebuilt in place, and intact again:
    assert _image(checkpoint, cache) == reference_image and conversions.count == 2


# -- where the cache lives, and when there is none ----------------------------------------------------------

def test_an_unwritable_cache_dir_falls_back_to_direct_loads(checkpoint: Path, tmp_path: Path,
                                                            conversions: Conversions, reference_image: bytes,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder below a file cannot be made, not even by root
    with caplog.at_level(logging.WARNING, logger="serve_app.model.loading.converted_cache"):
        assert _image(checkpoint, blocker / "cache") == reference_image
        assert _image(checkpoint, blocker / "cache") == reference_image
    assert conversions.count == 2  # every load converts, as without a cache
    assert any("not writable" in r.getMessage() and str(blocker / "cache") in r.getMessage() for r in caplog.records)


def test_off_converts_every_time_and_writes_nothing(checkpoint: Path, conversions: Conversions) -> None:
    info = inspect_checkpoint(checkpoint)
    for _ in range(2):
        load_pipelines(info, info.family, torch.float32, CPU, cache_dir="off")
    assert conversions.count == 2
    assert not (checkpoint.parent / DEFAULT_CACHE_DIR_NAME).exists()


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "models" / "x.safetensors"
    assert resolve_cache_dir(ckpt) == tmp_path / "models" / DEFAULT_CACHE_DIR_NAME
    assert resolve_cache_dir(ckpt, tmp_path / "mine") == tmp_path / "mine"
    assert resolve_cache_dir(ckpt, "off") is None
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "from-env"))
    assert resolve_cache_dir(ckpt) == tmp_path / "from-env"
    assert resolve_cache_dir(ckpt, tmp_path / "mine") == tmp_path / "mine"  # the argument wins
    monkeypatch.setenv(CACHE_DIR_ENV, "OFF")
    assert resolve_cache_dir(ckpt) is None


def test_the_environment_variable_places_the_cache(checkpoint: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env-cache"))
    info = inspect_checkpoint(checkpoint)
    load_pipelines(info, info.family, torch.float32, CPU)
    assert _only_entry(tmp_path / "env-cache")
    assert not (checkpoint.parent / DEFAULT_CACHE_DIR_NAME).exists()


def test_a_deleted_checkpoint_is_not_served_from_its_entry(checkpoint: Path, tmp_path: Path) -> None:
    info, cache = inspect_checkpoint(checkpoint), tmp_path / "cache"
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    assert _only_entry(cache)
    checkpoint.unlink()
    for cache_dir in (cache, "off"):
        with pytest.raises(CheckpointNotFoundError) as err:
            load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache_dir)
        assert str(checkpoint) in err.value.message and err.value.param == "checkpoint"


# -- every family, any dtype: the cached load equals the direct one ----------------------------------------

@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sd2", "tiny-sdxl", "tiny-sdxl-refiner"])
def test_cached_weights_equal_direct_ones_at_another_dtype(name: str, demo_models_dir: Path,
                                                           tmp_path: Path, conversions: Conversions) -> None:
    info = inspect_checkpoint(demo_models_dir / f"{name}.safetensors")
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=tmp_path)  # writes the entry
    cached = load_pipelines(info, info.family, torch.bfloat16, CPU, cache_dir=tmp_path).base
    direct = load_pipelines(info, info.family, torch.bfloat16, CPU, cache_dir="off").base
    assert conversions.count == 2  # the bf16 load came from the entry written by the fp32 one
    for component, module in direct.components.items():
        if isinstance(module, torch.nn.Module):
            ours, theirs = cached.components[component].state_dict(), module.state_dict()
            assert ours.keys() == theirs.keys(), component
            for k, v in theirs.items():
                assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), (component, k)
        else:
            assert type(cached.components[component]) is type(module), component
    assert dict(cached.scheduler.config) == dict(direct.scheduler.config)


# -- the cache folder's own rules (no conversion needed) ----------------------------------------------------

@pytest.fixture
def key(checkpoint: Path, tmp_path: Path) -> CacheKey:
    config = tmp_path / "config"
    config.mkdir()
    (config / "model_index.json").write_text("{}")
    return CacheKey.for_checkpoint(checkpoint, "sdxl", config)


def _fill(text: str):
    def fill(folder: Path) -> None:
        (folder / "model_index.json").write_text(text)
    return fill


def test_a_concurrent_writer_that_wins_the_rename_is_used(key: CacheKey, tmp_path: Path) -> None:
    cache = ConvertedCache(tmp_path / "cache")

    def slow_fill(folder: Path) -> None:  # while we fill, another loader publishes the same entry
        _fill("ours")(folder)
        assert cache.write(key, _fill("theirs")) == cache.entry_path(key)

    assert cache.write(key, slow_fill) == cache.entry_path(key)
    assert (cache.entry_path(key) / "model_index.json").read_text() == "theirs"
    assert cache.lookup(key) == cache.entry_path(key)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.entry_path(key).name]  # no temp left


def test_a_file_changed_during_conversion_is_not_cached(key: CacheKey, checkpoint: Path, tmp_path: Path) -> None:
    cache = ConvertedCache(tmp_path / "cache")

    def fill_while_the_file_changes(folder: Path) -> None:
        _fill("x")(folder)
        os.utime(checkpoint, ns=(0, key.mtime_ns + 5))

    assert cache.write(key, fill_while_the_file_changes) is None
    assert list((tmp_path / "cache").iterdir()) == []


def test_errors_of_the_conversion_propagate_and_leave_nothing(key: CacheKey, tmp_path: Path) -> None:
    cache = ConvertedCache(tmp_path / "cache")

    def failing(folder: Path) -> None:
        _fill("x")(folder)
        raise ValueError("does not convert")

    with pytest.raises(ValueError, match="does not convert"):
        cache.write(key, failing)
    assert list((tmp_path / "cache").iterdir()) == []



def test_running_out_of_device_memory_keeps_a_sound_entry(checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    info = inspect_checkpoint(checkpoint)
    load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    entry = _only_entry(cache)
    from diffusers import DiffusionPipeline

    def no_room(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(no_room))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    assert _only_entry(cache) == entry  # not discarded as broken
