"""The OpenAI Responses API: ``POST /v1/responses`` and ``GET /v1/responses/{id}``.

The dialect only translates; the conversation rules, the turn and disconnects are the
shared exchange's (:mod:`gateway.api.exchange`), so a Responses client rides the same warm
CLI sessions as a Chat Completions one:

* **Which session.** ``previous_response_id`` names the conversation of that response (an
  older response of it forks the CLI session where that response ended); else
  ``X-Conversation-Id``, ``prompt_cache_key`` (Codex sends its session id) or ``user``;
  else the resent history continues the session whose last reply it ends with (OpenClaw
  sends ``store: false`` and the whole history every turn); else a new session, seeded
  with the earlier history as a transcript.
* **Input.** :func:`to_conversation` turns the items into the neutral conversation:
  ``instructions`` and ``system``/``developer`` messages are the system text, consecutive
  assistant messages and ``function_call`` items are one assistant reply,
  ``function_call_output`` items are tool results (they resume the turn that waits for
  them when ``X-Tool-Mode``/``tool_mode`` offers the client's functions to Claude).
* **Output.** :class:`ResponseBuilder` renders engine events as the documented stream
  (``response.created``, ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta``/``.done``,
  ``response.content_part.done``, ``response.output_item.done``,
  ``response.function_call_arguments.delta``/``.done``, then ``response.completed`` with
  usage, or ``error`` and ``response.failed``) and as the non-streamed response object.
* **Store.** With ``store: true`` (the default) a response is recorded with its
  conversation and turn, for ``previous_response_id``, and kept whole for
  ``GET /v1/responses/{id}``; with ``store: false`` nothing of it is kept, and the client
  continues by resending its history (as OpenClaw and Codex do). Ids are 192 random bits,
  and a response is found only with the API key that made it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.api.access import STREAM_ERROR
from gateway.api.conversation import Branch
from gateway.api.convert import (
    Conversation,
    HttpError,
    Message,
    ToolCall,
    finish_reason,
    http_error,
    parse_data_url,
    render_event,
    request_error,
    split_conversation,
)
from gateway.api.exchange import (
    ENGINE,
    Exchange,
    KeyCandidates,
    TurnRequest,
    header_id,
    limited,
    read_json,
    run_exchange,
    stream_mode,
    tool_mode,
)
from gateway.api.fields import invalid
from gateway.api.http import ApiError, error_response, key_owner
from gateway.api.openapi import (
    CONVERSATION,
    JSON,
    RETRY_AFTER,
    TURN_PARAMS,
    Operation,
    Param,
    Reply,
    error_reply,
    json_reply,
)
from gateway.api.responses_store import ResponseStore
from gateway.api.responses_wire import (
    ErrorCode,
    Response,
    ResponsesArgumentsDeltaEvent,
    ResponsesArgumentsDoneEvent,
    ResponsesErrorBody,
    ResponsesErrorEvent,
    ResponsesFunctionCall,
    ResponsesFunctionCallItem,
    ResponsesFunctionCallOutputItem,
    ResponsesFunctionToolOut,
    ResponsesIncompleteDetails,
    ResponsesInputImage,
    ResponsesInputText,
    ResponsesInputTokensDetails,
    ResponsesItemEvent,
    ResponsesLifecycleEvent,
    ResponsesMessageItem,
    ResponsesOutputMessage,
    ResponsesOutputText,
    ResponsesOutputTextIn,
    ResponsesOutputTokensDetails,
    ResponsesPartEvent,
    ResponsesRefusalIn,
    ResponsesRequest,
    ResponsesStreamEvent,
    ResponsesTextDeltaEvent,
    ResponsesTextDoneEvent,
    ResponsesToolChoiceFunction,
    ResponsesToolChoiceOut,
    ResponsesUsage,
    ResponsesWireEvent,
    parse_request,
)
from gateway.engine.api import Pref
from gateway.engine.client_tools import ClientTool
from gateway.engine.client_tools import ToolCall as EngineToolCall
from gateway.engine.events import (
    ImagePart,
    ToolCallsRequested,
    TurnError,
    TurnResult,
    Usage,
)

log = logging.getLogger(__name__)

Record = Callable[[Exchange], Awaitable[None]]


def _store(request: web.Request) -> ResponseStore:
    return request.app[ENGINE].tables(ResponseStore)


def new_id(prefix: str) -> str:
    """An unguessable id (192 random bits), e.g. ``resp_…``, ``msg_…``, ``fc_…``."""
    return f"{prefix}_{secrets.token_hex(24)}"


# --------------------------------------------------------------------------- input -> conversation


#: a part that is text and nothing else (most of a resent history: one such part a message)
_PLAIN_TEXT = (ResponsesInputText, ResponsesOutputTextIn)


def _content(parts: Sequence[Any], item: int, where: str) -> tuple[str, tuple[ImagePart, ...]]:
    """The text and images of ``input[item].<where>``."""
    if len(parts) == 1 and type(parts[0]) in _PLAIN_TEXT:
        return parts[0].text, ()  # the fast path: no list, no join, no error path
    path = f"input[{item}].{where}"
    texts: list[str] = []
    images: list[ImagePart] = []
    for j, part in enumerate(parts):
        if isinstance(part, ResponsesInputImage):
            assert part.image_url is not None  # parse_request refused the rest
            images.append(parse_data_url(part.image_url, f"{path}[{j}].image_url"))
        elif isinstance(part, ResponsesRefusalIn):
            texts.append(part.refusal)
        else:
            texts.append(part.text)
    return "\n".join(texts), tuple(images)


def to_messages(request: ResponsesRequest) -> list[Message]:
    """The request's items as neutral messages (``index``: the item's place in ``input``)."""
    messages: list[Message] = []
    if request.instructions and request.instructions.strip():
        messages.append(Message("system", request.instructions, index=0))
    for i, item in enumerate(request.input):
        if isinstance(item, ResponsesMessageItem):
            text, images = _content(item.content, i, "content")
            previous = messages[-1] if messages else None
            if item.role == "assistant" and previous is not None and previous.role == "assistant":
                # one reply written as several output items
                joined = "\n".join(t for t in (previous.text, text) if t)
                messages[-1] = Message("assistant", joined, tool_calls=previous.tool_calls,
                                       index=previous.index)
                continue
            messages.append(Message(item.role, text, images, index=i))
        elif isinstance(item, ResponsesFunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            previous = messages[-1] if messages else None
            if previous is not None and previous.role == "assistant":
                messages[-1] = Message("assistant", previous.text,
                                       tool_calls=(*previous.tool_calls, call),
                                       index=previous.index)
            else:
                messages.append(Message("assistant", "", tool_calls=(call,), index=i))
        elif isinstance(item, ResponsesFunctionCallOutputItem):
            text, images = _content(item.output, i, "output")
            messages.append(Message("tool", text, images, tool_call_id=item.call_id, index=i))
        # reasoning items carry nothing the gateway can use (parse_request refused the rest)
    return messages


def to_conversation(request: ResponsesRequest) -> Conversation:
    """The conversation of a request, split at the last assistant reply; a 400 naming the
    item when nothing follows it."""
    messages = to_messages(request)
    chat = [m for m in messages if m.role not in ("system", "developer")]
    if not chat:
        raise invalid("input", "must contain a user message or a function_call_output item")
    if chat[-1].role == "assistant":
        raise invalid(
            f"input[{chat[-1].index}]",
            "the input ends with the assistant's own output; end it with a user message or "
            "a function_call_output item",
        )
    return split_conversation(messages)


def _tools(request: ResponsesRequest) -> tuple[ClientTool, ...]:
    return tuple(
        ClientTool(t.name, t.description or "", t.parameters or {"type": "object",
                                                                   "properties": {}})
        for t in request.functions
    )


def _tool_choice(request: ResponsesRequest) -> str:
    choice = request.tool_choice
    if isinstance(choice, ResponsesToolChoiceFunction):
        return choice.name
    return choice or "auto"


def _check_text_format(request: ResponsesRequest) -> None:
    fmt = request.text.format if request.text is not None else None
    if fmt is not None and fmt.type != "text":
        raise invalid(
            "text.format.type",
            f"{fmt.type!r} is not supported on /v1/responses; ask for JSON in the prompt or "
            "use response_format on /v1/chat/completions",
        )


# --------------------------------------------------------------------------- output


def usage_out(usage: Usage) -> ResponsesUsage:
    prompt = usage.prompt_tokens
    return ResponsesUsage(
        input_tokens=prompt,
        input_tokens_details=ResponsesInputTokensDetails(
            cached_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_creation_tokens,
        ),
        output_tokens=usage.output_tokens,
        output_tokens_details=ResponsesOutputTokensDetails(reasoning_tokens=0),
        total_tokens=prompt + usage.output_tokens,
    )


def _error_code(error: HttpError) -> ErrorCode:
    if error.status == 429:
        return "rate_limit_exceeded"
    if error.status == 400:
        return "invalid_prompt"
    return "server_error"


class ResponseBuilder:
    """One response as it forms: each method returns the stream events it adds, and
    :attr:`response` is the response object so far (the non-streamed body at the end)."""

    def __init__(self, request: ResponsesRequest, response_id: str) -> None:
        choice = request.tool_choice
        self.response = Response(
            id=response_id,
            created_at=int(time.time()),
            status="in_progress",
            model=request.model,
            instructions=request.instructions,
            metadata=request.metadata or {},
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            prompt_cache_key=request.prompt_cache_key,
            store=request.store,
            tool_choice=ResponsesToolChoiceOut(name=choice.name)
            if isinstance(choice, ResponsesToolChoiceFunction) else (choice or "auto"),
            tools=[ResponsesFunctionToolOut(name=t.name, description=t.description,
                                   parameters=t.parameters, strict=t.strict)
                   for t in request.functions],
            user=request.user,
        )
        self._seq = 0
        self._message: ResponsesOutputMessage | None = None  # the open message item, if any
        self.wrote_text = False

    def _n(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _snapshot(self, kind: Any) -> ResponsesLifecycleEvent:
        return ResponsesLifecycleEvent(type=kind, sequence_number=self._n(),
                             response=self.response.model_copy(deep=True))

    def start(self) -> list[ResponsesWireEvent]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def keepalive(self) -> list[ResponsesWireEvent]:
        """After ``server.keepalive_seconds`` of silence: ``response.in_progress`` again (an
        event, not an SSE comment, as idle timers such as OpenClaw's ignore comments)."""
        return [self._snapshot("response.in_progress")]

    def text(self, piece: str) -> list[ResponsesWireEvent]:
        events: list[ResponsesWireEvent] = []
        message = self._message
        if message is None:
            message = ResponsesOutputMessage(id=new_id("msg"), status="in_progress", content=[])
            index = len(self.response.output)
            events.append(ResponsesItemEvent(
                type="response.output_item.added", sequence_number=self._n(),
                output_index=index, item=message.model_copy(deep=True)))
            message.content.append(ResponsesOutputText(text=""))
            events.append(ResponsesPartEvent(type="response.content_part.added",
                                    sequence_number=self._n(), item_id=message.id,
                                    output_index=index, part=ResponsesOutputText(text="")))
            self.response.output.append(message)
            self._message = message
        message.content[0].text += piece
        self.wrote_text = True
        events.append(ResponsesTextDeltaEvent(sequence_number=self._n(), item_id=message.id,
                                     output_index=self.response.output.index(message),
                                     delta=piece))
        return events

    def _close_message(self) -> list[ResponsesWireEvent]:
        message = self._message
        if message is None:
            return []
        self._message = None
        index = self.response.output.index(message)
        part = message.content[0]
        message.status = "completed"
        return [
            ResponsesTextDoneEvent(sequence_number=self._n(), item_id=message.id,
                                   output_index=index, text=part.text),
            ResponsesPartEvent(type="response.content_part.done", sequence_number=self._n(),
                      item_id=message.id, output_index=index, part=part.model_copy()),
            ResponsesItemEvent(type="response.output_item.done", sequence_number=self._n(),
                      output_index=index, item=message.model_copy(deep=True)),
        ]

    def _finish(self, kind: Any) -> list[ResponsesWireEvent]:
        self.response.completed_at = int(time.time())
        return [self._snapshot(kind)]

    def result(self, result: TurnResult, rendered: str) -> list[ResponsesWireEvent]:
        events: list[ResponsesWireEvent] = []
        if not rendered and result.text:  # final mode, or an answer without deltas
            events += self.text(result.text)
        events += self._close_message()
        reason = finish_reason(result.stop_reason)
        self.response.usage = usage_out(result.usage)
        if reason == "stop":
            self.response.status = "completed"
            return events + self._finish("response.completed")
        self.response.status = "incomplete"
        self.response.incomplete_details = ResponsesIncompleteDetails(
            reason="max_output_tokens" if reason == "length" else "content_filter")
        return events + self._finish("response.incomplete")

    def calls(self, calls: Sequence[EngineToolCall]) -> list[ResponsesWireEvent]:
        events = self._close_message()
        for call in calls:
            item = ResponsesFunctionCall(id=new_id("fc"), call_id=call.call_id, name=call.name,
                                arguments="", status="in_progress")
            index = len(self.response.output)
            events.append(ResponsesItemEvent(
                type="response.output_item.added", sequence_number=self._n(),
                output_index=index, item=item.model_copy()))
            item.arguments = call.arguments
            item.status = "completed"
            self.response.output.append(item)
            events += [
                ResponsesArgumentsDeltaEvent(sequence_number=self._n(), item_id=item.id,
                                    output_index=index, delta=call.arguments),
                ResponsesArgumentsDoneEvent(sequence_number=self._n(), item_id=item.id,
                                   output_index=index, name=call.name, arguments=call.arguments),
                ResponsesItemEvent(type="response.output_item.done", sequence_number=self._n(),
                          output_index=index, item=item.model_copy()),
            ]
        # the turn goes on inside the calls; its usage comes with the response that ends it
        self.response.usage = usage_out(Usage())
        self.response.status = "completed"
        return events + self._finish("response.completed")

    def failed(self, error: HttpError) -> list[ResponsesWireEvent]:
        events: list[ResponsesWireEvent] = [ResponsesErrorEvent(
            sequence_number=self._n(), code=error.code, message=error.message)]
        events += self._close_message()
        self.response.status = "failed"
        self.response.error = ResponsesErrorBody(code=_error_code(error), message=error.message)
        return events + self._finish("response.failed")


def sse_event(event: ResponsesWireEvent) -> bytes:
    data = event.model_dump_json()
    return f"event: {event.type}\ndata: {data}\n\n".encode()


# --------------------------------------------------------------------------- handlers


async def _planned_keys(request: web.Request, body: ResponsesRequest) -> KeyCandidates:
    """Rule 1's candidates; ``previous_response_id`` names the conversation first."""
    keys = KeyCandidates(header_id(request), body.prompt_cache_key, body.user)
    if body.previous_response_id is None:
        return keys
    row = await _store(request).get(body.previous_response_id, key_owner(request))
    if row is None:
        raise ApiError(request_error(
            400, "previous_response_not_found",
            f"previous_response_id: no response {body.previous_response_id!r} was found (it "
            "never existed, was made with another API key, or is too old)",
        ))
    meta = await request.app[ENGINE].preferences.get(row.conversation_key)
    if Pref.LAST_REPLY not in meta:
        raise invalid(
            "previous_response_id",
            f"the conversation of {row.id} was reset; resend the whole history without "
            "previous_response_id to start a new one",
        )
    branch = None
    if meta[Pref.LAST_REPLY] != row.reply:
        mark = row.mark
        if mark is None:
            raise invalid(
                "previous_response_id",
                f"{row.id} is not the latest response of its conversation and was made before "
                "the gateway kept where each response ended; continue from the latest one, or "
                "resend the whole history without previous_response_id",
            )
        # an older response: the conversation forks its session there
        branch = Branch(mark, row.reply)
    return KeyCandidates(row.conversation_id, body.prompt_cache_key, body.user, branch)


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, parse_request)
    _check_text_format(body)
    conversation = to_conversation(body)
    mode = stream_mode(request, body.stream_mode)
    tools_mode = tool_mode(request, body.tool_mode)
    turn = TurnRequest(
        conversation=conversation,
        model=body.model,
        mode=mode,
        keys=await _planned_keys(request, body),
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        tool_mode=tools_mode,
        messages_field="input",
    )
    builder = ResponseBuilder(body, new_id("resp"))
    store = _store(request)
    owner = key_owner(request)

    async def record(exchange: Exchange) -> None:
        """Before the client sees the end: its follow-up may name this response at once.
        With ``store: false`` nothing is kept (the client resends its history instead)."""
        response = builder.response
        if not body.store:
            return
        key = exchange.plan.key
        try:
            # the fingerprint the turn stored, before its final event reached us
            meta = await request.app[ENGINE].preferences.get(key)
            await store.add(id=response.id, owner=owner, conversation_key=key,
                            conversation_id=exchange.conversation_id,
                            reply=meta.get(Pref.LAST_REPLY, ""), body=response.model_dump_json(),
                            mark=exchange.pump.mark)
        except Exception:
            log.exception("could not record response %s", response.id)

    async def respond(exchange: Exchange) -> web.StreamResponse:
        if body.stream:
            return await _stream(exchange, builder, record)
        return await _complete(exchange, builder, record)

    return await run_exchange(request, turn, respond)


