"""The Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) on the
gateway's warm sessions: the official ``anthropic`` SDKs, Claude Code itself
(``ANTHROPIC_BASE_URL``) and OpenClaw's ``anthropic-messages`` provider.

This module only translates. A request (:mod:`gateway.api.messages_wire`) becomes the
neutral conversation of :mod:`gateway.api.convert` and runs through
:mod:`gateway.api.exchange`, so the conversation rules, client tools (``tools``,
``tool_choice``, ``X-Tool-Mode``) and disconnect handling are those of every dialect; the
events come back as a ``message`` object or as Anthropic's event stream (``message_start``,
``ping``, ``content_block_start``/``delta``/``stop`` with ``text_delta`` and
``input_json_delta``, ``message_delta`` with the stop reason and usage, ``message_stop``;
``error`` when a started stream fails; a ``ping`` every ``server.keepalive_seconds`` of
silence).

* ``system`` (string or text blocks) and ``role: "system"`` messages (Claude Code's
  mid-conversation system text) become the appended system text; Claude Code's
  ``x-anthropic-billing-header`` block is dropped (it changes with every CLI version and
  would restart the warm process).
* Images: base64 only (a ``url`` or ``file`` source is a 400 that says to send base64).
  Documents: a base64 PDF is saved in the workspace (``inbox/api/<sha256>.pdf``, so a
  resent one is the same file) and named to Claude, which reads it with its Read tool;
  ``text`` and ``content`` sources are passed as text.
* ``tool_use`` / ``tool_result`` blocks are the neutral tool calls and tool messages;
  ``tool_choice`` ``auto``/``any``/``tool``/``none`` maps to auto/required/<name>/none.
* ``stop_sequences``: the answer is cut at the first one (``stop_reason: "stop_sequence"``);
  the CLI has no such switch, so the turn itself runs to its end.
* ``metadata.user_id`` is a conversation key candidate (rule 1, like Chat Completions'
  ``user``); ``X-Conversation-Id`` comes first.
* Errors are ``{"type": "error", "error": {"type": …, "message": …}}`` with the statuses and
  ``Retry-After`` of :data:`gateway.api.convert.ERROR_TABLE`, also for the refusals of the
  guard and the auth middleware on these paths and for any request with an
  ``anthropic-version`` header; ``GET /v1/models`` with that header answers in Anthropic's
  shape.
* ``count_tokens`` is an estimate (about 4 characters a token for text, 1,600 tokens an
  image, 2,000 a PDF page) of the client's content only, not of Claude Code's own prompt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from gateway.api.access import STREAM_ERROR
from gateway.api.convert import (
    IMAGE_TYPES,
    HttpError,
    Message,
    ToolCall,
    http_error,
    parse_data_url,
    render_event,
    request_error,
    split_conversation,
)
from gateway.api.exchange import (
    ENGINE,
    STATE,
    Exchange,
    KeyCandidates,
    TurnRequest,
    header_id,
    limited,
    read_json,
    resolve_model,
    run_exchange,
    stream_mode,
    tool_mode,
)
from gateway.api.fields import invalid
from gateway.api.http import ApiError
from gateway.api.messages_wire import (
    AnthropicContentBlock,
    AnthropicDeltaUsage,
    AnthropicError,
    AnthropicErrorDetail,
    AnthropicInputJsonDelta,
    AnthropicMessage,
    AnthropicMessageDelta,
    AnthropicModel,
    AnthropicModelList,
    AnthropicStreamEvent,
    AnthropicTextBlock,
    AnthropicTextDelta,
    AnthropicTokenCount,
    AnthropicToolUseBlock,
    AnthropicUsage,
    Base64Source,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    ContentSource,
    CountTokensRequest,
    DocumentBlockIn,
    ErrorType,
    ImageBlockIn,
    MessageDeltaEvent,
    MessageIn,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    PlainTextSource,
    StopReason,
    TextBlockIn,
    ToolChoiceIn,
    ToolIn,
    ToolResultBlockIn,
    ToolUseBlockIn,
    parse_count_tokens_request,
    parse_messages_request,
)
from gateway.api.openapi import (
    JSON,
    RETRY_AFTER,
    TURN_PARAMS,
    Operation,
    Param,
    Reply,
    error_reply,
)
from gateway.api.turn import answer_text
from gateway.engine.client_tools import NAME_RE, ClientTool
from gateway.engine.client_tools import ToolCall as EngineToolCall
from gateway.engine.events import (
    ImagePart,
    ToolCallsRequested,
    TurnError,
    TurnResult,
    Usage,
)

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "anthropic-version"
#: Claude Code's first system block: its version and entry point, not instructions
BILLING_HEADER = "x-anthropic-billing-header:"
#: where base64 PDFs are saved for Claude, under the workspace
INBOX = ("inbox", "api")
PDF = "application/pdf"
STOP_REASONS: frozenset[str] = frozenset(
    ("end_turn", "max_tokens", "stop_sequence", "pause_turn", "refusal",
     "model_context_window_exceeded")
)

# --------------------------------------------------------------------------- errors

#: HTTP status -> Anthropic error type (the SDKs pick their exception by the status)
_ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "api_error",  # interrupted: not the request's fault
    413: "request_too_large",
    421: "permission_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


#: codes that say no more than the Anthropic error type does
_PLAIN_CODES = frozenset(("invalid_request", "invalid_api_key", "not_found", "request_too_large"))


def anthropic_error(error: HttpError) -> AnthropicError:
    etype: ErrorType = _ERROR_TYPES.get(
        error.status, "invalid_request_error" if error.status < 500 else "api_error")
    # the gateway's code (e.g. conversation_busy) is the stable name: keep it in the text
    message = error.message
    if error.code not in _PLAIN_CODES and error.code not in message:
        message = f"{message} ({error.code})"
    return AnthropicError(error=AnthropicErrorDetail(type=etype, message=message))


def error_body(request: web.Request, error: HttpError) -> dict[str, Any] | None:
    """:data:`gateway.api.http.ERROR_BODIES` entry: Anthropic's shape on this dialect's
    paths and for every request of an Anthropic client (``anthropic-version``)."""
    if request.path.startswith("/v1/messages") or ANTHROPIC_VERSION in request.headers:
        return anthropic_error(error).model_dump()
    return None


def _error_response(error: HttpError, headers: dict[str, str]) -> web.Response:
    return web.json_response(anthropic_error(error).model_dump(), status=error.status,
                             headers={**error.headers(), **headers})


# --------------------------------------------------------------------------- request -> neutral


@dataclass(frozen=True)
class SavedFile:
    """A document to write into the workspace before the turn (content-addressed)."""

    path: Path
    data: bytes


class _Converter:
    """Turns the request's messages into neutral ones, collecting the files to save."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.files: dict[Path, bytes] = {}

    def messages(self, body: MessagesRequest) -> list[Message]:
        out: list[Message] = []
        system = _system_text(body.system)
        if system:
            out.append(Message(role="system", text=system, index=-1))
        for i, message in enumerate(body.messages):
            out.extend(self.message(message, i))
        return out

    def message(self, message: MessageIn, i: int) -> list[Message]:
        path = f"messages[{i}].content"
        content = message.content
        if message.role == "system":
            text = content if isinstance(content, str) else "\n".join(
                b.text for b in content if isinstance(b, TextBlockIn))
            return [Message(role="system", text=text, index=i)]
        if isinstance(content, str):
            return [Message(role=message.role, text=content, index=i)]
        if message.role == "assistant":
            texts = [b.text for b in content if isinstance(b, TextBlockIn)]
            calls = tuple(
                ToolCall(b.id, b.name, json.dumps(b.input))
                for b in content if isinstance(b, ToolUseBlockIn)
            )
            for j, block in enumerate(content):
                if isinstance(block, ImageBlockIn | DocumentBlockIn | ToolResultBlockIn):
                    raise invalid(f"{path}[{j}].type",
                                  f"{block.type!r} blocks are only accepted in user messages")
            return [Message(role="assistant", text="\n".join(texts), tool_calls=calls, index=i)]
        out: list[Message] = []
        texts = []
        images: list[ImagePart] = []
        for j, block in enumerate(content):
            bpath = f"{path}[{j}]"
            if isinstance(block, ToolResultBlockIn):
                out.append(self.tool_result(block, bpath, i))
            elif isinstance(block, ToolUseBlockIn):
                raise invalid(f"{bpath}.type", "'tool_use' blocks are only accepted in "
                              "assistant messages")
            else:
                self.part(block, bpath, texts, images)
        if texts or images or not out:
            out.append(Message(role="user", text="\n".join(texts), images=tuple(images),
                               index=i))
        return out

    def part(self, block: Any, path: str, texts: list[str], images: list[ImagePart]) -> None:
        """A text, image or document block of user content (thinking blocks are dropped)."""
        if isinstance(block, TextBlockIn):
            texts.append(block.text)
        elif isinstance(block, ImageBlockIn):
            images.append(_image(block, path))
        elif isinstance(block, DocumentBlockIn):
            texts.append(self.document(block, path))

    def tool_result(self, block: ToolResultBlockIn, path: str, i: int) -> Message:
        texts: list[str] = []
        images: list[ImagePart] = []
        if isinstance(block.content, str):
            texts.append(block.content)
        elif block.content is not None:
            for k, part in enumerate(block.content):
                self.part(part, f"{path}.content[{k}]", texts, images)
        text = "\n".join(texts)
        if block.is_error:
            text = f"The tool reported an error:\n{text}"
        return Message(role="tool", text=text, images=tuple(images),
                       tool_call_id=block.tool_use_id, index=i)

    def document(self, block: DocumentBlockIn, path: str) -> str:
        source = block.source
        title = block.title or "document"
        context = f"\n{block.context}" if block.context else ""
        if isinstance(source, PlainTextSource):
            return f"[document: {title}]\n{source.data}{context}"
        if isinstance(source, ContentSource):
            text = source.content if isinstance(source.content, str) else "\n".join(
                b.text for b in source.content)
            return f"[document: {title}]\n{text}{context}"
        if not isinstance(source, Base64Source):
            raise invalid(f"{path}.source", f"{source.type!r} document sources are not "
                          "fetched; send the PDF as base64 ({\"type\": \"base64\", "
                          "\"media_type\": \"application/pdf\", \"data\": \"…\"})")
        if source.media_type != PDF:
            raise invalid(f"{path}.source.media_type",
                          f"{source.media_type!r} is not supported as base64; send a PDF "
                          "(application/pdf), or text as a 'text' source")
        data = _b64(source.data, f"{path}.source.data")
        if not data.startswith(b"%PDF"):
            raise invalid(f"{path}.source.data", "is not a PDF (it does not start with %PDF)")
        file = self.inbox / f"{hashlib.sha256(data).hexdigest()[:32]}.pdf"
        self.files[file] = data
        return (f"[The user sent a document: {title} ({PDF}, {_size(len(data))}), saved at "
                f"{file}]{context}")


