"""Modes configuration: every shipped modes YAML parses, bad ones fail naming file, field path and value;
checkpoint paths stay inside MODEL_ROOT; the environment (MODEL, MODEL_ROOT, discovery) gives the modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.config.modes_file import (
    ModesFile,
    load_modes_file,
    modes_from_environment,
    resolve_checkpoint,
)
from serve_app.core.errors import ConfigError
from serve_app.model.generation.schedulers import SCHEDULER_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
MODES_FILES = sorted((REPO_ROOT / "configs").glob("*modes*.yaml"))
DEMO_CHECKPOINTS = sorted([
    *(f"tiny-{family}{suffix}" for family in ("sd1", "sd2", "sdxl", "sdxl-refiner") for suffix in ("", ".safetensors")),
    "tiny-sd1-inpainting", "tiny-flux", "tiny-sd3"])


def test_the_shipped_modes_files_are_found() -> None:
    names = {p.name for p in MODES_FILES}
    assert {"demo_modes.yaml", "gpu_modes.yaml"} <= names


@pytest.mark.parametrize("path", MODES_FILES, ids=lambda p: p.name)
def test_every_modes_yaml_parses(path: Path) -> None:
    modes = load_modes_file(path)
    raw = yaml.safe_load(path.read_text())
    assert isinstance(modes, ModesFile)
    assert [m.name for m in modes.modes] == [m["name"] for m in raw["modes"]]
    names = {n for m in modes.modes for n in (m.name, *m.aliases)}
    assert modes.default_mode in names
    for mode in modes.modes:
        assert mode.scheduler in SCHEDULER_NAMES
        d, lim = mode.defaults, mode.limits
        assert d.width % 8 == 0 and d.height % 8 == 0
        assert d.width <= lim.max_width and d.height <= lim.max_height and d.steps <= lim.max_steps
        for name, target in mode.jobs.items():  # custom jobs named in a shipped file must import
            from serve_app.model.generation.custom_jobs import import_job

            assert callable(import_job(name, target))


def test_demo_modes_resolve_against_the_demo_checkpoints(demo_models_dir: Path) -> None:
    modes = load_modes_file(REPO_ROOT / "configs" / "demo_modes.yaml")
    from serve_app.config.mode_families import inspect_mode

    for mode in modes.modes:
        path = resolve_checkpoint(mode.checkpoint, demo_models_dir)
        info, _ = inspect_mode(mode, path, demo_models_dir)
        # the demo modes are named after their family (or variant), and every one is servable
        assert mode.name in (info.family.value, info.variant) and info.serving_refusal is None


# -- errors name file, field path and value ------------------------------------------------------------

def _mode(**overrides) -> dict:
    return {"name": "sd1", "checkpoint": "tiny-sd1", **overrides}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "my_modes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_FILES = {
    "bad dtype": ({"modes": [_mode(dtype="fp8")]}, "modes.0.dtype", "'fp8'"),
    "width not multiple of 8": ({"modes": [_mode(defaults={"width": 500})]}, "modes.0.defaults.width", "500"),
    "height not multiple of 8": ({"modes": [_mode(), _mode(name="b", defaults={"height": 7})]},
                                 "modes.1.defaults.height", "7"),
    "default width over limit": ({"modes": [_mode(defaults={"width": 1024}, limits={"max_width": 512})]},
                                 "modes.0.defaults.width", "1024"),
    "default steps over limit": ({"modes": [_mode(defaults={"steps": 80}, limits={"max_steps": 50})]},
                                 "modes.0.defaults.steps", "80"),
    "duplicate alias": ({"modes": [_mode(aliases=["fast"]), _mode(name="sd2", aliases=["x", "fast"])]},
                        "modes.1.aliases.1", "'fast'"),
    "alias equal to a mode name": ({"modes": [_mode(), _mode(name="sd2", aliases=["sd1"])]},
                                   "modes.1.aliases.0", "'sd1'"),
    "duplicate mode name": ({"modes": [_mode(), _mode()]}, "modes.1.name", "'sd1'"),
    "unknown field in a mode": ({"modes": [_mode(sampler="euler")]}, "modes.0.sampler", "'euler'"),
    "unknown field in defaults": ({"modes": [_mode(defaults={"cfg": 7})]}, "modes.0.defaults.cfg", "7"),
    "unknown top-level field": ({"mode": "sd1", "modes": [_mode()]}, "mode", "'sd1'"),
    "default_mode unknown": ({"default_mode": "sdxl", "modes": [_mode()]}, "default_mode", "'sdxl'"),
    "unknown scheduler": ({"modes": [_mode(scheduler="k_euler")]}, "modes.0.scheduler", "'k_euler'"),
    "bad mode name": ({"modes": [_mode(name="my mode")]}, "modes.0.name", "'my mode'"),
    "reserved mode name": ({"modes": [_mode(name="Router")]}, "modes.0.name", "'Router'"),
    "bad job import path": ({"modes": [_mode(jobs={"up": "not a path"})]}, "modes.0.jobs", "not a path"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_modes_file_names_file_field_and_value(tmp_path: Path, case: str) -> None:
    data, field_path, value = BAD_FILES[case]
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_modes_file(path)
    msg = err.value.message
    assert str(path) in msg, msg
    assert f"`{field_path}`:" in msg, msg
    assert value in msg, msg
    assert err.value.param is not None and err.value.param.startswith(field_path.split(".")[0])


def test_every_error_of_a_file_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, {"modes": [_mode(dtype="fp8", defaults={"steps": 0})]})
    with pytest.raises(ConfigError) as err:
        load_modes_file(path)
    assert "modes.0.dtype" in err.value.message and "modes.0.defaults.steps" in err.value.message


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_modes_file(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in err.value.message and "not found" in err.value.message
    broken = tmp_path / "broken.yaml"
    broken.write_text("modes: [\n  - name: a\n")
    with pytest.raises(ConfigError) as err:
        load_modes_file(broken)
    assert str(broken) in err.value.message and "YAML" in err.value.message


# -- checkpoint paths stay inside MODEL_ROOT -------------------------------------------------------------

@pytest.fixture()
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    return root


def test_relative_checkpoint_inside_root(model_root: Path) -> None:
    assert resolve_checkpoint("sub/a.safetensors", model_root) == (model_root / "sub" / "a.safetensors").resolve()
    # `..` that stays inside is fine
    assert resolve_checkpoint("sub/../sub/a.safetensors", model_root) == (model_root / "sub" / "a.safetensors")


@pytest.mark.parametrize("escape", ["../secret.safetensors", "sub/../../secret.safetensors", "..", "../models2/x"])
def test_dotdot_escape_is_refused(model_root: Path, escape: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_checkpoint(escape, model_root, source="my_modes.yaml", field="modes.0.checkpoint")
    msg = err.value.message
    assert "my_modes.yaml" in msg and "modes.0.checkpoint" in msg and repr(escape) in msg
    assert "outside MODEL_ROOT" in msg and err.value.param == "modes.0.checkpoint"


def test_symlink_out_of_root_is_refused(model_root: Path, tmp_path: Path) -> None:
    (model_root / "innocent.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (model_root / "linkdir").symlink_to(tmp_path)
    for name in ("innocent.safetensors", "linkdir/secret.safetensors"):
        with pytest.raises(ConfigError) as err:
            resolve_checkpoint(name, model_root)
        assert repr(name) in err.value.message and str(tmp_path / "secret.safetensors") in err.value.message


def test_symlink_inside_root_is_allowed(model_root: Path) -> None:
    (model_root / "alias.safetensors").symlink_to(model_root / "sub" / "a.safetensors")
    assert resolve_checkpoint("alias.safetensors", model_root) == (model_root / "sub" / "a.safetensors").resolve()


def test_absolute_path_only_when_allowed(model_root: Path, tmp_path: Path) -> None:
    absolute = str(tmp_path / "secret.safetensors")
    with pytest.raises(ConfigError) as err:
        resolve_checkpoint(absolute, model_root)
    assert repr(absolute) in err.value.message and "allow_absolute_paths" in err.value.message
    # even an absolute path inside MODEL_ROOT needs the opt-in: the rule is simple to state
    with pytest.raises(ConfigError):
        resolve_checkpoint(str(model_root / "sub" / "a.safetensors"), model_root)
    assert resolve_checkpoint(absolute, model_root, allow_absolute=True) == Path(absolute).resolve()


# -- the environment: MODEL, MODEL_ROOT, discovery -------------------------------------------------------

def test_model_env_gives_one_mode(monkeypatch: pytest.MonkeyPatch, demo_models_dir: Path) -> None:
    monkeypatch.setenv("MODEL_ROOT", str(demo_models_dir))
    monkeypatch.setenv("MODEL", "tiny-sd2.safetensors")
    modes, root = modes_from_environment()
    assert root == demo_models_dir
    assert [(m.name, m.checkpoint) for m in modes.modes] == [("tiny-sd2", "tiny-sd2.safetensors")]
    assert resolve_checkpoint(modes.modes[0].checkpoint, root).is_file()


def test_model_env_may_not_escape(monkeypatch: pytest.MonkeyPatch, demo_models_dir: Path) -> None:
    monkeypatch.setenv("MODEL_ROOT", str(demo_models_dir / "tiny-sd1"))
    monkeypatch.setenv("MODEL", "../tiny-sd2.safetensors")
    with pytest.raises(ConfigError) as err:
        modes_from_environment()
    assert "MODEL" in err.value.message and "../tiny-sd2.safetensors" in err.value.message
    assert err.value.param == "MODEL"


def test_discovery_finds_every_demo_checkpoint(monkeypatch: pytest.MonkeyPatch, demo_models_dir: Path) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.setenv("MODEL_ROOT", str(demo_models_dir))
    modes, root = modes_from_environment()
    assert root == demo_models_dir
    assert sorted(m.checkpoint for m in modes.modes) == DEMO_CHECKPOINTS
    names = [m.name for m in modes.modes]
    assert len(set(names)) == len(names) == 11  # folder and file of a family both stay servable
    assert "tiny-sd1" in names
    # the transformer-only FLUX files cannot be served alone: listed with what they lack, the rest served
    problems = {p.path: p for p in modes.problems}
    assert sorted(problems) == ["tiny-flux-fill.safetensors", "tiny-flux-schnell.safetensors"]
    assert {p.variant for p in problems.values()} == {"flux-fill", "flux-schnell"}
    assert all("T5-XXL" in p.message and "components:" in p.message for p in problems.values())
    # the discovered set is a valid modes file (unique names, checkpoints inside the root)
    reparsed = ModesFile.model_validate(modes.model_dump())
    for m in reparsed.modes:
        assert resolve_checkpoint(m.checkpoint, root).exists()


def test_modes_file_with_discover_adds_the_rest(monkeypatch: pytest.MonkeyPatch, demo_models_dir: Path,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_ROOT", str(demo_models_dir))
    path = _write(tmp_path, {"discover": True, "modes": [{"name": "tiny-sd1", "checkpoint": "tiny-sd1",
                                                         "aliases": ["main"]}]})
    modes, _ = modes_from_environment(path)
    assert modes.modes[0].aliases == ["main"]  # the explicit mode wins over the discovered one of that name
    assert len(modes.modes) == 11 and modes.discover is False


def test_nothing_found_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no models here")
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.setenv("MODEL_ROOT", str(empty))
    with pytest.raises(ConfigError) as err:
        modes_from_environment()
    assert str(empty.resolve()) in err.value.message and "no checkpoint" in err.value.message
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "does-not-exist"))
    with pytest.raises(ConfigError) as err:
        modes_from_environment()
    assert "does-not-exist" in err.value.message
