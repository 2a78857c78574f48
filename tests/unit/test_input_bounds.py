"""Hostile input is bounded before it costs anything: init images checked from their header before a pixel
is decoded, error messages that quote a short prefix of a bad value, A1111 seeds checked for every batch up
front, and prompts a tokenizer cannot encode. Over HTTP: `test_input_bounds_http.py`.
"""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from deployments.router.http_app import MAX_BODY_BYTES
from serve_app.api.request_resolution import INIT_IMAGE_SCALE, MAX_IMAGE_BYTES, decode_image, resolve_request
from serve_app.api.schemas.a1111 import A1111Img2ImgRequest, A1111Txt2ImgRequest
from serve_app.api.schemas.native import Img2ImgRequest, Txt2ImgRequest
from serve_app.core.errors import RequestTooLargeError, RequestValidationError
from serve_app.core.strict_model import describe_error, quote
from serve_app.model.families import Family
from serve_app.model.generation.job import MAX_SEED, Img2Img
from tests.unit.hostile_inputs import HUGE, MODE, b64, image, png, png_claiming


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    img = decode_image(image(fmt), "image", MODE.limits)
    assert img.size == (64, 64) and img.mode == "RGB"


def test_a_decompression_bomb_header_is_422_naming_the_field_not_a_500() -> None:
    with pytest.raises(RequestValidationError) as err:
        decode_image(b64(png_claiming(20000, 20000)), "image", MODE.limits)
    assert err.value.status_code == 422 and err.value.param == "image"
    assert "`image`" in err.value.message and "too large" in err.value.message


@pytest.mark.parametrize("side", [20000, 10000])
def test_a_real_huge_png_is_refused_from_its_header(side: int) -> None:
    raw = png(side, side, "1")  # 65 KB (16 KB) of PNG, 400 (100) megapixels: over PIL's own bomb limits
    with pytest.raises(RequestValidationError) as err:
        decode_image(b64(raw), "image", MODE.limits)
    assert err.value.status_code == 422 and err.value.param == "image" and "too large" in err.value.message


@pytest.mark.parametrize("size", [(5000, 5000), (600, 64), (64, 600)])
def test_an_image_over_the_modes_limits_is_refused_before_its_pixels_are_decoded(size: tuple[int, int]) -> None:
    # the header's size, not a decode failure, is what the error is about: the size check came first
    with pytest.raises(RequestValidationError) as err:
        decode_image(b64(png_claiming(*size)), "image", MODE.limits)
    limit = f"{INIT_IMAGE_SCALE * 256}x{INIT_IMAGE_SCALE * 256}"
    assert err.value.param == "image" and f"{size[0]}x{size[1]}" in err.value.message and limit in err.value.message


def test_an_image_within_the_scaled_limits_is_resized_to_the_request() -> None:
    side = INIT_IMAGE_SCALE * 256
    params = resolve_request(Img2ImgRequest(prompt="a", image=b64(png(side, side)), width=64, height=64), MODE,
                             Family.SD1)
    assert isinstance(params.job, Img2Img) and params.job.init_image.size == (64, 64)


def test_image_size_defaults_from_the_image_say_where_the_value_came_from() -> None:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Img2ImgRequest(prompt="a", image=b64(png(400, 64))), MODE, Family.SD1)
    assert err.value.param == "width" and "init image" in err.value.message


@pytest.mark.parametrize(("raw", "why"), [
    (b"\x00\x01 plainly not a picture at all", "not a decodable PNG/JPEG/WebP"),
    (base64.b64decode(image("GIF")), "not a decodable PNG/JPEG/WebP"),  # a real image, not an allowed format
    (base64.b64decode(image("BMP")), "not a decodable PNG/JPEG/WebP"),
    (png(64, 64)[:-40], "not a decodable PNG"),  # truncated: the header is fine, the pixels are not
])
def test_unreadable_or_disallowed_images_are_422(raw: bytes, why: str) -> None:
    with pytest.raises(RequestValidationError) as err:
        decode_image(b64(raw), "image", MODE.limits)
    assert err.value.param == "image" and why in err.value.message
    assert len(err.value.message) < 200


def test_an_oversized_base64_image_is_413_before_it_is_decoded() -> None:
    payload = "A" * (MAX_IMAGE_BYTES * 4 // 3 + 8)
    with pytest.raises(RequestTooLargeError) as err:
        decode_image(payload, "init_images")
    assert err.value.status_code == 413 and err.value.param == "init_images"
    assert str(MAX_IMAGE_BYTES) in err.value.message and len(err.value.message) < 200


def test_the_body_cap_holds_an_image_at_its_limit() -> None:
    assert MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024 < MAX_BODY_BYTES


# -- prompts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["\ud800", "a cat \udfff", "\ud83d"])
def test_a_lone_surrogate_is_422_naming_the_field(field: str, text: str) -> None:
    req = Txt2ImgRequest(**{"prompt": "a cat", field: text})
    with pytest.raises(RequestValidationError) as err:
        resolve_request(req, MODE, Family.SD1)
    assert err.value.param == field and "surrogate" in err.value.message
    err.value.message.encode("utf-8")  # the message itself is valid UTF-8: it can be sent


def test_a_surrogate_pair_as_two_json_escapes_is_a_valid_character() -> None:
    prompt = json.loads('"a fox \\ud83e\\udd8a"')  # JSON's way of writing U+1F98A
    assert resolve_request(Txt2ImgRequest(prompt=prompt), MODE, Family.SD1).prompt == "a fox \U0001f98a"


def test_long_prompts_are_refused_before_the_image_is_looked_at() -> None:
    req = Img2ImgRequest(prompt="x" * HUGE, image="not base64 at all!!")
    with pytest.raises(RequestValidationError) as err:
        resolve_request(req, MODE, Family.SD1)
    assert err.value.param == "prompt" and str(HUGE) in err.value.message and len(err.value.message) < 200
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Txt2ImgRequest(prompt="a", negative_prompt="y" * 201), MODE, Family.SD1)
    assert err.value.param == "negative_prompt" and "200" in err.value.message


