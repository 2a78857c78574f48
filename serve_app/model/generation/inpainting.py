"""Mask handling of inpainting, in pixels (PIL and numpy only: the router prepares masks too).

A mask is grayscale, white = repaint. The generated image is composited back onto the input through the
(blurred) mask, so pixels the mask leaves at 0 come back exactly as sent: the VAE round trip never touches
them. A1111's `inpainting_fill` decides what the masked area starts from (`fill_masked`).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from PIL import Image, ImageFilter

NEUTRAL = (127, 127, 127)


class InpaintingFill(IntEnum):
    """A1111's `inpainting_fill`: what the masked area starts from."""

    FILL = 0  # the surrounding colours, heavily blurred
    ORIGINAL = 1  # the image as sent
    LATENT_NOISE = 2  # random pixels
    LATENT_NOTHING = 3  # flat grey


def blurred(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` where the mask is white, `original` where it is black, blended in between."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB").resize(generated.size),
                           mask.resize(generated.size))


def fill_masked(image: Image.Image, mask: Image.Image, fill: InpaintingFill, seed: int) -> Image.Image:
    """`image` with its masked area replaced as `fill` says (ORIGINAL: unchanged)."""
    if fill is InpaintingFill.ORIGINAL:
        return image
    if fill is InpaintingFill.FILL:
        source = image.filter(ImageFilter.GaussianBlur(max(image.size) // 8 or 1))
    elif fill is InpaintingFill.LATENT_NOISE:
        pixels = np.random.default_rng(seed).integers(0, 256, (image.height, image.width, 3), dtype=np.uint8)
        source = Image.fromarray(pixels, "RGB")
    else:
        source = Image.new("RGB", image.size, NEUTRAL)
    return Image.composite(source, image, mask.point(lambda v: 255 if v else 0))
