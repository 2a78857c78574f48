"""On a real GPU: the VRAM a load takes matches the estimate's weights term, and unloading gives it back.

Skipped without CUDA. Uses the tiny demo checkpoints (tens of MB), so it runs in seconds.
"""

from __future__ import annotations

import gc
import io
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CHECKPOINTS = ["tiny-sdxl.safetensors", "tiny-sd1"]


def _settle() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


@pytest.fixture()
def cuda_warm() -> None:
    """Create the CUDA context and the cuBLAS/cuDNN workspaces first, so they are not counted as the model's."""
    a = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    (a @ a).sum().item()
    torch.nn.functional.conv2d(a[None, None], torch.randn(1, 1, 3, 3, device="cuda", dtype=torch.float16)).sum().item()
    del a
    _settle()


def _runner(demo_models_dir: Path, name: str):
    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.runner import ModelRunner

    path = demo_models_dir / name
    return ModelRunner(ModeConfig(name="gpu", checkpoint=str(path), dtype="fp16"), path,
                       device=torch.device("cuda", 0))


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_load_matches_estimate_and_unload_returns_memory(demo_models_dir: Path, cuda_warm, name: str) -> None:
    from serve_app.model.inspection.vram_estimate import estimate_vram

    runner = _runner(demo_models_dir, name)
    baseline = _settle()
    runner.load()
    loaded = _settle()
    delta = loaded - baseline
    expected = estimate_vram(runner.info, "fp16").weights_bytes
    assert runner.dtype == torch.float16
    assert abs(delta - expected) <= 0.10 * expected, f"allocated {delta} bytes, estimate {expected}"
    assert abs(runner.parameter_bytes() - expected) <= 0.01 * expected

    runner.unload()
    assert _settle() == baseline
    assert runner.loaded is False and runner.parameter_bytes() == 0


def test_generate_on_cuda_then_unload(demo_models_dir: Path, cuda_warm) -> None:
    from PIL import Image

    from serve_app.api.request_resolution import Txt2ImgRequest, resolve_request

    runner = _runner(demo_models_dir, "tiny-sdxl.safetensors")

    def cycle() -> None:
        runner.load()
        try:
            params = resolve_request(Txt2ImgRequest(prompt="a red fox", width=64, height=64, steps=2, seed=3),
                                     runner.mode, runner.family)
            result = runner.generate(params)
            assert Image.open(io.BytesIO(result.images[0].data)).size == (64, 64)
            assert runner.generate(params).images[0].data == result.images[0].data  # same seed, same bytes
        finally:
            runner.unload()

    # the first cycle creates the kernel libraries' workspaces, which live as long as the process
    cycle()
    baseline = _settle()
    cycle()
    assert _settle() == baseline  # weights, activations and scratch all went with the pipeline


def test_the_ram_tier_frees_the_device_and_copies_back(demo_models_dir: Path, cuda_warm) -> None:
    from serve_app.api.request_resolution import Txt2ImgRequest, resolve_request
    from serve_app.model.model_state import Tier

    runner = _runner(demo_models_dir, "tiny-sd1")
    baseline = _settle()
    runner.load()
    params = resolve_request(Txt2ImgRequest(prompt="a red fox", width=64, height=64, steps=2, seed=3),
                             runner.mode, runner.family)
    before = runner.generate(params).images[0].data
    loaded, weights = _settle(), runner.parameter_bytes()
    try:
        assert runner.offload() is True and runner.tier is Tier.RAM
        assert loaded - _settle() >= 0.95 * weights  # the weights left the device (scheduler tables may stay)
        unet = runner._pipes.txt2img.unet  # held in the RAM tier: pipelines() refuses while offloaded
        assert all(p.device.type == "cpu" and p.is_pinned() for p in unet.parameters())
        assert runner.load() is True and runner.loaded_from is Tier.RAM
        assert all(p.device.type == "cuda" for p in unet.parameters())  # the same modules, copied back
        assert abs(_settle() - loaded) <= 0.05 * weights
        assert runner.generate(params).images[0].data == before
    finally:
        runner.unload()
    assert _settle() == baseline
