"""Input bounds over HTTP: the body cap (413 before parsing, in each front end's shape) and each front end's
short errors for huge or unencodable values, on a small FastAPI app whose routes validate and resolve a
request the way the router's routes do, with the real error path (`install_error_path`; no Ray).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.router.http_app import MAX_BODY_BYTES, install_error_path
from serve_app.api.http_errors import FrontEnd
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Img2ImgRequest, A1111Txt2ImgRequest
from serve_app.api.schemas.native import Img2ImgRequest, Txt2ImgRequest
from serve_app.api.schemas.openai import OpenAIImageRequest
from serve_app.config.app_args import HttpLimitsConfig
from serve_app.model.families import Family
from serve_app.model.generation.job import MAX_SEED
from tests.unit.hostile_inputs import HUGE, MODE, SHORT_ERROR, SMALL_CAP, b64, png_claiming

# -- over HTTP: the body cap and each front end's short errors ---------------------------------------------------

def _app(max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Routes validating and resolving as the router's do, tagged with their front end."""
    app = FastAPI()
    install_error_path(app, HttpLimitsConfig(max_body_bytes=max_body_bytes))
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


def test_bodies_under_the_cap_pass_and_a_route_without_one_refuses_any(capped: TestClient) -> None:
    ok = capped.post("/v1/txt2img", json={"prompt": "a", "seed": 3, "num_images": 2})
    assert ok.status_code == 200 and ok.json() == {"seeds": [3, 4]}
    assert capped.post("/v1/no-body").status_code == 200
    refused = capped.post("/v1/no-body", content=b"z")
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "body"
    assert "takes no request body" in refused.json()["error"]["message"]


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
    garbage = b64(b"\x07" * HUGE)  # 26 MB of valid base64, under the body cap
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": [garbage]})
    assert r.status_code == 422 and len(r.content) < SHORT_ERROR
    assert r.json()["param"] == "init_images"


@pytest.mark.parametrize(("route", "field", "param"), [
    ("/v1/img2img", "image", "image"), ("/sdapi/v1/img2img", "init_images", "init_images")])
def test_a_decompression_bomb_over_http_is_422_naming_the_clients_field(client: TestClient, route: str,
                                                                      field: str, param: str) -> None:
    image = b64(png_claiming(20000, 20000))
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
