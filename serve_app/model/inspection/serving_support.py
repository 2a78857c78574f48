"""Whether Dream Lab can serve an inspected checkpoint, and if not, the reason a client or operator reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.model.families import PIPELINE_CLASS_NAMES, SERVED_FAMILIES, Family

if TYPE_CHECKING:
    from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo

_INPUTS = {"clip_l": "CLIP-L text encoder (clip_l)", "clip_g": "OpenCLIP-G text encoder (clip_g)",
           "openclip_h": "OpenCLIP-H text encoder", "t5xxl": "T5-XXL text encoder (t5xxl)", "vae": "VAE (ae)",
           "unet": "UNet", "transformer": "transformer"}


def serving_refusal(info: CheckpointInfo) -> str | None:
    """None when the checkpoint can be served as a mode; else why not, naming what is missing."""
    lacks = ", ".join(_INPUTS.get(c, c) for c in info.missing_components)
    if info.family not in SERVED_FAMILIES:
        pipeline = PIPELINE_CLASS_NAMES[info.family][0]
        need = f" (this file would also need separate files for its {lacks})" if lacks else ""
        return (f"{info.variant or info.family.value} ({info.family.value}) is recognised but not served yet: "
                f"Dream Lab does not drive diffusers' {pipeline} yet{need}")
    if info.inpainting and info.format.value == "single-file":
        return (f"{info.variant}: inpainting single files (UNet in_channels 9) are not served yet; save it as a "
                "diffusers folder (diffusers' from_single_file + save_pretrained)")
    if info.missing_components:
        return (f"{info.variant} checkpoint holds only {', '.join(info.components)}; it lacks its {lacks}: "
                "modes with separate component files are not supported yet")
    return None


def family_pipelines_text(family: Family) -> str:
    """The diffusers pipelines of `family` (txt2img, img2img, inpaint), for messages and docs."""
    return ", ".join(c for c in PIPELINE_CLASS_NAMES[family] if c)
