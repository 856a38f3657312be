"""The aiohttp application: handlers, SSE writer, keepalive, auth and limits.

Errors are always OpenAI error JSON, ``{"error": {"message", "type", "code", "param"}}``
(see :data:`gateway.api.convert.ERROR_TABLE` for the kind -> status table):

* 400 invalid request (the message names the field), unknown model (``model_not_found``);
* 401 only for a missing/wrong gateway API key, when keys are configured;
* 403 ``forbidden_origin``, 421 ``host_not_allowed`` and 415 ``unsupported_media_type`` from
  :mod:`gateway.api.guard`, before any of the rest (browser pages and DNS rebinding);
* 404 unknown path or model id, 405 wrong method, 413 body over ``max_body_bytes``;
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
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.api.access import STREAM_ERROR, access_middleware
from gateway.api.audio import setup_audio
from gateway.api.config import ApiConfig
from gateway.api.conversation import Plan, plan_conversation
from gateway.api.convert import (
    SSE_DONE,
    ChatRequest,
    ChunkFactory,
    build_prompt,
    finish_reason,
    http_error,
    parse_chat_request,
    parse_stream_mode,
    render_event,
    request_error,
    split_conversation,
    sse,
)
from gateway.api.functions import parse_tool_mode, tool_call_deltas
from gateway.api.guard import JSON, accepts, cors_headers, guard_middleware
from gateway.api.http import (
    CONFIG,
    ApiError,
    auth_middleware,
    error_middleware,
    error_response,
    key_ok,
    read_body,
    refuse_when_full,
)
from gateway.api.openapi import (
    Operation,
    Param,
    Reply,
    add_operations,
    error_reply,
    json_reply,
    openapi_json,
)
from gateway.api.structured import StructuredTurns
from gateway.api.turn import TurnPump, answer_text
from gateway.api.wire import HealthReply, Model, ModelList
from gateway.engine.api import EngineAPI, Preferences, TurnRunner
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import (
    Event,
    Prompt,
    StreamMode,
    ToolCallsRequested,
    TurnError,
    TurnOptions,
    TurnResult,
    Usage,
)
from gateway.errors import ErrorKind, GatewayError
from gateway.voice import VoiceService

log = logging.getLogger(__name__)

CONVERSATION_HEADERS = ("X-Conversation-Id", "X-Session-Id")
STREAM_MODE_HEADER = "X-Stream-Mode"
TOOL_MODE_HEADER = "X-Tool-Mode"
#: how often a waiting handler checks whether its client is still connected
DISCONNECT_POLL_SECONDS = 0.25
#: bodies larger than this are parsed in a worker thread
THREAD_PARSE_BYTES = 512 * 1024


@dataclass
class ApiState:
    """Per-application mutable state (no globals)."""

    started_at: float = field(default_factory=time.time)
    active_requests: int = 0
    claimed: set[str] = field(default_factory=set)  # automatic keys with a turn in flight
    pumps: set[TurnPump] = field(default_factory=set)

    def claim(self, key: str) -> bool:
        if key in self.claimed:
            return False
        self.claimed.add(key)
        return True

    def release(self, key: str) -> None:
        self.claimed.discard(key)


ENGINE: web.AppKey[EngineAPI] = web.AppKey("api_engine", EngineAPI)
STATE: web.AppKey[ApiState] = web.AppKey("api_state", ApiState)
#: Extra sections of ``/health``: name -> a function returning JSON-able data. Set by
#: ``gateway.app`` after :func:`create_app` (e.g. ``{"scheduler": scheduler.status}``).
STATUS_PROVIDERS: web.AppKey[dict[str, Callable[[], Any]]] = web.AppKey(
    "status_providers", dict
)
#: Checks of ``/health``: each returns None, or why the gateway is degraded (then
#: ``"status": "degraded"`` with the reasons in ``"problems"``). Set by ``gateway.app``.
HEALTH_CHECKS: web.AppKey[list[Callable[[], str | None]]] = web.AppKey("health_checks", list)


class _Disconnected(Exception):
    pass


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
    return web.json_response(_model_object(model_id, int(request.app[STATE].started_at)))


# --------------------------------------------------------------------------- chat completions


#: a JSON escape of a UTF-16 surrogate (a pair becomes one character; a lone one cannot be
#: encoded as UTF-8, e.g. a JavaScript client that cut a string inside an emoji)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _decode_and_parse(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
        if _SURROGATE_ESCAPE.search(raw):
            body = _without_lone_surrogates(body)  # U+FFFD, as a UTF-8 decoder would
    except UnicodeDecodeError:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "body: is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise GatewayError(
            ErrorKind.INVALID_REQUEST,
            f"body: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
        ) from None
    except RecursionError:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "body: JSON nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise GatewayError(ErrorKind.INVALID_REQUEST, "body: a JSON number is too long") from None
    return parse_chat_request(body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = request.app[CONFIG]
    await refuse_when_full(request, state.active_requests, config.max_concurrent_requests,
                           "requests")
    state.active_requests += 1
    try:
        return await _chat_completions(request, state, config)
    finally:
        state.active_requests -= 1


async def _chat_completions(
    request: web.Request, state: ApiState, config: ApiConfig
) -> web.StreamResponse:
    engine = request.app[ENGINE]
    raw = await read_body(request, config.max_body_bytes)
    if len(raw) > THREAD_PARSE_BYTES:
        chat = await asyncio.to_thread(_decode_and_parse, raw)
    else:
        chat = _decode_and_parse(raw)
    del raw
    header_mode = request.headers.get(STREAM_MODE_HEADER)
    if header_mode:
        mode = parse_stream_mode(header_mode, f"{STREAM_MODE_HEADER} header")
    else:
        mode = chat.stream_mode or config.stream_mode
    if chat.response_format is not None:
        mode = StreamMode.FINAL  # the JSON is checked before any of it is sent
    try:
        model = engine.resolve_model(chat.model)
    except GatewayError as exc:
        raise GatewayError(ErrorKind.UNKNOWN_MODEL, f"model: {exc.message}") from None
    conversation = split_conversation(chat.messages)
    header_id = next(
        (request.headers[h] for h in CONVERSATION_HEADERS if request.headers.get(h)), None
    )
    plan = await plan_conversation(
        conversation,
        header_id=header_id,
        prompt_cache_key=chat.prompt_cache_key,
        user=chat.user,
        store=engine.preferences,
        claim=state.claim,
    )
    header_tools = request.headers.get(TOOL_MODE_HEADER)
    if header_tools:
        tool_mode = parse_tool_mode(header_tools, f"{TOOL_MODE_HEADER} header")
    else:
        tool_mode = chat.tool_mode or config.tool_mode
    functions = tool_mode is not ToolMode.AGENT
    try:
        prompt = build_prompt(conversation, seed=plan.seed, results=functions)
        if prompt.is_empty():
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"messages[{conversation.new[-1].index}].content: is empty; there is nothing "
                "to send after the last assistant message",
            )
        options = TurnOptions(
            model=model, mode=mode, system=conversation.system, origin="api",
            tools=chat.tools if functions else (), tool_mode=tool_mode,
            tool_choice=chat.tool_choice if functions else "auto",
        )
    except BaseException:
        if plan.claimed:
            state.release(plan.key)
        raise
    log.info("chat %s rule=%s seed=%s stream=%s", plan.key, plan.rule, plan.seed, chat.stream)
    source: TurnRunner = engine
    if chat.response_format is not None:
        source = StructuredTurns(engine, chat.response_format)
    pump = _start_pump(state, source, engine.preferences, plan, prompt, options)
    factory = ChunkFactory(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), chat.model)
    headers = {"X-Conversation-Id": plan.conversation_id}
    out = _SseWriter(request, factory, headers)
    try:
        if chat.stream:
            return await _stream(request, pump, out, chat, config)
        return await _complete(request, pump, factory, headers)
    except (_Disconnected, ConnectionError):
        _client_gone(pump, config)
        # Nobody will read this; aiohttp needs a response to finish the request.
        return out.response if out.response is not None else web.Response(status=499)
    except asyncio.CancelledError:
        _client_gone(pump, config)
        raise


def _client_gone(pump: TurnPump, config: ApiConfig) -> None:
    if pump.task.done():
        return
    if config.on_disconnect == "interrupt":
        log.info("client went away: interrupting %s", pump.plan.key)
        pump.cancel()
    elif not pump.started:  # nothing to finish: the engine withdraws the waiting turn
        log.info("client went away before its turn started: withdrawing %s", pump.plan.key)
        pump.cancel()
    else:
        log.info("client went away: %s finishes in the background", pump.plan.key)


def _start_pump(
    state: ApiState,
    engine: TurnRunner,
    preferences: Preferences,
    plan: Plan,
    prompt: Prompt,
    options: TurnOptions,
) -> TurnPump:
    def done(pump: TurnPump) -> None:
        state.pumps.discard(pump)
        if plan.claimed:
            state.release(plan.key)

    pump = TurnPump(engine, preferences, plan, prompt, options, on_done=done)
    state.pumps.add(pump)
    return pump


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def _next_event(request: web.Request, pump: TurnPump, idle: float | None) -> Event | None:
    """The next event, or None when ``idle`` seconds passed first. Raises on a disconnect."""
    loop = asyncio.get_running_loop()
    deadline = None if idle is None else loop.time() + idle
    while True:
        wait = DISCONNECT_POLL_SECONDS
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - loop.time()))
        try:
            return await asyncio.wait_for(pump.get(), wait)
        except TimeoutError:
            pass
        if not _connected(request):
            raise _Disconnected()
        if deadline is not None and loop.time() >= deadline:
            return None


async def _complete(
    request: web.Request, pump: TurnPump, factory: ChunkFactory, headers: dict[str, str]
) -> web.StreamResponse:
    rendered: list[str] = []
    while True:
        event = await _next_event(request, pump, None)
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
        piece = render_event(event, pump.mode)
        if piece:
            rendered.append(piece)


class _SseWriter:
    def __init__(self, request: web.Request, factory: ChunkFactory, headers: dict[str, str]):
        self.request = request
        self.factory = factory
        self.headers = headers
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self) -> None:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **self.headers,
            },
        )
        await response.prepare(self.request)
        self.response = response
        await self.send(self.factory.role())

    async def send(self, data: dict[str, Any]) -> None:
        if self.response is None:
            await self.start()
        assert self.response is not None
        await self.response.write(sse(data))

    async def done(self) -> web.StreamResponse:
        if self.response is None:
            await self.start()
        assert self.response is not None
        await self.response.write(SSE_DONE)
        await self.response.write_eof()
        return self.response


async def _stream(
    request: web.Request,
    pump: TurnPump,
    out: _SseWriter,
    chat: ChatRequest,
    config: ApiConfig,
) -> web.StreamResponse:
    factory = out.factory
    wrote_text = False
    while True:
        event = await _next_event(request, pump, config.keepalive_seconds)
        if event is None:  # nothing to say for keepalive_seconds: an empty delta
            if out.started:
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
            if not out.started:
                return error_response(error, out.headers)
            request[STREAM_ERROR] = error.code  # for the access log: the 200 was not all
            await out.send(error.body())
            return await out.done()
        if isinstance(event, ToolCallsRequested):
            for delta in tool_call_deltas(event.calls):
                await out.send(factory.chunk(delta))
            await out.send(factory.finish("tool_calls"))
            if chat.include_usage:  # the turn goes on; its usage comes with its end
                await out.send(factory.usage(Usage()))
            return await out.done()
        piece = render_event(event, pump.mode)
        if piece:
            await out.send(factory.text(piece))
            wrote_text = True


# --------------------------------------------------------------------------- app factory


def _health_reply(description: str) -> Reply:
    return json_reply(f"{description} Without a key while GATEWAY_API_KEYS is set: only "
                      "HealthPublic (status and version).", HealthReply)


#: every route the API serves, as documented in /openapi.json (gateway/api/openapi.py);
#: a dialect adds its module's ``OPERATIONS`` here
OPERATIONS: tuple[Operation, ...] = (
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
        responses={200: json_reply("The models.", ModelList)},
    ),
    Operation(
        "GET", "/v1/models/{model_id}", get_model, "retrieveModel", "One model.",
        route="/v1/models/{model_id:.+}",
        params=(Param("model_id", "A model id or alias.", where="path"),),
        responses={200: json_reply("The model.", Model), 404: error_reply("No such model.")},
    ),
)



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
    add_operations(app, OPERATIONS)
    app.router.add_post("/v1/chat/completions", accepts(JSON)(chat_completions))
    setup_audio(app, voice)
    app.on_shutdown.append(_stop_pumps)
    return app
