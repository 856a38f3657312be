"""The HTTP layer over the real engine: wire format, errors, limits, keepalive, disconnects.

Runs the real aiohttp app on 127.0.0.1 over a real :class:`gateway.engine.Engine` with its real
:class:`gateway.store.Store`, which runs the real bundled Claude Code CLI against the fake
Anthropic API (``tests/fake_anthropic.py``: it echoes, so what the model saw is in its request
log, and it is scripted for replies, usage, delays and upstream errors). Faults the real CLI
cannot show on demand (dying mid-turn) use the scripted fake CLI ``tests/fake_cli.py``. Clients
are the official ``openai`` client and raw aiohttp where the bytes matter. Every response is
checked against the app's own OpenAPI document, and the test at the end asserts every
documented status was seen.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from aiohttp import web

from gateway.api import ApiConfig, create_app
from gateway.api.convert import fingerprint
from gateway.api.routes import openapi_document
from gateway.engine import Engine, EngineConfig
from gateway.store import Store
from tests.conftest import EngineFactory, skip_unless_whole_module
from tests.fake_anthropic import RATELIMIT_GATEWAY_TOKEN, FakeAnthropic, bundled_cli

pytestmark = pytest.mark.cli

OPENCLAW = Path(__file__).parent / "data" / "openclaw-requests"
JSON = "application/json"
FAKE_CLI = str(Path(__file__).parent / "fake_cli.py")
#: usage the fake API reports for a scripted reply: prompt 11 + 100 + 5 = 116, completion 7
USAGE = {
    "input_tokens": 11,
    "output_tokens": 7,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 5,
}
EMPTY_DELTA = {"role": "assistant", "content": ""}  # the role chunk and every keepalive

# --------------------------------------------------------------------------- OpenAPI checker

DOC = openapi_document()
#: documented paths whose statuses are proven by their own tests (the voice models; the
#: Responses and Anthropic Messages dialects, usage in their own modules)
ELSEWHERE = ("/v1/audio/", "/v1/responses", "/v1/messages", "/v1/usage",
             # the status page and its JSON: tests/test_status_page.py
             "/ui", "/v1/status")
ELSEWHERE_EXACTLY = ("/",)
#: the request guard's refusals, documented on every operation and each produced on every
#: operation by tests/test_http_guard.py (which has its own coverage check)
GUARD_STATUSES = ("403", "415", "421")
SEEN: set[tuple[str, str, str]] = set()  # (path template, method, status) seen in this module


def _template(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{model_id}"
    return path


def check_openapi(
    method: str, path: str, status: int, body: Any, content_type: str = "application/json"
) -> None:
    """Assert that a real response is documented: path, method, status, and body schema."""
    template = _template(path)
    operation = DOC["paths"].get(template, {}).get(method.lower())
    assert operation is not None, f"{method} {template} is not documented"
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template} -> {status} is not documented"
    media = response["content"][content_type]
    schema = media.get("x-event-schema", media["schema"])
    validator = jsonschema.Draft202012Validator({**schema, "components": DOC["components"]})
    events = body if content_type == "text/event-stream" else [body]
    for item in events:
        errors = sorted(validator.iter_errors(item), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0].message} in {item}"
    SEEN.add((template, method.lower(), str(status)))


def parse_sse(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON events of a stream and whether it ended with [DONE]."""
    events: list[dict[str, Any]] = []
    done = False
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        assert not done, "nothing may follow [DONE]"
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


