"""Modes configuration: the strict schema of a modes YAML, environment settings and discovery.

A modes file names every served mode:

    default_mode: sd15
    modes:
      - name: sd15
        checkpoint: sd15.safetensors     # relative to MODEL_ROOT
        dtype: fp16
        scheduler: dpmpp_2m
        defaults: {width: 512, height: 512, steps: 25, guidance_scale: 7.0}
        limits: {max_width: 1024, max_height: 1024, max_steps: 100, max_num_images: 4}
        aliases: [sd1.5, default]

Without a file, `MODEL` (a checkpoint under `MODEL_ROOT`) gives one mode named after it, and
`discover: true` (or no file and no `MODEL`) adds every checkpoint found under `MODEL_ROOT`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from serve_app.config.app_args import MODE_DEPLOYMENT_DEFAULTS, RESERVED_DEPLOYMENT_NAMES
from serve_app.core.errors import ConfigError
from serve_app.core.strict_model import FieldError, StrictModel, config_error_text
from serve_app.model.families import Family
from serve_app.model.generation.schedulers import SchedulerName, ScheduleType, schedule_types_for
from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo, is_checkpoint_candidate
from serve_app.model.inspection.checkpoint_problems import CheckpointProblem, survey_checkpoint
from serve_app.model.inspection.vram_estimate import DTypeName, VramEstimate, estimate_vram
from serve_app.model.prompts.attention_syntax import PromptSyntax

logger = logging.getLogger(__name__)

MODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_MODEL_ROOT = "./models"


class ModeDefaults(StrictModel):
    """Values a request gets for the fields it leaves out."""

    width: int = Field(512, ge=8, description="Image width in pixels (multiple of 8).")
    height: int = Field(512, ge=8, description="Image height in pixels (multiple of 8).")
    steps: int = Field(25, ge=1, description="Denoising steps.")
    guidance_scale: float = Field(7.0, ge=0.0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field("", description="Negative prompt used when a request gives none.")
    strength: float = Field(0.75, gt=0.0, le=1.0, description="img2img strength when a request gives none.")
    clip_skip: int = Field(1, ge=1, le=12, description="A1111's clip skip (`CLIP_stop_at_last_layers`): 1 = the "
                           "text encoder's last layer, 2 = the one before (what most SD 1.x anime checkpoints "
                           "expect); on SDXL 1 and 2 both mean the penultimate layer.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int, info) -> int:
        if v % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8, got {v}")
        return v


MAX_LORAS_PER_REQUEST = 16  # no mode allows more; requests are bounded by it before their LoRAs are looked up


class ModeLimits(StrictModel):
    """Upper bounds a request must stay within."""

    max_width: int = Field(1024, ge=8, description="Largest accepted width.")
    max_height: int = Field(1024, ge=8, description="Largest accepted height.")
    max_steps: int = Field(100, ge=1, description="Most denoising steps.")
    max_num_images: int = Field(4, ge=1, description="Most images per request.")
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt, in characters.")
    max_loras: int = Field(4, ge=0, le=MAX_LORAS_PER_REQUEST, description="Most LoRAs one request may apply (0: none).")
    max_lora_weight: float = Field(2.0, gt=0, le=10, description="LoRA weights must lie in [-this, this].")


class ModeDeploymentOptions(StrictModel):
    """Serve deployment options of a mode; a Serve config's `deployments:` entry (named after the mode)
    overrides them the Serve way."""

    num_replicas: int | Literal["auto"] | None = Field(None, description="Fixed replica count.")
    autoscaling_config: dict[str, Any] | None = Field(None, description="Serve autoscaling (min_replicas 0 allowed).")
    max_ongoing_requests: int | None = Field(None, ge=1, description="Requests a replica runs at once.")
    max_queued_requests: int | None = Field(None, ge=-1, description="Queue bound per caller (default 64).")
    graceful_shutdown_timeout_s: float | None = Field(None, ge=0, description="Drain time on stop/downscale.")
    graceful_shutdown_wait_loop_s: float | None = Field(None, ge=0, description="Drain poll period.")
    health_check_period_s: float | None = Field(None, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float | None = Field(None, gt=0, description="Health check timeout.")
    ray_actor_options: dict[str, Any] | None = Field(None, description="E.g. {num_gpus: 0.5, num_cpus: 1}.")


class ModeComponents(StrictModel):
    """Component files of a mode (relative to MODEL_ROOT), for a checkpoint that lacks them (a transformer-only
    FLUX file) or to replace its own; each is checked against the mode's family from its tensors."""

    text_encoders: list[str] = Field(default_factory=list, description="Text encoder files (clip_l, clip_g, t5xxl).")
    vae: str | None = Field(None, description="VAE file (original or diffusers layout).")
    transformer: str | None = Field(None, description="Transformer file (SD3 / FLUX denoiser).")
    unet: str | None = Field(None, description="UNet file (SD 1.x / 2.x / SDXL denoiser).")
    config: str | None = Field(None, description="A diffusers folder of the family (configs and tokenizers; no "
                               "weights needed) for single files that do not carry Dream Lab's embedded configs.")