def _b64(data: str, path: str) -> bytes:
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(path, "the base64 data is invalid") from None
    if not raw:
        raise invalid(path, "is empty")
    return raw


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _image(block: ImageBlockIn, path: str) -> ImagePart:
    source = block.source
    if not isinstance(source, Base64Source):
        what = "image URLs are not fetched" if source.type == "url" else (
            "files of the Files API are not available here")
        raise invalid(f"{path}.source", f"{what}; send the image as base64 "
                      "({\"type\": \"base64\", \"media_type\": \"image/png\", \"data\": \"…\"})")
    media = source.media_type.lower()
    if media not in (*IMAGE_TYPES, "image/jpg"):
        raise invalid(f"{path}.source.media_type",
                      f"{source.media_type!r} is not supported; use {', '.join(IMAGE_TYPES)}")
    return parse_data_url(f"data:{media};base64,{source.data}", f"{path}.source.data")


def _system_text(system: str | list[TextBlockIn] | None) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system
    texts = [b.text for b in system if not b.text.startswith(BILLING_HEADER)]
    return "\n\n".join(t for t in texts if t.strip()) or None


def parse_tools(tools: Sequence[ToolIn] | None) -> tuple[ClientTool, ...]:
    """Client tools; Anthropic's server tools (a ``type`` and no ``input_schema``) are left
    out, as Claude Code brings its own."""
    out: list[ClientTool] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools or ()):
        path = f"tools[{i}]"
        if tool.input_schema is None:
            if tool.type not in (None, "custom"):
                continue
            raise invalid(f"{path}.input_schema", "is required")
        if not NAME_RE.match(tool.name):
            raise invalid(f"{path}.name",
                          f"must be 1-64 letters, digits, '_' or '-' (got {tool.name!r})")
        if tool.input_schema.get("type", "object") != "object":
            raise invalid(f"{path}.input_schema.type", "must be 'object' (tool input is an "
                          "object)")
        if tool.name in seen:
            raise invalid("tools", f"the tool name {tool.name!r} appears twice")
        seen.add(tool.name)
        out.append(ClientTool(tool.name, tool.description or "", tool.input_schema))
    return tuple(out)


