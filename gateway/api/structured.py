"""Structured output (``response_format`` ``json_object`` / ``json_schema``) by instruction
plus validation.

Claude Code has no switch that forces JSON, so the gateway asks for it and checks it:

* :func:`check_schema` checks a request's ``json_schema`` (its shape is validated by
  :mod:`gateway.api.chat_wire`): a valid JSON Schema whose ``$ref`` are local, else a 400
  naming the part that is wrong.
* :func:`with_instruction` adds the instruction to *this* turn's prompt (a suffix of the user
  message, not system text: the system text of a warm process is fixed, and changing it
  would restart the process; later turns of the conversation do not get the instruction).
* :func:`check_answer` strips a Markdown code fence (or words around the one JSON value of
  the answer) and parses the answer: ``json_object`` must be a JSON object, ``json_schema``
  must validate against the schema (``strict`` true or false alike). It returns the JSON
  text the client receives, or raises :class:`OutputInvalid`.
* :class:`StructuredTurns` wraps the engine for one request: when the answer does not pass,
  it runs one more turn in the same conversation with the problem as the user message, and
  if that answer fails too the turn ends with ``TurnError(INVALID_OUTPUT)`` (HTTP 422
  ``invalid_json_output``), never with invalid JSON as a successful answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from gateway.api.fields import invalid
from gateway.engine.events import (
    Event,
    Notice,
    Prompt,
    StreamMode,
    TextDelta,
    TurnError,
    TurnOptions,
    TurnResult,
)
from gateway.errors import ErrorKind

if TYPE_CHECKING:
    from gateway.engine.api import TurnRunner

log = logging.getLogger(__name__)

FormatType = Literal["json_object", "json_schema"]
#: the longest problem description put into a retry prompt or an error message
MAX_PROBLEM_CHARS = 500


@dataclass(frozen=True)
class ResponseFormat:
    """A request's ``response_format`` when it asks for JSON."""

    type: FormatType
    name: str = ""
    description: str = ""
    schema: Mapping[str, Any] | None = field(default=None, compare=False)
    strict: bool = False

    @property
    def what(self) -> str:
        """What the answer must be, in words (used in instructions and errors)."""
        if self.type == "json_object":
            return "a JSON object"
        return f"JSON that validates against the JSON Schema {self.name!r}"


class OutputInvalid(Exception):
    """The answer is not what ``response_format`` asked for; ``problem`` says why."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        #: a content-free summary for the log (e.g. ``"type at $.age"``)
        self.where = where or problem.split(":")[0]


class _Endless(OutputInvalid):
    """Validation never ends: the schema's references loop."""


# --------------------------------------------------------------------------- parsing


def check_schema(schema: Mapping[str, Any], path: str) -> None:
    """A 400 naming the part of ``schema`` (at ``path``) that is not a valid JSON Schema, a
    ``$ref`` that points outside it or nowhere, or references that loop without end."""
    try:
        _check_schema(schema, path)
    except RecursionError:
        raise invalid(path, "is nested too deeply") from None


def _refs(node: object, path: str, found: list[tuple[str, str]], ids: list[str]) -> None:
    """Collect ``(path, $ref)`` pairs and nested ``$id`` values of a schema."""
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(item, str):
                found.append((f"{path}.{key}", item))
            elif key == "$id" and isinstance(item, str):
                ids.append(item)
            else:
                _refs(item, f"{path}.{key}", found, ids)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _refs(item, f"{path}[{i}]", found, ids)


def _check_refs(schema: Mapping[str, Any], path: str) -> None:
    """Only references inside the schema, and (without nested ``$id``) ones that resolve."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    found: list[tuple[str, str]] = []
    ids: list[str] = []
    for key, item in schema.items():
        if key not in ("$ref", "$dynamicRef", "$id"):
            _refs(item, f"{path}.{key}", found, ids)
        elif key != "$id" and isinstance(item, str):
            found.append((f"{path}.{key}", item))
    for where, ref in found:
        if not ref.startswith("#"):
            raise invalid(
                where,
                f"{ref!r}: only references inside the schema ('#/$defs/...') are supported; "
                "other schemas are not fetched",
            )
    if ids or not found:
        return
    root = DRAFT202012.create_resource(dict(schema))
    resolver = Registry().resolver_with_root(root)
    for where, ref in found:
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise invalid(where, f"{ref!r} does not point into the schema") from None


def _check_schema(schema: Mapping[str, Any], path: str) -> None:
    from jsonschema.exceptions import SchemaError

    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise invalid(f"{path}{where}", f"is not a valid JSON Schema: {exc.message}") from None
    _check_refs(schema, path)
    if isinstance(_schema_error(schema, {}), _Endless):
        raise invalid(path, "refers to itself without end (e.g. {'$ref': '#'})")


def _validator_class(schema: Mapping[str, Any]) -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    return validator_for(schema, default=Draft202012Validator)


# --------------------------------------------------------------------------- the turn


def instruction(fmt: ResponseFormat) -> str:
    """The text added to this turn's prompt."""
    rules = (
        "Your whole reply must be the JSON and nothing else: no words before or after it "
        "and no Markdown code fence."
    )
    if fmt.type == "json_object":
        return f"(For this reply only: answer with a single JSON object. {rules})"
    schema = json.dumps(fmt.schema, ensure_ascii=False, separators=(",", ":"))
    about = f" ({fmt.description})" if fmt.description else ""
    return (
        f"(For this reply only: answer with JSON that validates against the JSON Schema "
        f"named {fmt.name!r}{about} given below. {rules})\n"
        f"JSON Schema {fmt.name}: {schema}"
    )


def retry_prompt(fmt: ResponseFormat, problem: str) -> str:
    """The user message that asks again after an answer failed the check."""
    return (
        f"Your previous reply is not valid: {problem}\n"
        f"Reply again with only {fmt.what} — the JSON and nothing else, no code fence."
    )


