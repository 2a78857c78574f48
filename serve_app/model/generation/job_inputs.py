"""What each generation job calls: its pipeline, that pipeline's job-specific inputs, and what the result is
composited onto. One builder per job; `job_inputs` matches on the job.

An inpainting checkpoint (UNet in_channels 9) has only its inpainting pipeline: it runs txt2img as a full
mask over a neutral image (strength 1) and img2img as a full mask over the init image. A hires pass and a
refiner split need the ordinary pipelines; the router refuses them for an inpainting checkpoint before the
queue (`resolve_request`), and a hand-built request reaching the runner is refused here the same way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from serve_app.core.errors import RequestValidationError
from serve_app.model.generation.inpainting import NEUTRAL, blurred
from serve_app.model.generation.job import GenerationRequest, Img2Img, Inpaint, RefinerFinish, Txt2Img
from serve_app.model.loading.pipeline_loader import LoadedPipelines


@dataclass
class JobInputs:
    pipe: Any
    inputs: dict[str, Any]
    overlay: tuple[Image.Image, Image.Image] | None = None  # (image, mask) the result is composited onto


def _no_inpainting_checkpoint(pipes: LoadedPipelines, mode_name: str, param: str, what: str) -> None:
    if pipes.inpainting_only:
        raise RequestValidationError(f"`{param}`: mode {mode_name!r} is an inpainting checkpoint, which has no "
                                     f"{what}; use an ordinary one", param=param)


def _full_mask(pipes: LoadedPipelines, params: GenerationRequest, image: Image.Image | None,
               strength: float) -> JobInputs:
    size = (params.width, params.height)
    image = image if image is not None else Image.new("RGB", size, NEUTRAL)
    return JobInputs(pipes.inpaint, dict(image=image, mask_image=Image.new("L", size, 255), strength=strength,
                                         width=params.width, height=params.height))


def txt2img_inputs(pipes: LoadedPipelines, params: GenerationRequest, job: Txt2Img, mode_name: str) -> JobInputs:
    if job.hires is not None:
        _no_inpainting_checkpoint(pipes, mode_name, "hires", "second pass")
    if job.denoising_end is not None:
        _no_inpainting_checkpoint(pipes, mode_name, "refiner", "base -> refiner split")
    if pipes.inpainting_only:
        return _full_mask(pipes, params, None, 1.0)
    inputs: dict[str, Any] = dict(width=params.width, height=params.height)
    if job.denoising_end is not None:
        inputs.update(denoising_end=job.denoising_end, output_type="latent")
    return JobInputs(pipes.txt2img, inputs)


def img2img_inputs(pipes: LoadedPipelines, params: GenerationRequest, job: Img2Img) -> JobInputs:
    if pipes.inpainting_only:
        return _full_mask(pipes, params, job.init_image, job.strength)
    inputs: dict[str, Any] = dict(image=job.init_image, strength=job.strength)
    if "height" in inspect.signature(type(pipes.img2img).__call__).parameters:  # SD3 / FLUX: not the image's size
        inputs.update(width=params.width, height=params.height)
    return JobInputs(pipes.img2img, inputs)


def inpaint_inputs(pipes: LoadedPipelines, params: GenerationRequest, job: Inpaint) -> JobInputs:
    mask = blurred(job.mask, job.mask_blur)
    inputs: dict[str, Any] = dict(image=job.init_image, mask_image=mask, strength=job.strength,
                                  width=params.width, height=params.height)
    if job.padding is not None:
        inputs["padding_mask_crop"] = job.padding
    return JobInputs(pipes.inpaint, inputs, (job.init_image, mask))


def refiner_inputs(pipes: LoadedPipelines, job: RefinerFinish, mode_name: str) -> JobInputs:
    _no_inpainting_checkpoint(pipes, mode_name, "refiner.mode", "refiner pass")
    latents = torch.from_numpy(job.latents).to(pipes.device, pipes.dtype)
    return JobInputs(pipes.img2img, dict(image=latents, denoising_start=job.denoising_start))


def job_inputs(pipes: LoadedPipelines, params: GenerationRequest, mode_name: str = "-") -> JobInputs:
    """The pipeline `params.job` runs on and its job-specific inputs (`mode_name` for errors)."""
    match params.job:
        case Txt2Img() as job:
            return txt2img_inputs(pipes, params, job, mode_name)
        case Img2Img() as job:
            return img2img_inputs(pipes, params, job)
        case Inpaint() as job:
            return inpaint_inputs(pipes, params, job)
        case RefinerFinish() as job:
            return refiner_inputs(pipes, job, mode_name)
    raise TypeError(f"not a generation job: {params.job!r}")