def parse_tool_choice(choice: ToolChoiceIn | None, tools: Sequence[ClientTool]) -> str:
    if choice is None or choice.type == "auto":
        return "auto"
    if choice.type == "none":
        return "none"
    if not tools:
        raise invalid("tool_choice.type", f"{choice.type!r} needs at least one tool in tools")
    if choice.type == "any":
        return "required"
    if not choice.name:
        raise invalid("tool_choice.name", "is required when type is 'tool'")
    if choice.name not in {t.name for t in tools}:
        raise invalid("tool_choice.name", f"names the tool {choice.name!r}, which is not in "
                      "tools")
    return choice.name


# --------------------------------------------------------------------------- stop sequences


class StopScanner:
    """Cuts streamed text at the first stop sequence, holding back what may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.hit: str | None = None

    def feed(self, text: str) -> str:
        if self.hit is not None:
            return ""
        if not self.stops:
            return text
        buffer = self.held + text
        cut, stop = find_stop(buffer, self.stops)
        if stop is not None:
            self.hit, self.held = stop, ""
            return buffer[:cut]
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(buffer) + 1))
                    if buffer.endswith(s[:k])), default=0)
        self.held = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.hit is not None else held


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str | None]:
    """Where the earliest stop sequence starts in ``text`` (``len(text), None``: nowhere)."""
    best, found = len(text), None
    for stop in stops:
        at = text.find(stop) if stop else -1
        if 0 <= at < best or (at == best and found is not None and len(stop) < len(found)):
            best, found = at, stop
    return best, found


def _cut(stops: Sequence[str]) -> Callable[[str], str] | None:
    if not any(stops):
        return None
    return lambda text: text[: find_stop(text, stops)[0]]


# --------------------------------------------------------------------------- responses


U = TypeVar("U", bound=AnthropicDeltaUsage)


def _usage(kind: type[U], usage: Usage) -> U:
    """The engine's counts as a message's usage or a ``message_delta``'s."""
    return kind(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_tokens,
        cache_read_input_tokens=usage.cache_read_tokens,
    )


