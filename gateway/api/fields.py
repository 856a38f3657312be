"""Request-field validation shared by the request parsers of every dialect: a decoded
body is validated against its pydantic wire model, and every problem is one
``GatewayError(INVALID_REQUEST, "<field path>: <what is wrong>")``, a 400 naming the field
(``messages[2].content[0].image_url.url: the base64 data is invalid``).

* :func:`validate` / :func:`from_validation_error`: decoded JSON -> a model, or that 400
  (the deepest problem: for a union, the member that got furthest).
* :func:`problem`: raise it from a validator for a message of your own (``at`` adds a path
  below the field); :func:`choice`: a case-insensitive StrEnum field.
* Union tags of callable discriminators start with :data:`TAG` and are left out of paths;
  a discriminator that finds no tag raises its ``custom_error_type``, which
  :data:`UNION_PROBLEMS` turns into words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, BeforeValidator, Discriminator, ValidationError, WithJsonSchema
from pydantic_core import ErrorDetails, PydanticCustomError

from gateway.errors import ErrorKind, GatewayError

E = TypeVar("E", bound=StrEnum)
M = TypeVar("M", bound=BaseModel)

#: the first character of a union tag; tags are not part of a field path
TAG = "~"
#: the error type of :func:`problem`
PROBLEM = "gateway_problem"


def invalid(path: str, problem: str) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, f"{path}: {problem}")


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def problem(text: str, at: str = "") -> PydanticCustomError:
    """An error with our own words, for a validator to raise (``at``: a sub-path such as
    ``"type"`` or ``"[0]"`` of the field)."""
    return PydanticCustomError(PROBLEM, "{problem}", {"problem": text, "at": at})


def parse_choice(value: object, choices: type[E], path: str) -> E:
    """One of a StrEnum's values (case-insensitive, spaces trimmed), else a 400 naming
    ``path`` and listing the valid values."""
    try:
        return _choice(value, choices)
    except PydanticCustomError as exc:
        raise invalid(path, str((exc.context or {})["problem"])) from None


def _choice(value: object, choices: type[E]) -> E:
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        try:
            return choices(value.strip().lower())
        except ValueError:
            pass
    names = ", ".join(c.value for c in choices)
    raise problem(f"must be one of {names} (got {value!r})")


def choice(choices: type[E]) -> tuple[BeforeValidator, WithJsonSchema]:
    """The metadata of a field that takes one of ``choices`` (case-insensitive; None too):
    ``Annotated[Mode | None, *choice(Mode)]``."""
    return (
        BeforeValidator(lambda v: v if v is None else _choice(v, choices)),
        WithJsonSchema({"enum": [*(c.value for c in choices), None]}),
    )


# --------------------------------------------------------------------------- errors -> 400


def _path(loc: tuple[int | str, ...], body: object) -> str:
    """``loc`` of a pydantic error as a field path (``messages[0].content[1].source``).

    Walking the body alongside drops what pydantic adds for unions: the tag of a
    discriminated union (``…, 'image', 'source'``, or a callable discriminator's
    :data:`TAG`-prefixed tag) and the member label of a plain one (``'str'``, ``'list[…]'``)."""
    parts: list[str] = []
    value: object = body
    tagged = False  # the tag of the current object was skipped already
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            value = value[item] if isinstance(value, list) and 0 <= item < len(value) else None
            tagged = False
        elif item.startswith(TAG):
            tagged = True
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
    return "".join(parts)


def _union_part(value: object) -> tuple[str, str]:
    if not isinstance(value, dict):
        return "", f"must be an object, not {type_name(value)}"
    kind = value.get("type")
    if kind == "image_url":
        return ".type", "images are only accepted in user messages"
    return ".type", f"{kind!r} is not supported; use 'text' or 'image_url' with a data: URL"


def _union_object(field: str, words: str) -> Callable[[object], tuple[str, str]]:
    def describe(value: object) -> tuple[str, str]:
        if not isinstance(value, dict):
            return "", f"must be an object, not {type_name(value)}"
        return f".{field}", f"{value.get(field)!r} {words}"

    return describe


#: custom_error_type of a discriminator -> (sub-path, problem) for the value it met
UNION_PROBLEMS: dict[str, Callable[[object], tuple[str, str]]] = {
    "content_union": lambda v: (
        "", "is required" if v is None else
        f"must be a string or an array of parts, not {type_name(v)}"),
    "part_union": _union_part,
    "string_or_object": lambda v: ("", f"must be a string or an object, not {type_name(v)}"),
}


def discriminator(tag: Callable[[Any], str | None], error_type: str) -> Discriminator:
    """A callable discriminator whose failure (``tag`` returned None) is ``error_type``,
    described by :data:`UNION_PROBLEMS`."""
    return Discriminator(tag, custom_error_type=error_type, custom_error_message=error_type)


def register_union(error_type: str, describe: Callable[[object], tuple[str, str]]) -> None:
    """Words for a dialect's own discriminator (``custom_error_type=error_type``)."""
    UNION_PROBLEMS[error_type] = describe


