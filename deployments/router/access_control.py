"""Route dependencies that let a request in by its API key (see `serve_app.api.access_policy`).

`CLIENT` routes need a client key when keys are on; `ADMIN` routes (operator actions) need the admin key.
The policy is the Router's (`set_access_policy`; one Router per replica process, and Serve serves a copy
of the FastAPI app, so the policy is held here rather than in `app.state`); the caller of the request at
hand is `current_caller()`, which fair sharing counts by. A refusal is a 401/403 in the route's front-end
shape (the one error path).
"""

from __future__ import annotations

from contextvars import ContextVar

from fastapi import Depends, Request

from serve_app.api.access_policy import AccessPolicy, Caller

_caller: ContextVar[Caller | None] = ContextVar("dreamlab_caller", default=None)
_policy = AccessPolicy()


def set_access_policy(policy: AccessPolicy) -> None:
    global _policy
    _policy = policy


def _admit(request: Request, admin: bool) -> None:
    address = request.client.host if request.client else None
    _caller.set(_policy.caller(request.headers.get("authorization"), address, admin=admin))


async def _client(request: Request) -> None:  # async: runs in the request's task, so the contextvar sticks
    _admit(request, admin=False)


async def _admin(request: Request) -> None:
    _admit(request, admin=True)


def current_caller() -> Caller:
    return _caller.get() or Caller("addr:unknown", False)


def require_admin(request: Request) -> None:
    """For a route that is an operator action only for some bodies (A1111 options switching the mode)."""
    _admit(request, admin=True)


CLIENT = [Depends(_client)]
ADMIN = [Depends(_admin)]
