"""The runner's self-check: tells a request that failed from a pipeline that broke. The mode worker runs it
after an unexpected error; a failed check marks the mode failed.

It is a minimal real generation (1 step, 64x64, one image, fixed seed, no guidance, the checkpoint's own
weights) through the same input builders as a request, so it exercises the pipeline a request would use.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from serve_app.model.generation.inpainting import NEUTRAL
from serve_app.model.generation.job import GenerationRequest, Img2Img, Txt2Img
from serve_app.model.generation.job_inputs import job_inputs

if TYPE_CHECKING:
    from serve_app.model.generation.runner import ModelRunner

logger = logging.getLogger(__name__)

SELF_CHECK_SIZE = 64  # pixels: the smallest size every family's UNet takes (latents 8x8)
SELF_CHECK_SCHEDULER = "euler"  # a plain one: the check is about the pipeline, not the request's scheduler


def self_check_request(txt2img: bool) -> GenerationRequest:
    """The check's request: txt2img, or for a family without it (the refiner) img2img at strength 1 (which
    keeps the one step)."""
    job = Txt2Img() if txt2img else Img2Img(Image.new("RGB", (SELF_CHECK_SIZE,) * 2, NEUTRAL), strength=1.0)
    return GenerationRequest(job=job, prompt="", negative_prompt="", width=SELF_CHECK_SIZE, height=SELF_CHECK_SIZE,
                             steps=1, guidance_scale=1.0, seeds=[0], scheduler=SELF_CHECK_SCHEDULER,
                             output_format="png")


def self_check(runner: ModelRunner, request_id: str = "-") -> bool:
    """False, with the reason logged (under `request_id`, the request whose failure asked for it), when the
    check raises or its pixels are not finite, or when nothing is loaded."""
    name = runner.mode.name
    with runner.exclusive():
        if not runner.loaded:
            logger.error("[%s] mode %s self-check failed: not loaded (state %s)", request_id, name,
                         runner.state.value)
            return False
        pipes = runner.pipelines()
        runner.adapt(pipes, [], [], None)  # the checkpoint's own weights
        built = job_inputs(pipes, self_check_request(runner.family.txt2img), name)
        call: dict[str, Any] = dict(prompt="self-check", num_inference_steps=1, guidance_scale=1.0,
                                    generator=torch.Generator("cpu").manual_seed(0), output_type="pt")
        call.update(built.inputs)
        started = time.perf_counter()
        try:
            built.pipe.scheduler = runner.scheduler(SELF_CHECK_SCHEDULER)
            with torch.inference_mode():
                images = built.pipe(**call).images
            finite = bool(torch.isfinite(images).all())
        except Exception as exc:
            logger.error("[%s] mode %s self-check failed: %s: %s", request_id, name, type(exc).__name__, exc)
            return False
    if not finite:
        logger.error("[%s] mode %s self-check failed: the pipeline gave non-finite pixels (NaN or inf)",
                     request_id, name)
        return False
    logger.info("[%s] mode %s self-check passed in %.2fs", request_id, name, time.perf_counter() - started)
    return True