# --------------------------------------------------------------------------- the gateway


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Gateway:
    """The API served over a real engine, the fake Anthropic API behind it, and clients."""

    def __init__(self, url: str, engine: Engine, fake: FakeAnthropic) -> None:
        self.url = url
        self.engine = engine
        self.fake = fake
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)

    async def raw(
        self, method: str, path: str, *, check: bool = True, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, **kwargs) as resp:
                data = await resp.read()
                headers = dict(resp.headers)
        if check:
            ctype = headers.get("Content-Type", "").split(";")[0]
            if ctype == "text/event-stream":
                events, done = parse_sse(data)
                assert done, "a stream must end with [DONE]"
                check_openapi(method, path, resp.status, events, ctype)
            else:
                check_openapi(method, path, resp.status, json.loads(data))
        return resp.status, headers, data

    async def chat(self, body: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        """POST /v1/chat/completions: the parsed JSON, or ``(events, done)`` for a stream."""
        status, headers, data = await self.raw("POST", "/v1/chat/completions", json=body, **kwargs)
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            return status, headers, parse_sse(data)
        return status, headers, json.loads(data)

    def saw(self, text: str) -> dict[str, Any] | None:
        """The latest request the model got whose last user text contains ``text``."""
        hits = [r for r in self.fake.requests() if text in r["last_user_text"]]
        return hits[-1] if hits else None

    def seen(self, text: str) -> dict[str, Any]:
        request = self.saw(text)
        assert request is not None, f"the model never saw {text!r}"
        return request


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def new_engine(make_engine: EngineFactory) -> EngineFactory:
    """``make_engine`` without pre-started spare processes: they only cost CPU here (the
    HTTP layer does nothing different with them; tests/test_api_e2e.py runs with them)."""

    async def factory(**overrides: Any) -> Engine:
        return await make_engine(**{"spare_processes": 0, **overrides})

    return factory


G = TypeVar("G", bound=Gateway)


def gateway_factory(
    stack: AsyncExitStack, engines: EngineFactory, fake: FakeAnthropic, cls: type[G]
) -> Callable[..., Awaitable[G]]:
    """``await factory(engine=None, **ApiConfig)``: the API served on 127.0.0.1 over
    ``engine`` (a new one from ``engines`` by default); ``stack`` stops it."""

    async def factory(engine: Engine | None = None, **config: Any) -> G:
        engine = engine or await engines()
        url = await stack.enter_async_context(serve(create_app(engine, ApiConfig(**config))))
        gateway = cls(url, engine, fake)
        stack.push_async_callback(gateway.client.close)
        return gateway

    return factory


@pytest.fixture
async def make_gateway(
    new_engine: EngineFactory, fake_api: FakeAnthropic
) -> AsyncIterator[GatewayFactory]:
    """``await make_gateway(engine=None, **ApiConfig)``; a started real engine by default."""
    async with AsyncExitStack() as stack:
        yield gateway_factory(stack, new_engine, fake_api, Gateway)


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(keepalive_seconds=5.0)


def msgs(*texts: str) -> list[Any]:
    """Alternating user/assistant messages starting with user."""
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)
    ]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def key_of(headers: dict[str, str]) -> str:
    """The engine key of the conversation a response names."""
    return "openai:" + headers["X-Conversation-Id"]


