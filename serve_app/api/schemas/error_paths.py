"""Error paths of wrapper bodies: a task (`{kind, request}`) or a job (`{mode, payload}`) carries another
route's body, and an error in it names the field as that route would (`steps`, not `request.steps`)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[int | str, ...]


def relocated(exc: ValidationError, move: Callable[[Loc], Loc]) -> ValidationError:
    """`exc` with each error's location passed through `move` (type, message and value kept)."""
    errors = [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"], e.get("ctx")), loc=move(e["loc"]),
                               input=e["input"]) for e in exc.errors()]
    return ValidationError.from_exception_data(exc.title, errors)


def inner(field: str, tags: tuple[str, ...] = ()) -> Callable[[Loc], Loc]:
    """Drops a leading union tag (one of `tags`), then `field` before a path below it."""

    def move(loc: Loc) -> Loc:
        loc = loc[1:] if loc[:1] and loc[0] in tags else loc
        return loc[1:] if loc[:1] == (field,) and len(loc) > 1 else loc

    return move