def _stop_reason(reason: str | None) -> StopReason:
    return reason if reason in STOP_REASONS else "end_turn"  # type: ignore[return-value]


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}


def _tool_blocks(calls: Sequence[EngineToolCall]) -> list[AnthropicContentBlock]:
    return [AnthropicToolUseBlock(id=c.call_id, name=c.name, input=_tool_input(c.arguments))
            for c in calls]


def _sse(event: BaseModel) -> bytes:
    name = getattr(event, "type", "message")
    return f"event: {name}\ndata: {event.model_dump_json()}\n\n".encode()


@dataclass
class _Answer:
    """The request's fixed parts of the answer."""

    id: str
    model: str
    stops: tuple[str, ...]

    def message(self, content: list[AnthropicContentBlock], stop_reason: StopReason | None,
                usage: Usage, stop_sequence: str | None = None) -> AnthropicMessage:
        return AnthropicMessage(id=self.id, model=self.model, content=content,
                                stop_reason=stop_reason, stop_sequence=stop_sequence,
                                usage=_usage(AnthropicUsage, usage))


async def _complete(exchange: Exchange, answer: _Answer) -> web.StreamResponse:
    rendered: list[str] = []
    headers = exchange.headers
    while True:
        event = await exchange.next_event()
        if isinstance(event, TurnResult):
            text = answer_text("".join(rendered), event)
            cut, stop = find_stop(text, answer.stops)
            reason = "stop_sequence" if stop is not None else _stop_reason(event.stop_reason)
            message = answer.message([AnthropicTextBlock(text=text[:cut])], reason,
                                     event.usage, stop)
            return web.json_response(message.model_dump(), headers=headers)
        if isinstance(event, TurnError):
            return _error_response(
                http_error(event.kind, event.message, event.retry_after, event.status), headers)
        if isinstance(event, ToolCallsRequested):
            text = "".join(rendered)[: find_stop("".join(rendered), answer.stops)[0]]
            content: list[AnthropicContentBlock] = [AnthropicTextBlock(text=text)] if text else []
            message = answer.message(content + _tool_blocks(event.calls), "tool_use", Usage())
            return web.json_response(message.model_dump(), headers=headers)
        if event is not None:
            piece = render_event(event, exchange.mode)
            if piece:
                rendered.append(piece)


