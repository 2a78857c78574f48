"""A loaded checkpoint's pipeline with ControlNets: diffusers' ControlNet pipeline of the same job built from
the pipeline's own components (`from_pipe`: every module shared, nothing copied), and the call arguments of
the request's units (one unit: a ControlNet; several: diffusers' MultiControlNet, weights and start/end per
unit)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from serve_app.model.generation.job import ControlUse

# (sdxl?, the job's pipeline) -> diffusers' ControlNet pipeline for it
_CONTROL_PIPELINES: dict[tuple[bool, str], str] = {
    (False, "txt2img"): "StableDiffusionControlNetPipeline",
    (False, "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    (False, "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    (True, "txt2img"): "StableDiffusionXLControlNetPipeline",
    (True, "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
}


def _sharing(cls: Any, pipe: Any, controlnet: Any) -> Any:
    """A `cls` pipeline on `pipe`'s own modules and settings plus `controlnet` (what `from_pipe` does, without
    its cast of every module to a dtype on each call)."""
    modules, options = cls._get_signature_keys(cls)
    kwargs = {k: v for k, v in pipe.components.items() if k in modules}
    kwargs.update({k: v for k, v in pipe.config.items() if k in options and k not in kwargs})
    if "requires_safety_checker" in options:
        kwargs["requires_safety_checker"] = False
    return cls(**kwargs, controlnet=controlnet)


def controlled_pipeline(pipes: Any, pipe: Any, models: list[Any], controls: list[ControlUse],
                        images: list[Image.Image]) -> tuple[Any, dict[str, Any]]:
    """(the ControlNet pipeline for `pipe`, one of `pipes`' pipelines; its control arguments)."""
    import diffusers
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    role = "txt2img" if pipe is pipes.txt2img else "img2img" if pipe is pipes.img2img else "inpaint"
    cls = getattr(diffusers, _CONTROL_PIPELINES[(pipes.family.is_sdxl, role)])
    one = len(models) == 1
    controlnet = models[0] if one else MultiControlNetModel(models)
    built = _sharing(cls, pipe, controlnet)
    built.set_progress_bar_config(disable=True)
    weights = [c.weight for c in controls]
    call: dict[str, Any] = {
        "image" if role == "txt2img" else "control_image": images[0] if one else images,
        "controlnet_conditioning_scale": weights[0] if one else weights,
        "control_guidance_start": [c.start for c in controls],
        "control_guidance_end": [c.end for c in controls],
    }
    return built, call
