"""Request-field validation shared by the request parsers of every dialect: every problem is a
``GatewayError(INVALID_REQUEST, "<field path>: <what is wrong>")``, a 400 naming the field."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from pydantic import ValidationError

from gateway.errors import ErrorKind, GatewayError

E = TypeVar("E", bound=StrEnum)


def invalid(path: str, problem: str) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, f"{path}: {problem}")


def parse_choice(value: object, choices: type[E], path: str) -> E:
    """One of a StrEnum's values (case-insensitive, spaces trimmed), else a 400 naming
    ``path`` and listing the valid values."""
    if isinstance(value, str):
        try:
            return choices(value.strip().lower())
        except ValueError:
            pass
    names = ", ".join(c.value for c in choices)
    raise invalid(path, f"must be one of {names} (got {value!r})")


def _path(loc: tuple[int | str, ...], body: object) -> str:
    """``loc`` of a pydantic error as a field path (``messages[0].content[1].source``).

    Walking the body alongside drops what pydantic adds for unions: the tag of a
    discriminated union (``…, 'image', 'source'``) and the member label of a plain one
    (``'str'``, ``'list[…]'``)."""
    parts: list[str] = []
    value: object = body
    tagged = False  # the tag of the current object was skipped already
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            value = value[item] if isinstance(value, list) and 0 <= item < len(value) else None
            tagged = False
        elif isinstance(value, dict) and item in value:
            parts.append(f".{item}" if parts else item)
            value = value[item]
            tagged = False
        elif isinstance(value, dict) and value.get("type") == item and not tagged:
            tagged = True  # the tag of a discriminated union
        elif isinstance(value, dict):
            parts.append(f".{item}" if parts else item)  # a missing field
            value = None
        # else: a union member's label on a list or a scalar
    return "".join(parts) or "body"


def from_validation_error(exc: ValidationError, body: object) -> GatewayError:
    """A pydantic :class:`ValidationError` of a request body as a 400 naming the field.

    When a value fits no member of a union, pydantic reports each member's complaint; the
    one that went deepest into the body is the one that says what is wrong."""
    errors = exc.errors(include_url=False)
    if not isinstance(body, dict):
        return invalid("body", "must be a JSON object")
    deepest = max(len(e["loc"]) for e in errors)
    path = _path(tuple(next(e for e in errors if len(e["loc"]) == deepest)["loc"]), body)
    messages: list[str] = []
    for error in errors:  # a value no member of a plain union accepts: each one's reason
        if _path(tuple(error["loc"]), body) != path:
            continue
        message = error["msg"]
        if error["type"] == "literal_error" and "expected" in error.get("ctx", {}):
            message = f"must be {error['ctx']['expected']} (got {error['input']!r})"
        elif error["type"] == "union_tag_invalid":  # a discriminated union's unknown type
            ctx = error["ctx"]
            message = f"type {ctx['tag']!r} is not supported; use {ctx['expected_tags']}"
        elif error["type"] == "union_tag_not_found":
            message = "needs a string 'type'"
        if message not in messages:
            messages.append(message)
    return invalid(path, "; or ".join(messages))
