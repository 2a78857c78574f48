"""What the Router knows of the request at hand, per request (context variables): its id, the mode it runs
on (its metrics are labelled with it) and its caller (fair sharing counts by it). No FastAPI here: the
gateway reads them too."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from serve_app.api.access_policy import Caller

_request_id: ContextVar[str] = ContextVar("dreamlab_request_id", default="-")
_request_mode: ContextVar[list[str] | None] = ContextVar("dreamlab_request_mode", default=None)
_caller: ContextVar[Caller | None] = ContextVar("dreamlab_caller", default=None)


def current_request_id() -> str:
    return _request_id.get()


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
def request_scope(request_id: str) -> Iterator[list[str]]:
    """The request at hand is `request_id` while the block runs; it yields the holder of its mode's name."""
    mode = [""]
    id_token, mode_token = _request_id.set(request_id), _request_mode.set(mode)
    try:
        yield mode
    finally:
        _request_mode.reset(mode_token)
        _request_id.reset(id_token)
