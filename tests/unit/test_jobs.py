"""Custom job types by import path, and the errors around them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serve_app.config.modes_file import ModeConfig, ModeDefaults
from serve_app.core.errors import ConfigError, RequestValidationError, UnknownJobTypeError
from serve_app.model.demo.example_jobs import describe
from serve_app.model.generation.custom_jobs import JobContext, JobRegistry, import_job
from serve_app.model.generation.runner import ModelRunner


@pytest.fixture(scope="module")
def runner(demo_models_dir: Path) -> Iterator[ModelRunner]:
    path = demo_models_dir / "tiny-sd1"
    mode = ModeConfig(name="sd1", checkpoint=str(path), jobs={"describe": "serve_app.model.demo.example_jobs:describe"},
                      defaults=ModeDefaults(width=64, height=64, steps=2))
    r = ModelRunner(mode, path, device=torch.device("cpu"))
    r.load()
    yield r
    r.unload()


def test_generation_is_not_a_job() -> None:
    """txt2img/img2img have their own typed path (ModelRunner.generate); jobs are the custom ones only."""
    registry = JobRegistry()
    assert registry.names() == []
    with pytest.raises(UnknownJobTypeError) as err:
        registry.get("txt2img")
    assert "none" in err.value.message


def test_custom_job_by_import_path(runner: ModelRunner) -> None:
    registry = JobRegistry({"describe": "serve_app.model.demo.example_jobs:describe"})
    assert registry.names() == ["describe"]
    fn = registry.get("describe")
    assert fn is describe
    out = fn(JobContext(runner), {"echo": {"n": 1}})
    assert out["mode"] == "sd1" and out["family"] == "sd1" and out["device"] == "cpu"
    assert out["dtype"] == "float32"  # auto on the CPU
    assert out["parameter_bytes"] == runner.parameter_bytes() > 0
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(out["components"])
    assert out["echo"] == {"n": 1}


def test_custom_job_sees_an_unloaded_model_as_not_ready(demo_models_dir: Path) -> None:
    from serve_app.core.errors import ModelNotReadyError

    path = demo_models_dir / "tiny-sd1"
    cold = ModelRunner(ModeConfig(name="cold", checkpoint=str(path)), path, device=torch.device("cpu"))
    with pytest.raises(ModelNotReadyError) as err:
        JobRegistry({"describe": "serve_app.model.demo.example_jobs:describe"}).get("describe")(JobContext(cold), {})
    assert "'cold'" in err.value.message


def test_custom_job_input_errors(runner: ModelRunner) -> None:
    with pytest.raises(RequestValidationError) as err:
        describe(JobContext(runner), {"echo": 1, "bogus": 2})
    assert err.value.param == "payload" and "bogus" in err.value.message


def test_unknown_job_type_lists_the_names() -> None:
    registry = JobRegistry({"describe": "serve_app.model.demo.example_jobs:describe"})
    with pytest.raises(UnknownJobTypeError) as err:
        registry.get("upscale")
    msg = err.value.message
    assert "'upscale'" in msg
    assert "describe" in msg
    assert err.value.param == "job_type" and err.value.status_code == 404


@pytest.mark.parametrize(("target", "why"), [
    ("serve_app.no_such_module:describe", "no_such_module"),
    ("serve_app.model.demo.example_jobs:no_such_function", "no_such_function"),
    ("serve_app.model.families:INPAINTING_IN_CHANNELS", "not callable"),
])
def test_bad_import_path_names_the_job(target: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        JobRegistry({"sharpen": target})
    msg = err.value.message
    assert "jobs.sharpen" in msg and repr(target) in msg and why in msg
    assert err.value.param == "jobs.sharpen"
    with pytest.raises(ConfigError):
        import_job("sharpen", target)


def test_register_a_function_directly(runner: ModelRunner) -> None:
    registry = JobRegistry()
    registry.register("count_params", lambda ctx, payload: {"bytes": ctx.runner.parameter_bytes()})
    assert registry.names() == ["count_params"]
    assert registry.get("count_params")(JobContext(runner), {}) == {"bytes": runner.parameter_bytes()}
