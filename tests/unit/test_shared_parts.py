"""Parts inside all-in-one checkpoints shared by content: two SDXL fine-tunes that differ only in their UNet
(as fine-tunes of one base model do) map one VAE and one pair of text encoders, booked once by the RAM tier,
while each keeps its own UNet; the fingerprints are computed once per file version; images are those of a
direct load."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults
from serve_app.model.demo.demo_models import write_fine_tune
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.loading import mapped_folder
from serve_app.model.loading.mapped_folder import PARTS_RECORD, SHARED_DIR
from serve_app.model.loading.mapped_weights import COMPONENTS_DIR
from serve_app.model.loading.pipeline_loader import load_pipelines
from tests.unit.runner_helpers import pixels

SDXL_FILE = "tiny-sdxl.safetensors"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _runner(path: Path, cache: Path | str) -> ModelRunner:
    mode = ModeConfig(name=path.stem, checkpoint=str(path), scheduler="euler",
                      defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0))
    return ModelRunner(mode, path, device=torch.device("cpu"),
                       loader=functools.partial(load_pipelines, cache_dir=cache))


def _image(runner: ModelRunner) -> bytes:
    req = Txt2ImgRequest(prompt="a lighthouse at dusk", seed=11)
    return pixels(runner.generate(resolve_request(req, runner.mode, runner.family)).images[0].data)


@pytest.fixture(scope="module")
def fine_tunes(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("fine-tunes")
    base = shutil.copy2(demo_models_dir / SDXL_FILE, folder / "base.safetensors")
    return folder / "cache", [Path(base), write_fine_tune(Path(base), folder / "tuned.safetensors", seed=1)]


@pytest.fixture(scope="module")
def loaded(fine_tunes: tuple[Path, list[Path]]) -> list[ModelRunner]:
    cache, files = fine_tunes
    runners = [_runner(path, cache) for path in files]
    for runner in runners:
        runner.load()
    return runners


def _identities(runner: ModelRunner) -> dict[str, str]:
    return {c.kind: c.identity for c in runner.host_components()}


def test_fine_tunes_map_one_vae_and_text_encoders_and_their_own_unets(loaded: list[ModelRunner]) -> None:
    base, tuned = (_identities(r) for r in loaded)
    assert set(base) == {"unet", "vae", "clip_l", "clip_g"}
    assert {k: base[k] for k in ("vae", "clip_l", "clip_g")} == {k: tuned[k] for k in ("vae", "clip_l", "clip_g")}
    assert base["unet"] != tuned["unet"]
    for runner in loaded:  # every weight of the model lives in a mapping: only its buffers are its own
        assert runner._pipes is not None
        buffers = sum(b.numel() * b.element_size() for m in runner._pipes.modules() for b in m.buffers())
        assert runner.own_host_bytes() == buffers < runner.parameter_bytes() // 100


def test_the_store_holds_one_file_per_distinct_part(fine_tunes: tuple[Path, list[Path]],
                                                    loaded: list[ModelRunner]) -> None:
    cache, _ = fine_tunes
    store = sorted((cache / SHARED_DIR).glob("*.safetensors"))
    assert len(store) == 5  # one VAE, one CLIP-L, one CLIP-G, two UNets
    links = {p.name: p.stat().st_nlink for p in store}
    assert sorted(links.values()) == [2, 2, 3, 3, 3], links  # shared parts: the store and both entries


def test_images_are_those_of_a_direct_load(fine_tunes: tuple[Path, list[Path]], loaded: list[ModelRunner]) -> None:
    _, files = fine_tunes
    images = [_image(r) for r in loaded]
    assert images[0] != images[1]  # the UNets differ
    for path, image in zip(files, images, strict=True):
        direct = _runner(path, "off")
        direct.load()
        try:  # the same weights; a mapped tensor's address (its alignment) may change the last float bit
            reference = np.frombuffer(_image(direct), dtype=np.uint8).astype(int)
            assert np.abs(np.frombuffer(image, dtype=np.uint8).astype(int) - reference).max() <= 1
        finally:
            direct.unload()


def test_fingerprints_are_computed_once_per_file_version(fine_tunes: tuple[Path, list[Path]],
                                                         loaded: list[ModelRunner],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache, files = fine_tunes
    hashed: list[Path] = []
    real = mapped_folder.sha256_file
    monkeypatch.setattr(mapped_folder, "sha256_file", lambda path: hashed.append(path) or real(path))
    again = _runner(files[1], cache)
    again.load()
    assert hashed == [] and _identities(again) == _identities(loaded[1])
    entry = next(p for p in cache.iterdir() if p.name.startswith("tuned-"))
    assert (entry / PARTS_RECORD).is_file()

    os.utime(files[1])  # a new file version: a new entry, fingerprinted once, its parts linked to the same store
    newer = _runner(files[1], cache)
    newer.load()
    # its 4 parts fingerprinted, and the 4 store files they equal checked once before they are linked
    assert len(hashed) == 8 and _identities(newer) == _identities(loaded[1])


def test_a_damaged_store_file_is_replaced_not_linked(fine_tunes: tuple[Path, list[Path]],
                                                     tmp_path: Path) -> None:
    _, files = fine_tunes
    cache = tmp_path / "cache"
    first = _runner(files[0], cache)
    first.load()
    first.unload()
    first_vae = next(p for p in cache.iterdir() if p.name.startswith("base-")) / "vae" / VAE_WEIGHTS
    (store_vae,) = [p for p in (cache / SHARED_DIR).iterdir() if os.path.samefile(p, first_vae)]
    size = store_vae.stat().st_size
    store_vae.unlink()  # the first entry keeps its file; the store gets a damaged one of the same size
    store_vae.write_bytes(b"\0" * size)

    second = _runner(files[1], cache)
    second.load()
    try:
        entry = next(p for p in cache.iterdir() if p.name.startswith("tuned-"))
        assert os.path.samefile(store_vae, entry / "vae" / VAE_WEIGHTS)
        assert _image(second)  # it generates: its VAE is its own intact file, now the store's
    finally:
        second.unload()


def test_a_part_no_checkpoint_uses_any_more_leaves_with_its_cast_copies(fine_tunes: tuple[Path, list[Path]],
                                                                         tmp_path: Path) -> None:
    _, files = fine_tunes
    cache = tmp_path / "cache"
    tuned = Path(shutil.copy2(files[1], tmp_path / "tuned.safetensors"))
    first = _runner(tuned, cache)
    first.load()  # fp32 on the CPU: each fp16 part is mapped from its fp32 cast copy
    old_unet = _identities(first)["unet"]
    first.unload()
    casts_before = sorted((cache / COMPONENTS_DIR).iterdir())
    assert len(casts_before) == 4

    write_fine_tune(files[0], tuned, seed=2)  # the file is replaced by another fine-tune: its old UNet is unused
    second = _runner(tuned, cache)
    second.load()
    try:
        assert _identities(second)["unet"] != old_unet
        assert len(list((cache / SHARED_DIR).glob("*.safetensors"))) == 4  # the old UNet's store file is gone
        casts = sorted((cache / COMPONENTS_DIR).iterdir())
        assert len(casts) == 4 and len(set(casts) & set(casts_before)) == 3  # and its cast copy with it
    finally:
        second.unload()
