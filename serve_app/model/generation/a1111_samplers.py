"""A1111's sampler and schedule-type names, mapped onto the served samplers (`schedulers`).

A1111 (1.9+) names a sampler and a schedule type separately; `Automatic` is the sampler's own default schedule
(Karras for DPM++ 2M, DPM++ SDE and DPM2, Exponential for the DPM++ SDE multistep ones, the diffusers class's
own spacing for the rest). Older names carry the schedule (`DPM++ 2M Karras`, `DPM++ 2M SDE Exponential`).
Samplers diffusers cannot serve (DPM++ 2S a, DPM fast, DPM adaptive, Restart, DDIM CFG++) and schedule types
it has no spacing for (Polyexponential, KL Optimal, Align Your Steps, Simple, Normal, DDIM) are refused with
the list of what is served.
"""

from __future__ import annotations

from typing import NamedTuple

from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.generation.schedulers import schedule_types_for


class A1111Sampler(NamedTuple):
    scheduler: str  # the served sampler
    schedule: str  # what A1111's `Automatic` means for it
    aliases: tuple[str, ...]


A1111_SAMPLER_TABLE: dict[str, A1111Sampler] = {
    "DPM++ 2M": A1111Sampler("dpmpp_2m", "karras", ("k_dpmpp_2m",)),
    "DPM++ SDE": A1111Sampler("dpmpp_sde", "karras", ("k_dpmpp_sde",)),
    "DPM++ 2M SDE": A1111Sampler("dpmpp_2m_sde", "exponential", ("k_dpmpp_2m_sde",)),
    "DPM++ 2M SDE Heun": A1111Sampler("dpmpp_2m_sde_heun", "exponential", ("k_dpmpp_2m_sde_heun",)),
    "DPM++ 3M SDE": A1111Sampler("dpmpp_3m_sde", "exponential", ("k_dpmpp_3m_sde",)),
    "Euler a": A1111Sampler("euler_a", "automatic", ("k_euler_a", "k_euler_ancestral")),
    "Euler": A1111Sampler("euler", "automatic", ("k_euler",)),
    "LMS": A1111Sampler("lms", "automatic", ("k_lms",)),
    "Heun": A1111Sampler("heun", "automatic", ("k_heun",)),
    "DPM2": A1111Sampler("dpm2", "karras", ("k_dpm_2",)),
    "DPM2 a": A1111Sampler("dpm2_a", "karras", ("k_dpm_2_a",)),
    "DDIM": A1111Sampler("ddim", "automatic", ()),
    "PLMS": A1111Sampler("pndm", "automatic", ("PNDM",)),
    "UniPC": A1111Sampler("unipc", "automatic", ()),
    "LCM": A1111Sampler("lcm", "automatic", ("k_lcm",)),
    "DEIS": A1111Sampler("deis", "automatic", ()),
}
# A1111 schedule type: name -> (label, default rho)
A1111_SCHEDULE_TYPES: dict[str, tuple[str, float]] = {
    "automatic": ("Automatic", -1.0), "uniform": ("Uniform", -1.0), "karras": ("Karras", 7.0),
    "exponential": ("Exponential", -1.0), "sgm_uniform": ("SGM Uniform", -1.0), "beta": ("Beta", -1.0),
}
_SUFFIXES = {" Karras": "karras", " Exponential": "exponential"}


def _schedule(value: str, field: str) -> str:
    for name, (label, _) in A1111_SCHEDULE_TYPES.items():
        if value.lower() in (name, label.lower()):
            return name
    raise RequestValidationError(f"`{field}` {quote(value)} is not served; use one of: "
                                 f"{', '.join(label for label, _ in A1111_SCHEDULE_TYPES.values())}", param=field)


def a1111_sampler(sampler: str | None, schedule: str | None, field: str = "sampler_name",
                  schedule_field: str = "scheduler") -> tuple[str | None, str | None]:
    """(served sampler, schedule type) of an A1111 sampler name and schedule type; None where the mode's default
    applies. Unknown names raise, naming `field` or `schedule_field` and listing what is served."""
    explicit = _schedule(schedule, schedule_field) if schedule else None
    if not sampler:
        return None, None if explicit in (None, "automatic") else explicit
    by_alias = {alias.lower(): name for name, s in A1111_SAMPLER_TABLE.items() for alias in s.aliases}
    by_alias.update({name.lower(): name for name in A1111_SAMPLER_TABLE})
    name, suffix_schedule = by_alias.get(sampler.lower()), None
    for suffix, suffix_type in _SUFFIXES.items():
        if name is None and sampler.endswith(suffix):
            name, suffix_schedule = by_alias.get(sampler.removesuffix(suffix).lower()), suffix_type
    if name is None:
        raise RequestValidationError(f"`{field}` {quote(sampler)} is not served; use one of: "
                                     f"{', '.join(A1111_SAMPLER_TABLE)}", param=field)
    entry = A1111_SAMPLER_TABLE[name]
    chosen = explicit if explicit not in (None, "automatic") else suffix_schedule or entry.schedule
    if chosen not in schedule_types_for(entry.scheduler):
        served = [A1111_SCHEDULE_TYPES[s][0] for s in schedule_types_for(entry.scheduler)]
        raise RequestValidationError(f"`{schedule_field}` {A1111_SCHEDULE_TYPES[chosen][0]!r} is not available "
                                     f"with sampler {name!r}; it takes: {', '.join(served)}", param=schedule_field)
    return entry.scheduler, chosen


def a1111_names(key: str) -> tuple[str, str]:
    """(A1111 sampler name, schedule type label) of a served scheduler key (`dpmpp_2m:karras`), as an
    infotext writes them; a sampler A1111 has no name for keeps the key's own name."""
    name, _, schedule = key.partition(":")
    label = next((a for a, entry in A1111_SAMPLER_TABLE.items() if entry.scheduler == name), name)
    if not schedule:
        schedule = A1111_SAMPLER_TABLE[label].schedule if label in A1111_SAMPLER_TABLE else "automatic"
    return label, A1111_SCHEDULE_TYPES.get(schedule, (schedule, 0.0))[0]