class ModeConfig(StrictModel):
    """One served mode: a checkpoint plus how it is run."""

    name: str = Field(description="Mode name clients ask for.", pattern=MODE_NAME_PATTERN)
    checkpoint: str = Field(description="Diffusers folder or .safetensors file, relative to MODEL_ROOT.")
    family: Family | None = Field(None, description="Override of the detected family (rarely needed).")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Weights dtype; auto = fp16 on CUDA, fp32 on CPU.")
    scheduler: SchedulerName = Field("euler", description="Default sampler of the mode.")
    schedule_type: ScheduleType = Field("automatic", description="Default schedule type of the mode's sampler "
                                        "(one the sampler takes: see the README's sampler table).")
    prompt_syntax: PromptSyntax = Field("a1111", description="a1111: `(word:1.2)`, `(word)`, `[word]`, `\\(` "
                                        "escapes and `BREAK` weight the prompt; plain: the prompt is literal text. "
                                        "Prompts beyond 75 tokens are encoded in chunks either way.")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="Override of the checkpoint's prediction type (SD 2.x 512 base models: epsilon; "
        "the shipped SD2 single-file config assumes the 768 v-prediction model).")
    zero_terminal_snr: bool | None = Field(
        None, description="Override of the checkpoint's `ztsnr` marker: true samples with rescaled zero-terminal-SNR "
        "betas and trailing timesteps (v-prediction models trained that way), false without the rescaled betas.")
    components: ModeComponents | None = Field(None, description="Separate component files (text encoders, VAE, "
                                              "denoiser) under MODEL_ROOT; an all-in-one checkpoint needs none.")
    defaults: ModeDefaults = Field(default_factory=ModeDefaults, description="Request defaults (unset ones take "
                                   "the family's: FLUX 1024px 28 steps guidance 3.5, schnell 4 steps guidance 0, "
                                   "SD3 1024px 28 steps guidance 4.5).")
    limits: ModeLimits = Field(default_factory=ModeLimits, description="Request limits.")
    lora_cache_bytes: int = Field(512 * 1024**2, ge=0, description="LoRA weights a replica keeps loaded for the "
                                  "next request (least recently used out first); they count in its footprint.")
    control_cache_bytes: int = Field(4 * 1024**3, ge=0, description="ControlNet weights (in the mode's dtype) a "
                                     "replica keeps loaded for the next request (least recently used out first; a "
                                     "request's own are kept); they count in its footprint.")
    vaes: list[str] = Field(default_factory=list, description="VAEs (from MODEL_ROOT's `vae/`) a request may "
                            "choose with `vae` instead of the checkpoint's own; none when empty.")
    adapter_sets_per_replica: int = Field(8, ge=1, description="LoRA sets a replica advertises to Serve's "
                                          "routing as held (requests with a held set prefer that replica).")
    aliases: list[str] = Field(default_factory=list, description="Other names that select this mode.")
    deployment: ModeDeploymentOptions = Field(default_factory=ModeDeploymentOptions,
                                              description="Serve deployment options of this mode.")
    load_on_start: bool = Field(True, description="Load when a replica starts (else on the first request).")
    jobs: dict[str, str] = Field(
        default_factory=dict,
        description="Custom job types: name -> import path `package.module:function`.")

    @field_validator("schedule_type")
    @classmethod
    def _served_with_the_sampler(cls, v: str, info) -> str:
        sampler = info.data.get("scheduler")
        if sampler is not None and v not in schedule_types_for(sampler):
            raise ValueError(f"schedule_type {v!r} is not available with scheduler {sampler!r}; it takes: "
                             f"{', '.join(schedule_types_for(sampler))}")
        return v

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_DEPLOYMENT_NAMES:
            raise ValueError(f"mode name {v!r} is reserved (a deployment of the application has it)")
        return v

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, v: list[str]) -> list[str]:
        for alias in v:
            if not re.match(MODE_NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} must match {MODE_NAME_PATTERN}")
        return v

    @field_validator("jobs")
    @classmethod
    def _job_paths(cls, v: dict[str, str]) -> dict[str, str]:
        for name, target in v.items():
            if not re.match(r"^[A-Za-z0-9_-]+$", name):
                raise ValueError(f"job type name {name!r} may hold only letters, digits, '_' and '-'")
            if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", target):
                raise ValueError(f"job {name!r}: import path {target!r} must look like 'package.module:function'")
        return v

    def deployment_options(self) -> dict[str, Any]:
        """The mode's Serve deployment options: Dream Lab's defaults under the modes file's `deployment:`
        (a Serve config's `deployments:` entry still overrides them, the Serve way)."""
        options = {**MODE_DEPLOYMENT_DEFAULTS, **self.deployment.model_dump(exclude_none=True)}
        if "autoscaling_config" in options:
            options.pop("num_replicas", None)
        return options

    def vram_estimate(self, info: CheckpointInfo, dtype: DTypeName) -> VramEstimate:
        """What one generation of this mode can need: its default size at its largest batch."""
        return estimate_vram(info, dtype, self.defaults.width, self.defaults.height, self.limits.max_num_images)

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ModeConfig:
        d, lim = self.defaults, self.limits
        for field, value, bound in (("width", d.width, lim.max_width), ("height", d.height, lim.max_height),
                                    ("steps", d.steps, lim.max_steps)):
            if value > bound:
                raise FieldError(("defaults", field), value,
                                  f"defaults.{field} {value} exceeds limits.max_{field} {bound}")
        return self


