"""Loading what the families need: fp8 files upcast exactly (and cached), the v-prediction / zero-terminal-SNR
markers set the scheduler, and a recognised but unserved family is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from serve_app.core.errors import UnsupportedCheckpointError
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from serve_app.model.loading.pipeline_loader import load_pipelines
from tests.unit.family_headers import flux_comfy_all_in_one, write_header_file

CPU = torch.device("cpu")


def _copy(src: Path, dst: Path, convert=lambda k, v: v, extra: dict[str, torch.Tensor] | None = None) -> Path:
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    tensors = {k: convert(k, v) for k, v in load_file(str(src)).items()} | (extra or {})
    save_file(tensors, str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_fp8_copy_loads_upcast_exactly_and_is_cached(tmp_path: Path, demo_models_dir: Path, fp8: torch.dtype) -> None:
    src = demo_models_dir / "tiny-sd1.safetensors"
    path = _copy(src, tmp_path / "tiny-sd1-fp8.safetensors",
                 lambda k, v: v.to(fp8) if v.is_floating_point() else v)
    info = inspect_checkpoint(path)
    assert info.dtype == str(fp8).removeprefix("torch.") and info.serving_refusal is None
    cache = tmp_path / "cache"
    pipes = load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    expected = load_file(str(src))["model.diffusion_model.input_blocks.0.0.weight"].to(fp8).to(torch.float32)
    assert torch.equal(pipes.base.unet.conv_in.weight, expected)  # the fp8 values, widened without loss
    assert pipes.base.text_encoder.dtype == torch.float32
    assert any(cache.rglob("model_index.json"))  # converted once, kept (as fp16: fp8 widens into it exactly)
    again = load_pipelines(info, info.family, torch.float32, CPU, cache_dir=cache)
    assert torch.equal(again.base.unet.conv_in.weight, expected)


def test_v_prediction_and_ztsnr_markers_set_the_scheduler(tmp_path: Path, demo_models_dir: Path) -> None:
    path = _copy(demo_models_dir / "tiny-sd1.safetensors", tmp_path / "tiny-vpred.safetensors",
                 extra={"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})
    info = inspect_checkpoint(path)
    assert (info.prediction_type, info.zero_terminal_snr) == ("v_prediction", True)
    pipes = load_pipelines(info, info.family, torch.float32, CPU, cache_dir="off")
    for pipe in pipes.all():  # derived pipelines share the rebuilt scheduler
        cfg = pipe.scheduler.config
        assert cfg.prediction_type == "v_prediction" and cfg.rescale_betas_zero_snr
        assert cfg.timestep_spacing == "trailing"
    assert float(pipes.base.scheduler.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR: the last step is pure noise
    plain = load_pipelines(inspect_checkpoint(demo_models_dir / "tiny-sd1.safetensors"), info.family, torch.float32,
                           CPU, cache_dir="off")
    assert plain.base.scheduler.config.prediction_type == "epsilon"
    assert float(plain.base.scheduler.alphas_cumprod[-1]) > 1e-3


def test_flux_single_file_without_configs_is_refused_at_load_saying_what_to_add(tmp_path: Path) -> None:
    info = inspect_checkpoint(write_header_file(tmp_path / "flux1-dev.safetensors", flux_comfy_all_in_one()))
    with pytest.raises(UnsupportedCheckpointError) as err:
        load_pipelines(info, info.family, torch.float32, CPU)
    assert "flux-dev" in err.value.message and "`components: {config: <folder>}`" in err.value.message


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m", "unipc", "euler_a"])
def test_mode_zero_terminal_snr_override_reaches_every_scheduler_that_takes_it(demo_models_dir: Path,
                                                                                scheduler: str) -> None:
    from serve_app.model.generation.runner import ModelRunner
    from tests.unit.runner_helpers import mode_for, txt2img

    mode = mode_for(demo_models_dir / "tiny-sd1.safetensors", prediction_type="v_prediction",
                    zero_terminal_snr=True)
    runner = ModelRunner(mode, demo_models_dir / "tiny-sd1.safetensors", device=CPU)
    runner.load()
    built = runner.scheduler(scheduler)
    assert built.config.prediction_type == "v_prediction" and built.config.rescale_betas_zero_snr
    assert built.config.timestep_spacing == "trailing"
    assert len(txt2img(runner, scheduler=scheduler, steps=2).images) == 1  # it samples with that schedule


def test_mode_schedule_overrides() -> None:
    from types import SimpleNamespace

    from serve_app.model.loading.noise_schedule import mode_schedule_overrides

    assert mode_schedule_overrides(SimpleNamespace(prediction_type=None, zero_terminal_snr=None)) == {}
    assert mode_schedule_overrides(SimpleNamespace(prediction_type=None, zero_terminal_snr=False)) == {
        "rescale_betas_zero_snr": False}
    assert mode_schedule_overrides(SimpleNamespace(prediction_type="epsilon")) == {"prediction_type": "epsilon"}
