"""A runner's lifecycle with the real tiny pipelines: unload frees, offload keeps the pipeline for a fast way
back, custom jobs hold the pipeline against an unload, and loads that fail leave the right state."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref
from pathlib import Path

import pytest
import torch

from serve_app.core.errors import CheckpointNotFoundError, ModelNotReadyError
from serve_app.model.generation.runner import ModelRunner, ModelState
from serve_app.model.model_state import Tier
from tests.unit.runner_helpers import mode_for, txt2img


def test_unload_frees_and_reload_works(demo_models_dir: Path) -> None:
    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    assert runner.loaded is False and runner.parameter_bytes() == 0 and runner.state is ModelState.COLD
    assert runner.load() is True
    assert runner.load() is False  # loading a loaded runner is a no-op that says so
    assert runner.parameter_bytes() > 0
    before = txt2img(runner, seed=42).images[0].data
    unet = weakref.ref(runner.pipelines().txt2img.unet)

    assert runner.unload() is True
    gc.collect()
    assert runner.loaded is False and runner.parameter_bytes() == 0 and runner.state is ModelState.COLD
    assert unet() is None  # nothing keeps the weights alive
    with pytest.raises(ModelNotReadyError):
        runner.pipelines()
    with pytest.raises(ModelNotReadyError):
        txt2img(runner, seed=42)
    assert runner.unload() is False

    assert runner.load() is True
    after = txt2img(runner, seed=42).images[0].data
    assert after == before  # same weights, same image
    # and a second, independent runner of the same checkpoint agrees byte for byte
    other = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    other.load()
    assert txt2img(other, seed=42).images[0].data == before
    other.unload()
    runner.unload()


def test_offload_keeps_the_pipeline_and_load_brings_it_back(demo_models_dir: Path) -> None:
    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    assert runner.offload() is False  # nothing on the device yet
    runner.load()
    before = txt2img(runner, seed=42).images[0].data
    unet = runner.pipelines().txt2img.unet
    size = runner.parameter_bytes()

    assert runner.offload() is True
    assert (runner.tier, runner.state, runner.loaded) == (Tier.RAM, ModelState.OFFLOADED, False)
    assert runner.parameter_bytes() == size  # what it holds in host memory
    with pytest.raises(ModelNotReadyError):
        txt2img(runner, seed=42)
    assert runner.load() is True and runner.loaded_from is Tier.RAM and runner.tier is Tier.VRAM
    assert runner.pipelines().txt2img.unet is unet  # no read from disk, no construction
    assert txt2img(runner, seed=42).images[0].data == before
    runner.offload()
    assert runner.unload() is True and runner.tier is Tier.DISK and runner.parameter_bytes() == 0
    assert runner.load() is True and runner.loaded_from is Tier.DISK
    runner.unload()


def test_a_custom_job_holds_the_pipeline_against_an_unload(demo_models_dir: Path) -> None:
    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    runner.load()
    inside, release, seen = threading.Event(), threading.Event(), []

    def job() -> str:
        inside.set()
        release.wait(10)
        seen.append(runner.pipelines().txt2img.unet is not None)  # still there: the unload waited
        return "done"

    worker = threading.Thread(target=lambda: seen.append(runner.run_exclusive(job)))
    worker.start()
    assert inside.wait(10)
    unloader = threading.Thread(target=runner.unload)
    unloader.start()
    unloader.join(0.3)
    assert unloader.is_alive() and runner.loaded  # waits for the job
    release.set()
    worker.join(10)
    unloader.join(10)
    assert seen == [True, "done"] and not runner.loaded
    with pytest.raises(ModelNotReadyError):
        runner.run_exclusive(job)


def test_a_checkpoint_deleted_while_cold_fails_that_load_with_its_name(demo_models_dir: Path,
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "gone.safetensors"
    shutil.copy(demo_models_dir / "tiny-sd1.safetensors", path)
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    path.unlink()
    with pytest.raises(CheckpointNotFoundError, match="gone.safetensors"):
        runner.load()
    assert runner.state is ModelState.COLD and runner.tier is Tier.DISK  # not a broken pipeline: no restart


def test_failed_load_is_reported(demo_models_dir: Path) -> None:
    path = demo_models_dir / "tiny-sd1"

    def broken_loader(*args):
        raise RuntimeError("disk on fire")

    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"), loader=broken_loader)
    with pytest.raises(RuntimeError):
        runner.load()
    assert runner.state is ModelState.FAILED and runner.last_error == "disk on fire" and not runner.loaded
