"""Tools the engine offers Claude in chat sessions, as an in-process MCP server.

``send_file(path, caption, kind)`` lets Claude hand the person a file, a photo or a voice note
as native chat media. The frontend that owns the conversation registers a *file sink*
(:meth:`gateway.engine.Engine.register_file_sink`); the tool checks the path and awaits the
sink, so Claude learns whether the file really went out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from claude_agent_sdk import McpSdkServerConfig, create_sdk_mcp_server, tool

from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

SERVER_NAME = "gateway"
SEND_FILE = f"mcp__{SERVER_NAME}__send_file"
FileKind = Literal["file", "photo", "voice"]
KINDS: tuple[FileKind, ...] = ("file", "photo", "voice")


@dataclass(frozen=True)
class OutgoingFile:
    key: str  # the conversation the file belongs to
    path: Path  # resolved, inside an allowed folder, a regular file
    caption: str
    kind: FileKind


FileSink = Callable[[OutgoingFile], Awaitable[None]]


def resolve_outgoing(raw: str, *, cwd: Path, roots: Sequence[Path]) -> Path:
    """The real path of a file Claude wants to send, if it lies inside an allowed folder.

    Relative paths are taken from the session's working directory. Symlinks and ``..`` are
    resolved first, so neither can lead outside the allowed folders.
    """
    if not raw or "\x00" in raw:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "send_file needs a file path")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = cwd / candidate
    real = Path(os.path.realpath(candidate))
    allowed = [Path(os.path.realpath(r)) for r in roots]
    if not any(real == root or real.is_relative_to(root) for root in allowed):
        raise GatewayError(
            ErrorKind.INVALID_REQUEST,
            f"{raw} is outside the folders files may be sent from"
            f" ({', '.join(str(r) for r in allowed)})",
        )
    if not real.is_file():
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"{raw} is not a file")
    return real


def send_file_server(
    owner: Callable[[], str], sink: FileSink, *, cwd: Path, roots: Sequence[Path]
) -> McpSdkServerConfig:
    """The MCP server with ``send_file``; ``owner()`` names the conversation at call time
    (a pre-started process gets its conversation only when it is handed one)."""

    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "path of the file to send"},
            "caption": {"type": "string", "description": "short text shown with it"},
            "kind": {
                "type": "string",
                "enum": list(KINDS),
                "description": "photo for images to show inline, voice for an audio"
                " voice note (OGG/Opus), file for anything else (default)",
            },
        },
        "required": ["path"],
    }

    @tool(
        "send_file",
        "Send a file from this machine to the person you are chatting with, as a chat"
        " attachment (a document, an inline photo or a voice note). Use it whenever they ask"
        " for a file, a screenshot, a chart or an audio message.",
        schema,
    )
    async def send_file(args: dict[str, Any]) -> dict[str, Any]:
        kind = args.get("kind") or "file"
        key = owner()
        try:
            if kind not in KINDS:
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"kind must be one of {KINDS}")
            path = resolve_outgoing(str(args.get("path") or ""), cwd=cwd, roots=roots)
            await sink(OutgoingFile(key, path, str(args.get("caption") or ""), kind))
        except GatewayError as exc:
            return {"content": [{"type": "text", "text": f"not sent: {exc.message}"}],
                    "is_error": True}
        except Exception as exc:
            log.warning("send_file for %s failed: %s", key, exc)
            return {"content": [{"type": "text", "text": f"not sent: {exc}"}], "is_error": True}
        return {"content": [{"type": "text", "text": f"sent {path.name} as {kind}"}]}

    return create_sdk_mcp_server(SERVER_NAME, tools=[send_file])