async def _complete(exchange: Exchange, builder: ResponseBuilder, record: Record,
                    ) -> web.StreamResponse:
    rendered: list[str] = []
    while True:
        event = await exchange.next_event()
        if event is None:
            continue
        if isinstance(event, TurnError):
            error = http_error(event.kind, event.message, event.retry_after, event.status)
            return error_response(error, exchange.headers)
        if isinstance(event, TurnResult):
            builder.result(event, "".join(rendered))
        elif isinstance(event, ToolCallsRequested):
            builder.calls(event.calls)
        else:
            piece = render_event(event, exchange.mode)
            if piece:
                rendered.append(piece)
                builder.text(piece)
            continue
        await record(exchange)
        return web.json_response(
            builder.response.model_dump(mode="json"), headers=exchange.headers
        )


async def _stream(exchange: Exchange, builder: ResponseBuilder, record: Record,
                  ) -> web.StreamResponse:
    idle = exchange.config.keepalive_seconds
    rendered: list[str] = []

    async def send(events: list[ResponsesWireEvent]) -> None:
        await exchange.write(b"".join(sse_event(e) for e in events))

    async def begin() -> None:
        if not exchange.started:
            await exchange.start_stream()
            await send(builder.start())

    while True:
        event = await exchange.next_event(idle)
        if event is None:  # silence for keepalive_seconds: start the stream, or say so again
            if exchange.started:
                await send(builder.keepalive())
            else:
                await begin()
            continue
        if isinstance(event, TurnError):
            error = http_error(event.kind, event.message, event.retry_after, event.status)
            if not exchange.started:
                return error_response(error, exchange.headers)
            exchange.request[STREAM_ERROR] = error.code  # for the access log
            await send(builder.failed(error))
            return await exchange.end_stream()
        await begin()
        if isinstance(event, TurnResult | ToolCallsRequested):
            if isinstance(event, TurnResult):
                events = builder.result(event, "".join(rendered))
            else:
                events = builder.calls(event.calls)
            await record(exchange)
            await send(events)
            return await exchange.end_stream()
        piece = render_event(event, exchange.mode)
        if piece:
            rendered.append(piece)
            await send(builder.text(piece))


