"""Route dependencies that let a request in by its API key (see `serve_app.api.access_policy`).

`CLIENT` routes need a client key when keys are on; `ADMIN` routes (operator actions) need the admin key.
The policy is the gateway's (`Gateway.access`), reached through the request's app; the caller of the
request at hand is `request_context.current_caller()`, which fair sharing counts by. A refusal is a
401/403 in the route's front-end shape (the one error path).
"""

from __future__ import annotations

from fastapi import Depends, Request

from deployments.router.gateway_dependency import gateway_of
from deployments.router.request_context import set_caller


def _admit(request: Request, admin: bool) -> None:
    policy = gateway_of(request).access
    address = policy.client_address(request.client.host if request.client else None,
                                     request.headers.get("x-forwarded-for"))
    set_caller(policy.caller(request.headers.get("authorization"), address, admin=admin))


async def _client(request: Request) -> None:  # async: runs in the request's task, so the contextvar sticks
    _admit(request, admin=False)


async def _admin(request: Request) -> None:
    _admit(request, admin=True)


def require_admin(request: Request) -> None:
    """For a route that is an operator action only for some bodies (A1111 options switching the mode)."""
    _admit(request, admin=True)


CLIENT = [Depends(_client)]
ADMIN = [Depends(_admin)]