def union_of_objects(error_type: str, field: str, words: str) -> None:
    """A discriminator on ``field`` of objects: a non-object is 'must be an object', an
    unknown ``field`` is ``<field>: '<value>' <words>``."""
    register_union(error_type, _union_object(field, words))


#: a field's regex -> what it asks for in words (else the 400 quotes the regex)
PATTERN_WORDS: dict[str, str] = {}


def _words(error: ErrorDetails) -> tuple[str, str]:
    """(sub-path, problem) of one pydantic error."""
    kind = error["type"]
    value = error.get("input")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == PROBLEM:
        return str(ctx.get("at", "")), str(ctx["problem"])
    if kind in UNION_PROBLEMS:
        return UNION_PROBLEMS[kind](value)
    if kind == "missing":
        return "", "is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "", f"must be an object, not {type_name(value)}"
    if kind == "list_type":
        return "", f"must be an array, not {type_name(value)}"
    if kind == "string_type":
        return "", f"must be a string, not {type_name(value)}"
    if kind == "bool_type":
        return "", f"must be a boolean, not {type_name(value)}"
    if kind in ("int_type", "float_type"):
        return "", f"must be a number, not {type_name(value)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return "", f"{PATTERN_WORDS.get(pattern, f'must match {pattern}')} (got {value!r})"
    if kind == "literal_error" and "expected" in ctx:
        return "", f"must be {ctx['expected']} (got {value!r})"
    if kind == "union_tag_invalid":  # a discriminated union's unknown type
        return "", f"type {ctx['tag']!r} is not supported; use {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return "", "needs a string 'type'"
    if kind == "value_error" and "error" in ctx:
        return "", str(ctx["error"])
    return "", str(error["msg"])


def from_validation_error(exc: ValidationError, body: object) -> GatewayError:
    """A pydantic :class:`ValidationError` of a request body as a 400 naming the field.

    When a value fits no member of a union, pydantic reports each member's complaint; the
    one that went deepest into the body is the one that says what is wrong (and a value
    no member of a plain union accepts gets each one's reason)."""
    errors = exc.errors(include_url=False)
    if not isinstance(body, dict):
        return invalid("body", f"must be a JSON object, not {type_name(body)}")
    deepest = max(len(e["loc"]) for e in errors)
    first = next(e for e in errors if len(e["loc"]) == deepest)
    path = _path(tuple(first["loc"]), body)
    sub = ""
    problems: list[str] = []
    for error in errors:
        if _path(tuple(error["loc"]), body) != path:
            continue
        at, words = _words(error)
        if not problems:
            sub = at
        if at == sub and words not in problems:
            problems.append(words)
    return invalid((path + sub).lstrip(".") or "body", "; or ".join(problems))


def validate(model: type[M], body: object) -> M:
    """``body`` (decoded JSON) as ``model``, or the 400 of its problem."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, body) from None
