"""Request bodies bounded in size and in time, before any route runs.

Starlette reads a body only when a route asks for it, and nothing limits how long that takes: a client
sending one byte every few seconds holds a router slot for as long as it likes, and one streaming an endless
chunked body to a route that reads none is buffered for the request's life. So, for every request that
declares a body (`Content-Length` > 0 or chunked):

- a route that takes no body refuses it at once (413), unread;
- a route that needs an API key checks the key first (401/403), so an anonymous client cannot hold a slot;
- one client may have at most `max_unread_bodies_per_client` bodies arriving at once (503 + Retry-After); a
  body that comes whole at once never counts, so a burst of quick requests is not refused;
- the body must arrive within `body_timeout_s` in all, with no gap longer than `body_idle_timeout_s`
  between chunks (408), and be at most `max_body_bytes` (413: at once when `Content-Length` says so, else at
  the chunk that crosses it; what was read stays at most the cap plus that chunk).

Serve's proxy still accepts the connection and what the client sends before the router answers; a front
proxy's body limits and timeouts bound that part (see the README's security section).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.access_policy import AccessPolicy
from serve_app.config.app_args import HttpLimitsConfig
from serve_app.core.errors import QueueFullError, RequestTimeoutError, RequestTooLargeError


def declared_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def declares_body(headers: Headers) -> bool:
    length = declared_length(headers)
    return (length is not None and length > 0) or "chunked" in headers.get("transfer-encoding", "").lower()


def too_large(max_bytes: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body is larger than {max_bytes} bytes ({max_bytes / 2**20:g} MiB), "
                                "the most this server accepts", param="body")


def bodyless_refusal() -> RequestTooLargeError:
    return RequestTooLargeError("this route takes no request body; send none", param="body")


def guarded_receive(receive: Receive, headers: Headers, limits: HttpLimitsConfig) -> Receive:
    """`receive` that raises RequestTooLargeError past `max_body_bytes` and RequestTimeoutError when the body
    is slower than the limits allow. Messages other than body chunks pass through untouched."""
    declared = declared_length(headers)
    deadline = time.monotonic() + limits.body_timeout_s
    seen = 0
    done = False

    async def receive_guarded() -> Message:
        nonlocal seen, done
        if done:  # after the body, `receive` only waits for the client to go away: no limit applies
            return await receive()
        if declared is not None and declared > limits.max_body_bytes:
            raise too_large(limits.max_body_bytes)
        wait = min(limits.body_idle_timeout_s, deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive in time (at most {limits.body_timeout_s:g} s in all and "
                f"{limits.body_idle_timeout_s:g} s between chunks); {seen} bytes came", param="body") from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limits.max_body_bytes:
                raise too_large(limits.max_body_bytes)
            done = not message.get("more_body", False)
        return message

    return receive_guarded


FIRST_CHUNK_GRACE_S = 0.25  # a body whose first chunk takes longer counts for its client while it arrives


class BodyGate:
    """How many bodies each client has arriving at once, bounded per client."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self.arriving: Counter[str] = Counter()

    def enter(self, client: str) -> None:
        if self.arriving[client] >= self.max_per_client:
            raise QueueFullError(f"you have {self.arriving[client]} request bodies arriving at once, the most "
                                 "this server takes from one client; retry later", retry_after_s=1)
        self.arriving[client] += 1

    def leave(self, client: str) -> None:
        self.arriving[client] -= 1
        if self.arriving[client] <= 0:
            del self.arriving[client]


@dataclass(frozen=True)
class RouteFacts:
    """What the guard needs of a route, from the app's OpenAPI document (public, unlike the router's internals):
    its path template and tags (the front end whose error shape a refusal takes) and whether it takes a body."""

    path: str
    method: str
    tags: tuple[str, ...]
    takes_body: bool
    pattern: re.Pattern[str]


def route_table(openapi: dict[str, Any]) -> list[RouteFacts]:
    table = []
    for path, operations in openapi.get("paths", {}).items():
        pattern = re.compile("[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", path)) + "$")
        for method, op in operations.items():
            table.append(RouteFacts(path, method.upper(), tuple(op.get("tags", ())), "requestBody" in op, pattern))
    return table


def matched_route(routes: list[RouteFacts], scope: Scope) -> RouteFacts | None:
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    for route in routes:
        if route.method == scope["method"] and route.pattern.match(path):
            return route
    return None


class BodyGuardMiddleware:
    """The rules of this module's docstring for every request that declares a body. It runs inside the
    request-context middleware, so its refusals take the one error path (and the matched route's front end).

    `routes` and `policy` are read per request: the app's routes and the access policy (any valid key lets
    a body in; the route's own dependency then decides)."""

    def __init__(self, app: ASGIApp, limits: HttpLimitsConfig, routes: Callable[[], list[RouteFacts]],
                 policy: Callable[[], AccessPolicy]) -> None:
        self.app = app
        self.limits = limits
        self.routes = routes
        self.policy = policy
        self.gate = BodyGate(limits.max_unread_bodies_per_client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not declares_body(headers):
            await self.app(scope, receive, send)
            return
        route = matched_route(self.routes(), scope)
        if route is None:  # a 404 follows; its body is never read
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # the refusals below answer in the route's front-end shape
        if not route.takes_body:
            raise bodyless_refusal()
        client = scope.get("client")
        policy = self.policy()
        address = policy.client_address(client[0] if client else None, headers.get("x-forwarded-for"))
        caller = policy.caller(headers.get("authorization"), address)
        counted = False

        def count() -> None:  # the body is still arriving: it counts for its client until it is in
            nonlocal counted
            if not counted:
                self.gate.enter(caller.id)
                counted = True

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.gate.leave(caller.id)

        inner = guarded_receive(receive, headers, self.limits)

        async def receive_body() -> Message:
            try:
                message = await inner()
            except BaseException:
                uncount()
                raise
            if message["type"] != "http.request" or not message.get("more_body", False):
                uncount()
            return message

        # The first chunk is taken here, before the app runs. A body that comes whole at once (every body of a
        # quick client, however many it sends together) never counts; one that does not start within the grace
        # or comes in more chunks counts while it arrives, so one client cannot hold many slots with slow ones.
        first_chunk = asyncio.ensure_future(inner())
        try:
            if not (await asyncio.wait({first_chunk}, timeout=FIRST_CHUNK_GRACE_S))[0]:
                count()
            first: Message | None = await first_chunk
            if first is not None and first["type"] == "http.request" and first.get("more_body", False):
                count()

            async def receive_app() -> Message:
                nonlocal first
                if first is not None:
                    message, first = first, None
                    return message
                return await receive_body()

            await self.app(scope, receive_app, send)
        finally:
            first_chunk.cancel()
            uncount()
