"""A mode read together with its checkpoint: component files resolved and merged into the checkpoint's facts,
the family's request defaults filled in where the modes file leaves them unset, and the settings the family
cannot use refused (a config error naming the mode, the setting and the family).

Family defaults (only for fields a mode's `defaults:` does not set; never past its limits):
- FLUX.1 dev: 1024x1024, 28 steps, guidance 3.5 (embedded guidance, not CFG);
- FLUX.1 Fill: 1024x1024, 28 steps, guidance 30 (the embedded guidance it was distilled at: BFL's and
  diffusers' examples use 30; 3.5 gives washed-out fills);
- FLUX.1 schnell: 1024x1024, 4 steps, guidance 0 (timestep-distilled: no guidance at all);
- SD3 / 3.5: 1024x1024, 28 steps, CFG 4.5.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.config.modes_file import ModeConfig, resolve_checkpoint
from serve_app.core.errors import ConfigError, RequestValidationError
from serve_app.model.components.component_files import ComponentFile, ComponentPaths
from serve_app.model.components.mode_components import mode_components
from serve_app.model.families import Family
from serve_app.model.generation.schedulers import check_family_sampler, schedule_types_for
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, inspect_checkpoint

_FLOW_SIZE = 1024
FAMILY_DEFAULTS: dict[str, dict[str, float | int]] = {
    "flux-schnell": {"width": _FLOW_SIZE, "height": _FLOW_SIZE, "steps": 4, "guidance_scale": 0.0},
    "flux-fill": {"width": _FLOW_SIZE, "height": _FLOW_SIZE, "steps": 28, "guidance_scale": 30.0},
    Family.FLUX.value: {"width": _FLOW_SIZE, "height": _FLOW_SIZE, "steps": 28, "guidance_scale": 3.5},
    Family.SD3.value: {"width": _FLOW_SIZE, "height": _FLOW_SIZE, "steps": 28, "guidance_scale": 4.5},
}


def component_paths(mode: ModeConfig, model_root: Path, allow_absolute: bool = False) -> ComponentPaths | None:
    """The mode's component files resolved under MODEL_ROOT (None: it names none)."""
    c = mode.components
    if c is None:
        return None

    def resolve(value: str, field: str) -> str:
        return str(resolve_checkpoint(value, model_root, allow_absolute=allow_absolute, source=f"mode {mode.name}",
                                      field=field))

    return ComponentPaths(
        text_encoders=[resolve(p, f"components.text_encoders[{i}]") for i, p in enumerate(c.text_encoders)],
        **{k: resolve(v, f"components.{k}") for k in ("vae", "transformer", "unet", "config")
           if (v := getattr(c, k)) is not None})


def inspect_mode(mode: ModeConfig, checkpoint: Path, model_root: Path,
                 allow_absolute: bool = False) -> tuple[CheckpointInfo, list[ComponentFile]]:
    """The facts of the mode's checkpoint with its component files merged in (each checked against the family)."""
    info = inspect_checkpoint(checkpoint)
    try:
        return mode_components(info, component_paths(mode, model_root, allow_absolute), mode.name, mode.family)
    except ConfigError as exc:
        raise ConfigError(f"mode {mode.name}: {exc.message}", param=exc.param) from exc


def family_defaults(info: CheckpointInfo) -> dict[str, float | int]:
    return FAMILY_DEFAULTS.get(info.variant) or FAMILY_DEFAULTS.get(info.family.value, {})


def with_family(mode: ModeConfig, info: CheckpointInfo) -> ModeConfig:
    """`mode` with its family's defaults where unset, after refusing what the family cannot use."""
    family = mode.family or info.family
    if family.flow:
        try:
            check_family_sampler(mode.scheduler, family, mode.name)
        except RequestValidationError as exc:
            raise ConfigError(f"mode {mode.name}: {exc.message}", param="scheduler") from exc
        if mode.schedule_type not in schedule_types_for(mode.scheduler, family):
            raise ConfigError(f"mode {mode.name}: schedule_type {mode.schedule_type!r} is not available with "
                              f"scheduler {mode.scheduler!r} on {family.value}; it takes: "
                              f"{', '.join(schedule_types_for(mode.scheduler, family))}", param="schedule_type")
        if mode.defaults.clip_skip != 1:
            raise ConfigError(f"mode {mode.name}: defaults.clip_skip {mode.defaults.clip_skip}: clip skip does not "
                              f"apply to {family.value} (its prompts go through T5); leave it at 1",
                              param="defaults.clip_skip")
    unset = {k: v for k, v in family_defaults(info).items() if k not in mode.defaults.model_fields_set}
    if not unset:
        return mode
    limits = {"width": mode.limits.max_width, "height": mode.limits.max_height, "steps": mode.limits.max_steps}
    for key, bound in limits.items():
        if key in unset:
            unset[key] = min(int(unset[key]), bound // 8 * 8 if key != "steps" else bound)
    defaults = mode.defaults.model_copy(update=unset)
    defaults.__pydantic_fields_set__ = set(mode.defaults.model_fields_set)  # still the modes file's own choices
    return mode.model_copy(update={"defaults": defaults})
