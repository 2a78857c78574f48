"""Model families, detected from a checkpoint's tensors (never from a file name): see
`serve_app.model.inspection.family_detection` for the signatures."""

from __future__ import annotations

from enum import Enum

from serve_app.core.errors import RequestValidationError


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"
    SD3 = "sd3"
    FLUX = "flux"

    @property
    def txt2img(self) -> bool:
        """The SDXL refiner only refines: it has no text-to-image pipeline."""
        return self is not Family.SDXL_REFINER

    @property
    def is_sdxl(self) -> bool:
        return self in (Family.SDXL, Family.SDXL_REFINER)

    @property
    def flow(self) -> bool:
        """A flow-matching transformer family (SD3, FLUX): T5 prompts, flow-matching schedulers, no clip skip."""
        return self in FLOW_FAMILIES

    @property
    def size_multiple(self) -> int:
        """What image sides must be a multiple of: the VAE's 8, times the transformer's 2x2 patches (SD3, FLUX)."""
        return 16 if self.flow else 8

    @property
    def denoiser(self) -> str:
        """The pipeline attribute of the denoiser: a UNet, or a (MMDiT / FLUX) transformer."""
        return "unet" if self in UNET_FAMILIES else "transformer"

    def check_job(self, kind: str, mode_name: str) -> None:
        """Raise when this family cannot run `kind` (the refiner's "no txt2img" rule), naming the mode."""
        if kind == "txt2img" and not self.txt2img:
            raise RequestValidationError(
                f"`mode` {mode_name!r} is an {self.value} checkpoint, which only does img2img", param="mode")


UNET_FAMILIES: tuple[Family, ...] = (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)
FLOW_FAMILIES: tuple[Family, ...] = (Family.SD3, Family.FLUX)
SERVED_FAMILIES: tuple[Family, ...] = UNET_FAMILIES + FLOW_FAMILIES

# diffusers pipeline classes per family: (txt2img, img2img, inpaint); None where diffusers has none.
PIPELINE_CLASS_NAMES: dict[Family, tuple[str | None, str, str]] = {
    Family.SD1: ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    Family.SD2: ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    Family.SDXL: ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    Family.SDXL_REFINER: (None, "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    Family.SD3: ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    Family.FLUX: ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
}
FLUX_FILL_PIPELINE = "FluxFillPipeline"
# Variants detected but not served: FLUX.1 Canny/Depth take a control image diffusers' FluxControlPipeline reads.
UNSERVED_VARIANTS: dict[str, str] = {"flux-control": "FluxControlPipeline (a control image input) is not served"}

# The components each family's pipeline needs (names as `family_detection` reports them).
REQUIRED_COMPONENTS: dict[Family, tuple[str, ...]] = {
    Family.SD1: ("unet", "vae", "clip_l"),
    Family.SD2: ("unet", "vae", "openclip_h"),
    Family.SDXL: ("unet", "vae", "clip_l", "clip_g"),
    Family.SDXL_REFINER: ("unet", "vae", "clip_g"),
    Family.SD3: ("transformer", "vae", "clip_l", "clip_g", "t5xxl"),
    Family.FLUX: ("transformer", "vae", "clip_l", "t5xxl"),
}

FAMILY_BY_CROSS_ATTENTION_DIM: dict[int, Family] = {
    768: Family.SD1,
    1024: Family.SD2,
    2048: Family.SDXL,
    1280: Family.SDXL_REFINER,
}

INPAINTING_IN_CHANNELS = 9


def supported_dims_text() -> str:
    return ", ".join(f"{dim} ({fam.value})" for dim, fam in FAMILY_BY_CROSS_ATTENTION_DIM.items())