class ModesFile(StrictModel):
    """The whole modes YAML."""

    default_mode: str | None = Field(None, description="Mode used when a request names none (default: first).")
    allow_absolute_paths: bool = Field(False, description="Allow checkpoints outside MODEL_ROOT by absolute path.")
    discover: bool = Field(False, description="Also serve every checkpoint found under MODEL_ROOT.")
    modes: list[ModeConfig] = Field(default_factory=list, description="The served modes.")
    problems: list[CheckpointProblem] = Field(
        default_factory=list, description="Filled by discovery, not written by hand: files under MODEL_ROOT that "
        "are not served, each with the reason.")

    @model_validator(mode="after")
    def _unique_names(self) -> ModesFile:
        seen: dict[str, str] = {}
        for i, mode in enumerate(self.modes):
            locs = [("modes", i, "name"), *(("modes", i, "aliases", j) for j in range(len(mode.aliases)))]
            for loc, name in zip(locs, (mode.name, *mode.aliases)):
                if name in seen:
                    raise FieldError(loc, name, f"name {name!r} of mode {mode.name!r} is already used by mode "
                                                 f"{seen[name]!r}")
                seen[name] = mode.name
        if self.default_mode is not None and self.modes and self.default_mode not in seen:
            raise FieldError(("default_mode",), self.default_mode,
                              f"default_mode {self.default_mode!r} is not a mode or alias: {sorted(seen)}")
        return self


def model_root_from_env() -> Path:
    return Path(os.environ.get("MODEL_ROOT", DEFAULT_MODEL_ROOT))


def resolve_checkpoint(checkpoint: str, model_root: Path, *, allow_absolute: bool = False,
                       source: str = "modes file", field: str = "checkpoint") -> Path:
    """The real path of `checkpoint`, which must stay inside MODEL_ROOT (no `..`, no link out of it)."""
    root = model_root.expanduser().resolve()
    given = Path(checkpoint).expanduser()
    if given.is_absolute():
        if not allow_absolute:
            raise ConfigError(
                f"{source}: {field}: absolute path {checkpoint!r} is not allowed; put the checkpoint under "
                f"MODEL_ROOT ({root}) or set allow_absolute_paths: true", param=field)
        return given.resolve()
    resolved = (root / given).resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(
            f"{source}: {field}: {checkpoint!r} resolves to {resolved}, outside MODEL_ROOT ({root}); "
            "'..' and links may not leave MODEL_ROOT", param=field)
    return resolved