def with_instruction(prompt: Prompt, fmt: ResponseFormat) -> Prompt:
    text = prompt.text.rstrip()
    return replace(prompt, text=f"{text}\n\n{instruction(fmt)}" if text else instruction(fmt))


_FENCE = re.compile(r"^```[ \t]*(?:json[a-z0-9]*)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.I)
_INNER_FENCE = re.compile(r"```[ \t]*(?:json[a-z0-9]*)?[ \t]*\n(.*?)\n?```", re.DOTALL | re.I)


def strip_fence(text: str) -> str:
    """The JSON of an answer: without the Markdown fence Claude may wrap it in (the whole
    answer, or the only fenced block of an answer with words around it)."""
    text = text.strip()
    whole = _FENCE.match(text)
    if whole:
        return whole.group(1).strip()
    if not text.startswith(("{", "[")):
        blocks = _INNER_FENCE.findall(text)
        if len(blocks) == 1:
            return str(blocks[0]).strip()
    return text


def _embedded(text: str) -> str | None:
    """The one JSON object or array in an answer with words around it, else None."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    rest = text[end:]
    return None if "{" in rest or "[" in rest else text[start:end]


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"


def check_answer(fmt: ResponseFormat, text: str) -> str:
    """The answer's JSON text if it is what ``fmt`` asks for, else :class:`OutputInvalid`."""
    candidate = strip_fence(text)
    if not candidate:
        raise OutputInvalid("the reply is empty, not JSON", "empty")
    try:
        value = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        inner = _embedded(candidate)  # "Here it is: {...}"
        if inner is None:
            detail = (
                f"{exc.msg} at line {exc.lineno} column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else type(exc).__name__
            )
            raise OutputInvalid(f"it is not valid JSON ({detail})", "not JSON") from None
        candidate, value = inner, json.loads(inner)
    if fmt.type == "json_object":
        if not isinstance(value, dict):
            kind = type(value).__name__ if value is not None else "null"
            names = {"list": "an array", "str": "a string", "int": "a number",
                     "float": "a number", "bool": "a boolean"}
            raise OutputInvalid(
                f"it is {names.get(kind, kind)}, not a JSON object", "not an object"
            )
        return candidate
    assert fmt.schema is not None
    error = _schema_error(fmt.schema, value)
    if error is not None:
        raise error
    return candidate


def _schema_error(schema: Mapping[str, Any], value: Any) -> OutputInvalid | None:
    from jsonschema.exceptions import best_match
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    # An explicit (empty) registry: jsonschema's default one fetches remote $refs over HTTP.
    validator = _validator_class(schema)(schema, registry=Registry())
    try:
        errors = list(validator.iter_errors(value))
        error = best_match(errors)
    except Unresolvable as exc:
        return OutputInvalid(f"the schema's reference {exc.ref!r} cannot be resolved",
                             "unresolvable $ref")
    except RecursionError:
        return _Endless("the schema refers to itself without end", "endless $ref")
    if error is None:
        return None
    at = error.json_path
    more = f"; {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return OutputInvalid(
        _short(f"at {at}: {error.message} (the schema's {error.validator!r} rule){more}"),
        f"{error.validator} at {at}",
    )


@dataclass(frozen=True)
class StructuredTurns:
    """An engine whose turns answer with checked JSON (one request's ``response_format``).

    ``turn`` asks for the format, checks the answer, asks once more in the same
    conversation if it fails, and ends with the JSON text as the :class:`TurnResult` text
    (usage and cost of both turns added up) or with ``TurnError(INVALID_OUTPUT)``.
    Text deltas are held back: nothing reaches the client before it is checked.
    """

    engine: TurnRunner
    format: ResponseFormat

    async def turn(
        self, key: str, prompt: Prompt, options: TurnOptions | None = None
    ) -> AsyncIterator[Event]:
        # the answer is the final step's text, and no text goes out before it is checked
        options = replace(options or TurnOptions(), mode=StreamMode.FINAL)
        spent: TurnResult | None = None
        attempt_prompt = with_instruction(prompt, self.format)
        for attempt in (1, 2):
            result: TurnResult | None = None
            events = self.engine.turn(key, attempt_prompt, options)
            try:
                async for event in events:
                    if isinstance(event, TurnResult):
                        result = event
                    elif not isinstance(event, TextDelta):
                        yield event  # progress, tool calls, errors
            finally:  # in this task, also when cancelled (the engine's iterator needs it)
                aclose: Any = getattr(events, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            if result is None:
                return  # the turn ended with an error or client tool calls (yielded)
            total = result if spent is None else _added(spent, result)
            try:
                answer = check_answer(self.format, result.text)
            except OutputInvalid as exc:
                log.info("%s: answer %d did not match response_format (%s)",
                         key, attempt, exc.where)
                if attempt == 2:
                    yield TurnError(
                        ErrorKind.INVALID_OUTPUT,
                        f"Claude's answer is not {self.format.what}, even after being asked "
                        f"again: {exc.problem}",
                    )
                    return
                spent = total
                yield Notice("retrying", "the answer did not match response_format; asking "
                             "again", {"problem": exc.problem})
                attempt_prompt = Prompt(text=retry_prompt(self.format, exc.problem))
                continue
            yield replace(total, text=answer)
            return


def _added(first: TurnResult, second: TurnResult) -> TurnResult:
    return replace(
        second,
        usage=first.usage + second.usage,
        cost_usd=first.cost_usd + second.cost_usd,
        duration_ms=first.duration_ms + second.duration_ms,
        duration_api_ms=first.duration_api_ms + second.duration_api_ms,
        num_turns=first.num_turns + second.num_turns,
    )
