"""A loaded checkpoint's pipeline with ControlNets: diffusers' ControlNet pipeline of the same job built from
the pipeline's own components (`from_pipe`: every module shared, nothing copied), and the call arguments of
the request's units (one unit: a ControlNet; several: diffusers' MultiControlNet, weights and start/end per
unit)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from serve_app.core.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation.job import GenerationRequest

# (the family's ControlNet kind, the job's pipeline) -> diffusers' ControlNet pipeline for it. SD3 has no ControlNet
# img2img, and its inpainting one is for an inpainting ControlNet (it reads the image and the mask, no strength):
# the router refuses the rest before the queue (`flow_control_rules`).
_CONTROL_PIPELINES: dict[tuple[str, str], str] = {
    ("sd", "txt2img"): "StableDiffusionControlNetPipeline",
    ("sd", "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
    ("flux", "txt2img"): "FluxControlNetPipeline",
    ("flux", "img2img"): "FluxControlNetImg2ImgPipeline",
    ("flux", "inpaint"): "FluxControlNetInpaintPipeline",
    ("sd3", "txt2img"): "StableDiffusion3ControlNetPipeline",
    ("sd3", "inpaint"): "StableDiffusion3ControlNetInpaintingPipeline",
}
_MULTI = {"flux": "FluxMultiControlNetModel", "sd3": "SD3MultiControlNetModel"}  # else MultiControlNetModel
_SD3_INPAINT_DROPS = ("image", "mask_image", "strength", "padding_mask_crop")


def control_kind(family: Family) -> str:
    return family.value if family in (Family.FLUX, Family.SD3) else "sdxl" if family.is_sdxl else "sd"


def _sharing(cls: Any, pipe: Any, controlnet: Any) -> Any:
    """A `cls` pipeline on `pipe`'s own modules and settings plus `controlnet` (what `from_pipe` does, without
    its cast of every module to a dtype on each call)."""
    modules, options = cls._get_signature_keys(cls)
    kwargs = {k: v for k, v in pipe.components.items() if k in modules}
    kwargs.update({k: v for k, v in pipe.config.items() if k in options and k not in kwargs})
    if "requires_safety_checker" in options:
        kwargs["requires_safety_checker"] = False
    return cls(**kwargs, controlnet=controlnet)


def controlled_pipeline(pipes: Any, pipe: Any, models: list[Any], params: GenerationRequest,
                        images: list[Image.Image], inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the ControlNet pipeline for `pipe`, one of `pipes`' pipelines; the control arguments of `params`' units).
    SD3's inpainting ControlNet pipeline takes the job's mask as `control_mask` instead of its image inputs: they
    leave `inputs`. Call right before the generation: SD3's ControlNet pipelines draw the control image's VAE
    latents from torch's global generator (not the request's), which is seeded here from the request's seed."""
    import diffusers
    import torch

    controls = params.controls

    role = "txt2img" if pipe is pipes.txt2img else "img2img" if pipe is pipes.img2img else "inpaint"
    kind = control_kind(pipes.family)
    if (kind, role) not in _CONTROL_PIPELINES:
        raise RequestValidationError(f"`controls`: {pipes.family.value} has no ControlNet {role} pipeline",
                                     param="controls")
    cls = getattr(diffusers, _CONTROL_PIPELINES[(kind, role)])
    one = len(models) == 1
    controlnet = models[0] if one else getattr(diffusers, _MULTI.get(kind, "MultiControlNetModel"))(models)
    built = _sharing(cls, pipe, controlnet)
    built.set_progress_bar_config(disable=True)
    weights = [c.weight for c in controls]
    image_arg = "image" if role == "txt2img" and kind in ("sd", "sdxl") else "control_image"
    call: dict[str, Any] = {
        image_arg: images[0] if one else images,
        "controlnet_conditioning_scale": weights[0] if one else weights,
        "control_guidance_start": [c.start for c in controls],
        "control_guidance_end": [c.end for c in controls],
    }
    if kind == "flux" and (not one or controls[0].union_mode is not None):  # (a list for several: -1 for none)
        modes = [c.union_mode for c in controls]
        call["control_mode"] = modes[0] if one else modes
    if kind == "sd3":
        torch.manual_seed(params.seeds[0])
    if kind == "sd3" and role == "inpaint":
        call["control_mask"] = inputs["mask_image"]
        for name in _SD3_INPAINT_DROPS:
            inputs.pop(name, None)
    return built, call
