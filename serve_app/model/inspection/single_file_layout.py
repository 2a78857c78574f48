"""The original (A1111/ComfyUI) single-file key layout: where each component's tensors live, and the
metadata keys Dream Lab's own single files carry. Inspection, the writer and the loader all read it here."""

from __future__ import annotations

from serve_app.model.families import Family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Text encoders per family: pipeline attribute -> (key prefix, layout). "clip" = HF CLIP, "openclip" = OpenCLIP.
TEXT_ENCODER_LAYOUTS: dict[Family, dict[str, tuple[str, str]]] = {
    Family.SD1: {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    Family.SD2: {"text_encoder": ("cond_stage_model.model.", "openclip")},
    Family.SDXL: {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.model.", "openclip"),
    },
    Family.SDXL_REFINER: {"text_encoder_2": ("conditioner.embedders.0.model.", "openclip")},
}

# `__metadata__` keys of Dream Lab's own single files: the family and the diffusers config folder (JSON).
METADATA_FAMILY = "dreamlab.family"
METADATA_DIFFUSERS_CONFIG = "dreamlab.diffusers_config"
