"""A control unit's image, made ready for its ControlNet: preprocessed at a resolution, then fitted to the
generation's size by the unit's resize mode (the A1111 ControlNet extension's order).

- `processor_res` None ("pixel perfect"): the preprocessor runs at the scale the resize mode will take the
  image to (covering the size for `crop` and `just_resize`, inside it for `fill`, as the extension computes
  it), so the map's lines come out one pixel wide at the output size;
- `processor_res` N: it runs on the image scaled so that its shorter side is N pixels.

Resize modes: `just_resize` stretches to the size, `crop` scales to cover it and cuts the overflow evenly
(A1111's "Crop and Resize"), `fill` scales to fit inside it and pads with black, which is "no control" for
the edge and line maps (A1111's "Resize and Fill").
"""

from __future__ import annotations

from typing import Literal

from PIL import Image, ImageOps

from serve_app.model.control.preprocessors import run_preprocessor

ResizeMode = Literal["just_resize", "crop", "fill"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("just_resize", "crop", "fill")


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def fit(image: Image.Image, size: tuple[int, int], resize: ResizeMode) -> Image.Image:
    """`image` at exactly `size` by `resize`."""
    if image.size == size:
        return image
    if resize == "just_resize":
        return image.resize(size, Image.Resampling.LANCZOS)
    if resize == "crop":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))


def pixel_perfect_resolution(image_size: tuple[int, int], size: tuple[int, int], resize: ResizeMode) -> int:
    """The preprocessor resolution of "pixel perfect" (the A1111 extension's `pixel_perfect_resolution`): the
    image's shorter side at the scale the resize mode takes it to (fit inside for `fill`, cover otherwise)."""
    k = [size[0] / image_size[0], size[1] / image_size[1]]
    return round((min(k) if resize == "fill" else max(k)) * min(image_size))


def prepare_control_image(image: Image.Image, preprocessor: str, size: tuple[int, int], resize: ResizeMode,
                          processor_res: int | None = None, threshold_a: float | None = None,
                          threshold_b: float | None = None) -> Image.Image:
    """The control map of `image` for a generation of `size` (width, height): RGB, exactly that size."""
    resolution = processor_res or pixel_perfect_resolution(image.size, size, resize)
    factor = resolution / min(image.width, image.height)
    detected = run_preprocessor(preprocessor, _scaled(image.convert("RGB"), factor), threshold_a, threshold_b)
    return fit(detected, size, resize)
