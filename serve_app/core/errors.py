"""Typed errors of Dream Lab. Each knows its HTTP status and the field it is about.

The router maps them to HTTP in one place (`serve_app.api.http_errors`); the CLI prints their message.
"""

from __future__ import annotations


class DreamLabError(Exception):
    """Base error: a message for humans, the offending field (``param``) and an HTTP status."""

    status_code: int = 400
    error_type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, object]:
        return {"type": self.error_type, "message": self.message, "param": self.param}

    def __reduce__(self):  # keep message and param across Ray's pickling
        return (_rebuild_error, (type(self), self.message, self.param, self.__dict__))


def _rebuild_error(cls: type[DreamLabError], message: str, param: str | None, state: dict) -> DreamLabError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class RequestValidationError(DreamLabError):
    """A request field has a bad value (diffusers' check_inputs style: names field and value)."""

    status_code = 422


class RequestTooLargeError(DreamLabError):
    """The request body (or an image in it) is over the size the server accepts."""

    status_code = 413


class RequestTimeoutError(DreamLabError):
    """The request body did not arrive in time (too slow, or stalled)."""

    status_code = 408
    error_type = "request_timeout"


class AuthenticationError(DreamLabError):
    """No API key, or not a valid one."""

    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(DreamLabError):
    """A valid key that may not do this (an operator action needs the admin key)."""

    status_code = 403
    error_type = "permission_error"


class CheckpointError(DreamLabError):
    """A checkpoint on disk cannot be used."""

    status_code = 422
    error_type = "checkpoint_error"


class CheckpointNotFoundError(CheckpointError):
    status_code = 404


class NotACheckpointError(CheckpointError):
    pass


class CorruptCheckpointError(CheckpointError):
    pass


class PickleCheckpointError(CheckpointError):
    pass


class UnsupportedCheckpointError(CheckpointError):
    pass


class AdapterFileError(CheckpointError):
    """A LoRA, embedding or VAE file that cannot be used (not that kind, an unsupported format or family)."""

    error_type = "adapter_error"


class ConfigError(DreamLabError):
    """A modes file or environment setting is wrong; the message names file, field and value."""

    error_type = "config_error"


class UnknownModeError(DreamLabError):
    status_code = 404
    error_type = "not_found_error"


class UnknownAdapterError(DreamLabError):
    """A request names a LoRA (or other adapter) that MODEL_ROOT does not hold."""

    status_code = 404
    error_type = "not_found_error"


class ImageNotFoundError(DreamLabError):
    """An image served by URL (OpenAI `response_format: url`) expired or never existed."""

    status_code = 404


class UnknownTaskError(DreamLabError):
    """A task id this server does not hold (never was, expired, or another client's)."""

    status_code = 404
    error_type = "not_found_error"


class UnknownJobTypeError(DreamLabError):
    status_code = 404
    error_type = "not_found_error"


class JobFailedError(DreamLabError):
    """A job or generation raised an error Dream Lab does not know; the client sees no details of it."""

    status_code = 500
    error_type = "job_error"


class QueueFullError(DreamLabError):
    status_code = 503
    error_type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceededError(QueueFullError):
    """One client holds its share (tasks queued or stored, bytes of results): the others still get theirs."""

    status_code = 429
    error_type = "rate_limit_error"


class WorkerTimeoutError(QueueFullError):
    """A call across actors (a mode replica, the task store) did not answer in its time; its slot is freed."""

    status_code = 504
    error_type = "timeout_error"


class ShuttingDownError(QueueFullError):
    """The server drains: in-flight work finishes, new work is refused."""


class ModeUnavailableError(QueueFullError):
    """The replica running a request went away (killed, restarted); Serve replaces it: retry."""

    error_type = "unavailable_error"


class InsufficientVRAMError(DreamLabError):
    status_code = 507
    error_type = "insufficient_vram"

    def __init__(self, message: str, *, needed_bytes: int, free_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.budget_bytes = budget_bytes

    def to_dict(self) -> dict[str, object]:
        return {
            **super().to_dict(),
            "needed_bytes": self.needed_bytes,
            "free_bytes": self.free_bytes,
            "budget_bytes": self.budget_bytes,
        }


class GenerationCancelledError(DreamLabError):
    """The client went away mid-generation; the replica stopped at the next step."""

    status_code = 499
    error_type = "cancelled"


class ModelNotReadyError(DreamLabError):
    status_code = 503
    error_type = "model_not_ready_error"