class _Stream:
    """Anthropic's event sequence over one exchange."""

    def __init__(self, exchange: Exchange, answer: _Answer) -> None:
        self.exchange = exchange
        self.answer = answer
        self.scanner = StopScanner(answer.stops)
        self.index = 0  # of the next content block
        self.text_open = False
        self.wrote_text = False

    async def begin(self) -> None:
        await self.exchange.start_stream()
        start = self.answer.message([], None, Usage())
        await self.exchange.write(_sse(MessageStartEvent(message=start)))
        await self.exchange.write(_sse(PingEvent()))

    async def send(self, event: BaseModel) -> None:
        if not self.exchange.started:
            await self.begin()
        await self.exchange.write(_sse(event))

    async def keepalive(self) -> None:
        if self.exchange.started:
            await self.send(PingEvent())
        else:
            await self.begin()

    async def text(self, piece: str) -> None:
        piece = self.scanner.feed(piece)
        if piece:
            await self._text(piece)

    async def _text(self, piece: str) -> None:
        if not self.text_open:
            await self.send(ContentBlockStartEvent(
                index=self.index, content_block=AnthropicTextBlock(text="")))
            self.text_open = True
        await self.send(ContentBlockDeltaEvent(index=self.index,
                                               delta=AnthropicTextDelta(text=piece)))
        self.wrote_text = True

    async def close_text(self) -> None:
        rest = self.scanner.flush()
        if rest:
            await self._text(rest)
        if self.text_open:
            await self.send(ContentBlockStopEvent(index=self.index))
            self.text_open = False
            self.index += 1

    async def tool_calls(self, calls: Sequence[EngineToolCall]) -> None:
        await self.close_text()
        for call in calls:
            block = AnthropicToolUseBlock(id=call.call_id, name=call.name, input={})
            await self.send(ContentBlockStartEvent(index=self.index, content_block=block))
            arguments = json.dumps(_tool_input(call.arguments))
            await self.send(ContentBlockDeltaEvent(
                index=self.index, delta=AnthropicInputJsonDelta(partial_json=arguments)))
            await self.send(ContentBlockStopEvent(index=self.index))
            self.index += 1

    async def finish(self, reason: StopReason, usage: Usage) -> web.StreamResponse:
        await self.close_text()
        stop = self.scanner.hit
        delta = AnthropicMessageDelta(stop_reason="stop_sequence" if stop else reason,
                                      stop_sequence=stop)
        await self.send(MessageDeltaEvent(delta=delta, usage=_usage(AnthropicDeltaUsage, usage)))
        await self.send(MessageStopEvent())
        return await self.exchange.end_stream()


