"""Bodies bounded in size and time: a slow or stalled body is a 408, an oversized one a 413 (at once when its
length is declared), and one client's concurrent bodies are capped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from starlette.datastructures import Headers

from deployments.router.body_guard import BodyGate, declares_body, guarded_receive
from serve_app.config.app_args import HttpLimitsConfig
from serve_app.core.errors import QueueFullError, RequestTimeoutError, RequestTooLargeError

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