async def wait_for(condition: Callable[[], Any], what: str, within: float = 10.0) -> None:
    """Poll ``condition`` (sync or async) until it is truthy."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def idle(gw: Gateway, key: str) -> bool:
    info = await gw.engine.describe(key)
    return info is not None and not info.busy


# --------------------------------------------------------------------------- basic endpoints


async def test_health_models_openapi(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine(model_aliases={"my-alias": "sonnet"})
    gw = await make_gateway(engine)
    status, _, data = await gw.raw("GET", "/health")
    body = json.loads(data)
    assert status == 200 and body["status"] == "ok"
    assert engine.cli is not None and body["cli_version"] == engine.cli.version
    assert body["cli_path"] == engine.cli.path
    models = await gw.client.models.list()
    # each model once (a model picker shows no twins); the short names are aliases
    assert [m.id for m in models.data] == [
        "claude-opus-4", "claude-sonnet-4", "claude-haiku-4", "my-alias"]
    assert all(m.object == "model" and m.owned_by and m.created for m in models.data)
    await gw.raw("GET", "/v1/models")
    model = await gw.client.models.retrieve("claude-sonnet-4")
    assert model.id == "claude-sonnet-4"
    for name in ("claude-sonnet-4", "sonnet", "opus", "haiku", "my-alias",
                 "claude-opus-4-5-20251101"):
        status, _, data = await gw.raw("GET", f"/v1/models/{name}")
        assert status == 200 and json.loads(data)["id"] == name
    status, _, data = await gw.raw("GET", "/v1/models/gpt-4o")
    assert status == 404 and json.loads(data)["error"]["code"] == "model_not_found"
    status, _, data = await gw.raw("GET", "/openapi.json")
    assert status == 200 and json.loads(data)["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator.check_schema({"$defs": DOC["components"]["schemas"]})


async def test_engine_without_cli_is_503(
    make_gateway: GatewayFactory, engine_config: EngineConfig, tmp_path: Path
) -> None:
    """An engine that never started (no CLI found or run yet): /health and chat say so."""
    engine = Engine(engine_config, Store(tmp_path / "never-opened.sqlite3"))
    gw = await make_gateway(engine)
    status, _, data = await gw.raw("GET", "/health")
    body = json.loads(data)
    assert status == 503 and body["status"] == "unavailable" and body["cli_path"] is None
    for stream in (False, True):
        status, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs("anyone there?"), "stream": stream}
        )
        assert status == 503 and body["error"]["code"] == "cli_unavailable"
        assert "Retry-After" not in headers
    assert gw.fake.requests() == []


async def test_unknown_path_and_method_are_json(gw: Gateway) -> None:
    status, _, data = await gw.raw("GET", "/v1/nothing", check=False)
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    status, _, data = await gw.raw("GET", "/v1/chat/completions", check=False)
    assert status == 405 and json.loads(data)["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- non-stream


async def test_non_stream_completion(gw: Gateway) -> None:
    gw.fake.script({"text": "Hello there.", "usage": USAGE}, match="hello")
    raw = await gw.client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "claude-sonnet-4"
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 116 and completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == 123
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    conversation = raw.headers["x-conversation-id"]
    assert conversation.startswith("auto:")
    # what the engine and the model got: the message as is, the family alias, its own key
    request = gw.seen("hello")
    assert request["last_user_text"] == "hello"
    assert request["model"].startswith("claude-sonnet")
    info = await gw.engine.describe("openai:" + conversation)
    assert info is not None and info.model == "sonnet" and info.turns == 1
    assert "openai:" + conversation in gw.engine.live_pids()
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("again")})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: again"


async def test_max_tokens_is_continued_by_the_cli_then_an_upstream_error(gw: Gateway) -> None:
    """What a reply cut at max_tokens really does (CLI 2.1.331): the CLI asks the model to go
    on, up to 3 times; cut a 4th time it ends the turn with an error result, which the API
    reports as 502 upstream_error (in-stream once text went out), never finish_reason length.
    """
    gw.fake.script({"text": "part one", "stop_reason": "max_tokens"}, match="cut once")
    gw.fake.script({"text": "part two"})  # the CLI's continuation request
    completion = await gw.client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "cut once"}]
    )
    assert completion.choices[0].message.content == "part one\n\npart two"
    assert completion.choices[0].finish_reason == "stop"

    for i in range(4):
        gw.fake.script({"text": f"piece {i}", "stop_reason": "max_tokens"})
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("cut always")})
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert "output token maximum" in body["error"]["message"]
    for i in range(4):
        gw.fake.script({"text": f"piece {i}", "stop_reason": "max_tokens"})
    status, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("cut always, streamed"), "stream": True}
    )
    assert status == 200 and done
    assert text_of(events[:-1]) == "piece 0\n\npiece 1\n\npiece 2\n\npiece 3"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])


# --------------------------------------------------------------------------- stream


async def test_stream_wire_contract(gw: Gateway) -> None:
    gw.fake.script({"text": "Streamed answer.", "usage": USAGE}, match="wire")
    status, headers, (events, done) = await gw.chat(
        {
            "model": "claude-sonnet-4",
            "messages": msgs("wire"),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert status == 200 and done
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    assert headers["X-Conversation-Id"].startswith("auto:")
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert all(e["model"] == "claude-sonnet-4" and e["created"] for e in events)
    assert events[0]["choices"][0]["delta"] == EMPTY_DELTA
    *choice_chunks, usage_chunk = events
    assert choice_chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    assert text_of(choice_chunks) == "Streamed answer."
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 116
    assert usage_chunk["usage"]["completion_tokens"] == 7
    assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 100


async def test_stream_without_include_usage_has_no_usage_chunk(gw: Gateway) -> None:
    _, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("no usage"), "stream": True}
    )
    assert done and all("usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert text_of(events) == "echo: no usage"


async def test_openai_client_stream_and_stream_helper(gw: Gateway) -> None:
    gw.fake.script({"text": "Streamed reply.", "usage": USAGE}, match="streamed")
    stream = await gw.client.chat.completions.create(
        model="claude-sonnet-4",
        messages=[{"role": "user", "content": "streamed"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Streamed reply."
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7

    gw.fake.script({"text": "Helper reply.", "usage": USAGE}, match="helper")
    async with gw.client.chat.completions.stream(
        model="claude-sonnet-4",
        messages=[{"role": "user", "content": "helper"}],
        stream_options={"include_usage": True},
    ) as helper:
        kinds = [event.type async for event in helper]
        final = await helper.get_final_completion()
    assert "content.delta" in kinds and "content.done" in kinds
    assert final.choices[0].message.content == "Helper reply."
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.prompt_tokens == 116


async def test_final_mode_sends_the_result_text_once(gw: Gateway) -> None:
    """RUN_BASH: the model says a sentence, runs a real Bash command, then answers."""
    _, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("RUN_BASH final"), "stream": True},
        headers={"X-Stream-Mode": "final"},
    )
    contents = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    assert done and contents == ["", "Tool said: hello", None]


async def test_verbose_mode_shows_tools_and_smart_hides_commentary(gw: Gateway) -> None:
    smart = await gw.client.chat.completions.create(model="sonnet", messages=msgs("RUN_BASH smart"))
    assert smart.choices[0].message.content == "Tool said: hello"
    _, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("RUN_BASH verbose"), "stream_mode": "verbose"}
    )
    text = body["choices"][0]["message"]["content"]
    assert text.startswith("I'll run a command.\n[tool] Running echo hello\n"), text
    assert text.endswith("Tool said: hello")
    assert gw.seen("RUN_BASH verbose")["reply"] == "tool_use"


async def test_invalid_stream_mode_is_400(gw: Gateway) -> None:
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("x")}, headers={"X-Stream-Mode": "loud"}
    )
    assert status == 400 and body["error"]["message"].startswith("X-Stream-Mode header:")
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("x"), "stream_mode": 1})
    assert status == 400 and body["error"]["message"].startswith("stream_mode:")
    assert gw.fake.requests() == []


@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"model": "sonnet", "input": "x"}),
    ("/v1/messages", {"model": "sonnet", "max_tokens": 64, "messages": msgs("x")}),
])
@pytest.mark.parametrize("field, value, problem", [
    ("stream_mode", "loud", "stream_mode: must be one of smart, final, verbose"),
    ("tool_mode", 7, "tool_mode: must be one of agent, client, hybrid"),
])
async def test_every_dialect_refuses_a_mode_it_does_not_know(
    gw: Gateway, path: str, body: dict[str, Any], field: str, value: object, problem: str
) -> None:
    status, _, data = await gw.raw("POST", path, json={**body, field: value})
    assert status == 400, data
    assert json.loads(data)["error"]["message"].startswith(problem), data
    assert gw.fake.requests() == []


async def test_keepalive_deltas_while_tools_run(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(keepalive_seconds=0.2)
    command = 'python3 -c "import time; time.sleep(1.5)"'
    gw.fake.script(
        {
            "text": "Working",
            "tool_use": {"name": "Bash", "input": {"command": command, "description": "Wait"}},
        },
        match="slow tool",
    )
    started = time.monotonic()
    _, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("slow tool"), "stream": True}
    )
    assert done and time.monotonic() - started >= 1.5
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    keepalives = [d for d in deltas[1:] if d == EMPTY_DELTA]
    assert len(keepalives) >= 4, deltas
    assert text_of(events) == "Tool said: (Bash completed with no output)"
    (result,) = gw.fake.requests()[-1]["tool_results"]
    assert result["is_error"] is False


async def test_slow_start_opens_the_stream_with_keepalives(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(keepalive_seconds=0.2)
    gw.fake.script({"text": "late answer", "delay": 1.0}, match="late")
    started = time.monotonic()
    _, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("late"), "stream": True}
    )
    assert done and time.monotonic() - started >= 1.0
    assert text_of(events) == "late answer"
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert first_text >= 4 and all(d == EMPTY_DELTA for d in deltas[:first_text]), deltas


# --------------------------------------------------------------------------- errors


# (id, what starts the engine, user text, status, code, type, Retry-After)
ERRORS = [
    ("rate_limited", "real", "FAIL_429", 429, "rate_limit_exceeded", "rate_limit_error", "60"),
    ("overloaded", "real", "FAIL_529", 503, "overloaded", "server_error", "10"),
    ("upstream_500", "real", "FAIL_500", 502, "upstream_error", "upstream_error", None),
    (
        "upstream_401",
        "real",
        "FAIL_401",
        502,
        "upstream_authentication_failed",
        "upstream_error",
        None,
    ),
    (
        "upstream_400",
        "real",
        "TOO_LONG",
        400,
        "upstream_invalid_request",
        "invalid_request_error",
        None,
    ),
    ("timeout", "short_activity_timeout", "HANG", 504, "timeout", "server_error", None),
    ("crashed", "fake_cli", "DIE", 502, "cli_crashed", "server_error", None),
    ("not_logged_in", "no_api_key", "hello", 503, "cli_not_logged_in", "server_error", None),
]


@pytest.mark.parametrize(
    ("setup", "text", "status", "code", "etype", "retry"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
async def test_turn_errors_before_output_get_their_status(
    make_gateway: GatewayFactory,
    new_engine: EngineFactory,
    engine_config: EngineConfig,
    setup: str,
    text: str,
    status: int,
    code: str,
    etype: str,
    retry: str | None,
) -> None:
    overrides: dict[str, Any] = {
        "real": {},
        "short_activity_timeout": {"activity_timeout": 1.0, "bash_max_timeout": 1.0},
        "fake_cli": {"cli_path": FAKE_CLI},
        "no_api_key": {"env": {**engine_config.env, "ANTHROPIC_API_KEY": ""}},
    }[setup]
    gw = await make_gateway(await new_engine(**overrides), keepalive_seconds=5.0)
    for stream in (False, True):
        if text == "TOO_LONG":
            gw.fake.script({"error": 400, "message": "prompt is too long"}, match="TOO_LONG")
        got, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs(f"{text} stream={stream}"), "stream": stream}
        )
        assert got == status, body
        assert body["error"]["code"] == code and body["error"]["type"] == etype
        assert body["error"]["message"] and body["error"]["param"] is None
        assert headers.get("Retry-After") == retry
        assert headers["X-Conversation-Id"].startswith("auto:")
        if code == "cli_not_logged_in":
            assert "/login" in body["error"]["message"]


async def test_rate_limit_retry_after_for_the_openai_client(
    make_gateway: GatewayFactory, new_engine: EngineFactory, engine_config: EngineConfig
) -> None:
    """Unknown reset: Retry-After 60. With the subscription's reset time (the CLI reads the
    anthropic-ratelimit-unified-* headers as an LLM gateway): the seconds until then."""
    env = {**engine_config.env, "ANTHROPIC_AUTH_TOKEN": RATELIMIT_GATEWAY_TOKEN}
    gw = await make_gateway(await new_engine(env=env))
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.chat.completions.create(model="sonnet", messages=msgs("FAIL_429 first"))
    assert info.value.response.headers["retry-after"] == "60"
    assert info.value.code == "rate_limit_exceeded"

    gw.fake.set_ratelimit_headers(
        {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(int(time.time()) + 30),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
        }
    )
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.chat.completions.create(model="sonnet", messages=msgs("FAIL_429 again"))
    assert 25 <= int(info.value.response.headers["retry-after"]) <= 30
    assert "5-hour limit" in info.value.message
    status, _, data = await gw.raw("GET", "/health")
    assert status == 200 and json.loads(data)["rate_limit"]["status"] == "rejected"


async def test_error_after_output_is_in_stream_then_done(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    """The CLI dies after text went out (verbose streams it at once): 200, the text, an
    error event, [DONE]; never a bare or empty stream."""
    gw = await make_gateway(await new_engine(cli_path=FAKE_CLI))
    verbose = {"X-Stream-Mode": "verbose"}
    status, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": msgs("DIE midway"), "stream": True}, headers=verbose
    )
    assert status == 200 and done
    assert text_of(events[:-1]) == "fake: "
    error = events[-1]["error"]
    assert error["code"] == "cli_crashed" and error["type"] == "server_error"
    assert error["param"] is None
    assert error["message"].startswith("Claude Code stopped unexpectedly")
    stream = await gw.client.chat.completions.create(
        model="sonnet", messages=msgs("DIE again"), stream=True, extra_headers=verbose
    )
    with pytest.raises(openai.APIError, match="Claude Code stopped unexpectedly"):
        async for _ in stream:
            pass


async def test_interrupt_is_409_and_a_full_queue_is_503(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    gw = await make_gateway(await new_engine(max_queued_per_conversation=1))
    conv = {"X-Conversation-Id": "busy"}
    key = "openai:h:busy"
    running = asyncio.ensure_future(
        gw.chat({"model": "sonnet", "messages": msgs("HANG one")}, headers=conv)
    )
    await wait_for(lambda: gw.saw("HANG one"), "the first turn to reach the model")
    queued = asyncio.ensure_future(
        gw.chat({"model": "sonnet", "messages": msgs("HANG two"), "stream": True}, headers=conv)
    )
    await wait_for(lambda: gw.engine.status().queued_turns == 1, "the second turn to queue")
    for stream in (False, True):
        status, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs("third"), "stream": stream}, headers=conv
        )
        assert status == 503 and body["error"]["code"] == "conversation_busy"
        assert headers["Retry-After"] == "5" and headers["X-Conversation-Id"] == "h:busy"

    assert await gw.engine.interrupt(key)
    status, headers, body = await running
    assert status == 409 and body["error"]["code"] == "interrupted"
    assert body["error"]["type"] == "server_error" and headers["X-Conversation-Id"] == "h:busy"
    await wait_for(lambda: gw.saw("HANG two"), "the queued turn to run")
    assert await gw.engine.interrupt(key)
    status, _, body = await queued  # streamed, but nothing was said: a real status
    assert status == 409 and body["error"]["code"] == "interrupted"
    # the conversation goes on
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("after")}, headers=conv)
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: after"


async def test_stopping_engine_is_503_shutting_down(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine()
    gw = await make_gateway(engine)
    conv = {"X-Conversation-Id": "closing"}
    running = asyncio.ensure_future(
        gw.chat({"model": "sonnet", "messages": msgs("HANG while stopping")}, headers=conv)
    )
    await wait_for(lambda: gw.saw("HANG while stopping"), "the turn to reach the model")
    queued = asyncio.ensure_future(
        gw.chat({"model": "sonnet", "messages": msgs("queued"), "stream": True}, headers=conv)
    )
    await wait_for(lambda: engine.status().queued_turns == 1, "the second turn to queue")
    await engine.stop()
    status, _, body = await queued
    assert status == 503 and body["error"]["code"] == "shutting_down"
    status, _, body = await running
    assert status == 409 and body["error"]["code"] == "interrupted"
    for stream in (False, True):
        status, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs("too late"), "stream": stream}
        )
        assert status == 503 and body["error"]["code"] == "shutting_down"
        assert headers["Retry-After"] == "5"
    assert engine.live_pids() == {}


async def test_cli_gone_is_503_cli_unavailable(
    make_gateway: GatewayFactory, new_engine: EngineFactory, tmp_path: Path
) -> None:
    """The CLI disappears while the gateway runs (uninstalled, or an update moved it)."""
    link = tmp_path / "claude"
    link.symlink_to(bundled_cli())
    gw = await make_gateway(await new_engine(cli_path=str(link)))
    link.unlink()
    for stream in (False, True):
        status, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs(f"hi {stream}"), "stream": stream}
        )
        assert status == 503 and body["error"]["code"] == "cli_unavailable", body
        assert "Retry-After" not in headers
    assert gw.fake.requests() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "sonnet", "messages": msgs("x"), "n": 3}, "n:"),
        ({"model": "sonnet", "messages": []}, "messages:"),
        (
            {"model": "sonnet", "messages": [{"role": "user", "content": [{"type": "file"}]}]},
            "messages[0].content[0].type:",
        ),
        ({"model": "sonnet", "messages": msgs("q", "partial")}, "messages[1]:"),
        ({"messages": msgs("x")}, "model:"),
        ({"model": "sonnet", "messages": msgs("  ")}, "messages[0].content:"),
        (
            {"model": "sonnet", "messages": [{"role": "user", "content": []}]},
            "messages[0].content:",
        ),
    ],
)
async def test_invalid_requests_are_400_naming_the_field(
    gw: Gateway, body: dict[str, Any], field: str
) -> None:
    status, _, got = await gw.chat(body)
    assert status == 400
    assert got["error"]["type"] == "invalid_request_error"
    assert got["error"]["message"].startswith(field), got
    # refused before the engine: no conversation, no turn, nothing sent to the model
    assert gw.engine.status().sessions == 0 and await gw.engine.list_sessions() == []
    assert gw.fake.requests() == []


async def test_answer_not_matching_response_format_is_422(gw: Gateway) -> None:
    """More in tests/test_structured_output.py; here for the document's 422."""
    gw.fake.script({"text": "not JSON"}, match="as JSON")
    gw.fake.script({"text": "still not"}, match="previous reply is not valid")
    status, headers, got = await gw.chat(
        {"model": "sonnet", "messages": msgs("as JSON"), "response_format": {"type": "json_object"}}
    )
    assert status == 422 and got["error"]["code"] == "invalid_json_output"
    assert "not valid JSON" in got["error"]["message"] and headers["X-Conversation-Id"]
    assert len(gw.fake.requests()) == 2


