"""The one strict pydantic base every config and request model derives from, and how its errors name
the field and value they are about."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Unknown fields are errors, so a typo in YAML or JSON never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class FieldError(ValueError):
    """A cross-field check's error, with the path (below the validated model) and value it is about.

    Pydantic gives a model validator's error the model's location; this carries the field's own.
    """

    def __init__(self, loc: tuple[str | int, ...], value: object, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.value = value


def error_field(err: dict[str, Any]) -> tuple[str, object]:
    """The dotted field path and the value of one pydantic (or FastAPI) error.

    FastAPI's leading `body` is dropped; cross-field errors (FieldError) carry their own path and value.
    """
    loc, value = tuple(err["loc"]), err.get("input")
    if loc[:1] == ("body",):
        loc = loc[1:]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc, value = loc + cause.loc, cause.value
    return ".".join(str(p) for p in loc), value


def describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """The field of one error and the one message style for it: "`field`: msg, got value"."""
    field, value = error_field(err)
    shown = "" if isinstance(value, (dict, list)) else f", got {value!r}"
    return field, f"`{field or 'body'}`: {err['msg']}{shown}"


def config_error_text(source: str, exc: ValidationError) -> tuple[str | None, str]:
    """The first bad field of a config's validation error and every error as "<source>: <describe_error>"."""
    described = [describe_error(err) for err in exc.errors()]
    return described[0][0] or None, "\n".join(f"{source}: {message}" for _, message in described)
