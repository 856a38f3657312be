"""OpenAI Chat Completions wire format <-> engine types. Pure functions, no I/O.

* :class:`Message` / :class:`ChatRequest`: a request in neutral form (validated and built
  by :mod:`gateway.api.chat_wire`); :func:`parse_data_url` decodes an image.
* :func:`split_conversation` separates instructions (``system``/``developer``), the history
  the client already has answers for, and the new messages of this turn.
* :func:`build_prompt` renders the new messages (and, for a fresh session, the earlier history
  as a delimited transcript) into one :class:`Prompt`.
* :class:`ChunkFactory` builds ``chat.completion.chunk`` / ``chat.completion`` bodies;
  :func:`usage_to_openai` maps token counts; :func:`http_error` maps an :class:`ErrorKind`
  to an HTTP status and an OpenAI error body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.api.fields import invalid
from gateway.api.functions import calls_fingerprint_text, openai_tool_calls, tool_results
from gateway.api.normalize import normalized_digest
from gateway.api.structured import ResponseFormat
from gateway.engine.client_tools import ClientTool, ToolMode
from gateway.engine.client_tools import ToolCall as EngineToolCall
from gateway.engine.events import (
    Commentary,
    Event,
    ImagePart,
    Prompt,
    StreamMode,
    TextDelta,
    ToolStarted,
    Usage,
)
from gateway.errors import ErrorKind, GatewayError

# --------------------------------------------------------------------------- request

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class ToolCall:
    """An OpenAI ``tool_calls[]`` entry of an assistant message (kept for the transcript)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One request message, normalised: text parts joined, images decoded from data URLs."""

    role: str
    text: str
    images: tuple[ImagePart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    index: int = 0  # position in the request's ``messages``


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a Chat Completions request the gateway acts on."""

    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False
    stream_mode: StreamMode | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
    #: the client's functions (OpenAI function calling) and how to use them
    tools: tuple[ClientTool, ...] = ()
    tool_choice: str = "auto"
    tool_mode: ToolMode | None = None  # None: the header or the configured default decides
    #: ``json_object`` / ``json_schema`` (None: plain text), see gateway/api/structured.py
    response_format: ResponseFormat | None = None


_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*);base64,(.*)$", re.DOTALL)


