"""The samplers and schedule types a request or mode may ask for, mapped onto diffusers schedulers.

A sampler (`SchedulerName`) is a diffusers scheduler class with its settings; a schedule type (`ScheduleType`)
is how its noise levels are spaced: `automatic` (the class's own), `uniform` (evenly over the whole range),
`karras`, `exponential`, `sgm_uniform` (trailing timesteps) and `beta`. A schedule type is served with a
sampler only where the diffusers class takes it (`schedule_types_for`); any other pair is refused, naming
both, never replaced. A scheduler key (`scheduler_key`) names the pair: `dpmpp_2m` or `dpmpp_2m:karras`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.families import Family

SchedulerName = Literal["euler", "euler_a", "lms", "heun", "dpm2", "dpm2_a", "dpmpp_2m", "dpmpp_2m_sde",
                        "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_sde", "ddim", "pndm", "unipc", "lcm", "deis",
                        "dpmpp_2m_karras"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)
ScheduleType = Literal["automatic", "uniform", "karras", "exponential", "sgm_uniform", "beta"]
SCHEDULE_TYPES: tuple[str, ...] = get_args(ScheduleType)

_SDE = {"algorithm_type": "sde-dpmsolver++"}
# name -> (diffusers class name, extra config)
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2}),
    "dpmpp_2m_sde_heun": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2, "solver_type": "heun"}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    # the older name of dpmpp_2m:karras, kept for existing clients and modes files
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
}
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_SCHEDULE_CONFIG: dict[str, dict[str, Any]] = {
    "automatic": {},
    "uniform": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "beta": {"use_beta_sigmas": True},
}


def _class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, _SCHEDULERS[name][0])


# The flow-matching families (SD3, FLUX) are sampled by flow-matching schedulers only: `euler` is diffusers'
# FlowMatchEulerDiscreteScheduler there (its sigma spacings: karras, exponential, beta). The other flow
# schedulers do not take the sigmas the FLUX pipelines pass (FlowMatchHeun) or are distillation samplers.
FLOW_SAMPLERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", ("automatic", "karras", "exponential", "beta")),
}
_SPACING_ONLY = ("automatic", "uniform", "sgm_uniform")  # classes that take `timestep_spacing`, no sigma flags
_NO_SIGMA_FLAGS = ("EulerAncestralDiscreteScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler")


def samplers_for(family: Family | None) -> tuple[str, ...]:
    """The samplers a family is served with (every one for None)."""
    if family is not None and family.flow:
        return tuple(FLOW_SAMPLERS)
    return SCHEDULER_NAMES


def schedule_types_for(name: str, family: Family | None = None) -> tuple[str, ...]:
    """The schedule types sampler `name` is served with (`automatic` always) on `family`. Written out, not read
    from the diffusers classes, so the router (which never imports torch) can check a request; a unit test
    compares it with the classes' signatures."""
    if family is not None and family.flow:
        return FLOW_SAMPLERS[name][1] if name in FLOW_SAMPLERS else ()
    if name == "dpmpp_2m_karras":  # already one
        return ("automatic",)
    return _SPACING_ONLY if _SCHEDULERS[name][0] in _NO_SIGMA_FLAGS else SCHEDULE_TYPES


def check_family_sampler(name: str, family: Family | None, mode: str = "-", field: str = "scheduler",
                         shown: str | None = None) -> None:
    """Refuse a sampler `family` cannot use, naming the sampler (as the client wrote it: `shown`) and the family."""
    if family is None or name in samplers_for(family):
        return
    kind = "a flow-matching model" if family.flow else "a noise-prediction (UNet) model"
    raise RequestValidationError(f"`{field}` {quote(shown or name)} cannot sample mode {mode!r} ({family.value}, "
                                 f"{kind}); it takes: {', '.join(samplers_for(family))}", param=field)


def scheduler_key(name: str, schedule: str = "automatic", field: str = "schedule_type",
                  family: Family | None = None, mode: str = "-", sampler_field: str = "scheduler") -> str:
    """The key of sampler `name` with schedule type `schedule` on `family`; a pair that is not served raises,
    naming `field` (a sampler the family cannot use names both)."""
    if name not in _SCHEDULERS:
        raise RequestValidationError(f"`scheduler` {quote(name)} is not served; use one of: "
                                     f"{', '.join(SCHEDULER_NAMES)}", param="scheduler")
    check_family_sampler(name, family, mode, sampler_field)
    served = schedule_types_for(name, family)
    if schedule not in served:
        raise RequestValidationError(f"`{field}` {schedule!r} is not available with sampler {name!r}; it takes: "
                                     f"{', '.join(served)}", param=field)
    return name if schedule == "automatic" else f"{name}:{schedule}"


def make_scheduler(key: str, base_config: dict[str, Any], flow: bool = False) -> Any:
    """A fresh scheduler for `key` (see `scheduler_key`) built from a pipeline's scheduler config (keeps its betas
    and prediction type; for a flow-matching family, `flow`, its shift)."""
    import diffusers

    name, _, schedule = key.partition(":")
    if flow:
        cls = getattr(diffusers, FLOW_SAMPLERS[name][0])
        extra = {flag: False for flag in _SIGMA_FLAGS}
        extra.update(_SCHEDULE_CONFIG[schedule] if schedule else {})
        return cls.from_config(base_config, **extra)
    cls = _class(name)
    extra = dict(_SCHEDULERS[name][1])
    if schedule:
        params = inspect.signature(cls.__init__).parameters
        extra.update({flag: False for flag in _SIGMA_FLAGS if flag in params})  # exactly one spacing
        extra.update(_SCHEDULE_CONFIG[schedule])
    return cls.from_config(base_config, **extra)