async def get_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    row = await _store(request).get(response_id, key_owner(request))
    if row is None:
        raise ApiError(request_error(
            404, "response_not_found",
            f"No stored response {response_id!r}: it never existed, was made with another API "
            "key or with store: false, or is too old.",
        ))
    headers = {"X-Conversation-Id": row.conversation_id}
    return web.Response(body=row.body, content_type="application/json", headers=headers)


_ERRORS = {
    400: error_reply("Invalid request; the message names the field (code invalid_request, "
                     "model_not_found, previous_response_not_found)."),
    409: error_reply("The turn was interrupted (interrupt or reset of its conversation)."),
    429: error_reply("Rate limited.", headers=(RETRY_AFTER,)),
    502: error_reply("The CLI crashed, or the upstream API failed."),
    503: error_reply("Busy, overloaded, CLI missing or not logged in, shutting down.",
                     headers=(RETRY_AFTER,)),
    504: error_reply("The turn showed no activity for claude.activity_timeout."),
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/v1/responses", limited(create_response), "createResponse",
        "Run one turn through Claude Code (OpenAI Responses API).",
        body={JSON: ResponsesRequest},
        params=TURN_PARAMS,
        responses={
            200: Reply("A response object, or with stream=true its event stream (an error "
                       "after the start is an error event, then response.failed).",
                       content={JSON: Response}, events=ResponsesStreamEvent,
                       headers=(CONVERSATION,)),
            **_ERRORS,
        },
    ),
    Operation(
        "GET", "/v1/responses/{response_id}", get_response, "getResponse",
        "A response made with store: true, by the same API key.",
        params=(Param("response_id", "The response id (resp_...).", where="path",
                      required=True),),
        responses={
            200: json_reply("The response object.", Response, headers=(CONVERSATION,)),
            404: error_reply("No such stored response for this key (code response_not_found)."),
        },
    ),
)
