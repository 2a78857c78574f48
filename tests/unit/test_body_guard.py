"""Bodies bounded in size and time: a slow or stalled body is a 408, an oversized one a 413 (at once when its
length is declared), and one client's concurrent bodies are capped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.datastructures import Headers

from deployments.router.body_guard import BodyGate, BodyGuardMiddleware, declares_body, guarded_receive, route_table
from serve_app.api.access_policy import AccessPolicy
from serve_app.config.app_args import HttpLimitsConfig
from serve_app.core.errors import AuthenticationError, QueueFullError, RequestTimeoutError, RequestTooLargeError

LIMITS = HttpLimitsConfig(max_body_bytes=4096, body_timeout_s=0.5, body_idle_timeout_s=0.2)


def _client(chunks: Iterable[bytes], gap_s: float = 0.0):
    """An ASGI `receive` sending `chunks` `gap_s` apart; counts how many chunks were taken."""
    chunks = list(chunks)
    taken = []

    async def receive():
        await asyncio.sleep(gap_s)
        body = chunks[len(taken)]
        taken.append(body)
        return {"type": "http.request", "body": body, "more_body": len(taken) < len(chunks)}

    return receive, taken


async def _read_all(receive) -> bytes:
    out = b""
    while True:
        message = await receive()
        out += message.get("body", b"")
        if not message.get("more_body"):
            return out


def test_a_body_in_time_and_size_reads_whole() -> None:
    receive, _ = _client([b"a" * 1000] * 3, gap_s=0.01)
    guarded = guarded_receive(receive, Headers({"transfer-encoding": "chunked"}), LIMITS)
    assert asyncio.run(_read_all(guarded)) == b"a" * 3000


def test_a_stalled_body_is_a_408_naming_the_limits() -> None:
    receive, _ = _client([b"a", b"b"], gap_s=1.0)
    guarded = guarded_receive(receive, Headers({"content-length": "2"}), LIMITS)
    with pytest.raises(RequestTimeoutError, match="0.2 s between chunks") as info:
        asyncio.run(_read_all(guarded))
    assert info.value.status_code == 408 and info.value.param == "body"


def test_a_trickle_that_never_stalls_still_meets_the_total_deadline() -> None:
    receive, taken = _client([b"x"] * 1000, gap_s=0.05)  # under the idle limit each time, 50 s in all
    guarded = guarded_receive(receive, Headers({"transfer-encoding": "chunked"}), LIMITS)
    with pytest.raises(RequestTimeoutError):
        asyncio.run(_read_all(guarded))
    assert len(taken) < 15  # stopped near the 0.5 s deadline


def test_oversized_bodies_are_refused_unread_or_at_the_crossing_chunk() -> None:
    receive, taken = _client([b"a" * 100])
    guarded = guarded_receive(receive, Headers({"content-length": "5000"}), LIMITS)
    with pytest.raises(RequestTooLargeError):
        asyncio.run(_read_all(guarded))
    assert taken == []  # refused on the declared length alone
    receive, taken = _client([b"a" * 3000] * 10)
    guarded = guarded_receive(receive, Headers({"transfer-encoding": "chunked"}), LIMITS)
    with pytest.raises(RequestTooLargeError):
        asyncio.run(_read_all(guarded))
    assert len(taken) == 2


def test_what_counts_as_a_body() -> None:
    assert declares_body(Headers({"content-length": "3"}))
    assert declares_body(Headers({"transfer-encoding": "chunked"}))
    assert not declares_body(Headers({"content-length": "0"}))
    assert not declares_body(Headers({}))


def test_one_client_has_a_bounded_number_of_bodies_arriving() -> None:
    gate = BodyGate(max_per_client=2)
    gate.enter("a")
    gate.enter("a")
    with pytest.raises(QueueFullError):
        gate.enter("a")
    gate.enter("b")  # another client is not affected
    gate.leave("a")
    gate.enter("a")
    assert gate.arriving == {"a": 2, "b": 1}


# -- the middleware: what it refuses before any body is read ------------------------------------------------


class _Body(BaseModel):
    prompt: str


_routes_app = FastAPI()


@_routes_app.post("/v1/txt2img")
async def _txt2img(body: _Body) -> dict:
    return {}


@_routes_app.post("/v1/modes/{name}/load")
async def _load(name: str) -> dict:
    return {}


def _scope(path: str, headers: dict[str, str], client: str = "10.0.0.1") -> dict:
    return {"type": "http", "method": "POST", "path": path, "root_path": "", "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": (client, 1234)}


async def _reading_app(scope, receive, send) -> None:
    """The app behind the guard: reads the whole body, as a route with a body does."""
    await _read_all(receive)


def _guard(keys: list[str] | None = None, **limits) -> BodyGuardMiddleware:
    return BodyGuardMiddleware(_reading_app, HttpLimitsConfig(**{**LIMITS.model_dump(), **limits}),
                               routes=lambda: route_table(_routes_app.openapi()), policy=lambda: AccessPolicy(keys))


async def _no_send(message) -> None:
    pass


def test_a_body_sent_to_a_route_that_takes_none_is_refused_unread() -> None:
    receive, taken = _client([b"x" * 1000] * 1000)
    with pytest.raises(RequestTooLargeError, match="takes no request body"):
        asyncio.run(_guard()(_scope("/v1/modes/sd1/load", {"transfer-encoding": "chunked"}), receive, _no_send))
    assert taken == []


def test_the_key_is_checked_before_the_body_is_read() -> None:
    receive, taken = _client([b"{}"])
    with pytest.raises(AuthenticationError):
        asyncio.run(_guard(keys=["secret"])(_scope("/v1/txt2img", {"content-length": "2"}), receive, _no_send))
    assert taken == []
    receive, taken = _client([b"{}"])
    asyncio.run(_guard(keys=["secret"])(_scope("/v1/txt2img", {"content-length": "2",
                                                                "authorization": "Bearer secret"}),
                                        receive, _no_send))
    assert taken == [b"{}"]


def test_the_middleware_bounds_one_clients_arriving_bodies() -> None:
    guard = _guard(max_unread_bodies_per_client=2, body_idle_timeout_s=5, body_timeout_s=5)

    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_receive():
            await release.wait()
            return {"type": "http.request", "body": b"{}", "more_body": False}

        headers = {"content-length": "2"}
        slow = [asyncio.create_task(guard(_scope("/v1/txt2img", headers), slow_receive, _no_send)) for _ in range(2)]
        await asyncio.sleep(0.4)  # past the first-chunk grace: both count
        with pytest.raises(QueueFullError, match="bodies arriving"):
            await guard(_scope("/v1/txt2img", headers), slow_receive, _no_send)
        other, _ = _client([b"{}"])  # another client is not held up
        await guard(_scope("/v1/txt2img", headers, client="10.0.0.2"), other, _no_send)
        release.set()
        await asyncio.gather(*slow)
        again, taken = _client([b"{}"])  # the first client's bodies are in: room again
        await guard(_scope("/v1/txt2img", headers), again, _no_send)
        assert taken == [b"{}"]

    asyncio.run(scenario())


def test_a_burst_of_whole_bodies_from_one_client_is_never_refused() -> None:
    """16 requests at once from one client whose bodies arrive whole: none counts past its first chunk, so none
    is refused, however slowly the app behind gets round to them."""
    async def slow_app(scope, receive, send) -> None:
        await asyncio.sleep(0.05)  # routing, dependencies: the app reads the body later
        await _read_all(receive)

    limits = HttpLimitsConfig(**{**LIMITS.model_dump(), "max_unread_bodies_per_client": 2})
    guard = BodyGuardMiddleware(slow_app, limits, routes=lambda: route_table(_routes_app.openapi()),
                                policy=lambda: AccessPolicy(None))

    async def scenario() -> list[bytes]:
        clients = [_client([b'{"prompt": "x"}']) for _ in range(16)]
        await asyncio.gather(*(guard(_scope("/v1/txt2img", {"content-length": "15"}), receive, _no_send)
                               for receive, _ in clients))
        return [b"".join(taken) for _, taken in clients]

    assert asyncio.run(scenario()) == [b'{"prompt": "x"}'] * 16


def test_a_slow_body_through_the_guard_is_a_408() -> None:
    receive, _ = _client([b"{", b"}"], gap_s=0.5)
    with pytest.raises(RequestTimeoutError):
        asyncio.run(_guard()(_scope("/v1/txt2img", {"content-length": "2"}), receive, _no_send))