async def test_unknown_model_is_400_model_not_found(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.client.chat.completions.create(model="gpt-4o", messages=msgs("x"))
    assert info.value.code == "model_not_found"
    assert "model:" in info.value.message and "valid" in info.value.message
    status, _, _ = await gw.chat({"model": "gpt-4o", "messages": msgs("x")})
    assert status == 400
    assert gw.fake.requests() == []


async def test_malformed_json_is_400(gw: Gateway) -> None:
    status, _, data = await gw.raw(
        "POST",
        "/v1/chat/completions",
        data=b'{"model": ',
        headers={"Content-Type": "application/json"},
    )
    error = json.loads(data)["error"]
    assert status == 400 and error["message"].startswith("body: invalid JSON")
    status, _, data = await gw.raw(
        "POST", "/v1/chat/completions", data=b"\xff\xfe", headers={"Content-Type": JSON}
    )
    assert status == 400
    status, _, data = await gw.raw("POST", "/v1/chat/completions", json=["x"])
    assert status == 400 and json.loads(data)["error"]["message"].startswith("body:")


async def test_body_size_limit_is_413_json(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(max_body_bytes=64 * 1024)
    big = msgs("x" * 100_000)
    status, _, data = await gw.raw(
        "POST", "/v1/chat/completions", json={"model": "s", "messages": big}
    )
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"
    # without Content-Length (chunked upload)
    payload = json.dumps({"model": "s", "messages": big}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    status, _, data = await gw.raw(
        "POST", "/v1/chat/completions", data=chunks(), headers={"Content-Type": JSON}
    )
    assert status == 413
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(model="sonnet", messages=big)
    assert info.value.status_code == 413
    assert gw.fake.requests() == []
    status, _, _ = await gw.chat({"model": "sonnet", "messages": msgs("x" * 1000)})
    assert status == 200
    assert len(gw.seen("x" * 1000)["last_user_text"]) == 1000


async def test_big_body_under_the_limit_is_fine(gw: Gateway) -> None:
    history = msgs(*(f"message {i} " + "y" * 10_000 for i in range(101)))
    status, _, _ = await gw.chat({"model": "sonnet", "messages": history})
    assert status == 200
    prompt = gw.seen("message 100 ")["last_user_text"]
    assert len(prompt) > 1_000_000 and "message 0 " in prompt and "message 100 " in prompt


async def test_api_keys(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(api_keys=("key-one", "key-two"))
    with pytest.raises(openai.AuthenticationError):
        await gw.client.models.list()
    status, _, data = await gw.raw("GET", "/v1/models")
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    status, _, _ = await gw.raw("GET", "/v1/models/sonnet")
    assert status == 401
    status, _, _ = await gw.chat({"model": "sonnet", "messages": msgs("x")})
    assert status == 401
    assert gw.fake.requests() == []
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key="key-two", max_retries=0
    ) as good:
        assert (await good.models.list()).data
        reply = await good.chat.completions.create(model="sonnet", messages=msgs("x"))
    assert reply.choices[0].message.content == "echo: x"
    status, _, _ = await gw.raw("GET", "/health")
    assert status == 200


async def test_concurrency_limit_is_503_server_busy(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(max_concurrent_requests=1)
    gw.fake.script({"text": "held", "delay": 1.0}, match="hold")
    first = asyncio.ensure_future(gw.chat({"model": "sonnet", "messages": msgs("hold")}))
    await wait_for(lambda: gw.saw("hold"), "the first request to reach the model")
    status, headers, body = await gw.chat({"model": "sonnet", "messages": msgs("second")})
    assert status == 503 and body["error"]["code"] == "server_busy"
    assert headers["Retry-After"] == "2"
    status, _, body = await first
    assert status == 200 and body["choices"][0]["message"]["content"] == "held"
    assert gw.saw("second") is None
    assert (await gw.chat({"model": "sonnet", "messages": msgs("third")}))[0] == 200


# --------------------------------------------------------------------------- disconnects


async def _disconnect_mid_stream(gw: Gateway, text: str) -> str:
    """Stream ``text`` (verbose: text goes out as it arrives) and hang up after the first
    answer text; returns the engine key."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": msgs(text), "stream": True},
            headers={"X-Stream-Mode": "verbose"},
        ) as resp:
            assert resp.status == 200
            key = key_of(dict(resp.headers))
            while True:
                line = await resp.content.readline()
                assert line, "the stream ended before any text"
                if line.startswith(b"data: {") and text_of([json.loads(line[6:])]):
                    break
            resp.close()  # the client goes away
    return key


async def test_disconnect_interrupts_the_turn(gw: Gateway) -> None:
    # five deltas 3 s apart: the turn would take 12 s if it were not interrupted
    gw.fake.script({"text": "slow answer " * 40, "chunk_delay": 3.0}, match="long")
    key = await _disconnect_mid_stream(gw, "long")
    closed = time.monotonic()
    await wait_for(lambda: idle(gw, key), "the turn to be interrupted", within=5)
    assert time.monotonic() - closed < 3
    info = await gw.engine.describe(key)
    assert info is not None and info.turns == 0, "the turn did not complete"
    assert await gw.engine.store.get_meta(key) == {}, "an interrupted reply is not remembered"
    # the next request works
    assert (await gw.chat({"model": "sonnet", "messages": msgs("again")}))[0] == 200


async def test_disconnect_can_let_the_turn_finish(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(on_disconnect="finish")
    answer = "the whole answer, told slowly"
    gw.fake.script({"text": answer, "chunk_delay": 0.3}, match="long")
    key = await _disconnect_mid_stream(gw, "long")
    await wait_for(lambda: idle(gw, key), "the turn to finish", within=10)
    info = await gw.engine.describe(key)
    assert info is not None and info.turns == 1, "the turn ran to its result"
    assert (await gw.engine.store.get_meta(key))["last_reply"] == fingerprint(answer)
    # so the client's next request, with the full answer in its history, continues it
    _, headers, _ = await gw.chat({"model": "sonnet", "messages": msgs("long", answer, "next")})
    assert key_of(headers) == key
    assert gw.seen("next")["last_user_text"] == "next"


# --------------------------------------------------------------------------- conversations


async def test_rule2_full_history_continues_the_session_with_only_the_new_messages(
    gw: Gateway,
) -> None:
    _, h1, b1 = await gw.chat({"model": "sonnet", "messages": msgs("first")})
    reply = b1["choices"][0]["message"]["content"]
    assert reply == "echo: first"
    pid = gw.engine.live_pids()[key_of(h1)]
    history = [*msgs("first", reply, "second"), {"role": "user", "content": "third"}]
    _, h2, _ = await gw.chat({"model": "sonnet", "messages": history})
    assert h2["X-Conversation-Id"] == h1["X-Conversation-Id"]
    request = gw.seen("third")
    assert request["last_user_text"] == "second\n\nthird"
    assert "first" in json.dumps(request["messages"]), "the session has turn 1"
    assert gw.engine.live_pids()[key_of(h1)] == pid, "the same warm process answered"
    # The same history again (a regenerate): a new conversation forked after turn 1, whose
    # real history is turn 1 (gateway/api/lineage.py), no transcript.
    _, h3, _ = await gw.chat({"model": "sonnet", "messages": msgs("first", reply, "second")})
    assert h3["X-Conversation-Id"] != h1["X-Conversation-Id"]
    request = gw.fake.requests()[-1]
    assert request["last_user_text"] == "second"
    assert "first" in json.dumps(request["messages"][:-1])


async def test_rule2_streamed_reply_continues_too(gw: Gateway) -> None:
    _, h1, (events, _) = await gw.chat({"model": "sonnet", "messages": msgs("s1"), "stream": True})
    reply = text_of(events)
    _, h2, _ = await gw.chat(
        {"model": "sonnet", "messages": msgs("s1", reply, "s2"), "stream": True}
    )
    assert key_of(h1) == key_of(h2)
    assert gw.seen("s2")["last_user_text"] == "s2"


async def test_rule1_header_prompt_cache_key_user(gw: Gateway) -> None:
    requests: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"messages": msgs("alpha")}, {"X-Conversation-Id": "c1"}),
        ({"messages": msgs("bravo")}, {"X-Session-Id": "c1"}),
        ({"messages": msgs("charlie"), "prompt_cache_key": "p", "user": "u"}, {}),
        ({"messages": msgs("delta"), "user": "u"}, {}),
    ]
    ids = []
    for body, headers in requests:
        status, got, _ = await gw.chat({"model": "sonnet", **body}, headers=headers)
        assert status == 200
        ids.append(got["X-Conversation-Id"])
    assert ids == ["h:c1", "h:c1", "pck:p", "u:u"]
    assert "alpha" in json.dumps(gw.seen("bravo")["messages"]), "the header continued c1"
    assert "charlie" not in json.dumps(gw.seen("delta")["messages"]), "cache key beats user"
    assert set(gw.engine.live_pids()) == {"openai:h:c1", "openai:pck:p", "openai:u:u"}
    # pinning the returned id continues an automatic conversation
    _, h, _ = await gw.chat({"model": "sonnet", "messages": msgs("foxtrot")})
    _, h2, _ = await gw.chat(
        {"model": "sonnet", "messages": msgs("golf")},
        headers={"X-Conversation-Id": h["X-Conversation-Id"]},
    )
    assert h2["X-Conversation-Id"] == h["X-Conversation-Id"]
    assert "echo: foxtrot" in json.dumps(gw.seen("golf")["messages"])


async def test_rule1_resent_history_sends_only_new_or_seeds(gw: Gateway) -> None:
    body = {"model": "sonnet", "prompt_cache_key": "sess:0"}
    await gw.chat({**body, "messages": msgs("one")})
    await gw.chat({**body, "messages": msgs("one", "echo: one", "two")})
    assert gw.seen("two")["last_user_text"] == "two"
    await gw.chat({**body, "messages": msgs("one", "an edited answer", "three")})
    seeded = gw.seen("three")["last_user_text"]
    assert "<conversation_history>" in seeded and "an edited answer" in seeded
    assert seeded.endswith("three")


async def test_rule3_new_session_seeded_with_history_and_system(gw: Gateway) -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": "Speak French."},
        *msgs("u1", "a1", "u2"),
    ]
    status, headers, _ = await gw.chat({"model": "sonnet", "messages": messages})
    assert status == 200 and headers["X-Conversation-Id"].startswith("auto:")
    request = gw.seen("u2")
    assert "Be terse.\n\nSpeak French." in request["system_text"]
    prompt = request["last_user_text"]
    assert "[user]\nu1" in prompt and "[assistant]\na1" in prompt
    assert prompt.endswith("</conversation_history>\n\nu2")


async def test_openclaw_turns_replayed(gw: Gateway) -> None:
    turn1 = json.loads((OPENCLAW / "turn1.json").read_text())["json"]
    turn2 = json.loads((OPENCLAW / "turn2.json").read_text())["json"]
    status, h1, (events, done) = await gw.chat(turn1)
    assert status == 200 and done
    reply = text_of(events)
    assert reply.startswith("echo: ")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] > 0
    first = gw.fake.requests()[-1]
    system = turn1["messages"][0]["content"]
    assert system.strip() in first["system_text"]
    assert "banana" in first["last_user_text"]
    pid = gw.engine.live_pids()[key_of(h1)]
    turn2["messages"][2]["content"] = reply  # what OpenClaw would have kept
    status, h2, (events, done) = await gw.chat(turn2)
    assert status == 200 and done and h2["X-Conversation-Id"] == h1["X-Conversation-Id"]
    second = gw.fake.requests()[-1]
    assert system.strip() in second["system_text"]
    assert "banana" not in second["last_user_text"]
    assert "Second message: what word?" in second["last_user_text"]
    assert "OPENCLAW_INTERNAL_CONTEXT" in second["last_user_text"]
    assert gw.engine.live_pids()[key_of(h1)] == pid


# --------------------------------------------------------------------------- permissions


async def test_x_permission_mode_asks_for_a_stricter_mode_and_unattended_requests_are_denied(
    gw: Gateway
) -> None:
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("hi")},
                                    headers={"X-Permission-Mode": "lenient"})
    assert status == 400 and "choose one of: ask, edits, plan, auto" in body["error"]["message"]
    marker = gw.engine.workspace / "api-made"
    gw.fake.script({"tool_use": {"name": "Bash", "input": {"command": f"touch {marker}"}}},
                   match="make a file")
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("make a file")},
                                    headers={"X-Permission-Mode": "ask"})
    assert status == 200 and not marker.exists()
    answer = body["choices"][0]["message"]["content"]
    assert "needs a person's approval, and nobody can be asked" in answer


# --------------------------------------------------------------------------- document coverage


def test_every_documented_status_was_seen(request: pytest.FixtureRequest) -> None:
    """Runs last in this module: each documented (path, method, status) met a real response."""
    skip_unless_whole_module(request, __name__)
    documented = {
        (path, method, status)
        for path, ops in DOC["paths"].items()
        if not path.startswith(ELSEWHERE) and path not in ELSEWHERE_EXACTLY
        for method, op in ops.items()
        for status in op["responses"]
        if status not in GUARD_STATUSES
    }
    missing = documented - SEEN
    assert not missing, f"documented but never produced: {sorted(missing)}"
