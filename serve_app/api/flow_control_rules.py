"""What a ControlNet unit may ask of the transformer families (FLUX.1, SD3), checked before the queue: what
diffusers' FLUX / SD3 ControlNet pipelines cannot do is a 422 naming the field and the family.

- `mode` prompt / control is A1111's soft injection: per-depth weights over a UNet's 13 down/mid residuals and
  the conditional half of a CFG batch. A transformer ControlNet adds one residual per block of a stack of equal
  blocks (and FLUX.1 dev/schnell has no CFG batch at all), so there is no counterpart: only `balanced`.
- SD3 has no ControlNet img2img pipeline; its ControlNet inpainting pipeline is for an SD3 *inpainting*
  ControlNet (one reading the mask, `conditioning_channels` 1), one unit, the whole image (no
  `inpaint_full_res` crop); an inpainting ControlNet needs that mask, so it serves no other job.
- FLUX.1 Fill's pipeline takes no ControlNet; FLUX's ControlNet img2img / inpaint pipelines have no true CFG.
- A FLUX Union ControlNet (InstantX / Shakker-Labs) is told which control it gets (`control_type`, A1111's
  `union_control_type`), or it follows from the preprocessor (canny, tile_resample, blur_gaussian); a
  `control_type` for any other ControlNet is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from serve_app.api.schemas.controlnet import ControlUnit
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.control.flow_control_inspect import FLUX_UNION_TYPES
from serve_app.model.families import Family
from serve_app.model.inspection.adapter_inspect import AdapterInfo

_TYPE_ALIASES = {"openpose": "pose", "grey": "gray", "low quality": "lq", "low_quality": "lq"}
_TYPE_OF_PREPROCESSOR = {"canny": "canny", "tile_resample": "tile", "blur_gaussian": "blur"}


def union_mode(unit: ControlUnit, net: AdapterInfo, preprocessor: str, field: Callable[[str], str]) -> int | None:
    """The control type index of a FLUX Union unit; None for another ControlNet (which takes no type)."""
    wanted = unit.control_type.strip().lower() if unit.control_type is not None else None
    if net.control_modes is None:
        if wanted is not None:
            raise RequestValidationError(f"`{field('control_type')}` {quote(unit.control_type)}: ControlNet "
                                         f"{quote(net.name)} is not a Union ControlNet; leave it out",
                                         param=field("control_type"))
        return None
    name = _TYPE_ALIASES.get(wanted, wanted) if wanted is not None else _TYPE_OF_PREPROCESSOR.get(preprocessor)
    usable = FLUX_UNION_TYPES[: net.control_modes]
    if name not in usable:
        told = f"{quote(unit.control_type)} is not one" if wanted is not None else \
            f"is needed for Union ControlNet {quote(net.name)} (preprocessor {preprocessor!r} does not say which)"
        raise RequestValidationError(f"`{field('control_type')}` {told}; one of: {', '.join(usable)}",
                                     param=field("control_type"))
    return usable.index(name)


def check_flow_unit(unit: ControlUnit, net: AdapterInfo, units: int, family: Family, job: str, variant: str,
                    full_res: bool, mode_name: str, field: Callable[[str], str]) -> None:
    """Raise for what a unit of a `job` on an SD3 / FLUX mode cannot do (see the module docstring)."""
    where = f"mode {mode_name!r} ({variant or family.value})"
    if unit.mode != "balanced":
        raise RequestValidationError(f"`{field('mode')}` {unit.mode!r}: {family.value}'s transformer ControlNets have "
                                     f"no soft injection; {where} takes `balanced` only", param=field("mode"))
    if variant == "flux-fill":
        raise RequestValidationError(f"`{field('model')}`: FLUX.1 Fill's pipeline takes no ControlNet; {where}",
                                     param=field("model"))
    if family is not Family.SD3:
        return
    inpainting = (net.conditioning_channels or 0) > 0
    if job == "img2img":
        raise RequestValidationError(f"`{field('model')}`: img2img with a ControlNet is not served for sd3 (diffusers "
                                     f"has no SD3 ControlNet img2img pipeline); {where}", param=field("model"))
    if job == "inpaint" and (not inpainting or units > 1):
        raise RequestValidationError(f"`{field('model')}`: inpaint with ControlNets on sd3 takes one SD3 inpainting "
                                     f"ControlNet (one reading the mask); {quote(net.name)} "
                                     f"{'is one of several units' if inpainting else 'is not one'}; {where}",
                                     param=field("model"))
    if job == "inpaint" and full_res:
        raise RequestValidationError(f"`inpaint_full_res`: SD3's ControlNet inpainting pipeline inpaints the whole "
                                     f"image; leave it off; {where}", param="inpaint_full_res")
    if job == "txt2img" and inpainting:
        raise RequestValidationError(f"`{field('model')}`: {quote(net.name)} is an SD3 inpainting ControlNet: it "
                                     f"serves inpaint jobs only; {where}", param=field("model"))


def check_flux_true_cfg(true_cfg_scale: float | None, job: str, field: str) -> None:
    """FLUX's ControlNet img2img and inpaint pipelines have no true CFG (its txt2img one has)."""
    if true_cfg_scale is not None and job != "txt2img":
        raise RequestValidationError(f"`{field}`: FLUX's ControlNet {job} pipeline has no true CFG; leave it out "
                                     "or send no ControlNet", param=field)
