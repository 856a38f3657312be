"""One chat turn over HTTP, whatever the dialect: the part every chat endpoint shares.

A dialect (Chat Completions in :mod:`gateway.api.routes`, Anthropic Messages in
:mod:`gateway.api.messages`, OpenAI Responses) only parses its wire format into the neutral
:class:`TurnRequest` and renders events into its wire format. Everything between is here:

* :func:`read_json` reads and decodes the body (413 over the limit, 400 for bad JSON, big
  bodies parsed in a worker thread) and hands it to the dialect's parser;
* :func:`stream_mode` / :func:`tool_mode` / :func:`header_id` / :func:`permission_mode`
  apply the gateway's own headers (``X-Stream-Mode``, ``X-Tool-Mode``,
  ``X-Conversation-Id``/``X-Session-Id``, ``X-Permission-Mode``, ``X-Project``);
* :func:`run_exchange` resolves the model, plans the conversation with the one set of
  conversation rules (:mod:`gateway.api.conversation`: explicit keys, continuation from
  resent history, seeding with a transcript, client tool round trips that resume a
  suspended turn), builds the prompt, starts the :class:`~gateway.api.turn.TurnPump` (which
  stores the fingerprints after the turn) and calls the dialect's ``respond`` with an
  :class:`Exchange`; a client that goes away is handled here (``server.on_disconnect``);
* :func:`limited` counts a handler against ``server.max_concurrent_requests``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic_core import from_json

from gateway.api.config import ApiConfig
from gateway.api.conversation import Branch, Plan, plan_conversation, transcript_part
from gateway.api.convert import Conversation, build_prompt
from gateway.api.fields import parse_choice
from gateway.api.http import CONFIG, key_owner, read_body, refuse_when_full
from gateway.api.lineage import Lineage
from gateway.api.turn import TurnPump
from gateway.api.turn_store import TurnStore
from gateway.engine.api import EngineAPI, Preferences, TurnRunner
from gateway.engine.client_tools import ClientTool, ToolMode
from gateway.engine.events import Event, Prompt, StreamMode, TurnOptions
from gateway.engine.permissions import PermissionMode
from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

T = TypeVar("T")

CONVERSATION_HEADERS = ("X-Conversation-Id", "X-Session-Id")
STREAM_MODE_HEADER = "X-Stream-Mode"
TOOL_MODE_HEADER = "X-Tool-Mode"
PERMISSION_MODE_HEADER = "X-Permission-Mode"
PROJECT_HEADER = "X-Project"
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
    #: requests by how their history related to their conversation (``/health``)
    lineage: dict[Lineage, int] = field(default_factory=lambda: dict.fromkeys(Lineage, 0))

    def claim(self, key: str) -> bool:
        if key in self.claimed:
            return False
        self.claimed.add(key)
        return True

    def release(self, key: str) -> None:
        self.claimed.discard(key)


ENGINE: web.AppKey[EngineAPI] = web.AppKey("api_engine", EngineAPI)
STATE: web.AppKey[ApiState] = web.AppKey("api_state", ApiState)
#: the one turn record of the application (it keeps the records used last in memory)
RECORDS: web.AppKey[TurnStore] = web.AppKey("api_records", TurnStore)


class Disconnected(Exception):
    """The HTTP client went away while its handler waited for the turn."""


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class KeyCandidates:
    """What a request offers to name its conversation, by precedence (rule 1)."""

    header_id: str | None = None  # X-Conversation-Id / X-Session-Id
    prompt_cache_key: str | None = None  # prompt_cache_key (Chat, Responses)
    user: str | None = None  # user (Chat), metadata.user_id (Messages)
    #: the named conversation goes on from an earlier point (Responses' older response)
    branch: Branch | None = None


@dataclass(frozen=True)
class TurnRequest:
    """A chat request in neutral form: what a dialect's parser produces."""

    conversation: Conversation
    #: the model the client named (resolved here; unknown -> 400 ``model_not_found``)
    model: str
    mode: StreamMode
    keys: KeyCandidates
    tools: tuple[ClientTool, ...] = ()
    tool_choice: str = "auto"
    tool_mode: ToolMode = ToolMode.AGENT
    #: the field path of the messages in this dialect, for the "is empty" 400
    messages_field: str = "messages"
    #: who runs the turn: None for the engine, or a wrapper (structured output)
    runner: Callable[[TurnRunner], TurnRunner] | None = None
    #: the turn's origin label (notifications, logs)
    origin: str = "api"
    #: what the client is shown of an answer (e.g. cut at a stop sequence); the
    #: conversation is remembered by that, so the client's resent history continues it
    reply_text: Callable[[str], str] | None = None

    @property
    def functions(self) -> bool:
        """The client's tools are offered to Claude (tool mode ``client``/``hybrid``)."""
        return self.tool_mode is not ToolMode.AGENT


def header_id(request: web.Request) -> str | None:
    """The conversation the client named in ``X-Conversation-Id`` (or ``X-Session-Id``)."""
    return next((request.headers[h] for h in CONVERSATION_HEADERS if request.headers.get(h)), None)