def _sniff_image(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def parse_data_url(url: str, path: str) -> ImagePart:
    """A ``data:image/...;base64,...`` URL as an :class:`ImagePart`.

    The media type is taken from the image bytes when they disagree with the URL (the
    Anthropic API rejects a mismatch); remote ``http(s)`` URLs are refused.
    """
    if url.startswith(("http://", "https://")):
        raise invalid(path, "remote image URLs are not fetched; send the image as a data: URL")
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid(path, "must be a data: URL such as data:image/png;base64,<data>")
    declared = match.group(1).lower()
    data = re.sub(r"\s+", "", match.group(3))
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(path, "the base64 data is invalid") from None
    if not raw:
        raise invalid(path, "the image is empty")
    media_type = _sniff_image(raw[:16]) or ("image/jpeg" if declared == "image/jpg" else declared)
    if media_type not in IMAGE_TYPES:
        raise invalid(path, f"{declared} is not supported; use PNG, JPEG, GIF or WebP")
    return ImagePart(media_type, data)


# --------------------------------------------------------------------------- conversation split


@dataclass(frozen=True)
class Conversation:
    """A request's messages, split at the last assistant message."""

    system: str | None  # system + developer messages, joined with blank lines
    history: tuple[Message, ...]  # up to and including the last assistant message
    new: tuple[Message, ...]  # after the last assistant message: this turn's input
    messages: tuple[Message, ...] = field(default=(), repr=False)  # all non-system messages

    @property
    def last_reply(self) -> Message | None:
        """The last assistant message, if the client sent one."""
        return self.history[-1] if self.history else None

    @property
    def first_user(self) -> Message | None:
        return next((m for m in self.messages if m.role == "user"), None)


def split_conversation(messages: Sequence[Message]) -> Conversation:
    """Split at the last ``assistant`` message. Raises 400 when nothing follows it."""
    instructions = [
        m.text for m in messages if m.role in ("system", "developer") and m.text.strip()
    ]
    chat = tuple(m for m in messages if m.role not in ("system", "developer"))
    if not chat:
        raise invalid("messages", "must contain at least one user message")
    last_assistant = max((i for i, m in enumerate(chat) if m.role == "assistant"), default=-1)
    history, new = chat[: last_assistant + 1], chat[last_assistant + 1 :]
    if not new:
        raise invalid(
            f"messages[{chat[-1].index}]",
            "the conversation ends with an assistant message; end it with a user (or tool) "
            "message, continuing a partial assistant reply is not supported",
        )
    return Conversation(
        system="\n\n".join(instructions) if instructions else None,
        history=history,
        new=new,
        messages=chat,
    )


# --------------------------------------------------------------------------- prompt rendering

HISTORY_OPEN = "<conversation_history>"
HISTORY_CLOSE = "</conversation_history>"
HISTORY_PREFACE = (
    "The earlier part of this conversation, as the client recorded it, is between the "
    "conversation_history tags. Treat it as what was said before; answer the new message(s) "
    "after it."
)


def _tool_names(messages: Sequence[Message]) -> dict[str, str]:
    return {c.id: c.name for m in messages for c in m.tool_calls if c.id}


def _tool_label(message: Message, names: Mapping[str, str]) -> str:
    name = message.name or names.get(message.tool_call_id or "")
    label = f"[tool result: {name}" if name else "[tool result"
    if message.tool_call_id:
        label += f" (call {message.tool_call_id})"
    return label + "]"


def _render_new(message: Message, names: Mapping[str, str], marker: int | None) -> str:
    text = message.text
    if marker is not None and message.images:
        marks = " ".join(f"[image {marker + k}]" for k in range(len(message.images)))
        text = f"{marks}\n{text}" if text else marks
    if message.role in ("tool", "function"):
        return f"{_tool_label(message, names)}\n{text}"
    return text


def _render_history(message: Message, names: Mapping[str, str], marker: int) -> str:
    body = _render_new(message, names, marker)
    if message.role in ("tool", "function"):
        return body  # already labelled
    who = f"[{message.role} ({message.name})]" if message.name else f"[{message.role}]"
    calls = "".join(f"\n[tool call: {c.name}] {c.arguments}" for c in message.tool_calls)
    return f"{who}\n{body}{calls}" if body else f"{who}{calls}"


def _escape(text: str) -> str:
    return text.replace(HISTORY_CLOSE, "</conversation_history >")


def build_prompt(conversation: Conversation, *, seed: bool, results: bool = False) -> Prompt:
    """This turn's :class:`Prompt`.

    Without ``seed``: the new messages only (texts joined with blank lines, tool results as
    labelled text, images as images). With ``seed``: the earlier history first, as a delimited
    transcript, then the new messages; images are numbered so the text can refer to them.
    With ``results`` (function calling on), the new tool messages become the prompt's
    ``tool_results``, which resume the turn that is waiting for them.
    """
    names = _tool_names(conversation.messages)
    seed = seed and bool(conversation.history)
    images: list[ImagePart] = []
    parts: list[str] = []
    if seed:
        lines = []
        for m in conversation.history:
            lines.append(_escape(_render_history(m, names, len(images) + 1)))
            images.extend(m.images)
        parts.append(
            f"{HISTORY_PREFACE}\n{HISTORY_OPEN}\n" + "\n\n".join(lines) + f"\n{HISTORY_CLOSE}"
        )
    new = conversation.new
    if results:
        new = tuple(m for m in new if m.role not in ("tool", "function"))
    for m in new:
        text = _render_new(m, names, len(images) + 1 if seed else None)
        images.extend(m.images)
        if text.strip():
            parts.append(text)
    return Prompt(
        text="\n\n".join(parts),
        images=tuple(images),
        tool_results=tool_results(conversation.new) if results else (),
    )


# --------------------------------------------------------------------------- fingerprints

def fingerprint(text: str, images: Sequence[ImagePart] = ()) -> str:
    """sha256 of the normalised text (and image data): what the store keeps, never the text."""
    normalized, text_digest = normalized_digest(text)  # memoised for a resent long text
    if not images:
        return text_digest  # the same sha256 as below with no images
    h = hashlib.sha256(normalized.encode("utf-8"))
    for image in images:
        h.update(b"\x00image:" + hashlib.sha256(image.data_b64.encode("ascii")).digest())
    return h.hexdigest()


def reply_text(message: Message) -> str:
    """The text an assistant message is fingerprinted by: its words and its tool calls
    (:func:`~gateway.api.functions.calls_fingerprint_text`, ids left out: what the gateway
    stores for the reply it sent)."""
    return calls_fingerprint_text(message.text, [(c.name, c.arguments) for c in message.tool_calls])


def message_fingerprint(message: Message) -> str:
    """A user or tool message by its text and images; an assistant message by its
    :func:`reply_text`."""
    if message.role == "assistant":
        return fingerprint(reply_text(message))
    return fingerprint(message.text, message.images)


# --------------------------------------------------------------------------- events -> output


def render_event(event: Event, mode: StreamMode) -> str | None:
    """The answer text an event adds to the response, or ``None``.

    Commentary is progress, not answer; in ``verbose`` mode tool calls are shown as lines.
    """
    if isinstance(event, TextDelta):
        return event.text or None
    if isinstance(event, ToolStarted) and mode is StreamMode.VERBOSE:
        return f"\n[tool] {event.summary or event.name}\n"
    if isinstance(event, Commentary):
        return None
    return None


def finish_reason(stop_reason: str | None) -> str:
    if stop_reason in ("max_tokens", "model_context_window_exceeded"):
        return "length"
    if stop_reason == "refusal":
        return "content_filter"
    return "stop"


def usage_to_openai(usage: Usage) -> dict[str, Any]:
    prompt = usage.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


@dataclass(frozen=True)
class ChunkFactory:
    """Builds the bodies of one completion; every chunk carries the same id/created/model."""

    id: str
    created: int
    model: str

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def keepalive(self) -> dict[str, Any]:
        # The exact shape measured to reset OpenClaw's idle timer (SSE comments do not).
        return self.chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text})

    def finish(self, reason: str) -> dict[str, Any]:
        return self.chunk({}, reason)

    def usage(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_to_openai(usage),
        }

    def completion(
        self, text: str, reason: str, usage: Usage, tool_calls: Sequence[EngineToolCall] = ()
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool_calls:
            message["content"] = text or None
            message["tool_calls"] = openai_tool_calls(tool_calls)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reason,
                    "logprobs": None,
                }
            ],
            "usage": usage_to_openai(usage),
        }


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return (
        b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


SSE_DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- errors

NOT_LOGGED_IN_HINT = (
    "The Claude Code CLI on the gateway host is not logged in. The gateway owner must run "
    "`claude` on that host and use /login (with the Claude Max account), then retry."
)


@dataclass(frozen=True)
class HttpError:
    """An error as the API reports it: status, OpenAI ``type``/``code``, Retry-After."""

    status: int
    type: str
    code: str
    message: str
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": None}
        }

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


