"""The router's event loop stays free and its bookkeeping is its own: large JSON bodies and init images are
handled on the router's CPU pool, requests are named inside by server-chosen ids even when two clients send
the same `X-Request-Id`, and a TaskStore that does not answer is a 504, not a request held for ever."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deployments.router import http_app
from deployments.router.ingress import create_http_app
from deployments.tasks.client import TaskStoreClient
from serve_app.core.errors import ModeUnavailableError, WorkerTimeoutError
from tests.unit.runner_helpers import png_b64
from tests.unit.test_router_gateway import BODY, make_gateway


def _png_b64(size: int = 64) -> str:
    return png_b64(Image.new("RGB", (size, size), (200, 30, 30)))


def test_a_large_json_body_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed_on: list[tuple[str, int]] = []
    real_loads = json.loads

    def recording_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        parsed_on.append((threading.current_thread().name, len(data)))
        return real_loads(data, *args, **kwargs)

    monkeypatch.setattr(http_app.json, "loads", recording_loads)
    gateway, workers = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        small = client.post("/v1/txt2img", json=BODY)
        large = client.post("/v1/txt2img", json={**BODY, "negative_prompt": "", "user_padding": "x" * 400_000})
    assert small.status_code == 200, small.text
    assert large.status_code == 422  # parsed first, then refused for its unknown field
    assert "user_padding" in large.text
    threads = dict((size > 256 * 1024, name) for name, size in parsed_on)
    assert threads[True].startswith("dreamlab-router-cpu")
    assert not threads[False].startswith("dreamlab-router-cpu")
    assert len(workers.ran) == 1


def test_an_init_image_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.router import gateway as gateway_module

    resolved_on: list[str] = []
    real = gateway_module.resolve_request

    def recording(*args: Any, **kwargs: Any) -> Any:
        resolved_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(gateway_module, "resolve_request", recording)
    gateway, workers = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        assert client.post("/v1/txt2img", json=BODY).status_code == 200
        edited = client.post("/v1/img2img", json={**BODY, "image": _png_b64(), "strength": 0.5})
    assert edited.status_code == 200, edited.text
    assert not resolved_on[0].startswith("dreamlab-router-cpu")  # no image: resolved inline
    assert resolved_on[1].startswith("dreamlab-router-cpu")
    assert [request.kind for _, request in workers.ran] == ["txt2img", "img2img"]


def test_two_clients_with_the_same_request_id_are_two_requests_inside() -> None:
    gateway, workers = make_gateway()
    with TestClient(create_http_app(gateway)) as client:
        answers = [client.post("/v1/txt2img", json=BODY, headers={"X-Request-Id": "same-id"}) for _ in range(2)]
    assert [a.json()["request_id"] for a in answers] == ["same-id", "same-id"]  # what the client sees
    inside = [request.request_id for _, request in workers.ran]
    assert len(set(inside)) == 2 and "same-id" not in inside


class _HangingHandle:
    """A TaskStore handle whose replica is stuck: its calls never answer."""

    def __init__(self) -> None:
        self.cancelled = 0

    def __getattr__(self, method: str) -> Any:
        handle = self

        class _Method:
            def remote(self, *args: Any) -> Any:
                class _Response:
                    def __await__(self) -> Any:
                        return asyncio.get_running_loop().create_future().__await__()

                    def cancel(self) -> None:
                        handle.cancelled += 1

                return _Response()

        return _Method()


def test_a_task_store_that_does_not_answer_is_a_504_and_the_call_is_cancelled() -> None:
    handle = _HangingHandle()
    client = TaskStoreClient(handle, timeout_s=0.05)
    with pytest.raises(WorkerTimeoutError, match="the task store did not answer the task read within 0.05 s"):
        asyncio.run(client.get("t1", "key:a"))
    assert handle.cancelled == 1


def test_a_task_store_that_went_away_is_a_503_without_actor_ids() -> None:
    from ray.exceptions import RayActorError

    class _Gone:
        def __getattr__(self, method: str) -> Any:
            class _Method:
                def remote(self, *args: Any) -> Any:
                    async def fail() -> None:
                        raise RayActorError()
                    return fail()
            return _Method()

    with pytest.raises(ModeUnavailableError, match="the task store is restarting; retry") as err:
        asyncio.run(TaskStoreClient(_Gone(), timeout_s=1).get_image("k"))
    assert err.value.status_code == 503 and "Actor" not in str(err.value)