def stream_mode(request: web.Request, body_mode: StreamMode | None) -> StreamMode:
    """``X-Stream-Mode`` header, else the body's own choice, else ``server.stream_mode``."""
    header = request.headers.get(STREAM_MODE_HEADER)
    if header:
        return parse_choice(header, StreamMode, f"{STREAM_MODE_HEADER} header")
    return body_mode or request.app[CONFIG].stream_mode


def tool_mode(request: web.Request, body_mode: ToolMode | None) -> ToolMode:
    """``X-Tool-Mode`` header, else the body's own choice, else ``server.tool_mode``."""
    header = request.headers.get(TOOL_MODE_HEADER)
    if header:
        return parse_choice(header, ToolMode, f"{TOOL_MODE_HEADER} header")
    return body_mode or request.app[CONFIG].tool_mode


def permission_mode(request: web.Request) -> PermissionMode | None:
    """``X-Permission-Mode``: ask, edits or plan makes this turn stricter than the
    conversation's mode (``claude.permission_mode``); a laxer one changes nothing. Approval
    requests go to the Telegram notification chat, else they are denied."""
    header = request.headers.get(PERMISSION_MODE_HEADER)
    if not header:
        return None
    return PermissionMode.parse(header, what=f"{PERMISSION_MODE_HEADER} header value")


def project(request: web.Request) -> str | None:
    """``X-Project``: the project the conversation works in (``[[projects]]``; none = the
    default, claude.workspace). An unknown name is a 400 that lists the valid ones."""
    header = request.headers.get(PROJECT_HEADER, "").strip()
    if not header:
        return None
    try:
        return request.app[ENGINE].project(header).name
    except GatewayError as exc:
        raise GatewayError(exc.kind, f"{PROJECT_HEADER} header: {exc.message}") from None


# --------------------------------------------------------------------------- the body

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


def decode_json(raw: bytes) -> Any:
    """A request body as JSON, or a 400 that says what is wrong with it.

    pydantic-core's parser (Rust) reads a valid body several times faster than the stdlib's
    (a 1 MB resent history: ~0.25 ms against ~1 ms) and gives the same values, big integers
    and NaN included. What it refuses (a lone surrogate escape, a UTF-8 BOM, nesting deeper
    than 200, broken JSON) is read again by the stdlib's, which decides as before: so a
    malformed body gets the stdlib's words for its 400, and what was accepted still is."""
    try:
        return from_json(raw)
    except ValueError:
        pass
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
    return body


async def read_json(request: web.Request, parse: Callable[[Any], T]) -> T:
    """The body read (413 over ``server.max_body_mb``), decoded and given to ``parse``;
    a large body is decoded and parsed in a worker thread, off the event loop."""
    raw = await read_body(request, request.app[CONFIG].max_body_bytes)

    def decode_and_parse() -> T:
        return parse(decode_json(raw))

    if len(raw) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(decode_and_parse)
    return decode_and_parse()


def limited(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A chat handler counted against ``server.max_concurrent_requests`` (503 above it)."""

    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        await refuse_when_full(request, state.active_requests,
                               request.app[CONFIG].max_concurrent_requests, "requests")
        state.active_requests += 1
        try:
            return await handler(request)
        finally:
            state.active_requests -= 1

    return counted


# --------------------------------------------------------------------------- the exchange


class Exchange:
    """A running turn as a dialect's ``respond`` sees it: its events, its conversation id,
    and the stream it may have started (so a disconnect can still end the request)."""

    def __init__(self, request: web.Request, pump: TurnPump, config: ApiConfig) -> None:
        self.request = request
        self.pump = pump
        self.config = config
        #: the started streamed response, if any (see :meth:`start_stream`)
        self.stream: web.StreamResponse | None = None

    @property
    def plan(self) -> Plan:
        return self.pump.plan

    @property
    def conversation_id(self) -> str:
        return self.pump.plan.conversation_id

    @property
    def mode(self) -> StreamMode:
        return self.pump.mode

    @property
    def headers(self) -> dict[str, str]:
        """Headers of every response of this exchange (the conversation id)."""
        return {"X-Conversation-Id": self.plan.conversation_id}

    @property
    def started(self) -> bool:
        return self.stream is not None

    def connected(self) -> bool:
        transport = self.request.transport
        return transport is not None and not transport.is_closing()

    async def next_event(self, idle: float | None = None) -> Event | None:
        """The next event, or None when ``idle`` seconds passed first (keepalive time).
        Raises :class:`Disconnected` when the client went away."""
        loop = asyncio.get_running_loop()
        deadline = None if idle is None else loop.time() + idle
        while True:
            wait = DISCONNECT_POLL_SECONDS
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - loop.time()))
            try:
                return await asyncio.wait_for(self.pump.get(), wait)
            except TimeoutError:
                pass
            if not self.connected():
                raise Disconnected()
            if deadline is not None and loop.time() >= deadline:
                return None

    async def start_stream(self, headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Send the 200 and the headers of a server-sent event stream."""
        assert self.stream is None, "the stream is started once"
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **self.headers,
                **(headers or {}),
            },
        )
        await response.prepare(self.request)
        self.stream = response
        return response

    async def write(self, data: bytes) -> None:
        """Write to the started stream."""
        assert self.stream is not None, "start_stream first"
        await self.stream.write(data)

    async def end_stream(self) -> web.StreamResponse:
        assert self.stream is not None, "start_stream first"
        await self.stream.write_eof()
        return self.stream

    def client_gone(self) -> None:
        """The client left: interrupt the turn, or let it finish (``server.on_disconnect``)."""
        pump = self.pump
        if pump.task.done():
            return
        if self.config.on_disconnect == "interrupt":
            log.info("client went away: interrupting %s", pump.plan.key)
            pump.cancel()
        elif not pump.started:  # nothing to finish: the engine withdraws the waiting turn
            log.info("client went away before its turn started: withdrawing %s", pump.plan.key)
            pump.cancel()
        else:
            log.info("client went away: %s finishes in the background", pump.plan.key)


