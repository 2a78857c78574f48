"""The one place that maps exceptions to HTTP responses (vLLM style).

Every error is JSON: `{"error": {"type", "message", "param"}}` for the native and OpenAI APIs; the
AUTOMATIC1111 front end renders the same facts in its own shape (`render_a1111`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse

from serve_app.errors import DreamLabError, QueueFullError
from serve_app.strict_model import describe_error

logger = logging.getLogger(__name__)


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps a replica's exception in RayTaskError; get the original back."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _unwrap(cause)
    return exc


def error_facts(exc: BaseException, request_id: str = "-") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, error body, headers) for any exception."""
    from ray.serve.exceptions import BackPressureError

    exc = _unwrap(exc)
    if isinstance(exc, DreamLabError):
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFullError) else {}
        return exc.status_code, exc.to_dict(), headers
    if isinstance(exc, BackPressureError):
        return 503, {"type": "overloaded_error", "message": "the mode's queue is full; retry later",
                     "param": None}, {"Retry-After": "1"}
    if isinstance(exc, FastAPIValidationError):
        field, message = describe_error(exc.errors()[0])
        return 422, {"type": "invalid_request_error", "message": message, "param": field or None}, {}
    logger.error("[%s] internal error: %s: %s", request_id, type(exc).__name__, exc)
    return 500, {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None}, {}


def error_response(exc: BaseException, request_id: str = "-") -> JSONResponse:
    status, body, headers = error_facts(exc, request_id)
    return JSONResponse({"error": body}, status_code=status, headers=headers)
