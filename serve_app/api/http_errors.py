"""The one place that maps exceptions to HTTP errors (vLLM style), and each front end's error shape.

`error_facts` turns any exception into the same facts (status, type, message, param, headers); a front
end's renderer puts them in its own shape: native `{"error": {type, message, param}}`, OpenAI
`{"error": {message, type, param, code}}` (input errors are 400 there), A1111 `{error, detail, body,
errors}`. An exception Dream Lab does not know is a 500 that says "internal error" and the request id;
its traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from serve_app.core.errors import AuthenticationError, DreamLabError, QueueFullError
from serve_app.core.strict_model import describe_error

logger = logging.getLogger(__name__)


class FrontEnd(str, Enum):
    """Which API a route belongs to; its value is the route's OpenAPI tag, so the route carries it."""

    NATIVE = "native"
    OPS = "ops"
    OPENAI = "openai"
    A1111 = "automatic1111"


@dataclass
class ErrorFacts:
    status: int
    type: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the numbers of a 507


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps a replica's exception (RayTaskError with a `cause`); get the original back."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _unwrap(cause)
    return exc


def error_facts(exc: BaseException, request_id: str = "-") -> ErrorFacts:
    """The facts of any exception; unknown ones are logged with their traceback and shown as internal."""
    exc = _unwrap(exc)
    if isinstance(exc, DreamLabError):
        body = exc.to_dict()
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFullError) else {}
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = 'Bearer realm="dreamlab"'
        extra = {k: v for k, v in body.items() if k not in ("type", "message", "param")}
        return ErrorFacts(exc.status_code, exc.error_type, exc.message, exc.param, headers, extra)
    if isinstance(exc, FastAPIValidationError):
        param, message = describe_error(exc.errors()[0])
        return ErrorFacts(422, "invalid_request_error", message, param or None)
    if isinstance(exc, HTTPException):  # no such route, method not allowed
        return ErrorFacts(exc.status_code, "not_found_error" if exc.status_code == 404 else "invalid_request_error",
                          str(exc.detail), None, dict(exc.headers or {}))
    logger.error("[%s] internal error", request_id, exc_info=(type(exc), exc, exc.__traceback__))
    return ErrorFacts(500, "internal_error", f"internal error (request id {request_id})")


# -- shapes ------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, not_found_error, overloaded_error, ...")
    message: str = Field(description="Names the field and quotes its value.")
    param: str | None = Field(description="The field the error is about.")


class ErrorResponse(BaseModel):
    """Native error shape."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


class A1111ErrorResponse(BaseModel):
    error: str
    detail: str
    body: str
    errors: str
    param: str | None = None


_OPENAI_CODES = {401: "invalid_api_key", 503: "overloaded", 507: "insufficient_vram"}


def native_error(f: ErrorFacts) -> JSONResponse:
    return JSONResponse({"error": {"type": f.type, "message": f.message, "param": f.param, **f.extra}},
                        status_code=f.status, headers=f.headers)


def openai_error(f: ErrorFacts) -> JSONResponse:
    status = 400 if f.status == 422 else f.status
    if status == 404:
        code = "model_not_found" if f.param == "model" else "not_found"
    else:
        code = _OPENAI_CODES.get(status, f.type)
    body = {"message": f.message, "type": f.type, "param": f.param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=f.headers)


def a1111_error(f: ErrorFacts) -> JSONResponse:
    body: dict[str, Any] = {"error": f.type, "detail": f.message, "body": "", "errors": f.message}
    if f.param:
        body["param"] = f.param
    return JSONResponse(body, status_code=f.status, headers=f.headers)


RENDERERS: dict[FrontEnd, Callable[[ErrorFacts], JSONResponse]] = {
    FrontEnd.NATIVE: native_error, FrontEnd.OPS: native_error, FrontEnd.OPENAI: openai_error,
    FrontEnd.A1111: a1111_error,
}
ERROR_MODELS: dict[FrontEnd, type[BaseModel]] = {
    FrontEnd.NATIVE: ErrorResponse, FrontEnd.OPS: ErrorResponse, FrontEnd.OPENAI: OpenAIErrorResponse,
    FrontEnd.A1111: A1111ErrorResponse,
}


def render_error(exc: BaseException, front_end: FrontEnd, request_id: str = "-") -> JSONResponse:
    return RENDERERS[front_end](error_facts(exc, request_id))


def error_responses(front_end: FrontEnd, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its error statuses, any other 4XX and 500, in the front end's error shape
    (declaring 4XX also keeps FastAPI from describing its own 422 shape, which Dream Lab never sends)."""
    model = ERROR_MODELS[front_end]
    codes = {400 if s == 422 and front_end is FrontEnd.OPENAI else s for s in statuses}
    return {**{code: {"model": model} for code in sorted(codes)}, "4XX": {"model": model},
            500: {"model": model, "description": "Internal error: the request id, no details (see the log)"}}
