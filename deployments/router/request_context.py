"""What the Router knows of the request at hand, per request (context variables): its ids, the mode it runs
on (its metrics are labelled with it) and its caller (fair sharing counts by it). No FastAPI here: the
gateway reads them too.

A request has two ids: the one the client sees (its own `X-Request-Id` or a new one: the header, the
response, the router's log lines) and a server-chosen one that names it everywhere else (the workers, their
reservations and logs), so two clients sending the same id never share any bookkeeping. The router logs
the pair (at debug level: Serve's proxy gives every request an id)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from serve_app.api.access_policy import Caller

_request_id: ContextVar[str] = ContextVar("dreamlab_request_id", default="-")
_server_id: ContextVar[str] = ContextVar("dreamlab_server_id", default="-")
_request_mode: ContextVar[list[str] | None] = ContextVar("dreamlab_request_mode", default=None)
_caller: ContextVar[Caller | None] = ContextVar("dreamlab_caller", default=None)


def current_request_id() -> str:
    """The id the client sees."""
    return _request_id.get()


def current_server_id() -> str:
    """The server-chosen id (see the module's docstring)."""
    return _server_id.get()


def note_mode(name: str) -> None:
    """Record the mode the request at hand runs on (its metrics are labelled with it)."""
    holder = _request_mode.get()
    if holder is not None:
        holder[0] = name


def set_caller(caller: Caller) -> None:
    _caller.set(caller)


def current_caller() -> Caller:
    return _caller.get() or Caller("addr:unknown", False)


@contextlib.contextmanager
def request_scope(request_id: str, server_id: str) -> Iterator[list[str]]:
    """The request at hand is `request_id` (`server_id` inside) while the block runs; it yields the holder
    of its mode's name."""
    mode = [""]
    tokens = _request_id.set(request_id), _server_id.set(server_id), _request_mode.set(mode)
    try:
        yield mode
    finally:
        _request_mode.reset(tokens[2])
        _server_id.reset(tokens[1])
        _request_id.reset(tokens[0])
