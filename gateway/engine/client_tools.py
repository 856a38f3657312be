"""Tools that belong to the *client* (OpenAI function calling), offered to Claude Code.

Each client tool becomes a tool of an in-process MCP server named ``client``. When Claude
calls one, the MCP handler waits on a :class:`CallBroker` future; the engine reports the
call to the frontend (:class:`~gateway.engine.events.ToolCallsRequested`) and the CLI turn
stays suspended inside the tool call until the client's next request brings the results.
Nothing is re-prompted: the model gets the results as real tool results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from claude_agent_sdk import McpSdkServerConfig, SdkMcpTool, create_sdk_mcp_server

from gateway.errors import TURN_INTERRUPTED

SERVER = "client"
PREFIX = f"mcp__{SERVER}__"
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolMode(StrEnum):
    """``agent``: Claude Code's own tools, client tools ignored. ``client``: only the client's
    tools. ``hybrid``: both."""

    AGENT = "agent"
    CLIENT = "client"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class ClientTool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    call_id: str  # the CLI's tool_use id; clients may rewrite it (see normalize_call_id)
    name: str  # the client's own tool name
    arguments: str  # JSON text


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool = False


def normalize_call_id(call_id: str) -> str:
    """Ids compared without punctuation or case: OpenClaw strips non-alphanumerics."""
    return re.sub(r"[^0-9a-z]", "", call_id.lower())


def tools_fingerprint(tools: tuple[ClientTool, ...], mode: ToolMode) -> str:
    """Processes are built for one tool set; a different set needs another process."""
    if mode is ToolMode.AGENT or not tools:
        return ""
    data = json.dumps([mode.value, [[t.name, t.description, t.parameters] for t in tools]],
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


@dataclass(eq=False)
class _Pending:
    name: str
    args: str  # canonical JSON
    call_id: str | None = None
    handled: bool = False  # the CLI called the MCP handler for it
    future: asyncio.Future[ToolResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class CallBroker:
    """Pairs the CLI's tool_use blocks (which carry ids) with MCP handler calls (which
    don't), and hands each handler the result the client sends for that id."""

    def __init__(self) -> None:
        self._calls: list[_Pending] = []

    def announce(self, call_id: str, name: str, arguments: Any) -> None:
        """A tool_use block for a client tool was seen in the stream."""
        args = _canonical(arguments)
        for p in self._calls:  # the handler may have run first
            if p.call_id is None and p.name == name and p.args == args:
                p.call_id = call_id
                return
        self._calls.append(_Pending(name, args, call_id))

    async def handle(self, name: str, arguments: Any) -> ToolResult:
        """Called by the MCP handler; returns when the client's result is known."""
        args = _canonical(arguments)
        match = next((p for p in self._calls
                      if not p.handled and p.name == name and p.args == args), None)
        if match is None:
            match = next((p for p in self._calls if not p.handled and p.name == name), None)
        if match is None:
            match = _Pending(name, args)
            self._calls.append(match)
        match.handled = True
        try:
            return await match.future
        finally:
            self._forget_done()

    def resolve(self, results: tuple[ToolResult, ...]) -> list[str]:
        """Give each waiting call its result; returns the ids that matched no call."""
        waiting = {normalize_call_id(p.call_id): p for p in self._calls
                   if p.call_id and not p.future.done()}
        unknown = []
        for result in results:
            pending = waiting.pop(normalize_call_id(result.call_id), None)
            if pending is None:
                unknown.append(result.call_id)
            else:
                pending.future.set_result(result)
        for pending in waiting.values():  # the client answered some calls only
            pending.future.set_result(
                ToolResult(pending.call_id or "", "The client returned no result.", True)
            )
        self._forget_done()
        return unknown

    def fail_all(self, message: str) -> None:
        for p in self._calls:
            if not p.future.done():
                p.future.set_result(ToolResult(p.call_id or "", message, True))
        self._forget_done()

    def reset(self) -> None:
        """A new turn starts: calls of an earlier (interrupted) turn can never be handled."""
        self.fail_all(TURN_INTERRUPTED)
        self._calls = []

    def _forget_done(self) -> None:
        # A result may come before the CLI calls the handler: keep it until then.
        self._calls = [p for p in self._calls if not (p.future.done() and p.handled)]


def client_tools_server(tools: tuple[ClientTool, ...], broker: CallBroker) -> dict[str, Any]:
    """The ``client`` MCP server; its tools are always loaded (never deferred)."""

    def make(t: ClientTool) -> SdkMcpTool[Any]:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            result = await broker.handle(t.name, args)
            reply: dict[str, Any] = {"content": [{"type": "text", "text": result.content}]}
            if result.is_error:
                reply["is_error"] = True
            return reply

        schema = t.parameters or {"type": "object", "properties": {}}
        return SdkMcpTool(name=t.name, description=t.description or t.name,
                          input_schema=schema, handler=handler)

    server: McpSdkServerConfig = create_sdk_mcp_server(SERVER, tools=[make(t) for t in tools])
    return {**server, "alwaysLoad": True}
