"""Preprocessors: an image in, the control map a ControlNet expects out (RGB, the size it was given).

Only those that need no downloaded model, written with numpy, PIL and scipy (already dependencies): their
names are the A1111 ControlNet extension's modules, so `/controlnet/module_list` and A1111 payloads use them
as is. Each takes up to two numbers (`threshold_a`, `threshold_b`: the extension's slider values), kept
within its sliders' ranges, and fills in its own defaults when they are not given. Pure functions of their
inputs (shuffle is seeded), so the same request gives the same map; they hold no lock and can run in any
thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps


@dataclass(frozen=True)
class Slider:
    """One of a preprocessor's numbers, as the A1111 extension describes it in `module_detail`."""

    name: str
    value: float
    min: float
    max: float
    step: float = 1.0


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32)


def _rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").convert("RGB")


def none(image: Image.Image, a: float, b: float) -> Image.Image:
    return image.convert("RGB")


def invert(image: Image.Image, a: float, b: float) -> Image.Image:
    """White background, black lines -> the black background, white lines a lineart/scribble model wants."""
    return ImageOps.invert(image.convert("RGB"))


def canny(image: Image.Image, low: float, high: float) -> Image.Image:
    """Canny edges as OpenCV's `Canny(img, low, high)` finds them (3x3 Sobel, L1 gradient, no pre-blur): non-
    maximum suppression along the gradient, then hysteresis (weak edges kept where they touch strong ones)."""
    from scipy import ndimage

    low, high = min(low, high), max(low, high)
    gray = _gray(image)
    gx, gy = ndimage.sobel(gray, axis=1), ndimage.sobel(gray, axis=0)
    magnitude = np.abs(gx) + np.abs(gy)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45) % 4).astype(np.int8)  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros_like(magnitude, dtype=bool)
    for s, (dy, dx) in offsets.items():
        ahead = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        behind = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == s) & (magnitude >= ahead) & (magnitude > behind)
    thin = np.where(keep, magnitude, 0.0)
    strong, weak = thin > high, thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    if count == 0:
        return _rgb(np.zeros_like(gray))
    connected = np.zeros(count + 1, dtype=bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return _rgb(connected[labels] * 255.0)


def threshold(image: Image.Image, level: float, b: float) -> Image.Image:
    """White where the image is brighter than `level`, black elsewhere."""
    return _rgb((_gray(image) > level) * 255.0)


def scribble_xdog(image: Image.Image, level: float, b: float) -> Image.Image:
    """A scribble from the extended difference of Gaussians (the extension's xDoG): lines where a narrow blur
    of the image is darker than a wide one by more than `level`."""
    from scipy import ndimage

    gray = _gray(image)
    dog = ndimage.gaussian_filter(gray, 0.5) - ndimage.gaussian_filter(gray, 5.0)
    return _rgb((-dog > level / 4.0) * 255.0)  # the extension: threshold / 255 * 64 of a 0-1 image


def blur_gaussian(image: Image.Image, sigma: float, b: float) -> Image.Image:
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma))


def tile_resample(image: Image.Image, down_sampling: float, b: float) -> Image.Image:
    """The image, down-sampled by `down_sampling` and back up (what a tile model is given)."""
    rgb = image.convert("RGB")
    if down_sampling <= 1.0:
        return rgb
    small = rgb.resize((max(1, round(rgb.width / down_sampling)), max(1, round(rgb.height / down_sampling))),
                       Image.Resampling.BICUBIC)
    return small.resize(rgb.size, Image.Resampling.BICUBIC)


def shuffle(image: Image.Image, a: float, b: float, seed: int = 0) -> Image.Image:
    """The extension's content shuffle: every pixel moved along a smooth random flow field (seeded)."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    scale = max(h, w) / 8.0
    flow = [ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), scale) for _ in range(2)]
    flow = [f / (np.abs(f).max() + 1e-6) for f in flow]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [(ys + flow[0] * h) % h, (xs + flow[1] * w) % w]
    out = np.stack([ndimage.map_coordinates(rgb[..., c], coords, order=1, mode="wrap") for c in range(3)], -1)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


Preprocess = Callable[[Image.Image, float, float], Image.Image]


@dataclass(frozen=True)
class Preprocessor:
    run: Preprocess
    sliders: tuple[Slider, ...] = ()

    def __call__(self, image: Image.Image, threshold_a: float | None = None,
                 threshold_b: float | None = None) -> Image.Image:
        values = [0.0, 0.0]
        for i, (given, slider) in enumerate(zip((threshold_a, threshold_b), self.sliders)):
            # within the slider's range, as the extension's UI keeps it (a sigma of 1e300 would never finish)
            values[i] = slider.value if given is None or not math.isfinite(given) else min(max(given, slider.min),
                                                                                            slider.max)
        return self.run(image, values[0], values[1])


PREPROCESSORS: dict[str, Preprocessor] = {
    "none": Preprocessor(none),
    "invert": Preprocessor(invert),
    "canny": Preprocessor(canny, (Slider("Canny Low Threshold", 100, 1, 255),
                                  Slider("Canny High Threshold", 200, 1, 255))),
    "threshold": Preprocessor(threshold, (Slider("Binarization Threshold", 127, 0, 255),)),
    "scribble_xdog": Preprocessor(scribble_xdog, (Slider("XDoG Threshold", 32, 1, 64),)),
    "blur_gaussian": Preprocessor(blur_gaussian, (Slider("Sigma", 9.0, 0.01, 64.0, 0.01),)),
    "tile_resample": Preprocessor(tile_resample, (Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),)),
    "shuffle": Preprocessor(shuffle),
}
# Other names A1111 clients send for the same preprocessors
PREPROCESSOR_ALIASES: dict[str, str] = {
    "invert (from white bg & black line)": "invert", "scribble_xdog": "scribble_xdog", "xdog": "scribble_xdog",
    "blur": "blur_gaussian", "tile": "tile_resample", "content shuffle": "shuffle", "binary": "threshold",
}


def preprocessor_name(name: str) -> str | None:
    """The served preprocessor a client's name means (any case, A1111's aliases); None when not served."""
    key = name.strip().lower()
    key = PREPROCESSOR_ALIASES.get(key, key)
    return key if key in PREPROCESSORS else None


def run_preprocessor(name: str, image: Image.Image, threshold_a: float | None = None,
                     threshold_b: float | None = None) -> Image.Image:
    """The control map of `image` by the served preprocessor `name` (see `preprocessor_name`)."""
    return PREPROCESSORS[name](image, threshold_a, threshold_b)
