"""A fake Anthropic Messages API for driving the real Claude Code CLI offline.

Used by the test suite and by the benchmark scripts under ``bench/``; it has no pytest dependency.
The aiohttp server runs in its own thread with its own event loop, so synchronous code in the
caller's thread (e.g. the sync ``openai`` client) never blocks it::

    with FakeAnthropic() as fake:
        env = cli_env(fake.base_url, home)          # env for the bundled CLI
        fake.script({"text": "scripted"}, match="hello")
        ...
        fake.requests()[-1]["last_user_text"]

Standalone: ``python tests/fake_anthropic.py --port 0`` prints ``LISTENING <port>`` and serves
until killed. A process that does not own the object can drive it over HTTP with
``POST /_fake/script`` (``{"steps": [...], "match": null}``), ``GET /_fake/requests``,
``POST /_fake/reset`` and ``POST /_fake/ratelimit`` (``{"headers": {...} | null}``).

Routes
------
* ``POST /v1/messages`` (the CLI sends ``?beta=true`` and ``stream: true``): SSE exactly like
  the real API (``message_start``, ``ping``, ``content_block_start/delta/stop`` per block with
  text split into up to 5 ``text_delta`` pieces (``pieces`` in a script) and tool input into
  3 ``input_json_delta`` pieces, ``message_delta``, ``message_stop``). ``stream: false`` gets
  one JSON message. Every response carries ``request-id: req_fake…`` and the headers given to
  :meth:`FakeAnthropic.set_ratelimit_headers`.
* ``HEAD /`` and ``GET /`` → 200 (CLI 2.1.197 sends ``HEAD /`` as a preflight; 2.1.331 sends
  only ``POST /v1/messages``), ``GET /v1/models``, ``POST /v1/messages/count_tokens`` →
  ``{"input_tokens": n}``; anything else → 404 JSON.

Choosing the reply
------------------
"Last user text" is the last text block not starting with ``<system-reminder>`` (or what
follows the leading reminders of one that does) in the last message whose role is ``user``
(``role: "system"`` entries are skipped; content may be a string or blocks). It is ``""``
when that message only carries ``tool_result`` blocks.

1. Scripts (:meth:`FakeAnthropic.script`), FIFO: the first queued step whose ``match`` is None or a
   substring of the *conversation's latest user text* (the last user text, or for a tool_result
   follow-up the nearest earlier user text) is consumed. Step keys: ``text``; ``tool_use``
   (``{"name", "input", "id"?}``) or ``tool_uses`` (list, parallel calls), with ``text`` as an
   optional block before them; ``error`` (HTTP status) with ``message``, ``error_type``,
   ``retry_after``; ``hang``; ``stall``; ``delay`` (seconds before the first byte);
   ``chunk_delay`` (seconds between deltas); ``pieces`` (how many ``text_delta`` pieces a
   text block is streamed in, default 5); ``usage`` (overrides ``input_tokens``,
   ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``);
   ``stop_reason``; ``model``.
2. A last user message carrying ``tool_result`` blocks and no user text → ``Tool said: <result
   text>`` (with text too, e.g. a new prompt after an interrupted call, the text is answered).
3. Triggers in the last user text: ``FAIL_500|429|401|529`` (HTTP error with an Anthropic error
   body, ``retry-after: 1`` for 429/529; ``FAIL_<code>_ONCE`` only the first time that exact text
   is seen), ``HANG`` (never answer), ``STALL`` (headers, ``message_start`` and one text delta,
   then silence), ``RUN_BASH`` (text "I'll run a command." + ``Bash`` tool_use
   ``{"command": "echo hello", "description": "Print hello"}``), ``SLOW`` (modifier: 1 s before
   the first byte and 0.3 s between deltas). An image block → ``image received (<media_type>,
   <n> b64 chars)``. Otherwise ``echo: <last user text>`` (``echo: <first 50 chars>… (<n> chars)``
   when longer than 200 chars).

:meth:`FakeAnthropic.requests` logs every ``POST /v1/messages`` (errors and hangs included; other
routes are not logged) as a dict: ``time, method, path, query, model, stream, roles,
last_user_text, tool_results [{tool_use_id, content, is_error}], images [media types],
system_text`` (top-level ``system`` blocks then ``role: "system"`` messages, joined by newlines)
``, tools [names], headers`` (names lower-cased, ``x-api-key``/``authorization`` redacted)
``, body_size, messages, reply`` (what the fake decided: ``"text"``, ``"tool_use"``,
``"error 500"``, ``"hang"``, ``"stall"``). :meth:`FakeAnthropic.hits` lists ``"METHOD /path"`` of
every request on any route.

Rate-limit events (measured with the bundled CLI 2.1.331)
---------------------------------------------------------
The CLI reads the ``anthropic-ratelimit-unified-*`` response headers (names found with ``grep -a``
on the binary): ``-status`` (``allowed`` | ``allowed_warning`` | ``rejected``), ``-reset`` (epoch
seconds), ``-representative-claim`` (``five_hour`` | ``seven_day`` | …), ``-fallback``
(``available``), ``-5h-status/-reset/-utilization``, ``-7d-status/-reset/-utilization``,
``-overage-status/-reset/-disabled-reason/-utilization/…``, ``-upgrade-paths`` and more. It turns
them into a stdout line::

    {"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning",
     "resetsAt":1795559201,"rateLimitType":"five_hour","utilization":0.91,
     "overageStatus":"rejected","overageDisabledReason":"org_level_disabled",
     "isUsingOverage":false,"unifiedWindows":{"five_hour":{"utilization":0.91,
     "resetsAt":1795559201,"status":"allowed_warning"},"seven_day":{...}}},
     "uuid":"…","session_id":"…"}

(``claude_agent_sdk`` parses it as ``RateLimitEvent``.) Measured facts:

* **Not with a plain ``ANTHROPIC_API_KEY``**: the headers are only read for a claude.ai
  subscriber (OAuth login) or an "LLM gateway". Offline, the gateway path works: set
  ``ANTHROPIC_AUTH_TOKEN`` to a JWT whose payload has ``"aud": "claude-gateway"`` (the signature
  is not checked), with ``ANTHROPIC_BASE_URL`` not api.anthropic.com.
  :data:`RATELIMIT_GATEWAY_TOKEN` is such a token;
  ``cli_env(url, home, ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN)`` works with or without the
  API key (both headers are then sent).
* Only ``-status`` is required: ``{"anthropic-ratelimit-unified-status": "allowed"}`` alone gives
  ``{"status":"allowed","isUsingOverage":false}``. ``allowed_warning`` in ``-status`` itself is
  reported as ``allowed``; the warning comes from the per-window ``-5h-``/``-7d-`` headers
  (``utilization`` 0.91 in :func:`sample_ratelimit_headers`).
* One event per *change*: the first response of a process emits it, identical headers on later
  requests in the same process emit nothing. It is printed after that API call's
  ``message_stop`` stream_event (before the tool_result ``user`` line or the ``result``).
* ``-status: rejected`` on a 429 (``FAIL_429``) is still retried like any 429 (``api_retry``
  lines); after the last attempt come the event (``"status":"rejected"``), a synthetic
  ``assistant`` (``error: "rate_limit"``, text "You've hit your 5-hour limit · resets 10:27pm
  (UTC)") and a ``result`` with ``is_error: true, api_error_status: 429``; exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import json
import math
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = [
    "RATELIMIT_GATEWAY_TOKEN",
    "FakeAnthropic",
    "bundled_cli",
    "cli_env",
    "sample_ratelimit_headers",
    "user_message_line",
]

DEFAULT_MODEL = "claude-opus-4-5"
SYSTEM_REMINDER = "<system-reminder>"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_FAIL_CODES = (500, 429, 401, 529)
_REDACTED_HEADERS = {"x-api-key", "authorization"}

# An unsigned JWT whose payload is {"aud": "claude-gateway", "sub": "fake"}. Used as
# ANTHROPIC_AUTH_TOKEN, it makes the CLI treat the base URL as an LLM gateway, which is the only
# offline way to make it read the anthropic-ratelimit-unified-* headers (see the module docstring).
RATELIMIT_GATEWAY_TOKEN = (
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJhdWQiOiJjbGF1ZGUtZ2F0ZXdheSIsInN1YiI6ImZha2UifQ.fake"
)


def bundled_cli() -> str:
    """Path of the Claude Code CLI bundled in the installed claude-agent-sdk wheel."""
    import claude_agent_sdk

    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if not path.exists():
        raise FileNotFoundError(f"bundled claude CLI not found at {path}")
    return str(path)


def cli_env(
    base_url: str,
    home: str,
    *,
    api_timeout_ms: int = 5000,
    max_retries: int = 0,
    inherit: bool = True,
    **extra: str,
) -> dict[str, str]:
    """Environment for running the real CLI offline against ``base_url`` with a throwaway HOME.

    ``extra`` entries are added last (e.g. ``ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN``).
    Variables that would point the CLI elsewhere or mark it as nested are removed.
    """
    env = dict(os.environ) if inherit else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key in list(env):
        if key.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "CLAUDECODE")) or key in {
            "CLAUDE_CONFIG_DIR",
            "API_TIMEOUT_MS",
        }:
            del env[key]
    env.update(
        {
            "HOME": home,
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "IS_SANDBOX": "1",
            "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
            "API_TIMEOUT_MS": str(api_timeout_ms),
        }
    )
    env.update(extra)
    return env


def user_message_line(content: str | list[dict[str, Any]], session_id: str = "default") -> bytes:
    """One ``--input-format stream-json`` user line (newline included), as the SDK sends it."""
    message = {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": session_id,
    }
    return (json.dumps(message) + "\n").encode()


def sample_ratelimit_headers(
    status: str = "allowed_warning", utilization: float = 0.91, claim: str = "five_hour"
) -> dict[str, str]:
    """A set of ``anthropic-ratelimit-unified-*`` headers that makes the CLI emit a
    ``rate_limit_event`` (when it runs with ``ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN``)."""
    now = int(time.time())
    five_h, seven_d = now + 3 * 3600, now + 5 * 86400
    reset = five_h if claim == "five_hour" else seven_d
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": str(reset),
        "anthropic-ratelimit-unified-representative-claim": claim,
        "anthropic-ratelimit-unified-fallback": "available",
        "anthropic-ratelimit-unified-5h-status": status,
        "anthropic-ratelimit-unified-5h-reset": str(five_h),
        "anthropic-ratelimit-unified-5h-utilization": str(utilization),
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": str(seven_d),
        "anthropic-ratelimit-unified-7d-utilization": "0.2",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    }


# --------------------------------------------------------------------------- request parsing


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _block_text(content: Any) -> str:
    """Text of a tool_result ``content`` (string or list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in _blocks(content):
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "image":
            parts.append("[image]")
    return "\n".join(parts)


_LEADING_REMINDERS = re.compile(r"^(?:\s*<system-reminder>.*?</system-reminder>)+\s*", re.DOTALL)


def _user_texts(message: dict[str, Any]) -> list[str]:
    """The user's texts: a block that starts with ``<system-reminder>`` counts with its
    leading reminders removed (a client's Claude Code sends them in one block with the
    prompt through the gateway), and not at all when nothing else is in it."""
    texts = []
    for b in _blocks(message.get("content")):
        if b.get("type") != "text":
            continue
        text = str(b.get("text", ""))
        if text.lstrip().startswith(SYSTEM_REMINDER):
            text = _LEADING_REMINDERS.sub("", text, count=1)
            if not text or text.lstrip().startswith(SYSTEM_REMINDER):
                continue
        texts.append(text)
    return texts


def _images(blocks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for block in blocks:
        if block.get("type") == "image":
            source = block.get("source") or {}
            found.append((str(source.get("media_type", "?")), len(str(source.get("data", "")))))
        elif block.get("type") == "tool_result":
            found.extend(_images(_blocks(block.get("content"))))
    return found


class _Parsed:
    """What the fake needs to know about one /v1/messages request body."""

    def __init__(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        self.messages: list[dict[str, Any]] = (
            [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        )
        self.roles = [str(m.get("role")) for m in self.messages]
        users = [m for m in self.messages if m.get("role") == "user"]
        last = users[-1] if users else {}
        blocks = _blocks(last.get("content"))
        texts = _user_texts(last)
        self.last_user_text = texts[-1] if texts else ""
        # For script matching, a tool_result follow-up still belongs to the last prompt.
        self.match_text = self.last_user_text
        if not self.match_text:
            for message in reversed(users[:-1]):
                earlier = _user_texts(message)
                if earlier:
                    self.match_text = earlier[-1]
                    break
        self.tool_results = [
            {
                "tool_use_id": b.get("tool_use_id"),
                "content": _block_text(b.get("content")),
                "is_error": bool(b.get("is_error", False)),
            }
            for b in blocks
            if b.get("type") == "tool_result"
        ]
        self.images = _images(blocks)
        system_parts: list[str] = []
        system = body.get("system")
        if isinstance(system, str):
            system_parts.append(system)
        else:
            system_parts.extend(str(b.get("text", "")) for b in _blocks(system))
        for message in self.messages:
            if message.get("role") == "system":
                system_parts.extend(str(b.get("text", "")) for b in _blocks(message.get("content")))
        self.system_text = "\n".join(system_parts)
        tools = body.get("tools")
        self.tools = [
            str(t.get("name"))
            for t in (tools if isinstance(tools, list) else [])
            if isinstance(t, dict)
        ]
        self.model = str(body.get("model") or DEFAULT_MODEL)
        self.stream = bool(body.get("stream", False))


# --------------------------------------------------------------------------- the fake


class FakeAnthropic:
    """Fake Anthropic Messages API served by aiohttp from a background thread."""

    def __init__(
        self,
        *,
        first_token_delay: float = 0.0,
        chunk_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.first_token_delay = first_token_delay
        self.chunk_delay = chunk_delay
        self.host = host
        self.port = port
        self.base_url = ""
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._scripts: list[tuple[str | None, dict[str, Any]]] = []
        self._seen_once: set[str] = set()
        self._ratelimit_headers: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._open_transports: set[asyncio.Transport] = set()
        self._hits: list[str] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeAnthropic:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-anthropic", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread.join(5)
            self._thread = None
            self._loop = None
            raise RuntimeError(f"fake Anthropic server failed to start: {failure[0]!r}")
        return self

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._count_hit])
        app.router.add_get("/", self._root)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/_fake/script", self._ctl_script)
        app.router.add_get("/_fake/requests", self._ctl_requests)
        app.router.add_post("/_fake/reset", self._ctl_reset)
        app.router.add_post("/_fake/ratelimit", self._ctl_ratelimit)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        self.base_url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the server and its thread. Hanging and stalled responses are cut off. Idempotent."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._thread = None
            self._loop = None
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        for transport in list(self._open_transports):
            transport.abort()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- test API

    def script(self, *steps: dict[str, Any], match: str | None = None) -> None:
        """Queue reply steps, consumed FIFO by requests whose user text contains ``match``."""
        with self._lock:
            self._scripts.extend((match, dict(step)) for step in steps)

    def hits(self) -> list[str]:
        """``"METHOD /path"`` of every request on any route (control routes excluded)."""
        with self._lock:
            return list(self._hits)

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the log of ``POST /v1/messages`` requests, oldest first."""
        with self._lock:
            return copy.deepcopy(self._log)

    def pending_scripts(self) -> int:
        """How many scripted steps have not been used yet."""
        with self._lock:
            return len(self._scripts)

    def reset(self) -> None:
        """Clear the request log, queued scripts and the FAIL_xxx_ONCE memory."""
        with self._lock:
            self._log.clear()
            self._hits.clear()
            self._scripts.clear()
            self._seen_once.clear()

    def set_ratelimit_headers(self, headers: dict[str, str] | None) -> None:
        """Extra headers sent on every /v1/messages response (None or {} to remove them)."""
        with self._lock:
            self._ratelimit_headers = dict(headers or {})

    # ----------------------------------------------------------------- helpers

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}{secrets.token_hex(6)}"

    def _base_headers(self) -> dict[str, str]:
        with self._lock:
            headers = dict(self._ratelimit_headers)
        headers["request-id"] = self._new_id("req_fake")
        return headers

    def _take_script(self, text: str) -> dict[str, Any] | None:
        with self._lock:
            for index, (match, step) in enumerate(self._scripts):
                if match is None or match in text:
                    del self._scripts[index]
                    return step
        return None

    def _error_response(
        self,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> web.Response:
        headers = self._base_headers()
        if retry_after is not None:
            headers["retry-after"] = str(retry_after if retry_after % 1 else int(retry_after))
        body = {
            "type": "error",
            "error": {
                "type": error_type or _ERROR_TYPES.get(status, "api_error"),
                "message": message or f"fake {status} error",
            },
            "request_id": headers["request-id"],
        }
        return web.json_response(body, status=status, headers=headers)

    async def _wait_until_stopped(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            self._open_transports.add(transport)
        try:
            assert self._stopping is not None
            await self._stopping.wait()
        finally:
            if transport is not None:
                self._open_transports.discard(transport)
                transport.abort()

    # ----------------------------------------------------------------- routes

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({})

    @web.middleware
    async def _count_hit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_fake/"):
            with self._lock:
                self._hits.append(f"{request.method} {request.path}")
        response: web.StreamResponse = await handler(request)
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}},
            status=404,
        )

    async def _models(self, request: web.Request) -> web.Response:
        ids = ["claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5-20251001"]
        data = [
            {"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
            for i in ids
        ]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        raw = await request.read()
        return web.json_response({"input_tokens": max(1, len(raw) // 4)})

    async def _ctl_script(self, request: web.Request) -> web.Response:
        payload = await request.json()
        steps = payload.get("steps") or []
        self.script(*steps, match=payload.get("match"))
        return web.json_response({"queued": len(steps)})

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests())

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({})

    async def _ctl_ratelimit(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.set_ratelimit_headers(payload.get("headers"))
        return web.json_response({})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {
                k.lower(): ("<redacted>" if k.lower() in _REDACTED_HEADERS else v)
                for k, v in request.headers.items()
            },
            "body_size": len(raw),
        }
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            entry.update(reply="error 400", messages=[], roles=[], last_user_text="")
            self._record(entry)
            return self._error_response(400, f"invalid JSON body: {exc}")
        parsed = _Parsed(body)
        entry.update(
            model=parsed.model,
            stream=parsed.stream,
            roles=parsed.roles,
            last_user_text=parsed.last_user_text,
            tool_results=parsed.tool_results,
            images=[media for media, _ in parsed.images],
            system_text=parsed.system_text,
            tools=parsed.tools,
            messages=parsed.messages,
        )
        plan = self._plan(parsed)
        entry["reply"] = plan["reply"]
        self._record(entry)

        delay = float(plan.get("delay", self.first_token_delay))
        if delay > 0:
            await asyncio.sleep(delay)
        if plan["reply"] == "hang":
            await self._wait_until_stopped(request)
            return web.Response(status=503)
        if "error" in plan:
            return self._error_response(
                int(plan["error"]),
                plan.get("message"),
                error_type=plan.get("error_type"),
                retry_after=plan.get("retry_after"),
            )
        message = self._build_message(parsed, plan, input_tokens=max(1, len(raw) // 4))
        if not parsed.stream:
            return web.json_response(message, headers=self._base_headers())
        return await self._stream(request, message, plan)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    # ----------------------------------------------------------------- reply planning

    def _plan(self, parsed: _Parsed) -> dict[str, Any]:
        """Decide the reply. Returns a dict with 'reply' plus step-like keys."""
        step = self._take_script(parsed.match_text)
        if step is not None:
            plan: dict[str, Any] = dict(step)
            if plan.get("hang"):
                plan["reply"] = "hang"
            elif plan.get("stall"):
                plan["reply"] = "stall"
            elif "error" in plan:
                plan["reply"] = f"error {plan['error']}"
            elif plan.get("tool_use") or plan.get("tool_uses"):
                plan["reply"] = "tool_use"
            else:
                plan.setdefault("text", "")
                plan["reply"] = "text"
            plan["scripted"] = True
            return plan

        text = parsed.last_user_text
        plan = {}
        if "SLOW" in text:
            plan.update(delay=1.0, chunk_delay=0.3)
        if parsed.tool_results and not text:
            said = "\n".join(str(r["content"]) for r in parsed.tool_results)
            return {**plan, "reply": "text", "text": f"Tool said: {said}"}
        for code in _FAIL_CODES:
            once = f"FAIL_{code}_ONCE"
            if once in text:
                with self._lock:
                    first = text not in self._seen_once
                    self._seen_once.add(text)
                if first:
                    return self._fail_plan(code)
            elif f"FAIL_{code}" in text:
                return self._fail_plan(code)
        if "HANG" in text:
            return {"reply": "hang"}
        if "STALL" in text:
            return {**plan, "reply": "stall", "text": f"echo: {text}"}
        if "RUN_BASH" in text:
            return {
                **plan,
                "reply": "tool_use",
                "text": "I'll run a command.",
                "tool_use": {
                    "name": "Bash",
                    "input": {"command": "echo hello", "description": "Print hello"},
                },
            }
        if parsed.images:
            lines = [f"image received ({media}, {n} b64 chars)" for media, n in parsed.images]
            return {**plan, "reply": "text", "text": "\n".join(lines)}
        if len(text) > 200:
            reply = f"echo: {text[:50]}… ({len(text)} chars)"
        else:
            reply = f"echo: {text}"
        return {**plan, "reply": "text", "text": reply}

    @staticmethod
    def _fail_plan(code: int) -> dict[str, Any]:
        plan: dict[str, Any] = {"reply": f"error {code}", "error": code}
        if code in (429, 529):
            plan["retry_after"] = 1
        return plan

    def _build_message(
        self, parsed: _Parsed, plan: dict[str, Any], *, input_tokens: int
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if plan.get("text"):
            content.append({"type": "text", "text": str(plan["text"])})
        tool_uses = list(plan.get("tool_uses") or [])
        if plan.get("tool_use"):
            tool_uses.insert(0, plan["tool_use"])
        for tool in tool_uses:
            content.append(
                {
                    "type": "tool_use",
                    "id": str(tool.get("id") or self._new_id("toolu_fake")),
                    "name": str(tool["name"]),
                    "input": dict(tool.get("input") or {}),
                }
            )
        if not content:
            content.append({"type": "text", "text": ""})
        out_chars = sum(len(json.dumps(b)) for b in content)
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": max(1, out_chars // 4),
        }
        usage.update({k: int(v) for k, v in (plan.get("usage") or {}).items()})
        stop_reason = plan.get("stop_reason") or ("tool_use" if tool_uses else "end_turn")
        return {
            "id": self._new_id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": str(plan.get("model") or parsed.model),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    # ----------------------------------------------------------------- streaming

    async def _stream(
        self, request: web.Request, message: dict[str, Any], plan: dict[str, Any]
    ) -> web.StreamResponse:
        headers = self._base_headers()
        headers.update(
            {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        chunk_delay = float(plan.get("chunk_delay", self.chunk_delay))
        usage = message["usage"]

        async def send(event: str, data: dict[str, Any]) -> None:
            payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            await response.write(f"event: {event}\ndata: {payload}\n\n".encode())

        start_usage = {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": 1,
        }
        start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        await send("message_start", {"type": "message_start", "message": start})
        await send("ping", {"type": "ping"})

        if plan["reply"] == "stall":
            text = str(message["content"][0].get("text") or "…")
            await send(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            piece = next(_split(text, 5), "")
            await send(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            await self._wait_until_stopped(request)
            return response

        first = True
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                start_block: dict[str, Any] = {"type": "text", "text": ""}
                pieces = int(plan.get("pieces") or 5)
                deltas = [{"type": "text_delta", "text": p}
                          for p in _split(block["text"], pieces)]
            else:
                start_block = {
                    "type": "tool_use",
                    "id": block["id"],
                    "name": block["name"],
                    "input": {},
                }
                deltas = [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in _split(json.dumps(block["input"]), 3)
                ]
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start_block},
            )
            for delta in deltas:
                if chunk_delay > 0 and not first:
                    await asyncio.sleep(chunk_delay)
                first = False
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


def _split(text: str, pieces: int) -> Iterator[str]:
    """Split ``text`` into at most ``pieces`` non-empty parts (one empty part for "")."""
    if not text:
        yield ""
        return
    size = max(1, math.ceil(len(text) / pieces))
    for i in range(0, len(text), size):
        yield text[i : i + size]


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = FakeAnthropic(
        first_token_delay=args.first_token_delay,
        chunk_delay=args.chunk_delay,
        host=args.host,
        port=args.port,
    ).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"LISTENING {fake.port}", flush=True)
    try:
        while not done.wait(3600):
            pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
