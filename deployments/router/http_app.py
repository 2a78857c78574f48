"""The one error path of the Router's FastAPI app (`ingress.create_http_app` builds the app).

- `RequestContextMiddleware` gives every request an id: the `X-Request-Id` it came with (Serve's proxy
  sets one on every request and echoes it in the response), else a new one, which it then adds to the
  response. Route code reads it with `current_request_id()`; it is in every log line of a request.
- Errors are rendered once, here: Dream Lab's errors, FastAPI's validation errors and unknown routes by
  exception handlers, anything else by the middleware (a 500 that says "internal error" and the request
  id; the traceback goes to the log). The shape is the front end's of the route that failed: a route's
  OpenAPI tag is its `FrontEnd`, so no URL text is matched.
- Bodies are capped before they are parsed: the middleware hands the app a `receive` that raises
  `RequestTooLargeError` (413) when the route reads a body whose declared `Content-Length` is over
  `MAX_BODY_BYTES`, or whose streamed (chunked) bytes pass it; what was read stays at most the cap plus
  the one chunk that crossed it. It is raised inside the route, so the 413 takes the route's front end's
  shape. Serve's own proxy and replica plumbing still buffer what the client sends before the app reads
  it; a cap in front of Serve (a reverse proxy's body limit) bounds that too.
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import metrics
from deployments.router.request_context import current_request_id, request_scope
from serve_app.api.http_errors import FrontEnd, render_error
from serve_app.core.errors import DreamLabError, RequestTooLargeError

logger = logging.getLogger(__name__)

# The largest request body the app reads: an init image at its limit (32 MiB, `request_resolution.
# MAX_IMAGE_BYTES`) is 42.7 MiB of base64, plus room for the rest of the JSON.
MAX_BODY_BYTES = 48 * 1024 * 1024

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def front_end_of(scope: Scope) -> FrontEnd:
    """The front end of the route a request matched (native when none matched)."""
    for tag in getattr(scope.get("route"), "tags", None) or ():
        try:
            return FrontEnd(tag)
        except ValueError:
            continue
    return FrontEnd.NATIVE


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def capped_receive(receive: Receive, headers: Headers, max_bytes: int) -> Receive:
    """`receive` that raises RequestTooLargeError once the body is known to pass `max_bytes`: at the first
    read when the declared Content-Length says so (nothing is read), else at the chunk that crosses it."""
    declared = _declared_length(headers)
    seen = 0

    def too_large() -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body is larger than {max_bytes} bytes ({max_bytes / 2**20:g} MiB), "
                                    "the most this server accepts", param="body")

    async def receive_capped() -> Message:
        nonlocal seen
        if declared is not None and declared > max_bytes:
            raise too_large()
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise too_large()
        return message

    return receive_capped


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        receive = capped_receive(receive, headers, self.max_body_bytes)
        incoming = headers.get("x-request-id")
        request_id = incoming if incoming and _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        started = False
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                if incoming is None:  # with one, whoever sent it (Serve's proxy) puts it on the response
                    MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        with request_scope(request_id) as mode:
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


def install_error_path(app: FastAPI, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Request ids, the body cap and the one error path on `app`."""
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_body_bytes)
    for exc_type in (DreamLabError, FastAPIValidationError, HTTPException):
        app.add_exception_handler(exc_type, _handled_error)

