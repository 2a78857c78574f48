"""LoRAs applied by the runner on the real tiny pipelines: they change the image, weight 0 and a request
without LoRAs give the checkpoint's own image, loaded LoRAs stay cached within a bytes budget, and a file
diffusers cannot load fails that request only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serve_app.core.errors import AdapterFileError
from serve_app.model.generation.job import LoraUse
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import mode_for, pixels


def _lora(models: Path, name: str, weight: float = 1.0) -> LoraUse:
    path = models / "loras" / f"{name}.safetensors"
    return LoraUse(name=name, path=str(path), weight=weight, file_bytes=path.stat().st_size)


def _generate(runner: ModelRunner, loras: list[LoraUse]) -> bytes:
    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Txt2ImgRequest

    params = resolve_request(Txt2ImgRequest(prompt="a red fox", seed=5), runner.mode, runner.family)
    params.loras = loras
    return pixels(runner.generate(params).images[0].data)


@pytest.fixture(scope="module")
def runner(demo_models_dir: Path):
    path = demo_models_dir / "tiny-sd1"
    runner = ModelRunner(mode_for(path), path, device=torch.device("cpu"))
    runner.load()
    yield runner
    runner.unload()


def test_a_lora_changes_the_image_and_leaves_nothing_behind(demo_models_dir: Path, runner: ModelRunner) -> None:
    plain = _generate(runner, [])
    styled = _generate(runner, [_lora(demo_models_dir, "tiny-sd1-lora")])
    assert styled != plain
    assert _generate(runner, []) == plain  # the next request without LoRAs: the checkpoint's own image
    assert _generate(runner, [_lora(demo_models_dir, "tiny-sd1-lora", 0.0)]) == plain  # weight 0 is no LoRA
    both = _generate(runner, [_lora(demo_models_dir, "tiny-sd1-lora"), _lora(demo_models_dir, "tiny-sd1-lora-kohya")])
    assert both not in (plain, styled)
    assert _generate(runner, [_lora(demo_models_dir, "tiny-sd1-lora")]) == styled  # its own set, its own image
    assert runner.adapter_bytes() == sum(lo.file_bytes for lo in runner.loras.loaded.values()) > 0


def test_loaded_loras_are_reused_and_the_least_recent_leaves_over_budget(demo_models_dir: Path,
                                                                         runner: ModelRunner) -> None:
    a, b = _lora(demo_models_dir, "tiny-sd1-lora"), _lora(demo_models_dir, "tiny-sd1-lora-kohya")
    runner.loras.max_bytes = max(a.file_bytes, b.file_bytes)  # room for one
    try:
        _generate(runner, [a])
        loads = runner.loras.loads
        _generate(runner, [a])
        assert runner.loras.loads == loads  # cached: no second load
        _generate(runner, [b])
        assert [lo.name for lo in runner.loras.loaded.values()] == ["tiny-sd1-lora-kohya"]
        assert runner.loras.loads == loads + 1
    finally:
        runner.loras.max_bytes = 2**30


def test_a_lora_file_that_does_not_load_fails_that_request_only(demo_models_dir: Path, runner: ModelRunner,
                                                                tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    plain = _generate(runner, [])
    with pytest.raises(AdapterFileError, match="broken"):
        _generate(runner, [LoraUse(name="broken", path=str(bad), weight=1.0, file_bytes=bad.stat().st_size)])
    assert _generate(runner, []) == plain and runner.self_check()
