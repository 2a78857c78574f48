"""The one error path of the Router's FastAPI app (`ingress.create_http_app` builds the app).

- `RequestContextMiddleware` gives every request an id: the `X-Request-Id` it came with (Serve's proxy
  sets one on every request and echoes it in the response), else a new one, which it then adds to the
  response. Route code reads it with `current_request_id()`; it is in every log line of a request. Inside
  the server the request is named by a server-chosen id (`current_server_id()`), never by the client's.
- Errors are rendered once, here: Dream Lab's errors, FastAPI's validation errors and unknown routes by
  exception handlers, anything else by the middleware (a 500 that says "internal error" and the request
  id; the traceback goes to the log). The shape is the front end's of the route that failed: a route's
  OpenAPI tag is its `FrontEnd`, so no URL text is matched.
- Bodies are bounded in size and time before any route runs (`body_guard.BodyGuardMiddleware`, inside this
  middleware so its refusals take the same path). A large JSON body is parsed off the event loop
  (`OffLoopJsonRoute`, the route class of every front end), so one client's 40 MB body does not stall the
  others for the second its parse takes.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import metrics
from deployments.router.body_guard import BodyGuardMiddleware, RouteFacts, route_table
from deployments.router.gateway import off_loop
from deployments.router.request_context import current_request_id, request_scope
from serve_app.api.access_policy import AccessPolicy
from serve_app.api.http_errors import FrontEnd, render_error
from serve_app.config.app_args import HttpLimitsConfig
from serve_app.core.errors import DreamLabError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = HttpLimitsConfig().max_body_bytes  # the default (`http.max_body_bytes`)
_INLINE_JSON_BYTES = 256 * 1024  # parsed on the loop below this (about a millisecond); off it above


class OffLoopJsonRequest(Request):
    """A request whose JSON body, when large, is parsed on the router's CPU pool (FastAPI's documented way to
    change how a route reads its body is a `Request` subclass given by a route class)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = await off_loop(json.loads, body) if len(body) > _INLINE_JSON_BYTES else json.loads(body)
        return self._json


class OffLoopJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OffLoopJsonRequest(request.scope, request.receive))

        return route

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def front_end_of(scope: Scope) -> FrontEnd:
    """The front end of the route a request matched (native when none matched)."""
    for tag in getattr(scope.get("route"), "tags", None) or ():
        try:
            return FrontEnd(tag)
        except ValueError:
            continue
    return FrontEnd.NATIVE


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id")
        server_id = uuid.uuid4().hex[:16]
        request_id = incoming if incoming and _SANE_REQUEST_ID.fullmatch(incoming) else server_id
        if request_id != server_id:
            logger.debug("[%s] is request %s inside the server", request_id, server_id)
        started = False
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                if incoming is None:  # with one, whoever sent it (Serve's proxy) puts it on the response
                    MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        with request_scope(request_id, server_id) as mode:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                if started:  # the response is under way (a stream): nothing left to tell the client
                    logger.exception("[%s] failed after the response started", request_id)
                    return
                await render_error(exc, front_end_of(scope), request_id)(scope, receive, send_with_id)
            finally:
                route = scope.get("route")
                metrics.request_answered(mode[0], getattr(route, "path", "unmatched"), status)

async def _handled_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, HTTPException) and isinstance(exc.__cause__, DreamLabError):
        exc = exc.__cause__  # FastAPI wraps what reading the body raised (RequestTooLargeError) in a 400
    return render_error(exc, front_end_of(request.scope), current_request_id())


def install_error_path(app: FastAPI, limits: HttpLimitsConfig | None = None,
                       policy: Callable[[], AccessPolicy] | None = None) -> None:
    """Request ids, the body guard and the one error path on `app`; `policy` gives the access policy a body
    needs a key of (default: open)."""
    open_policy = AccessPolicy()
    table: list[RouteFacts] = []

    def routes() -> list[RouteFacts]:  # built at the first body: every route is declared by then
        if not table:
            table.extend(route_table(app.openapi()))
        return table

    app.add_middleware(BodyGuardMiddleware, limits=limits or HttpLimitsConfig(), routes=routes,
                       policy=policy or (lambda: open_policy))
    app.add_middleware(RequestContextMiddleware)  # added last: the outer one
    for exc_type in (DreamLabError, FastAPIValidationError, HTTPException):
        app.add_exception_handler(exc_type, _handled_error)

