"""The aiohttp application: handlers, SSE writer, keepalive, auth and limits.

Errors are always OpenAI error JSON, ``{"error": {"message", "type", "code", "param"}}``
(see :data:`gateway.api.convert.ERROR_TABLE` for the kind -> status table):

* 400 invalid request (the message names the field), unknown model (``model_not_found``);
* 401 only for a missing/wrong gateway API key, when keys are configured;
* 403 ``forbidden_origin``, 421 ``host_not_allowed`` and 415 ``unsupported_media_type`` from
  :mod:`gateway.api.guard`, before any of the rest (browser pages and DNS rebinding);
* 404 unknown path or model id, 405 wrong method, 413 body over ``max_body_bytes``;
* 402 ``turn_budget_exceeded``: the turn's cost reached ``claude.max_turn_cost_usd``;
* 409 ``interrupted``: the turn was stopped by ``interrupt``/``reset`` of its conversation;
* 422 ``invalid_json_output``: the answer did not match ``response_format``, also after one
  retry in the same session (:mod:`gateway.api.structured`);
* 429 rate limited, with ``Retry-After``;
* 502 CLI crash, upstream API error or upstream authentication failure (never 401/403:
  OpenClaw disables a provider for a minute after one);
* 503 overloaded, CLI missing, CLI not logged in, shutting down, conversation busy, and
  ``server_busy`` when ``max_concurrent_requests`` chat requests are already running (with
  ``Retry-After``; 503 rather than 429 so clients do not read it as an account rate limit);
* 504 activity timeout.

A stream starts (HTTP 200 + headers) at the first output, or when the keepalive interval
passes without any, so a failure before that still gets its real status. A failure after it
is an in-stream ``{"error": {...}}`` event; ``data: [DONE]`` always ends the stream.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.api import audio, messages, responses
from gateway.api import status as status_page
from gateway.api.access import STREAM_ERROR, access_middleware
from gateway.api.audio import setup_audio
from gateway.api.chat_wire import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatStreamEvent,
    parse_chat_request,
)
from gateway.api.config import ApiConfig
from gateway.api.convert import (
    SSE_DONE,
    ChatRequest,
    ChunkFactory,
    finish_reason,
    http_error,
    render_event,
    request_error,
    split_conversation,
    sse,
)
from gateway.api.exchange import (
    ENGINE,
    RECORDS,
    STATE,
    ApiState,
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
from gateway.api.functions import tool_call_deltas
from gateway.api.guard import JSON, cors_headers, guard_middleware
from gateway.api.http import (
    CONFIG,
    ERROR_BODIES,
    ApiError,
    ErrorBody,
    auth_middleware,
    error_middleware,
    error_response,
    key_ok,
)
from gateway.api.messages_wire import ErrorReply, ModelListReply, ModelReply
from gateway.api.openapi import (
    CONVERSATION,
    RETRY_AFTER,
    TURN_PARAMS,
    Operation,
    Param,
    Reply,
    add_operations,
    build_document,
    error_reply,
    json_reply,
    openapi_json,
)
from gateway.api.status import setup_status
from gateway.api.structured import StructuredTurns
from gateway.api.turn import answer_text
from gateway.api.turn_store import TurnStore
from gateway.api.usage import OPERATIONS as USAGE_OPERATIONS
from gateway.api.wire import HealthReply
from gateway.engine.api import EngineAPI
from gateway.engine.events import (
    StreamMode,
    ToolCallsRequested,
    TurnError,
    TurnResult,
    Usage,
)
from gateway.errors import ErrorKind, GatewayError
from gateway.voice import VoiceService

log = logging.getLogger(__name__)

#: Extra sections of ``/health``: name -> a function returning JSON-able data. Set by
#: ``gateway.app`` after :func:`create_app` (e.g. ``{"scheduler": scheduler.status}``).
STATUS_PROVIDERS: web.AppKey[dict[str, Callable[[], Any]]] = web.AppKey(
    "status_providers", dict
)
#: Checks of ``/health``: each returns None, or why the gateway is degraded (then
#: ``"status": "degraded"`` with the reasons in ``"problems"``). Set by ``gateway.app``.
HEALTH_CHECKS: web.AppKey[list[Callable[[], str | None]]] = web.AppKey("health_checks", list)


# --------------------------------------------------------------------------- simple routes


#: what ``/health`` tells a client without a key when keys are configured
PUBLIC_HEALTH_FIELDS = ("status", "version")


async def health(request: web.Request) -> web.Response:
    full = key_ok(request)  # the rest (paths, sessions, chat ids, errors) needs a key
    try:
        status = request.app[ENGINE].status()
    except Exception as exc:
        log.exception("engine status failed")
        failed = {"status": "error", "version": __version__, "error": str(exc)}
        return web.json_response(failed if full else _public(failed), status=503)
    ok = status.ready
    problems = _health_problems(request.app) if ok else []
    word = ("degraded" if problems else "ok") if ok else "unavailable"
    body = {"status": word, "version": __version__, **status.to_json()}
    if problems:
        body["problems"] = problems
    if not full:
        return web.json_response(_public(body), status=200 if ok else 503)
    body["conversations"] = {"lineage": {str(k): n for k, n in request.app[STATE].lineage.items()}}
    for name, provider in request.app.get(STATUS_PROVIDERS, {}).items():
        try:
            body[name] = provider()
        except Exception as exc:
            log.exception("%s status failed", name)
            body[name] = {"error": str(exc)}
    return web.json_response(body, status=200 if ok else 503)


def _health_problems(app: web.Application) -> list[str]:
    """Why the gateway is up but cannot serve turns (e.g. the CLI is not logged in)."""
    problems: list[str] = []
    for check in app.get(HEALTH_CHECKS, []):
        try:
            problem = check()
        except Exception:
            log.exception("a health check failed")
            continue
        if problem:
            problems.append(problem)
    return problems


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in PUBLIC_HEALTH_FIELDS if k in body}


def _model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "anthropic"}


async def list_models(request: web.Request) -> web.Response:
    created = int(request.app[STATE].started_at)
    if messages.wants_anthropic(request):
        return messages.model_list(request)
    names = request.app[ENGINE].listed_models()  # each model once; the short names are aliases
    return web.json_response({"object": "list", "data": [_model_object(n, created) for n in names]})


async def get_model(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    model_id = request.match_info["model_id"]
    if model_id not in engine.model_names():
        try:
            engine.resolve_model(model_id)
        except GatewayError as exc:
            raise ApiError(request_error(404, "model_not_found", exc.message)) from None
    if messages.wants_anthropic(request):
        return messages.model_object(request, model_id)
    return web.json_response(_model_object(model_id, int(request.app[STATE].started_at)))


# --------------------------------------------------------------------------- chat completions


def _turn_request(request: web.Request, chat: ChatRequest) -> TurnRequest:
    """A Chat Completions request in the neutral form the exchange runs."""
    mode = stream_mode(request, chat.stream_mode)
    if chat.response_format is not None:
        mode = StreamMode.FINAL  # the JSON is checked before any of it is sent
    response_format = chat.response_format
    return TurnRequest(
        conversation=split_conversation(chat.messages),
        model=chat.model,
        mode=mode,
        keys=KeyCandidates(header_id(request), chat.prompt_cache_key, chat.user),
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        tool_mode=tool_mode(request, chat.tool_mode),
        runner=None if response_format is None else (
            lambda engine: StructuredTurns(engine, response_format)),
    )


@limited
async def chat_completions(request: web.Request) -> web.StreamResponse:
    chat = await read_json(request, parse_chat_request)
    turn = _turn_request(request, chat)
    factory = ChunkFactory(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), chat.model)

    async def respond(exchange: Exchange) -> web.StreamResponse:
        if chat.stream:
            return await _stream(exchange, _SseWriter(exchange, factory), chat)
        return await _complete(exchange, factory)

    return await run_exchange(request, turn, respond)


async def _complete(exchange: Exchange, factory: ChunkFactory) -> web.StreamResponse:
    rendered: list[str] = []
    headers = exchange.headers
    while True:
        event = await exchange.next_event()
        if event is None:
            continue
        if isinstance(event, TurnResult):
            text = answer_text("".join(rendered), event)
            body = factory.completion(text, finish_reason(event.stop_reason), event.usage)
            return web.json_response(body, headers=headers)
        if isinstance(event, TurnError):
            error = http_error(event.kind, event.message, event.retry_after, event.status)
            return error_response(error, headers)
        if isinstance(event, ToolCallsRequested):
            body = factory.completion("".join(rendered), "tool_calls", Usage(), event.calls)
            return web.json_response(body, headers=headers)
        piece = render_event(event, exchange.mode)
        if piece:
            rendered.append(piece)


class _SseWriter:
    """Chat Completions chunks as ``data:`` events; the first one carries the role."""

    def __init__(self, exchange: Exchange, factory: ChunkFactory):
        self.exchange = exchange
        self.factory = factory

    async def start(self) -> None:
        await self.exchange.start_stream()
        await self.exchange.write(sse(self.factory.role()))

    async def send(self, data: dict[str, Any]) -> None:
        if not self.exchange.started:
            await self.start()
        await self.exchange.write(sse(data))

    async def done(self) -> web.StreamResponse:
        if not self.exchange.started:
            await self.start()
        await self.exchange.write(SSE_DONE)
        return await self.exchange.end_stream()


async def _stream(exchange: Exchange, out: _SseWriter, chat: ChatRequest) -> web.StreamResponse:
    factory = out.factory
    wrote_text = False
    while True:
        event = await exchange.next_event(exchange.config.keepalive_seconds)
        if event is None:  # nothing to say for keepalive_seconds: an empty delta
            if exchange.started:
                await out.send(factory.keepalive())
            else:
                await out.start()
            continue
        if isinstance(event, TurnResult):
            if not wrote_text and event.text:
                await out.send(factory.text(event.text))
            await out.send(factory.finish(finish_reason(event.stop_reason)))
            if chat.include_usage:
                await out.send(factory.usage(event.usage))
            return await out.done()
        if isinstance(event, TurnError):
            error = http_error(event.kind, event.message, event.retry_after, event.status)
            if not exchange.started:
                return error_response(error, exchange.headers)
            exchange.request[STREAM_ERROR] = error.code  # for the access log: the 200 was not all
            await out.send(error.body())
            return await out.done()
        if isinstance(event, ToolCallsRequested):
            for delta in tool_call_deltas(event.calls):
                await out.send(factory.chunk(delta))
            await out.send(factory.finish("tool_calls"))
            if chat.include_usage:  # the turn goes on; its usage comes with its end
                await out.send(factory.usage(Usage()))
            return await out.done()
        piece = render_event(event, exchange.mode)
        if piece:
            await out.send(factory.text(piece))
            wrote_text = True


# --------------------------------------------------------------------------- app factory


def _health_reply(description: str) -> Reply:
    return json_reply(f"{description} Without a key while GATEWAY_API_KEYS is set: only "
                      "HealthPublic (status and version).", HealthReply)


_ANTHROPIC_MODELS = Param(
    "anthropic-version", "Present (any value): the Anthropic API's shape (type model, "
    "display_name, created_at; data, has_more, first_id, last_id; limit, after_id, before_id)."
)

_CHAT = Operation(
    "POST", "/v1/chat/completions", chat_completions, "createChatCompletion",
    "Run one turn of a conversation through Claude Code.",
    body={JSON: ChatCompletionRequest},
    params=TURN_PARAMS,
    responses={
        200: Reply("A chat.completion, or with stream=true an SSE stream of ChatStreamEvent "
                   "objects ending with `data: [DONE]`.", {JSON: ChatCompletion},
                   events=ChatStreamEvent, headers=(CONVERSATION,)),
        400: error_reply("Invalid request; the message names the field."),
        409: error_reply("The turn was interrupted (interrupt or reset of the conversation).",
                         headers=(CONVERSATION,)),
        422: error_reply("The answer did not match response_format even after one retry "
                         "(code invalid_json_output; the message names the problem).",
                         headers=(CONVERSATION,)),
        429: error_reply("Claude usage limit reached.", headers=(RETRY_AFTER, CONVERSATION)),
        502: error_reply("The Claude Code CLI crashed, or the Anthropic API failed.",
                         headers=(CONVERSATION,)),
        503: error_reply("Overloaded, CLI unavailable or not logged in, shutting down, or the "
                         "gateway is at max_concurrent_requests (code server_busy).",
                         headers=(RETRY_AFTER,)),
        504: error_reply("The turn showed no activity for too long.", headers=(CONVERSATION,)),
    },
)

#: every route the API serves, as documented in /openapi.json (gateway/api/openapi.py);
#: a dialect adds its module's ``OPERATIONS`` here
OPERATIONS: tuple[Operation, ...] = (
    _CHAT,
    *responses.OPERATIONS,
    *status_page.OPERATIONS,
    Operation(
        "GET", "/health", health, "health", "Gateway and CLI status.", public=True,
        responses={200: _health_reply("The CLI is available."),
                   503: _health_reply("The CLI is not available.")},
    ),
    Operation(
        "GET", "/openapi.json", openapi_json, "openapi", "This document.", public=True,
        responses={200: json_reply("The OpenAPI document.", {"type": "object"})},
    ),
    Operation(
        "GET", "/v1/models", list_models, "listModels",
        "Each model once: the family ids and the configured aliases (opus, sonnet and haiku "
        "are accepted too, not listed).",
        params=(_ANTHROPIC_MODELS,),
        responses={200: json_reply("The models.", ModelListReply)},
        error=ErrorReply,
    ),
    Operation(
        "GET", "/v1/models/{model_id}", get_model, "retrieveModel", "One model.",
        route="/v1/models/{model_id:.+}",
        params=(Param("model_id", "A model id or alias.", where="path"), _ANTHROPIC_MODELS),
        responses={200: json_reply("The model.", ModelReply),
                   404: error_reply("No such model.", model=ErrorReply)},
        error=ErrorReply,
    ),
    *messages.OPERATIONS,
    *USAGE_OPERATIONS,
    *audio.OPERATIONS,
)


@functools.cache
def _document() -> dict[str, Any]:
    return build_document(OPERATIONS)


def openapi_document() -> dict[str, Any]:
    """The document of every route :func:`create_app` serves (a fresh copy; callers may
    modify it)."""
    return copy.deepcopy(_document())


async def _stop_pumps(app: web.Application) -> None:
    pumps = list(app[STATE].pumps)
    for pump in pumps:  # their handlers answer 503 shutting_down (or end their stream)
        pump.cancel(TurnError(ErrorKind.SHUTDOWN, "The gateway is shutting down."))
    if pumps:
        await asyncio.gather(*(p.task for p in pumps), return_exceptions=True)


def create_app(
    engine: EngineAPI, config: ApiConfig, voice: VoiceService | None = None
) -> web.Application:
    """The OpenAI-compatible API as an aiohttp application (the caller runs and binds it).

    With ``voice``, ``/v1/audio/transcriptions`` and ``/v1/audio/speech`` use it; without,
    they answer 503 ``voice_unavailable``.
    """
    app = web.Application(
        # the guard first: Host and Origin before auth, any body reading and any engine work
        middlewares=[
            # the access log outside it all, so refused requests are logged too (it reads
            # no body and does no engine work)
            *([access_middleware] if config.access_log else []),
            guard_middleware(config), error_middleware, auth_middleware,
        ],
        client_max_size=config.max_body_bytes,
    )
    app.on_response_prepare.append(cors_headers)
    app[ENGINE] = engine
    app[CONFIG] = config
    app[STATE] = ApiState()
    app[RECORDS] = engine.tables(TurnStore)
    error_bodies: list[ErrorBody] = [messages.error_body]  # Anthropic's for its clients
    app[ERROR_BODIES] = error_bodies
    add_operations(app, OPERATIONS)
    setup_audio(app, voice)
    setup_status(app)
    app.on_shutdown.append(_stop_pumps)
    return app
