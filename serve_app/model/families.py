"""Model families, detected from the UNet's cross-attention width (never from a file name)."""

from __future__ import annotations

from enum import Enum

from serve_app.core.errors import RequestValidationError


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"

    @property
    def txt2img(self) -> bool:
        """The SDXL refiner only refines: it has no text-to-image pipeline."""
        return self is not Family.SDXL_REFINER

    @property
    def is_sdxl(self) -> bool:
        return self in (Family.SDXL, Family.SDXL_REFINER)

    def check_job(self, kind: str, mode_name: str) -> None:
        """Raise when this family cannot run `kind` (the refiner's "no txt2img" rule), naming the mode."""
        if kind == "txt2img" and not self.txt2img:
            raise RequestValidationError(
                f"`mode` {mode_name!r} is an {self.value} checkpoint, which only does img2img", param="mode")


FAMILY_BY_CROSS_ATTENTION_DIM: dict[int, Family] = {
    768: Family.SD1,
    1024: Family.SD2,
    2048: Family.SDXL,
    1280: Family.SDXL_REFINER,
}

INPAINTING_IN_CHANNELS = 9


def supported_dims_text() -> str:
    return ", ".join(f"{dim} ({fam.value})" for dim, fam in FAMILY_BY_CROSS_ATTENTION_DIM.items())
