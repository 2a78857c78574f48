"""Hostile input is bounded before it costs anything: the body cap (413 before parsing, in each front end's
shape), init images checked from their header before a pixel is decoded, error messages that quote a short
prefix of a bad value, A1111 seeds checked for every batch up front, and prompts a tokenizer cannot encode.

The HTTP tests run the real error path (`install_error_path`) on a small FastAPI app whose routes, one set
per front end, validate and resolve a request the way the router's routes do (no Ray).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from deployments.http_app import MAX_BODY_BYTES, install_error_path
from serve_app.api.a1111_schemas import A1111Img2ImgRequest, A1111Txt2ImgRequest
from serve_app.api.http_errors import FrontEnd
from serve_app.api.native_schemas import Img2ImgRequest, Txt2ImgRequest
from serve_app.api.openai_schemas import OpenAIImageRequest
from serve_app.api.request_resolution import INIT_IMAGE_SCALE, MAX_IMAGE_BYTES, decode_image, resolve_request
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.errors import RequestTooLargeError, RequestValidationError
from serve_app.model.families import Family
from serve_app.model.generation import MAX_SEED
from serve_app.strict_model import describe_error, quote

MODE = ModeConfig(name="sd1", checkpoint="tiny-sd1", scheduler="euler",
                  defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0),
                  limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4,
                                    max_prompt_chars=200))
SMALL_CAP = 4096
HUGE = 20_000_000  # a 20 MB bad value
SHORT_ERROR = 1000  # bytes: "a few hundred" with room to spare


# -- images ------------------------------------------------------------------------------------------------

def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """An 8x8 PNG whose IHDR claims `width` x `height`: a header that would cost width*height to decode,
    with pixel data that cannot be decoded at that size (so a decode attempt would fail differently)."""
    data = bytearray(_png(8, 8, "1"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _image(fmt: str, size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return _b64(buf.getvalue())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    img = decode_image(_image(fmt), "image", MODE.limits)
    assert img.size == (64, 64) and img.mode == "RGB"


def test_a_decompression_bomb_header_is_422_naming_the_field_not_a_500() -> None:
    with pytest.raises(RequestValidationError) as err:
        decode_image(_b64(_png_claiming(20000, 20000)), "image", MODE.limits)
    assert err.value.status_code == 422 and err.value.param == "image"
    assert "`image`" in err.value.message and "too large" in err.value.message


@pytest.mark.parametrize("side", [20000, 10000])
def test_a_real_huge_png_is_refused_from_its_header(side: int) -> None:
    raw = _png(side, side, "1")  # 65 KB (16 KB) of PNG, 400 (100) megapixels: over PIL's own bomb limits
    with pytest.raises(RequestValidationError) as err:
        decode_image(_b64(raw), "image", MODE.limits)
    assert err.value.status_code == 422 and err.value.param == "image" and "too large" in err.value.message


@pytest.mark.parametrize("size", [(5000, 5000), (600, 64), (64, 600)])
def test_an_image_over_the_modes_limits_is_refused_before_its_pixels_are_decoded(size: tuple[int, int]) -> None:
    # the header's size, not a decode failure, is what the error is about: the size check came first
    with pytest.raises(RequestValidationError) as err:
        decode_image(_b64(_png_claiming(*size)), "image", MODE.limits)
    limit = f"{INIT_IMAGE_SCALE * 256}x{INIT_IMAGE_SCALE * 256}"
    assert err.value.param == "image" and f"{size[0]}x{size[1]}" in err.value.message and limit in err.value.message


def test_an_image_within_the_scaled_limits_is_resized_to_the_request() -> None:
    side = INIT_IMAGE_SCALE * 256
    params = resolve_request(Img2ImgRequest(prompt="a", image=_b64(_png(side, side)), width=64, height=64), MODE,
                             Family.SD1)
    assert params.init_image.size == (64, 64)


def test_image_size_defaults_from_the_image_say_where_the_value_came_from() -> None:
    with pytest.raises(RequestValidationError) as err:
        resolve_request(Img2ImgRequest(prompt="a", image=_b64(_png(400, 64))), MODE, Family.SD1)
    assert err.value.param == "width" and "init image" in err.value.message


@pytest.mark.parametrize(("raw", "why"), [
    (b"\x00\x01 plainly not a picture at all", "not a decodable PNG/JPEG/WebP"),
    (base64.b64decode(_image("GIF")), "not a decodable PNG/JPEG/WebP"),  # a real image, not an allowed format
    (base64.b64decode(_image("BMP")), "not a decodable PNG/JPEG/WebP"),
    (_png(64, 64)[:-40], "not a decodable PNG"),  # truncated: the header is fine, the pixels are not
])
def test_unreadable_or_disallowed_images_are_422(raw: bytes, why: str) -> None:
    with pytest.raises(RequestValidationError) as err:
        decode_image(_b64(raw), "image", MODE.limits)
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
    body = A1111Img2ImgRequest(prompt="a", init_images=[_b64(_png_claiming(20000, 20000))])
    with pytest.raises(RequestValidationError) as err:
        resolve_request(body.to_native(MODE.name), MODE, Family.SD1)
    assert err.value.param == "init_images" and "`init_images`" in err.value.message
    for fields, param in (({"cfg_scale": 60}, "cfg_scale"), ({"batch_size": 5}, "batch_size"),
                          ({"denoising_strength": 1.5}, "denoising_strength")):
        body = A1111Img2ImgRequest(prompt="a", init_images=[_image("PNG")], **fields)
        with pytest.raises(RequestValidationError) as err:
            resolve_request(body.to_native(MODE.name), MODE, Family.SD1)
        assert err.value.param == param and f"`{param}`" in err.value.message


# -- over HTTP: the body cap and each front end's short errors ---------------------------------------------------

def _app(max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Routes validating and resolving as the router's do, tagged with their front end."""
    app = FastAPI()
    install_error_path(app, max_body_bytes=max_body_bytes)
    native, openai, a1111 = ([f.value] for f in (FrontEnd.NATIVE, FrontEnd.OPENAI, FrontEnd.A1111))

    @app.post("/v1/txt2img", tags=native)
    async def txt2img(body: Txt2ImgRequest) -> dict[str, Any]:
        return {"seeds": resolve_request(body, MODE, Family.SD1).seeds}

    @app.post("/v1/img2img", tags=native)
    async def img2img(body: Img2ImgRequest) -> dict[str, Any]:
        return {"seeds": resolve_request(body, MODE, Family.SD1).seeds}

    @app.post("/v1/images/generations", tags=openai)
    async def generations(body: OpenAIImageRequest) -> dict[str, Any]:
        return {"seeds": resolve_request(body.to_native(), MODE, Family.SD1).seeds}

    @app.post("/sdapi/v1/txt2img", tags=a1111)
    async def sdapi_txt2img(body: A1111Txt2ImgRequest) -> dict[str, Any]:
        return {"seeds": resolve_request(body.to_native(MODE.name), MODE, Family.SD1).seeds}

    @app.post("/sdapi/v1/img2img", tags=a1111)
    async def sdapi_img2img(body: A1111Img2ImgRequest) -> dict[str, Any]:
        return {"seeds": resolve_request(body.to_native(MODE.name), MODE, Family.SD1).seeds}

    @app.post("/sdapi/v1/options", tags=a1111)
    async def sdapi_options(options: dict[str, Any]) -> None:
        return None

    @app.post("/v1/no-body", tags=native)
    async def no_body() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app(), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def capped() -> TestClient:
    return TestClient(_app(SMALL_CAP), raise_server_exceptions=False)


