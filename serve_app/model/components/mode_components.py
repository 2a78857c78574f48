"""A checkpoint's facts with its mode's component files merged in: the components it then has, what it
still lacks, the bytes it loads (the VRAM estimate counts them) and whether it can be served."""

from __future__ import annotations

from pathlib import Path

from serve_app.core.errors import ConfigError
from serve_app.model.components.component_files import ComponentFile, ComponentPaths, check_component, inspect_component
from serve_app.model.families import REQUIRED_COMPONENTS, Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo
from serve_app.model.inspection.serving_support import serving_refusal


def mode_components(info: CheckpointInfo, paths: ComponentPaths | None, mode: str,
                    family: Family | None = None) -> tuple[CheckpointInfo, list[ComponentFile]]:
    """`info` with the files of `paths` merged in (each checked against the family), and those files."""
    if paths is None or (not paths.files() and paths.config is None):
        return info, []
    family = family or info.family
    found: list[ComponentFile] = []
    kinds: dict[str, str] = {}
    for field, path in paths.files():
        component = inspect_component(Path(path), field)
        check_component(component, family, mode, field)
        expected = "text encoder" if field.startswith("components.text_encoders") else field.split(".")[1]
        is_encoder = component.kind in ("clip_l", "clip_g", "t5xxl")
        if (expected == "text encoder") != is_encoder or (not is_encoder and component.kind != expected):
            raise ConfigError(f"{field}: {Path(path).name} is a {component.kind}, not a {expected}", param=field)
        if component.kind in kinds:
            raise ConfigError(f"{field}: {Path(path).name} is a second {component.kind} (the first is "
                              f"{Path(kinds[component.kind]).name})", param=field)
        kinds[component.kind] = component.path
        found.append(component)
    added = [c for c in found if c.kind not in info.components]
    present = [*info.components, *(c.kind for c in added)]
    if paths.config is not None and not (Path(paths.config) / "model_index.json").is_file():
        raise ConfigError(f"components.config: {paths.config} is not a diffusers folder (no model_index.json)",
                          param="components.config")
    merged = info.model_copy(update={
        "components": present,
        "missing_components": [c for c in REQUIRED_COMPONENTS[family] if c not in present],
        "component_files": kinds,
        "config_folder": paths.config,
        "param_count": info.param_count + sum(c.param_count for c in added),
        "param_bytes": info.param_bytes + sum(c.param_bytes for c in added),
        "file_bytes": info.file_bytes + sum(c.file_bytes for c in found),
    })
    return merged.model_copy(update={"serving_refusal": serving_refusal(merged)}), found
