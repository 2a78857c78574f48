"""The named set of samplers a request or mode may ask for, mapped onto diffusers schedulers."""

from __future__ import annotations

from typing import Any, Literal, get_args

SchedulerName = Literal["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "heun", "lms", "pndm", "unipc"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)

# name -> (diffusers class name, extra config)
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, base_config: dict[str, Any]):
    """A fresh scheduler `name` built from a pipeline's scheduler config (keeps betas and prediction type)."""
    import diffusers

    class_name, extra = _SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **extra)