Respond = Callable[[Exchange], Awaitable[web.StreamResponse]]


def resolve_model(engine: EngineAPI, name: str) -> str | None:
    """The engine's name for the model the client named; unknown: 400 ``model_not_found``."""
    try:
        return engine.resolve_model(name)
    except GatewayError as exc:
        raise GatewayError(ErrorKind.UNKNOWN_MODEL, f"model: {exc.message}") from None


def _prompt(turn: TurnRequest, plan: Plan) -> Prompt:
    conversation = turn.conversation
    prompt = build_prompt(transcript_part(conversation, plan), seed=plan.seed,
                          results=turn.functions)
    if prompt.is_empty():
        raise GatewayError(
            ErrorKind.INVALID_REQUEST,
            f"{turn.messages_field}[{conversation.new[-1].index}].content: is empty; there "
            "is nothing to send after the last assistant message",
        )
    return prompt


async def open_exchange(request: web.Request, turn: TurnRequest) -> Exchange:
    """Plan the conversation, build the prompt and start the turn."""
    engine = request.app[ENGINE]
    state = request.app[STATE]
    model = resolve_model(engine, turn.model)
    permissions = permission_mode(request)
    chosen_project = project(request)
    keys = turn.keys
    records = request.app[RECORDS]
    plan = await plan_conversation(
        turn.conversation,
        header_id=keys.header_id,
        prompt_cache_key=keys.prompt_cache_key,
        user=keys.user,
        store=engine.preferences,
        records=records,
        claim=state.claim,
        project=chosen_project,
        owner=key_owner(request),
        branch=keys.branch,
    )
    try:
        prompt = _prompt(turn, plan)
        functions = turn.functions
        options = TurnOptions(
            model=model, mode=turn.mode, system=turn.conversation.system, origin=turn.origin,
            tools=turn.tools if functions else (), tool_mode=turn.tool_mode,
            tool_choice=turn.tool_choice if functions else "auto",
            permission_mode=permissions, fork_at=plan.fork_at,
        )
        if plan.fresh:  # the named conversation's session does not hold this branch
            await engine.reset(plan.key)
    except BaseException:
        if plan.claimed:
            state.release(plan.key)
        raise
    state.lineage[plan.lineage] += 1
    log.info("chat %s rule=%s lineage=%s turn=%d fork=%s seed=%s", plan.key, plan.rule,
             plan.lineage, plan.turn, plan.fork_at is not None, plan.seed)
    runner: TurnRunner = engine if turn.runner is None else turn.runner(engine)
    pump = start_pump(state, runner, engine.preferences, plan, prompt, options,
                      shown=turn.reply_text, records=records)
    return Exchange(request, pump, request.app[CONFIG])


async def run_exchange(
    request: web.Request, turn: TurnRequest, respond: Respond
) -> web.StreamResponse:
    """Start the turn and let ``respond`` render it; a client that leaves meanwhile is
    handled by ``server.on_disconnect`` (its turn interrupted or left to finish)."""
    exchange = await open_exchange(request, turn)
    try:
        return await respond(exchange)
    except (Disconnected, ConnectionError):
        exchange.client_gone()
        # Nobody will read this; aiohttp needs a response to finish the request.
        return exchange.stream if exchange.stream is not None else web.Response(status=499)
    except asyncio.CancelledError:
        exchange.client_gone()
        raise


def start_pump(
    state: ApiState,
    engine: TurnRunner,
    preferences: Preferences,
    plan: Plan,
    prompt: Prompt,
    options: TurnOptions,
    *,
    shown: Callable[[str], str] | None = None,
    records: TurnStore | None = None,
) -> TurnPump:
    def done(pump: TurnPump) -> None:
        state.pumps.discard(pump)
        if plan.claimed:
            state.release(plan.key)

    pump = TurnPump(engine, preferences, plan, prompt, options, on_done=done, shown=shown,
                    records=records)
    state.pumps.add(pump)
    return pump
