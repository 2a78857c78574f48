"""The one error path of the HTTP app: request ids, each front end's error shape chosen by the route's
tag, and a 500 that tells nothing but the request id (its traceback goes to the log)."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.router.http_app import current_request_id, install_error_path
from serve_app.api.http_errors import FrontEnd
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.core.errors import InsufficientVRAMError, QueueFullError, RequestValidationError

SECRET = "ActorDiedError pid=4242 ip=10.1.2.3 actor_id=deadbeef"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_path(app)
    for front_end in FrontEnd:
        prefix = f"/{front_end.value}"

        @app.post(f"{prefix}/crash", tags=[front_end.value])
        async def crash() -> None:
            raise RuntimeError(SECRET)

        @app.post(f"{prefix}/bad", tags=[front_end.value])
        async def bad() -> None:
            raise RequestValidationError("`width` must be a positive multiple of 8, got 65", param="width")

        @app.post(f"{prefix}/body", tags=[front_end.value])
        async def body(req: Txt2ImgRequest) -> dict[str, str]:
            return {"request_id": current_request_id()}

    @app.post("/full")
    async def full() -> None:
        raise QueueFullError("queue full", retry_after_s=3)

    @app.post("/vram")
    async def vram() -> None:
        raise InsufficientVRAMError("too big", needed_bytes=10, free_bytes=2, budget_bytes=8)

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app(), raise_server_exceptions=False)


@pytest.mark.parametrize("front_end", list(FrontEnd))
def test_internal_error_says_nothing_but_the_request_id(client: TestClient, front_end: FrontEnd,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        r = client.post(f"/{front_end.value}/crash")
    assert r.status_code == 500
    request_id = r.headers["x-request-id"]
    assert SECRET not in r.text and "RuntimeError" not in r.text
    assert "internal error" in r.text and request_id in r.text
    assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)  # the traceback: logged


def test_each_front_end_renders_its_own_shape(client: TestClient) -> None:
    native = client.post("/native/bad")
    assert native.status_code == 422
    assert native.json() == {"error": {"type": "invalid_request_error", "param": "width",
                                       "message": "`width` must be a positive multiple of 8, got 65"}}
    openai = client.post("/openai/bad")
    assert openai.status_code == 400  # OpenAI's input errors are 400
    assert openai.json()["error"]["param"] == "width" and openai.json()["error"]["code"] == "invalid_request_error"
    a1111 = client.post("/automatic1111/bad").json()
    assert a1111["error"] == "invalid_request_error" and "width" in a1111["detail"] and a1111["param"] == "width"


@pytest.mark.parametrize("front_end", list(FrontEnd))
def test_fastapi_validation_errors_take_the_same_path(client: TestClient, front_end: FrontEnd) -> None:
    r = client.post(f"/{front_end.value}/body", json={"prompt": "x", "widht": 64})
    assert r.status_code == (400 if front_end is FrontEnd.OPENAI else 422)
    body = r.json()
    param = body["param"] if front_end is FrontEnd.A1111 else body["error"]["param"]
    assert param == "widht"
    assert not isinstance(body.get("detail"), list)  # FastAPI's own `detail` list is never sent


def test_request_id_comes_from_the_client_or_is_made(client: TestClient) -> None:
    made = client.post("/native/body", json={"prompt": "x"})
    assert made.status_code == 200 and made.json()["request_id"] == made.headers["x-request-id"]
    assert len(made.headers.get_list("x-request-id")) == 1
    given = client.post("/native/body", json={"prompt": "x"}, headers={"X-Request-Id": "client-42"})
    assert given.json()["request_id"] == "client-42"
    hostile = client.post("/native/body", json={"prompt": "x"}, headers={"X-Request-Id": "a b\t" + "x" * 500})
    assert hostile.json()["request_id"] != "a b\t" + "x" * 500 and len(hostile.json()["request_id"]) <= 64


def test_unknown_route_is_json(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_retry_after_and_the_numbers_of_a_507(client: TestClient) -> None:
    full = client.post("/full")
    assert full.status_code == 503 and full.headers["retry-after"] == "3"
    vram = client.post("/vram").json()["error"]
    assert (vram["needed_bytes"], vram["free_bytes"], vram["budget_bytes"]) == (10, 2, 8)