def parse_modes(data: object, source: str) -> ModesFile:
    """Validate a modes mapping; errors name the source, the field path and the value."""
    try:
        return ModesFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        param, message = config_error_text(source, exc)
        raise ConfigError(message, param=param) from exc


def load_modes_file(path: str | Path) -> ModesFile:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: modes file not found", param="modes_file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}", param="modes_file") from exc
    return parse_modes(data, str(p))


def mode_name_for(path: Path) -> str:
    """A mode name from a checkpoint's file or folder name."""
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    return name[:64]


# Pickle checkpoints are never loaded, but discovery lists them (with how to convert them) rather than skip them.
_LISTED_PICKLES = (".ckpt", ".pt", ".pth")


def discover_checkpoints(model_root: Path) -> tuple[list[ModeConfig], list[CheckpointProblem]]:
    """A mode for every servable checkpoint directly under MODEL_ROOT (folders with model_index.json,
    .safetensors files), and a problem for every other candidate: one bad file never stops discovery."""
    root = model_root.expanduser()
    if not root.is_dir():
        return [], []
    modes: list[ModeConfig] = []
    problems: list[CheckpointProblem] = []
    taken: set[str] = set()
    for entry in sorted(root.iterdir()):
        if not is_checkpoint_candidate(entry) and entry.suffix.lower() not in _LISTED_PICKLES:
            continue
        surveyed = survey_checkpoint(entry, root)
        if isinstance(surveyed, CheckpointProblem):
            logger.warning("discovery: %s is not served: %s", surveyed.path, surveyed.message)
            problems.append(surveyed)
            continue
        # `x/` and `x.safetensors` side by side: the second keeps its suffix so both stay servable
        name = mode_name_for(entry)
        if name in taken:
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", entry.name).strip("-._")[:64]
        base, n = name, 2
        while name in taken:
            name, n = f"{base[:60]}-{n}", n + 1
        taken.add(name)
        modes.append(ModeConfig(name=name, checkpoint=entry.name))
    return modes, problems


def discover_modes(model_root: Path) -> list[ModeConfig]:
    """The modes `discover_checkpoints` finds (its problems are logged)."""
    return discover_checkpoints(model_root)[0]


def discovers(modes_file: str | Path | None = None) -> bool:
    """Whether the modes come (also) from discovery: the modes file says `discover: true`, or there is no modes
    file and no `MODEL`."""
    if modes_file is not None:
        return load_modes_file(modes_file).discover
    return not os.environ.get("MODEL")


def modes_from_environment(modes_file: str | Path | None = None,
                           model_root: Path | None = None) -> tuple[ModesFile, Path]:
    """The modes to serve and MODEL_ROOT: from a modes file, else from `MODEL`, else by discovery."""
    root = model_root or model_root_from_env()
    if modes_file is not None:
        modes = load_modes_file(modes_file)
    elif os.environ.get("MODEL"):
        model = os.environ["MODEL"]
        resolve_checkpoint(model, root, source="environment", field="MODEL")
        modes = ModesFile(modes=[ModeConfig(name=mode_name_for(Path(model)), checkpoint=model)])
    else:
        modes = ModesFile(discover=True)
    if modes.discover:
        taken = {n for m in modes.modes for n in (m.name, *m.aliases)}
        found, problems = discover_checkpoints(root)
        extra = [m for m in found if m.name not in taken]
        modes = modes.model_copy(update={"modes": [*modes.modes, *extra], "discover": False,
                                         "problems": [*modes.problems, *problems]})
    if not modes.modes:
        unserved = "".join(f"; not served: {p.message}" for p in modes.problems)
        raise ConfigError(f"no modes: the modes file names none and MODEL_ROOT ({root.resolve()}) holds no "
                          f"checkpoint it can serve{unserved}", param="modes")
    return modes, root
