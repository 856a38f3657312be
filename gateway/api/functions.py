"""OpenAI function calling <-> the engine's client tools. Pure functions, no I/O.

* :func:`parse_tools` / :func:`parse_tool_choice` / :func:`parse_tool_mode` validate the
  request's ``tools`` (and the legacy ``functions``), ``tool_choice`` (and ``function_call``)
  and the gateway's own ``tool_mode``; every problem is a 400 naming the field.
* :func:`tool_results` turns this turn's ``role: "tool"`` messages into engine results.
* :func:`calls_fingerprint_text` is what the conversation rules hash for a reply that was a
  set of tool calls (ids left out: clients rewrite them).
* :func:`openai_tool_calls` / :func:`tool_call_deltas` render the engine's calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.api.fields import invalid, parse_choice
from gateway.engine.client_tools import NAME_RE, ClientTool, ToolCall, ToolMode, ToolResult

CHOICES = ("auto", "none", "required")



def _function(raw: object, path: str) -> ClientTool:
    if not isinstance(raw, dict):
        raise invalid(path, "must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid(
            f"{path}.name", f"must be 1-64 letters, digits, '_' or '-' (got {name!r})"
        )
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise invalid(f"{path}.description", "must be a string")
    parameters = raw.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise invalid(f"{path}.parameters", "must be a JSON Schema object")
    if parameters.get("type", "object") != "object":
        raise invalid(f"{path}.parameters.type", "must be 'object' (tool input is an object)")
    return ClientTool(name, description, parameters)


def parse_tools(body: Mapping[str, Any]) -> tuple[ClientTool, ...]:
    """``tools`` (``type: "function"`` entries) or the legacy ``functions`` list."""
    tools: list[ClientTool] = []
    raw = body.get("tools")
    if raw is not None:
        if not isinstance(raw, list):
            raise invalid("tools", "must be an array")
        for i, entry in enumerate(raw):
            path = f"tools[{i}]"
            if not isinstance(entry, dict):
                raise invalid(path, "must be an object")
            if entry.get("type", "function") != "function":
                raise invalid(f"{path}.type", f"{entry.get('type')!r} is not supported; only"
                               " 'function' tools")
            tools.append(_function(entry.get("function"), f"{path}.function"))
    legacy = body.get("functions")
    if legacy is not None:
        if not isinstance(legacy, list):
            raise invalid("functions", "must be an array")
        tools.extend(_function(f, f"functions[{i}]") for i, f in enumerate(legacy))
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise invalid("tools", f"the function name {tool.name!r} appears twice")
        seen.add(tool.name)
    return tuple(tools)


def parse_tool_choice(body: Mapping[str, Any], tools: Sequence[ClientTool]) -> str:
    """``auto``, ``none``, ``required`` or the name of one of ``tools``."""
    path = "tool_choice" if body.get("tool_choice") is not None else "function_call"
    raw = body.get(path)
    if raw is None:
        return "auto"
    if isinstance(raw, str):
        choice = raw.strip().lower()
        if choice not in CHOICES:
            raise invalid(path, f"must be one of {', '.join(CHOICES)} or a function (got {raw!r})")
        if choice == "required" and not tools:
            raise invalid(path, "'required' needs at least one tool in tools")
        return choice
    if not isinstance(raw, dict):
        raise invalid(path, "must be a string or an object")
    fn = raw.get("function") if path == "tool_choice" else raw
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise invalid(f"{path}.function.name" if path == "tool_choice" else f"{path}.name",
                       "is required")
    if name not in {t.name for t in tools}:
        raise invalid(path, f"names the function {name!r}, which is not in tools")
    return name


def parse_tool_mode(value: object, path: str) -> ToolMode:
    return parse_choice(value, ToolMode, path)


def _canonical_arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return " ".join(arguments.split())


def calls_fingerprint_text(text: str, calls: Sequence[tuple[str, str]]) -> str:
    """The text the conversation rules hash for a reply: its text plus each call's name and
    arguments in canonical JSON. Call ids are left out, because clients rewrite them."""
    parts = [text] + [f"[tool call {name} {_canonical_arguments(args)}]" for name, args in calls]
    return "\n".join(p for p in parts if p)


def tool_results(messages: Sequence[Any]) -> tuple[ToolResult, ...]:
    """``role: "tool"`` (and legacy ``function``) messages as results for the engine."""
    return tuple(
        ToolResult(m.tool_call_id or m.name or "", m.text)
        for m in messages
        if m.role in ("tool", "function")
    )


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """``message.tool_calls`` of a non-streamed completion."""
    return [
        {"id": c.call_id, "type": "function",
         "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def tool_call_deltas(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Streamed ``delta.tool_calls``: per call, one delta with id and name, one with the
    arguments (the shape OpenAI sends and the clients' accumulators expect)."""
    deltas: list[dict[str, Any]] = []
    for i, c in enumerate(calls):
        deltas.append({"tool_calls": [{
            "index": i, "id": c.call_id, "type": "function",
            "function": {"name": c.name, "arguments": ""},
        }]})
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": c.arguments}}]})
    return deltas
