"""Whether Dream Lab can serve an inspected checkpoint, and if not, the reason a client or operator reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.model.families import PIPELINE_CLASS_NAMES, UNSERVED_VARIANTS, Family
from serve_app.model.inspection.single_file_layout import METADATA_DIFFUSERS_CONFIG

if TYPE_CHECKING:
    from serve_app.model.inspection.checkpoint_inspect import CheckpointInfo

_INPUTS = {"clip_l": "CLIP-L text encoder (clip_l)", "clip_g": "OpenCLIP-G text encoder (clip_g)",
           "openclip_h": "OpenCLIP-H text encoder", "t5xxl": "T5-XXL text encoder (t5xxl)", "vae": "VAE (ae)",
           "unet": "UNet", "transformer": "transformer"}


def component_text(names: list[str]) -> str:
    return ", ".join(_INPUTS.get(c, c) for c in names)


def serving_refusal(info: CheckpointInfo) -> str | None:
    """None when the checkpoint (with the component files its mode names, if any) can be served as a mode;
    else why not, naming what is missing."""
    if info.variant in UNSERVED_VARIANTS:
        return f"{info.variant} ({info.family.value}) is recognised but not served: {UNSERVED_VARIANTS[info.variant]}"
    if info.inpainting and info.format.value == "single-file" and not info.family.flow:
        return (f"{info.variant}: inpainting single files (UNet in_channels 9) are not served yet; save it as a "
                "diffusers folder (diffusers' from_single_file + save_pretrained)")
    if info.missing_components:
        return (f"{info.variant} checkpoint holds only {', '.join(info.components)}; it lacks its "
                f"{component_text(info.missing_components)}: name them as component files in its mode "
                "(`components: {text_encoders: [...], vae: ...}`, files under MODEL_ROOT)")
    if (info.family.flow and info.format.value == "single-file" and info.config_folder is None
            and METADATA_DIFFUSERS_CONFIG not in info.metadata):
        return (f"{info.variant} single file: its diffusers configs and tokenizers (T5's above all) are not in the "
                "file; name a diffusers folder of the family (configs and tokenizers; weights not needed) as its "
                "mode's `components: {config: <folder>}`")
    return None


def family_pipelines_text(family: Family) -> str:
    """The diffusers pipelines of `family` (txt2img, img2img, inpaint), for messages and docs."""
    return ", ".join(c for c in PIPELINE_CLASS_NAMES[family] if c)