ROUTES = {FrontEnd.NATIVE: "/v1/txt2img", FrontEnd.OPENAI: "/v1/images/generations",
          FrontEnd.A1111: "/sdapi/v1/txt2img"}


def _error(r: httpx.Response, front_end: FrontEnd) -> tuple[str | None, str]:
    """(param, message) of an error in the front end's shape."""
    body = r.json()
    if front_end is FrontEnd.A1111:
        assert set(body) >= {"error", "detail", "body", "errors"}
        return body.get("param"), body["detail"]
    return body["error"]["param"], body["error"]["message"]


def _too_big_body() -> bytes:
    return json.dumps({"prompt": "x" * (2 * SMALL_CAP)}).encode()


@pytest.mark.parametrize("front_end", list(ROUTES))
def test_a_declared_length_over_the_cap_is_413_in_the_front_ends_shape(capped: TestClient,
                                                                       front_end: FrontEnd) -> None:
    r = capped.post(ROUTES[front_end], content=_too_big_body(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    param, message = _error(r, front_end)
    assert param == "body" and str(SMALL_CAP) in message
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("front_end", list(ROUTES))
def test_a_streamed_body_over_the_cap_is_413(capped: TestClient, front_end: FrontEnd) -> None:
    def chunks():
        body = _too_big_body()
        for i in range(0, len(body), 512):
            yield body[i:i + 512]

    r = capped.post(ROUTES[front_end], content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers  # chunked: only the count of bytes read can tell
    assert r.status_code == 413, r.text
    assert _error(r, front_end)[0] == "body"


def test_a_lying_content_length_is_refused_before_anything_is_read(capped: TestClient) -> None:
    r = capped.post("/v1/txt2img", content=b'{"prompt": "a"}',
                    headers={"content-type": "application/json", "content-length": str(10 * 2**30)})
    assert r.status_code == 413


def test_a_streamed_body_is_not_read_past_the_cap() -> None:
    """The app stops pulling chunks at the one that crosses the cap: a 100 MB stream costs ~ the cap."""
    pulled = 0
    chunk = b"x" * 1024

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"prompt": "'
        for _ in range(100 * 1024):
            pulled += 1
            yield chunk

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(SMALL_CAP))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/sdapi/v1/txt2img", content=endless(), headers={"content-type": "application/json"})

    r = asyncio.run(post())
    assert r.status_code == 413 and r.json()["param"] == "body"
    assert pulled <= SMALL_CAP // len(chunk) + 1


def test_bodies_under_the_cap_and_routes_without_one_are_untouched(capped: TestClient) -> None:
    ok = capped.post("/v1/txt2img", json={"prompt": "a", "seed": 3, "num_images": 2})
    assert ok.status_code == 200 and ok.json() == {"seeds": [3, 4]}
    assert capped.post("/v1/no-body", content=b"z" * (2 * SMALL_CAP)).status_code == 200


@pytest.mark.parametrize(("front_end", "body", "param"), [
    (FrontEnd.NATIVE, {"prompt": "x" * HUGE}, "prompt"),
    (FrontEnd.NATIVE, {"prompt": "a", "negative_prompt": "n" * HUGE}, "negative_prompt"),
    (FrontEnd.NATIVE, {"prompt": 12345, "negative_prompt": "n" * HUGE}, "prompt"),
    (FrontEnd.NATIVE, {"prompt": "a", "scheduler": "s" * HUGE}, "scheduler"),
    (FrontEnd.NATIVE, {"prompt": "a", "mode": "m" * HUGE}, "mode"),
    (FrontEnd.NATIVE, {"prompt": "a", "w" * HUGE: 1}, None),  # an unknown key is client input too
    (FrontEnd.OPENAI, {"prompt": "a", "size": "9" * HUGE}, "size"),
    (FrontEnd.OPENAI, {"prompt": "a", "model": "m" * HUGE}, "model"),
    (FrontEnd.OPENAI, {"prompt": "a", "response_format": "r" * HUGE}, "response_format"),
    (FrontEnd.A1111, {"prompt": "a", "sampler_name": "s" * HUGE}, "sampler_name"),
    (FrontEnd.A1111, {"prompt": "a", "seed": "7" * HUGE}, "seed"),
    (FrontEnd.A1111, {"prompt": "a", "cfg_scale": "c" * HUGE}, "cfg_scale"),
])
def test_a_20_mb_bad_value_gives_a_short_error(client: TestClient, front_end: FrontEnd, body: dict,
                                               param: str | None) -> None:
    r = client.post(ROUTES[front_end], json=body)
    assert r.status_code == (400 if front_end is FrontEnd.OPENAI else 422), r.text[:300]
    assert len(r.content) < SHORT_ERROR, r.content[:300]
    got_param, message = _error(r, front_end)
    if param is not None:
        assert got_param == param and f"`{param}`" in message
    else:
        assert got_param.startswith("www") and len(got_param) < 200


def test_a_20_mb_init_image_that_is_not_an_image_gives_a_short_error(client: TestClient) -> None:
    garbage = _b64(b"\x07" * HUGE)  # 26 MB of valid base64, under the body cap
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": [garbage]})
    assert r.status_code == 422 and len(r.content) < SHORT_ERROR
    assert r.json()["param"] == "init_images"


@pytest.mark.parametrize(("route", "field", "param"), [
    ("/v1/img2img", "image", "image"), ("/sdapi/v1/img2img", "init_images", "init_images")])
def test_a_decompression_bomb_over_http_is_422_naming_the_clients_field(client: TestClient, route: str,
                                                                      field: str, param: str) -> None:
    image = _b64(_png_claiming(20000, 20000))
    r = client.post(route, json={"prompt": "a", field: [image] if field == "init_images" else image})
    assert r.status_code == 422, r.text
    front_end = FrontEnd.A1111 if route.startswith("/sdapi") else FrontEnd.NATIVE
    assert _error(r, front_end)[0] == param


@pytest.mark.parametrize("front_end", list(ROUTES))
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_lone_surrogate_in_raw_json_is_422_naming_the_field(client: TestClient, front_end: FrontEnd,
                                                              field: str) -> None:
    raw = b'{"prompt": "a cat", "%s": "a \\ud800 b"}' % field.encode()
    r = client.post(ROUTES[front_end], content=raw, headers={"content-type": "application/json"})
    assert r.status_code == (400 if front_end is FrontEnd.OPENAI else 422), r.text
    param, message = _error(r, front_end)
    assert param == field and "surrogate" in message


def test_a_lone_surrogate_as_a_json_key_still_gets_a_json_error(client: TestClient) -> None:
    r = client.post("/v1/txt2img", content=b'{"prompt": "a", "\\ud800": 1}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "\\ud800" in r.json()["error"]["message"]  # escaped, so it can be sent


def test_a1111_seed_past_the_range_mid_run_is_refused_up_front_with_the_clients_value(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "seed": MAX_SEED, "n_iter": 2})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["param"] == "seed" and str(MAX_SEED) in body["detail"] and str(MAX_SEED - 1) in body["detail"]
    fits = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "seed": MAX_SEED - 1, "batch_size": 2})
    assert fits.status_code == 200 and fits.json() == {"seeds": [MAX_SEED - 1, MAX_SEED]}


def test_native_seed_past_the_range_names_seed(client: TestClient) -> None:
    r = client.post("/v1/txt2img", json={"prompt": "a", "seed": MAX_SEED, "num_images": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "seed"
