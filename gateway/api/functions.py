"""OpenAI function calling <-> the engine's client tools. Pure functions, no I/O.

* The request's ``tools`` and ``tool_choice`` are validated by :mod:`gateway.api.chat_wire`
  (``tool_mode`` too; the ``X-Tool-Mode`` header is read in :mod:`gateway.api.exchange`).
* :func:`tool_results` turns this turn's ``role: "tool"`` messages into engine results.
* :func:`calls_fingerprint_text` is what the conversation rules hash for a reply that was a
  set of tool calls (ids left out: clients rewrite them).
* :func:`openai_tool_calls` / :func:`tool_call_deltas` render the engine's calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.engine.client_tools import ToolCall, ToolResult


def _canonical_arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return " ".join(arguments.split())


def calls_fingerprint_text(text: str, calls: Sequence[tuple[str, str]]) -> str:
    """The text the conversation rules hash for a reply: its text plus each call's name and
    arguments in canonical JSON. Call ids are left out, because clients rewrite them."""
    if not calls:
        return text
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