# kind -> (status, type, code, default Retry-After seconds)
ERROR_TABLE: dict[ErrorKind, tuple[int, str, str, int | None]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error", "invalid_request", None),
    ErrorKind.UNKNOWN_MODEL: (400, "invalid_request_error", "model_not_found", None),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded", 60),
    ErrorKind.BUSY: (503, "server_error", "conversation_busy", 5),
    ErrorKind.OVERLOADED: (503, "server_error", "overloaded", 10),
    ErrorKind.CLI_MISSING: (503, "server_error", "cli_unavailable", None),
    ErrorKind.NOT_LOGGED_IN: (503, "server_error", "cli_not_logged_in", None),
    ErrorKind.SHUTDOWN: (503, "server_error", "shutting_down", 5),
    ErrorKind.AUTHENTICATION: (502, "upstream_error", "upstream_authentication_failed", None),
    ErrorKind.API_ERROR: (502, "upstream_error", "upstream_error", None),
    ErrorKind.CRASHED: (502, "server_error", "cli_crashed", None),
    ErrorKind.TIMEOUT: (504, "server_error", "timeout", None),
    ErrorKind.INTERRUPTED: (409, "server_error", "interrupted", None),
    ErrorKind.CONFIG: (500, "server_error", "configuration_error", None),
    ErrorKind.BUDGET_EXCEEDED: (402, "insufficient_quota", "turn_budget_exceeded", None),
    # 4xx: not the gateway's fault, and clients (openai, OpenClaw) do not retry it on their own
    ErrorKind.INVALID_OUTPUT: (422, "invalid_response_error", "invalid_json_output", None),
    ErrorKind.UNAVAILABLE: (503, "server_error", "unavailable", None),
    # Telegram's or Discord's servers down: met by the bridges, listed so no kind lacks a row
    ErrorKind.PLATFORM_UNAVAILABLE: (503, "server_error", "platform_unavailable", 30),
    ErrorKind.INTERNAL: (500, "server_error", "internal_error", None),
}


def http_error(
    kind: ErrorKind,
    message: str,
    retry_after: float | None = None,
    upstream_status: int | None = None,
    code: str | None = None,
) -> HttpError:
    """The HTTP form of a typed failure: status, type and code from :data:`ERROR_TABLE`
    (``code``, a finer name of the case, replaces the table's code)."""
    status, etype, table_code, default_retry = ERROR_TABLE.get(
        kind, (500, "server_error", "internal_error", None)
    )
    code = code or table_code
    if kind is ErrorKind.API_ERROR and upstream_status is not None:
        if upstream_status in (400, 404, 413, 422):
            # The upstream refused the request itself (e.g. prompt too long): retrying is futile.
            status, etype, code = 400, "invalid_request_error", "upstream_invalid_request"
        elif upstream_status == 429:
            status, etype, code, default_retry = 429, "rate_limit_error", "rate_limit_exceeded", 60
        elif upstream_status in (503, 529):
            status, etype, code, default_retry = 503, "server_error", "overloaded", 10
    if kind is ErrorKind.NOT_LOGGED_IN and "/login" not in message:
        message = f"{NOT_LOGGED_IN_HINT} ({message})" if message else NOT_LOGGED_IN_HINT
    retry: int | None = None
    if retry_after is not None and retry_after >= 0:
        retry = max(1, math.ceil(retry_after))
    elif default_retry is not None:
        retry = default_retry
    return HttpError(status, etype, code, message or code, retry)


def http_error_from_exc(exc: GatewayError) -> HttpError:
    return http_error(exc.kind, exc.message, exc.retry_after, exc.status, code=exc.code)


def request_error(
    status: int, code: str, message: str, retry_after: int | None = None
) -> HttpError:
    """Errors the HTTP layer itself raises (401, 404, 405, 413, 503 server_busy)."""
    etype = "invalid_request_error" if status < 500 else "server_error"
    return HttpError(status, etype, code, message, retry_after)
