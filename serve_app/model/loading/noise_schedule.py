"""v-prediction and zero-terminal-SNR: the scheduler settings a checkpoint's markers ask for.

A v-prediction model (SD 2.x 768, v-pred SDXL fine-tunes such as NoobAI-XL v-pred) sampled as epsilon gives
noise soup. Models trained with zero terminal SNR (`ztsnr`) also need the rescaled betas (the last step at
pure noise) and "trailing" timesteps, which reach that last step (Lin et al., "Common Diffusion Noise Schedules
and Sample Steps are Flawed"). diffusers' DDIM, Euler, Euler a, DPM++ 2M and UniPC take `rescale_betas_zero_snr`;
Heun, LMS and PNDM do not (they keep the trailing spacing only).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def noise_schedule_overrides(prediction_type: str | None, zero_terminal_snr: bool) -> dict[str, Any]:
    """Scheduler config entries for a checkpoint's prediction type and zero-terminal-SNR marker ({}: none)."""
    overrides: dict[str, Any] = {}
    if prediction_type is not None:
        overrides["prediction_type"] = prediction_type
    if zero_terminal_snr:
        overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return overrides


def mode_schedule_overrides(mode: object) -> dict[str, Any]:
    """A mode's `prediction_type` / `zero_terminal_snr` overrides of the file's markers, as scheduler config
    entries (a mode without them, or with None: {}); `zero_terminal_snr: false` drops the rescaled betas."""
    overrides = noise_schedule_overrides(getattr(mode, "prediction_type", None), False)
    ztsnr = getattr(mode, "zero_terminal_snr", None)
    if ztsnr is True:
        overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    elif ztsnr is False:
        overrides.update(rescale_betas_zero_snr=False)
    return overrides


def apply_noise_schedule(pipe: Any, overrides: dict[str, Any]) -> None:
    """Rebuild `pipe`'s scheduler with `overrides` (pipelines derived from it afterwards share the new one)."""
    if not overrides:
        return
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
    logger.info("scheduler %s set from the checkpoint's markers: %s", type(pipe.scheduler).__name__, overrides)