# -- quoting ---------------------------------------------------------------------------------------------------

def test_quote_keeps_short_values_and_cuts_long_ones() -> None:
    assert quote("Magic") == "'Magic'" and quote(65) == "65" and quote(None) == "None"
    long = quote("z" * HUGE)
    assert long.startswith("'zzzz") and f"({HUGE} chars)" in long and len(long) < 80
    assert len(quote(b"\x00" * HUGE)) < 200 and "bytes" in quote(b"\x00" * HUGE)
    assert len(quote(10 ** 4000)) < 100
    assert len(quote(["q" * 1000] * 1000)) < 400
    assert quote("\ud800") == "'\\ud800'"  # escaped: the message stays valid UTF-8


# -- seeds -------------------------------------------------------------------------------------------------------

def test_native_seed_leaves_room_for_every_image() -> None:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Txt2ImgRequest(prompt="a", seed=MAX_SEED, num_images=2), MODE, Family.SD1)
    assert err.value.param == "seed" and str(MAX_SEED) in err.value.message and str(MAX_SEED - 1) in err.value.message
    assert resolve_request(Txt2ImgRequest(prompt="a", seed=MAX_SEED - 1, num_images=2), MODE,
                           Family.SD1).seeds == [MAX_SEED - 1, MAX_SEED]


def test_a1111_seed_is_checked_for_every_batch_before_any_runs() -> None:
    ok = A1111Txt2ImgRequest(prompt="a", seed=MAX_SEED - 3, batch_size=2, n_iter=2)
    assert ok.seed == MAX_SEED - 3
    for fields in ({"seed": MAX_SEED, "n_iter": 2}, {"seed": MAX_SEED - 2, "batch_size": 2, "n_iter": 2},
                   {"seed": -5}, {"seed": MAX_SEED + 1}):
        with pytest.raises(ValidationError) as err:  # FastAPI answers it with a 422 through describe_error
            A1111Txt2ImgRequest(prompt="a", **fields)
        field, message = describe_error(err.value.errors()[0])
        assert field == "seed" and f"got {fields['seed']}" in message


def test_a1111_errors_name_the_a1111_fields() -> None:
    body = A1111Img2ImgRequest(prompt="a", init_images=[b64(png_claiming(20000, 20000))])
    with pytest.raises(RequestValidationError) as err:
        resolve_request(body.to_native(MODE.name), MODE, Family.SD1)
    assert err.value.param == "init_images" and "`init_images`" in err.value.message
    for fields, param in (({"cfg_scale": 60}, "cfg_scale"), ({"batch_size": 5}, "batch_size"),
                          ({"denoising_strength": 1.5}, "denoising_strength")):
        body = A1111Img2ImgRequest(prompt="a", init_images=[image("PNG")], **fields)
        with pytest.raises(RequestValidationError) as err:
            resolve_request(body.to_native(MODE.name), MODE, Family.SD1)
        assert err.value.param == param and f"`{param}`" in err.value.message


@pytest.mark.parametrize(("extra", "param"), [
    ({"alwayson_scripts": {"Regional Prompter": {"args": [True, "Matrix"]}}},
     "alwayson_scripts.Regional Prompter"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}}},
     "alwayson_scripts.ADetailer"),
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"styles": ["cinematic"]}, "styles"),
])
def test_a1111_fields_that_would_change_the_image_are_refused_not_dropped(extra: dict, param: str) -> None:
    from pydantic import ValidationError

    from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
    from serve_app.core.strict_model import describe_error

    with pytest.raises(ValidationError) as err:
        A1111Txt2ImgRequest.model_validate({"prompt": "a", **extra})
    field, message = describe_error(err.value.errors()[0])
    assert field == param and "not served" in message, (field, message)


def test_a1111_fields_that_ask_for_nothing_pass() -> None:
    from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest

    A1111Txt2ImgRequest.model_validate({
        "prompt": "a", "alwayson_scripts": {"controlnet": {"args": [{"enabled": False}]}, "Refiner": {"args": []}},
        "restore_faces": False, "tiling": False, "subseed_strength": 0, "styles": [], "script_name": "",
        "send_images": True, "save_images": False, "do_not_save_grid": True})
