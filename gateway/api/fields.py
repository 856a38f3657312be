"""Request-field validation shared by the chat-completion parsers: every problem is a
``GatewayError(INVALID_REQUEST, "<field path>: <what is wrong>")``, a 400 naming the field."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

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