async def _stream(exchange: Exchange, answer: _Answer) -> web.StreamResponse:
    out = _Stream(exchange, answer)
    while True:
        event = await exchange.next_event(exchange.config.keepalive_seconds)
        if event is None:
            await out.keepalive()
            continue
        if isinstance(event, TurnResult):
            if not out.wrote_text and event.text:
                await out.text(event.text)
            return await out.finish(_stop_reason(event.stop_reason), event.usage)
        if isinstance(event, TurnError):
            error = http_error(event.kind, event.message, event.retry_after, event.status)
            if not exchange.started:
                return _error_response(error, exchange.headers)
            exchange.request[STREAM_ERROR] = error.code  # for the access log
            await out.send(anthropic_error(error))
            return await exchange.end_stream()
        if isinstance(event, ToolCallsRequested):
            await out.tool_calls(event.calls)
            return await out.finish("tool_use", Usage())  # the turn goes on
        piece = render_event(event, exchange.mode)
        if piece:
            await out.text(piece)


# --------------------------------------------------------------------------- handlers


def _inbox(request: web.Request) -> Path:
    return request.app[ENGINE].workspace.joinpath(*INBOX)


def _save(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        if path.exists():
            continue  # content-addressed: a resent document is the file saved before
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        partial.write_bytes(data)
        partial.replace(path)


def _turn(request: web.Request, body: MessagesRequest, converter: _Converter) -> TurnRequest:
    tools = parse_tools(body.tools)
    stops = tuple(body.stop_sequences or ())
    return TurnRequest(
        conversation=split_conversation(converter.messages(body)),
        model=body.model,
        mode=stream_mode(request, body.stream_mode),
        keys=KeyCandidates(header_id(request), None,
                           body.metadata.user_id if body.metadata else None),
        tools=tools,
        tool_choice=parse_tool_choice(body.tool_choice, tools),
        tool_mode=tool_mode(request, body.tool_mode),
        reply_text=_cut(stops),
    )


@limited
async def create_message(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages`` (also ``?beta=true``, as Claude Code sends it)."""
    body = await read_json(request, parse_messages_request)
    converter = _Converter(_inbox(request))
    turn = _turn(request, body, converter)
    if converter.files:
        await asyncio.to_thread(_save, converter.files)
    answer = _Answer(f"msg_{uuid.uuid4().hex[:24]}", body.model,
                     tuple(s for s in body.stop_sequences or () if s))

    async def respond(exchange: Exchange) -> web.StreamResponse:
        if body.stream:
            return await _stream(exchange, answer)
        return await _complete(exchange, answer)

    return await run_exchange(request, turn, respond)


#: the estimate's rates (see the module docstring)
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1600
PDF_PAGE_TOKENS = 2000
MESSAGE_TOKENS = 4
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-z])")


def estimate_tokens(body: CountTokensRequest) -> int:
    """An honest estimate of the client's content in tokens (not the CLI's own prompt)."""
    chars = len(_system_text(body.system) or "")
    tokens = 0
    if body.tools:
        chars += len(json.dumps([t.model_dump(exclude_none=True) for t in body.tools]))

    def block(part: Any) -> None:
        nonlocal chars, tokens
        if isinstance(part, TextBlockIn):
            chars += len(part.text)
        elif isinstance(part, ImageBlockIn):
            tokens += IMAGE_TOKENS
        elif isinstance(part, DocumentBlockIn):
            source = part.source
            if isinstance(source, Base64Source):
                try:
                    pages = len(_PDF_PAGE.findall(base64.b64decode(source.data)))
                except (binascii.Error, ValueError):
                    pages = 1
                tokens += PDF_PAGE_TOKENS * max(1, pages)
            elif isinstance(source, PlainTextSource):
                chars += len(source.data)
            elif isinstance(source, ContentSource):
                chars += len(json.dumps(source.model_dump()))
        elif isinstance(part, ToolUseBlockIn):
            chars += len(part.name) + len(json.dumps(part.input))
        elif isinstance(part, ToolResultBlockIn):
            if isinstance(part.content, str):
                chars += len(part.content)
            else:
                for inner in part.content or ():
                    block(inner)

    for message in body.messages:
        tokens += MESSAGE_TOKENS
        if isinstance(message.content, str):
            chars += len(message.content)
        else:
            for part in message.content:
                block(part)
    return max(1, tokens + math.ceil(chars / CHARS_PER_TOKEN))


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: an estimate, see :func:`estimate_tokens`."""
    body = await read_json(request, parse_count_tokens_request)
    resolve_model(request.app[ENGINE], body.model)
    return web.json_response(AnthropicTokenCount(input_tokens=estimate_tokens(body)).model_dump())


# --------------------------------------------------------------------------- models


def display_name(model_id: str) -> str:
    """``claude-opus-4-5`` -> ``Claude Opus 4.5``, ``sonnet`` -> ``Sonnet``."""
    words: list[str] = []
    for part in model_id.split("-"):
        if part.isdigit() and len(part) == 8:
            continue  # a release date
        if part.isdigit() and words and words[-1][-1].isdigit():
            words[-1] += f".{part}"
        else:
            words.append(part if part.isdigit() else part.capitalize())
    return " ".join(words) or model_id


def model_info(model_id: str, created: float) -> AnthropicModel:
    stamp = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    return AnthropicModel(id=model_id, display_name=display_name(model_id), created_at=stamp)


def wants_anthropic(request: web.Request) -> bool:
    """An Anthropic client: it sends ``anthropic-version`` on every request."""
    return ANTHROPIC_VERSION in request.headers


def model_list(request: web.Request) -> web.Response:
    """``GET /v1/models`` for an Anthropic client (``limit``, ``after_id``, ``before_id``)."""
    created = request.app[STATE].started_at
    names = request.app[ENGINE].listed_models()
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise ApiError(request_error(400, "invalid_request",
                                     "limit: must be an integer from 1 to 1000"))
    if query.get("after_id") in names:
        names = names[names.index(query["after_id"]) + 1:]
    if query.get("before_id") in names:
        names = names[: names.index(query["before_id"])]
        names = names[-limit:]
    page = names[:limit]
    body = AnthropicModelList(
        data=[model_info(n, created) for n in page], has_more=len(names) > len(page),
        first_id=page[0] if page else None, last_id=page[-1] if page else None)
    return web.json_response(body.model_dump())


def model_object(request: web.Request, model_id: str) -> web.Response:
    return web.json_response(model_info(model_id, request.app[STATE].started_at).model_dump())


# --------------------------------------------------------------------------- operations

_HEADERS = (
    Param(ANTHROPIC_VERSION, "Accepted, any value (e.g. 2023-06-01)."),
    Param("anthropic-beta", "Accepted and ignored."),
    Param("x-api-key", "The gateway key; same as Authorization: Bearer <key>."),
)
_CONVERSATION = Param("X-Conversation-Id", "The conversation this turn belongs to.")


def _error(description: str, retry: bool = False) -> Reply:
    return error_reply(description, headers=(RETRY_AFTER,) if retry else (),
                       model=AnthropicError)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/v1/messages", create_message, "createMessage",
        "One turn through Claude Code, in the Anthropic Messages API's format.",
        body={JSON: MessagesRequest},
        params=(*_HEADERS, *TURN_PARAMS,
                Param("beta", "Accepted (Claude Code sends beta=true).", where="query")),
        error=AnthropicError,
        responses={
            200: Reply("A message, or with stream: true Anthropic's event stream.",
                       content={JSON: AnthropicMessage}, events=AnthropicStreamEvent,
                       headers=(_CONVERSATION,)),
            400: _error("Invalid request (the message names the field) or unknown model."),
            409: _error("The turn was interrupted (interrupt or reset of its conversation)."),
            429: _error("Rate limited upstream.", retry=True),
            502: _error("The CLI crashed or the upstream API failed."),
            503: _error("Overloaded, busy, shutting down, or the CLI is unavailable.",
                        retry=True),
            504: _error("No activity from the CLI for too long."),
        },
    ),
    Operation(
        "POST", "/v1/messages/count_tokens", count_tokens, "countMessageTokens",
        "An estimate of the request's input tokens (the client's content only).",
        body={JSON: CountTokensRequest},
        params=_HEADERS,
        error=AnthropicError,
        responses={
            200: Reply("The estimate.", content={JSON: AnthropicTokenCount}),
            400: _error("Invalid request (the message names the field) or unknown model."),
        },
    ),
)
