"""Route dependencies that let a request in by its API key (see `serve_app.api.access_policy`).

The key comes as `Authorization: Bearer <key>` (FastAPI's `HTTPBearer`) or as HTTP basic auth with the key
as the password (`HTTPBasic`, for AUTOMATIC1111 clients started with `--api-auth`), both with
`auto_error=False`: FastAPI only reads the header and documents the schemes (`/openapi.json` has
`securitySchemes`, `/docs` an Authorize button); whether the key is good is the policy's answer.

`CLIENT` routes need a client key when keys are on; `ADMIN` routes (operator actions) need the admin key.
The policy is the gateway's (`Gateway.access`), reached through the request's app; the caller of the
request at hand is `request_context.current_caller()`, which fair sharing counts by. A refusal is a
401/403 in the route's front-end shape (the one error path).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from deployments.router.gateway_dependency import gateway_of
from deployments.router.request_context import set_caller
from serve_app.api.access_policy import presented_key


class _KeyAsPassword(HTTPBasic):
    """HTTP basic auth whose password is the key. A header that is not valid basic auth carries no key (the
    policy then answers), never FastAPI's own 401."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        authorization = request.headers.get("authorization")
        if not authorization or authorization.partition(" ")[0].lower() != "basic":
            return None
        key = presented_key(authorization)
        return None if key is None else HTTPBasicCredentials(username="", password=key)


BEARER = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="An API key: `Authorization: Bearer <key>` (what the OpenAI client sends).")
BASIC = _KeyAsPassword(auto_error=False, scheme_name="apiKeyAsPassword",
                       description="HTTP basic auth with the API key as the password (A1111's `--api-auth`).")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
Basic = Annotated[HTTPBasicCredentials | None, Security(BASIC)]


def _key(bearer: HTTPAuthorizationCredentials | None, basic: HTTPBasicCredentials | None) -> str | None:
    if bearer is not None:
        return bearer.credentials.strip() or None
    return basic.password if basic is not None else None


def _admit(request: Request, key: str | None, admin: bool) -> None:
    policy = gateway_of(request).access
    address = policy.client_address(request.client.host if request.client else None,
                                     request.headers.get("x-forwarded-for"))
    set_caller(policy.caller_by_key(key, address, admin=admin))


async def _client(request: Request, bearer: Bearer, basic: Basic) -> None:
    # async: runs in the request's task, so the caller's contextvar sticks
    _admit(request, _key(bearer, basic), admin=False)


async def _admin(request: Request, bearer: Bearer, basic: Basic) -> None:
    _admit(request, _key(bearer, basic), admin=True)


def require_admin(request: Request) -> None:
    """For a route that is an operator action only for some bodies (A1111 options switching the mode)."""
    _admit(request, presented_key(request.headers.get("authorization")), admin=True)


CLIENT = [Depends(_client)]
ADMIN = [Depends(_admin)]
