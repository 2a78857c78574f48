"""Preprocessors without downloaded models: canny finds a shape's outline (thin, thresholded, as OpenCV's
does), the others do what their names say, every one is deterministic and keeps the size; control images are
fitted to the output size by the resize modes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serve_app.model.control.control_image import fit, prepare_control_image
from serve_app.model.control.preprocessors import PREPROCESSORS, preprocessor_name, run_preprocessor


def _shape(size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size, "black")
    ImageDraw.Draw(img).rectangle((16, 12, 47, 35), fill="white")
    return img


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"))


def test_canny_outlines_a_shape_with_thin_edges() -> None:
    edges = _gray(run_preprocessor("canny", _shape(), 100, 200))
    assert edges.shape == (48, 64) and set(np.unique(edges)) == {0, 255}
    assert edges[20:28, 24:40].max() == 0 and edges[:5].max() == 0  # inside and far outside: none
    assert edges[12, 20:44].min() == 255 or edges[11, 20:44].min() == 255  # the top border
    assert edges[:, 30].sum() // 255 <= 4  # a column crosses two thin borders
    assert _gray(run_preprocessor("canny", Image.new("RGB", (32, 32), "gray"))).max() == 0
    assert _gray(run_preprocessor("canny", _shape(), 254, 255)).sum() <= edges.sum()


def test_the_others_do_what_they_say() -> None:
    img = _shape()
    assert _gray(run_preprocessor("invert", img))[0, 0] == 255
    assert np.array_equal(_gray(run_preprocessor("threshold", img, 127)), _gray(img))
    assert _gray(run_preprocessor("blur_gaussian", img, 4))[12, 30] not in (0, 255)
    assert run_preprocessor("tile_resample", img, 1.0).tobytes() == img.tobytes()
    assert run_preprocessor("tile_resample", img, 4.0).tobytes() != img.tobytes()
    assert _gray(run_preprocessor("scribble_xdog", img, 32)).max() == 255


@pytest.mark.parametrize("name", list(PREPROCESSORS))
def test_every_preprocessor_is_deterministic_and_keeps_the_size(name: str) -> None:
    img = _shape()
    a, b = run_preprocessor(name, img), run_preprocessor(name, img)
    assert a.size == img.size and a.mode == "RGB" and a.tobytes() == b.tobytes()


def test_names_as_a1111_clients_send_them() -> None:
    assert preprocessor_name("Canny") == "canny"
    assert preprocessor_name("invert (from white bg & black line)") == "invert"
    assert preprocessor_name("openpose") is None


def test_resize_modes_fit_the_output_size() -> None:
    wide = Image.new("RGB", (128, 64), "black")
    ImageDraw.Draw(wide).rectangle((40, 16, 88, 48), fill="white")
    for mode in ("just_resize", "crop", "fill"):
        assert fit(wide, (64, 64), mode).size == (64, 64)
    assert _gray(fit(wide, (64, 64), "fill"))[0, 32] == 0 and _gray(fit(wide, (64, 64), "crop"))[32, 32] == 255
    control = prepare_control_image(wide, "canny", (64, 64), "crop")
    assert control.size == (64, 64) and _gray(control).max() == 255
    assert prepare_control_image(wide, "none", (32, 16), "just_resize", processor_res=256).size == (32, 16)


def test_numbers_are_kept_within_the_sliders() -> None:
    img = _shape()
    widest = run_preprocessor("blur_gaussian", img, 64).tobytes()
    assert run_preprocessor("blur_gaussian", img, 1e300).tobytes() == widest
    assert run_preprocessor("blur_gaussian", img, -5).size == img.size
    assert run_preprocessor("canny", img, float("nan"), float("inf")).tobytes() == run_preprocessor(
        "canny", img, 100, 255).tobytes()
