"""The one strict pydantic base every config and request model derives from, and how its errors name
the field and value they are about."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
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


QUOTE_LIMIT = 40  # characters of a client's value an error message quotes


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """The repr of `value` for an error message, never much longer than `limit` characters.

    A long string (or bytes) shows a prefix and its length: `'xxxx'... (20000000 chars)`; other values are
    shortened by `reprlib` (big numbers, containers), which never builds the whole repr of a container.
    Lone surrogates and other unprintable characters come out escaped, so the message is always valid UTF-8.
    """
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) <= limit:
            return repr(value)
        unit = "chars" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    short = reprlib.Repr()
    short.maxstring = short.maxlong = short.maxother = limit
    short.maxlist = short.maxtuple = short.maxset = short.maxfrozenset = short.maxdict = 4
    short.maxlevel = 2
    try:
        return short.repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
        return f"<{type(value).__name__}>"


def printable(text: str, limit: int = 4 * QUOTE_LIMIT) -> str:
    """`text` (a field path or message) cut to `limit` characters, with anything UTF-8 cannot encode escaped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_field(err: Mapping[str, Any]) -> tuple[str, object]:
    """The dotted field path and the value of one pydantic (or FastAPI) error.

    FastAPI's leading `body` is dropped; cross-field errors (FieldError) carry their own path and value.
    """
    loc, value = tuple(err["loc"]), err.get("input")
    if loc[:1] == ("body",):
        loc = loc[1:]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc, value = loc + cause.loc, cause.value
    limit = 2 * QUOTE_LIMIT  # a JSON key is client input: never join a 20 MB one whole
    return printable(".".join(str(p)[:limit + 1] for p in loc), limit), value


def describe_error(err: Mapping[str, Any]) -> tuple[str, str]:
    """The field of one error and the one message style for it: "`field`: msg, got value".

    The client's value is quoted short (`quote`) and the field path too (a JSON key is client input), so
    a 20 MB bad value makes a message of a few hundred bytes.
    """
    field, value = error_field(err)
    shown = "" if isinstance(value, (dict, list)) else f", got {quote(value)}"
    return field, f"`{field or 'body'}`: {printable(str(err['msg']))}{shown}"


def config_error_text(source: str, exc: ValidationError) -> tuple[str | None, str]:
    """The first bad field of a config's validation error and every error as "<source>: <describe_error>"."""
    described = [describe_error(err) for err in exc.errors()]
    return described[0][0] or None, "\n".join(f"{source}: {message}" for _, message in described)
