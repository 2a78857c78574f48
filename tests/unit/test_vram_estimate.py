"""The VRAM estimate: the documented formula, its monotonicity, dtype scaling, and the weights term
checked against what a real load holds (parameter bytes on the CPU; tests/gpu does it on CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.model.demo.architectures import demo_name
from serve_app.model.families import Family
from serve_app.model.inspection import vram_estimate as ve
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, inspect_checkpoint
from serve_app.model.inspection.vram_estimate import estimate_vram


@pytest.fixture(scope="module")
def sdxl_info(demo_models_dir: Path) -> CheckpointInfo:
    return inspect_checkpoint(demo_models_dir / f"{demo_name(Family.SDXL)}.safetensors")


def _documented(info: CheckpointInfo, per: int, width: int, height: int, batch: int) -> dict[str, int]:
    """The formula exactly as the module docstring states it."""
    weights = info.param_count * per
    unet_act = batch * 2 * (height / 8) * (width / 8) * info.unet_base_channels * ve.UNET_ACTIVATION_FACTOR * per
    vae_act = batch * height * width * info.vae_decoder_channels * ve.VAE_ACTIVATION_FACTOR * per
    working = max(unet_act, vae_act)
    return {"weights": weights, "working": int(working), "total": int(weights + working + ve.ALLOCATOR_SLACK)}


def test_docstring_states_the_formula_and_constants() -> None:
    doc = ve.__doc__
    for term in ("weights  = param_count * bytes_per(dtype)", "UNET_ACTIVATION_FACTOR", "VAE_ACTIVATION_FACTOR",
                 "max(unet_act, vae_act)", "ALLOCATOR_SLACK"):
        assert term in doc
    assert ve.BYTES_PER_DTYPE == {"fp32": 4, "fp16": 2, "bf16": 2}


@pytest.mark.parametrize("dtype", ["fp16", "fp32", "bf16"])
@pytest.mark.parametrize(("width", "height", "batch"), [(64, 64, 1), (512, 512, 1), (1024, 768, 3), (256, 1024, 4)])
def test_numbers_match_the_documented_formula(sdxl_info: CheckpointInfo, dtype: str, width: int, height: int,
                                              batch: int) -> None:
    est = estimate_vram(sdxl_info, dtype, width, height, batch)
    want = _documented(sdxl_info, ve.BYTES_PER_DTYPE[dtype], width, height, batch)
    assert (est.weights_bytes, est.working_bytes, est.total_bytes) == (want["weights"], want["working"], want["total"])
    assert (est.dtype, est.width, est.height, est.batch_size) == (dtype, width, height, batch)
    assert est.total_bytes == est.weights_bytes + est.working_bytes + ve.ALLOCATOR_SLACK


def test_working_memory_is_the_larger_stage(sdxl_info: CheckpointInfo) -> None:
    """The UNet loop and the VAE decode do not overlap: the peak is the bigger of the two, not the sum."""
    wide_unet = sdxl_info.model_copy(update={"unet_base_channels": 320, "vae_decoder_channels": 1})
    wide_vae = sdxl_info.model_copy(update={"unet_base_channels": 1, "vae_decoder_channels": 128})
    a, b = estimate_vram(wide_unet, "fp16", 512, 512), estimate_vram(wide_vae, "fp16", 512, 512)
    assert a.working_bytes == 2 * 64 * 64 * 320 * ve.UNET_ACTIVATION_FACTOR * 2
    assert b.working_bytes == 512 * 512 * 128 * ve.VAE_ACTIVATION_FACTOR * 2


def test_monotonic_in_resolution(sdxl_info: CheckpointInfo) -> None:
    sides = list(range(64, 2049, 64))
    totals = [estimate_vram(sdxl_info, "fp16", s, s).total_bytes for s in sides]
    assert all(a < b for a, b in zip(totals, totals[1:]))
    widths = [estimate_vram(sdxl_info, "fp16", w, 512).total_bytes for w in sides]
    heights = [estimate_vram(sdxl_info, "fp16", 512, h).total_bytes for h in sides]
    assert all(a < b for a, b in zip(widths, widths[1:]))
    assert widths == heights  # width and height play the same role
    # weights do not depend on the resolution; only the working memory grows
    assert len({estimate_vram(sdxl_info, "fp16", s, s).weights_bytes for s in sides}) == 1


def test_monotonic_and_linear_in_batch(sdxl_info: CheckpointInfo) -> None:
    ests = [estimate_vram(sdxl_info, "fp16", 512, 512, b) for b in range(1, 9)]
    assert all(a.total_bytes < b.total_bytes for a, b in zip(ests, ests[1:]))
    assert all(e.working_bytes == ests[0].working_bytes * e.batch_size for e in ests)
    assert len({e.weights_bytes for e in ests}) == 1


def test_fp32_weights_are_twice_fp16(sdxl_info: CheckpointInfo) -> None:
    fp16, fp32, bf16 = (estimate_vram(sdxl_info, d, 512, 512) for d in ("fp16", "fp32", "bf16"))
    assert fp32.weights_bytes == 2 * fp16.weights_bytes
    assert fp32.working_bytes == 2 * fp16.working_bytes
    assert bf16.weights_bytes == fp16.weights_bytes and bf16.total_bytes == fp16.total_bytes
    # the stored dtype does not matter, only the target dtype: the fp16 file needs fp32 room when loaded in fp32
    assert fp16.weights_bytes == sdxl_info.param_bytes  # stored fp16 == target fp16


def test_family_default_resolution(demo_models_dir: Path) -> None:
    for family, side in ((Family.SD1, 512), (Family.SD2, 768), (Family.SDXL, 1024), (Family.SDXL_REFINER, 1024)):
        info = inspect_checkpoint(demo_models_dir / demo_name(family))
        est = estimate_vram(info)
        assert (est.width, est.height, est.dtype, est.batch_size) == (side, side, "fp16", 1)
        assert est.total_bytes == estimate_vram(info, "fp16", side, side, 1).total_bytes


@pytest.mark.parametrize(("checkpoint", "dtype"), [
    ("tiny-sd1", "fp32"), ("tiny-sd2.safetensors", "fp16"), ("tiny-sdxl", "fp16"),
    ("tiny-sdxl-refiner.safetensors", "bf16"),
])
def test_weights_term_matches_a_real_load(demo_models_dir: Path, checkpoint: str, dtype: str) -> None:
    """After a real load the pipeline holds the estimated weight bytes (plus tiny non-stored buffers)."""
    import torch

    from serve_app.config.modes_file import ModeConfig
    from serve_app.model.generation.runner import ModelRunner

    path = demo_models_dir / checkpoint
    runner = ModelRunner(ModeConfig(name="m", checkpoint=str(path), dtype=dtype), path, device=torch.device("cpu"))
    runner.load()
    try:
        dtypes = {t.dtype for m in runner.pipelines().base.components.values() if isinstance(m, torch.nn.Module)
                  for t in m.parameters()}
        assert dtypes == {runner.dtype}  # every module in the asked dtype (img2img shares them, and keeps it)
        held = runner.parameter_bytes()
        expected = estimate_vram(runner.info, dtype).weights_bytes
        assert abs(held - expected) <= 0.001 * expected, (held, expected)
    finally:
        runner.unload()


def test_each_controlnet_unit_adds_its_share_of_the_denoising_stage(sdxl_info: CheckpointInfo) -> None:
    """A unit runs a ControlNet (the denoiser's encoder half) on the same latents: half the denoiser's
    activations more per unit, in the denoising stage only (the VAE decode is unchanged)."""
    wide_unet = sdxl_info.model_copy(update={"unet_base_channels": 320, "vae_decoder_channels": 1})
    plain = estimate_vram(wide_unet, "fp16", 512, 512).working_bytes
    for units in (1, 2):
        with_units = estimate_vram(wide_unet, "fp16", 512, 512, control_units=units)
        assert with_units.working_bytes == plain * (1 + ve.CONTROLNET_ACTIVATION_SHARE * units)
        assert with_units.weights_bytes == estimate_vram(wide_unet, "fp16", 512, 512).weights_bytes
    wide_vae = sdxl_info.model_copy(update={"unet_base_channels": 1, "vae_decoder_channels": 128})
    assert (estimate_vram(wide_vae, "fp16", 512, 512, control_units=2).working_bytes
            == estimate_vram(wide_vae, "fp16", 512, 512).working_bytes)  # the decode is still the peak
