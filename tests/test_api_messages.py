"""The Anthropic Messages API (``/v1/messages``) with real clients over the real gateway.

One gateway for the module (a real engine running the real bundled CLI against the fake
Anthropic API, with a gateway key so ``x-api-key`` is checked); clients are the official
``anthropic`` SDK, raw aiohttp where the bytes matter, and **Claude Code itself** (the bundled
CLI with ``ANTHROPIC_BASE_URL`` pointing at the gateway). Every raw response is validated
against the app's OpenAPI document (``tests/test_api_routes.py: check_openapi``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from gateway.api import ApiConfig, create_app
from gateway.api.messages import StopScanner, find_stop
from gateway.engine import Engine, EngineConfig
from gateway.store import Store
from tests.conftest import skip_unless_whole_module
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env
from tests.media import png_bytes
from tests.test_api_routes import (
    DOC,
    GUARD_STATUSES,
    SEEN,
    USAGE,
    check_openapi,
    serve,
    wait_for,
)

pytestmark = [pytest.mark.cli, pytest.mark.asyncio(loop_scope="module")]

KEY = "sk-anthropic-test"
MODEL = "claude-sonnet-4"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CLIENT_TOOLS = {"X-Tool-Mode": "client"}
#: most tests' turns ride one conversation (one warm CLI process), named by metadata.user_id
SHARED: Any = {"user_id": "shared-user"}
#: what Claude Code sends besides the messages (observed; reference/claude-cli.md)
CLAUDE_CODE_EXTRAS: Any = {
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
    "max_tokens": 32000,
}
CLAUDE_CODE_BETA = (
    "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,"
    "context-management-2025-06-27,mid-conversation-system-2026-04-07,effort-2025-11-24"
)


@dataclass
class Served:
    url: str
    engine: Engine
    fake: FakeAnthropic
    workspace: Path
    root: Path
    #: the same API over an engine with a 3 s activity timeout, one request slot and a
    #: 4 KiB body limit: for the failures
    tight_url: str = ""
    tight_engine: Engine | None = None

    def client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.url, **{"api_key": KEY, "max_retries": 0, **kwargs})

    async def raw(
        self, method: str, path: str, *, check: bool = True, tight: bool = False,
        **kwargs: Any,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01",
                   **kwargs.pop("headers", {})}
        base = self.tight_url if tight else self.url
        async with aiohttp.ClientSession() as session:
            async with session.request(method, base + path, headers=headers,
                                       **kwargs) as resp:
                data = await resp.read()
                got = dict(resp.headers)
        if check:
            template = path.split("?")[0]
            if got.get("Content-Type", "").startswith("text/event-stream"):
                check_openapi(method, template, resp.status,
                              [e for _, e in parse_events(data)], "text/event-stream")
            else:
                check_openapi(method, template, resp.status, json.loads(data))
        return resp.status, got, data

    def requests_with(self, text: str) -> list[dict[str, Any]]:
        """The fake API's requests whose last user text mentions ``text``."""
        return [r for r in self.fake.requests() if text in r["last_user_text"]]

    def mentioning(self, text: str) -> list[dict[str, Any]]:
        """The fake API's requests whose messages mention ``text`` anywhere."""
        return [r for r in self.fake.requests() if text in json.dumps(r["messages"])]


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each server-sent event; the name must equal data.type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = json.loads(data_line[len("data: "):])
        assert data["type"] == name_line[len("event: "):]
        events.append((data["type"], data))
    return events


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(
    fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("messages")
    home = root / "home"
    home.mkdir()
    env = cli_env(fake.base_url, str(home), inherit=False)
    env.pop("PATH", None)
    config = EngineConfig(
        workspace=root / "workspace", cli_path=bundled_cli(), env=env,
        activity_timeout=60.0, bash_max_timeout=60.0, idle_timeout=300.0, spare_processes=0,
    )
    engine = Engine(config, Store(root / "gateway.sqlite3"))
    tight_engine = Engine(replace(config, activity_timeout=3.0, workspace=root / "tight"),
                          Store(root / "tight.sqlite3"))
    await engine.start()
    await tight_engine.start()
    try:
        app = create_app(engine, ApiConfig(api_keys=(KEY,), keepalive_seconds=5.0))
        tight = create_app(tight_engine, ApiConfig(
            api_keys=(KEY,), max_concurrent_requests=1, max_body_bytes=4096))
        async with serve(app) as url, serve(tight) as tight_url:
            yield Served(url, engine, fake, config.workspace, root, tight_url, tight_engine)
    finally:
        await engine.stop()
        await tight_engine.stop()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------- create and stream


async def test_create_with_usage_and_system(gw: Served) -> None:
    gw.fake.script({"text": "Hello from Claude.", "usage": USAGE}, match="first hello")
    async with gw.client() as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, system=[{"type": "text", "text": "Be brief."}],
            messages=[user("first hello")])
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Hello from Claude.")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage  # the turn's real usage, cache tokens included
    assert (usage.input_tokens, usage.output_tokens) == (11, 7)
    assert usage.cache_read_input_tokens == 100 and usage.cache_creation_input_tokens == 5
    assert raw.headers["x-conversation-id"].startswith("auto:")
    (seen,) = gw.requests_with("first hello")
    assert "Be brief." in seen["system_text"] and seen["last_user_text"] == "first hello"


async def test_two_turns_continue_one_cli_session(gw: Served) -> None:
    """The client resends the history; the gateway sends only the new message, to the
    same CLI session (automatic continuation: same first message, same last reply)."""
    async with gw.client() as client:
        first = await client.messages.create(
            model=MODEL, max_tokens=100, messages=[user("turn one of two")])
        second_raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100,
            messages=[user("turn one of two"), first.to_param(), user("turn two of two")])
    second = await second_raw.parse()
    assert first.content[0].type == "text" and first.content[0].text == "echo: turn one of two"
    assert second.content[0].type == "text" and second.content[0].text == "echo: turn two of two"
    key = "openai:" + second_raw.headers["x-conversation-id"]
    info = await gw.engine.describe(key)
    assert info is not None and info.turns == 2
    later = gw.requests_with("turn two of two")[-1]
    assert later["last_user_text"] == "turn two of two", "only the new message was sent"
    assert "echo: turn one of two" in json.dumps(later["messages"]), "in turn one's session"
    assert "conversation_history" not in json.dumps(later["messages"]), "no transcript"


async def test_stream_helpers_text_and_final_message(gw: Served) -> None:
    answer = "Streaming works fine. " * 20  # past the engine's smart-mode holdback
    gw.fake.script({"text": answer, "usage": USAGE, "pieces": 5, "chunk_delay": 0.05},
                   match="stream me")
    async with gw.client() as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[user("stream me")], metadata=SHARED,
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(pieces) == answer and len(pieces) > 1
    assert final.content[0].type == "text" and final.content[0].text == answer
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)
    assert final.usage.cache_read_input_tokens == 100
    # metadata.user_id names the conversation (like Chat Completions' user)
    assert await gw.engine.describe("openai:u:shared-user") is not None


async def test_exact_event_sequence_as_claude_code_sends(gw: Served) -> None:
    """?beta=true, the anthropic-beta header, thinking/context_management/output_config and
    a system message mid-conversation: accepted; the events are Anthropic's, in order."""
    gw.fake.script({"text": "ordered events", "pieces": 2}, match="sequence please")
    body = {
        "model": MODEL, "stream": True, **CLAUDE_CODE_EXTRAS,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9;"},
                   {"type": "text", "text": "You are a helpful agent."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>today</system-reminder>"},
                {"type": "text", "text": "sequence please", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "system", "content": "Agents: none."},
        ],
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s-seq"})},
    }
    status, headers, data = await gw.raw(
        "POST", "/v1/messages?beta=true", json=body, headers={"anthropic-beta": CLAUDE_CODE_BETA})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = parse_events(data)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 1 and names == [
        "message_start", "ping", "content_block_start", *["content_block_delta"] * deltas,
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert events[2][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    assert "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta") == (
        "ordered events")
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] > 0
    (seen,) = gw.requests_with("sequence please")
    assert "You are a helpful agent." in seen["system_text"]
    assert "Agents: none." in seen["system_text"]
    assert "cc_version=9;" not in seen["system_text"]  # the client's billing header dropped


async def test_stop_sequences_cut_the_answer(gw: Served) -> None:
    for stream in (False, True):
        word = f"cut{int(stream)}"
        gw.fake.script({"text": f"alpha {word} STOP beta", "pieces": 5}, match=word)
        async with gw.client() as client:
            if stream:
                async with client.messages.stream(
                    model=MODEL, max_tokens=50, stop_sequences=["STOP"], metadata=SHARED,
                    messages=[user(f"please {word}")],
                ) as events:
                    message = await events.get_final_message()
            else:
                message = await client.messages.create(
                    model=MODEL, max_tokens=50, stop_sequences=["STOP"], metadata=SHARED,
                    messages=[user(f"please {word}")])
        assert message.content[0].type == "text"
        assert message.content[0].text == f"alpha {word} ", stream
        assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"


async def test_stop_scanner_cuts_across_any_split() -> None:
    """Streamed text cut at the first stop sequence wherever the pieces break, and nothing
    held back that is not a stop sequence (pure; no gateway)."""
    stops = ("STOP", "\n\nHuman:", "SS")
    for text in ("alpha STOP beta", "no stop here S", "x\n\nHuman: y", "aSSb STOP",
                 "ST", "STO", "fine"):
        expected = text[: find_stop(text, stops)[0]]
        for size in range(1, len(text) + 1):
            scanner = StopScanner(stops)
            out = "".join(scanner.feed(text[i:i + size]) for i in range(0, len(text), size))
            out += scanner.flush()
            assert out == expected, (text, size)
            assert (scanner.hit is not None) == (expected != text)


# --------------------------------------------------------------------------- tools, media


async def test_tool_use_round_trip_resumes_the_suspended_turn(gw: Served) -> None:
    gw.fake.script({"text": "Let me check.",
                    "tool_use": {"name": "mcp__client__get_weather", "input": {"city": "Lyon"}}},
                   match="weather in Lyon")
    messages: list[Any] = [user("What is the weather in Lyon?")]
    async with gw.client(default_headers=CLIENT_TOOLS) as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages,
        ) as stream:
            first = await stream.get_final_message()
        assert first.stop_reason == "tool_use"
        (call,) = [b for b in first.content if b.type == "tool_use"]
        assert call.name == "get_weather" and call.input == {"city": "Lyon"}
        offered = gw.requests_with("weather in Lyon")[-1]["tools"]
        assert "mcp__client__get_weather" in offered and "Bash" not in offered
        messages += [first.to_param(), {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "cloudy, 12 °C"}]}]
        second = await client.messages.create(
            model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == (
        "Tool said: cloudy, 12 °C")
    requests = gw.mentioning("weather in Lyon")
    assert len(requests) == 2, "the suspended turn resumed: nothing was re-prompted"
    assert requests[-1]["tool_results"] == [
        {"tool_use_id": call.id, "content": "cloudy, 12 °C", "is_error": False}]


async def test_image_and_pdf_document(gw: Served) -> None:
    png = base64.b64encode(png_bytes()).decode()
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n%%EOF\n"
    async with gw.client() as client:
        seen_image = await client.messages.create(model=MODEL, max_tokens=50, metadata=SHARED,
                                                  messages=[
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": png}},
                {"type": "text", "text": "what is this picture"}]}])
        assert seen_image.content[0].type == "text"
        assert seen_image.content[0].text == f"image received (image/png, {len(png)} b64 chars)"
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model=MODEL, max_tokens=50, messages=[
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "url",
                                                 "url": "https://example.com/a.png"}}]}])
        assert refused.value.status_code == 400
        error = refused.value.body["error"]  # type: ignore[index]
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("messages[0].content[0].source:")
        assert "base64" in error["message"]
        for _ in range(2):  # the resent document is the same file
            await client.messages.create(model=MODEL, max_tokens=50, metadata=SHARED, messages=[
                {"role": "user", "content": [
                    {"type": "document", "title": "report.pdf", "source": {
                        "type": "base64", "media_type": "application/pdf",
                        "data": base64.b64encode(pdf).decode()}},
                    {"type": "text", "text": "summarise the report"}]}])
    (saved,) = (gw.workspace / "inbox" / "api").iterdir()
    assert saved.read_bytes() == pdf and saved.suffix == ".pdf"
    said = gw.requests_with("summarise the report")[-1]["last_user_text"]
    assert f"report.pdf (application/pdf, {len(pdf)} bytes), saved at {saved}" in said


# --------------------------------------------------------------------------- errors, keys, guard


async def test_errors_in_anthropic_shape(gw: Served) -> None:
    async with gw.client() as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=MODEL, max_tokens=10, metadata=SHARED,
                                         messages=[user("please FAIL_429 now")])
        assert limited.value.response.headers["retry-after"].isdigit()
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        with pytest.raises(anthropic.RateLimitError):  # before the stream started
            async with client.messages.stream(
                model=MODEL, max_tokens=10, metadata=SHARED,
                messages=[user("stream FAIL_429 now")],
            ) as stream:
                await stream.get_final_message()
        with pytest.raises(anthropic.BadRequestError) as unknown:
            await client.messages.create(model="gpt-4o", max_tokens=10,
                                         messages=[user("hi")])
        assert "model" in unknown.value.message
    for body, path in (
        ({"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [user("x")], "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        ({"model": MODEL, "messages": [user("x")], "tools": [WEATHER],
          "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({"model": MODEL, "messages": [user("x")], "tool_choice": {"type": "any"}},
         "tool_choice.type"),
        ({"messages": [user("x")]}, "model"),
    ):
        status, _, data = await gw.raw("POST", "/v1/messages", json=body)
        answer = json.loads(data)
        assert status == 400 and answer["type"] == "error", body
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["message"].startswith(f"{path}:"), answer
    status, _, data = await gw.raw("POST", "/v1/messages", data=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(data)["error"]["message"].startswith("body: invalid JSON")


async def test_keys_and_browser_pages(gw: Served) -> None:
    before = len(gw.fake.requests())
    async with gw.client(api_key="wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await client.messages.create(model=MODEL, max_tokens=10, messages=[user("hi")])
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with gw.client(api_key=None, auth_token=KEY) as client:  # Authorization: Bearer
        ok = await client.messages.create(model=MODEL, max_tokens=10, metadata=SHARED,
                                          messages=[user("bearer works")])
    assert ok.content[0].type == "text" and ok.content[0].text == "echo: bearer works"
    status, _, data = await gw.raw("POST", "/v1/messages", json={}, headers={"x-api-key": ""})
    assert status == 401 and json.loads(data)["error"]["type"] == "authentication_error"
    page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    body = {"model": MODEL, "max_tokens": 10, "messages": [user("from a web page")]}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, data = await gw.raw("POST", path, json=body, headers=page)
        answer = json.loads(data)
        assert status == 403 and answer["error"]["type"] == "permission_error", answer
        assert "forbidden_origin" in answer["error"]["message"]
    # a page's form post (no preflight): refused before the body is read
    status, _, data = await gw.raw("POST", "/v1/messages", data=json.dumps(body),
                                   headers={"Content-Type": "text/plain"})
    assert status == 415 and json.loads(data)["type"] == "error"
    status, _, data = await gw.raw("POST", "/v1/messages", json=body,
                                   headers={"Host": "evil.example"})
    assert status == 421 and json.loads(data)["error"]["type"] == "permission_error"
    assert len(gw.fake.requests()) == before + 1  # only the Bearer turn reached Claude


async def test_count_tokens_and_models(gw: Served) -> None:
    async with gw.client() as client:
        small = await client.messages.count_tokens(model=MODEL, messages=[user("hi")])
        big = await client.messages.count_tokens(
            model=MODEL, system="Be brief.", tools=[WEATHER],
            messages=[user("hi " * 400)])
        assert 0 < small.input_tokens < big.input_tokens
        assert big.input_tokens >= 300
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.count_tokens(model="gpt-4o", messages=[user("hi")])
        models = [m async for m in client.models.list()]
        assert [m.id for m in models] == gw.engine.listed_models()
        assert all(m.type == "model" and m.display_name and m.created_at for m in models)
        one = await client.models.retrieve("claude-opus-4")
        assert one.display_name == "Claude Opus 4"
        with pytest.raises(anthropic.NotFoundError):
            await client.models.retrieve("gpt-4o")
    status, _, data = await gw.raw("GET", "/v1/models?limit=2")
    page = json.loads(data)
    assert status == 200 and len(page["data"]) == 2 and page["has_more"] is True
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    await gw.raw("GET", "/v1/models/claude-sonnet-4")
    await gw.raw("POST", "/v1/messages/count_tokens",
                 json={"model": MODEL, "messages": [user("hi")]})
    # an OpenAI client (no anthropic-version) still gets OpenAI's list
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/v1/models",
                               headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert (await resp.json())["object"] == "list"


# --------------------------------------------------------------------------- Claude Code


async def _claude(gw: Served, home: Path, *args: str) -> dict[str, Any]:
    env = cli_env(gw.url, str(home), ANTHROPIC_API_KEY=KEY, api_timeout_ms=60000)
    work = gw.root / "client-project"
    work.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        bundled_cli(), "-p", *args, "--output-format", "json", cwd=work, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    result: dict[str, Any] = json.loads(out)
    return result


async def test_claude_code_as_a_client(gw: Served) -> None:
    """The real CLI pointed at the gateway (POST /v1/messages?beta=true, streamed, with its
    tools and betas) gets the answer; its resumed session rides one warm gateway session."""
    home = gw.root / "client-home"
    home.mkdir()
    gw.fake.script({"text": "Hello, Claude Code."})
    started = time.monotonic()
    first = await _claude(gw, home, "say hello to the gateway")
    assert first["is_error"] is False and first["result"] == "Hello, Claude Code."
    assert len(gw.requests_with("say hello to the gateway")) == 1
    pids = gw.engine.live_pids()
    gw.fake.script({"text": "Second answer."})
    second = await _claude(gw, home, "--resume", first["session_id"], "and a second question")
    assert second["is_error"] is False and second["result"] == "Second answer."
    later = gw.requests_with("and a second question")[-1]
    assert "say hello to the gateway" in json.dumps(later["messages"])
    assert "conversation_history" not in json.dumps(later["messages"]), (
        "the gateway continued its session, no transcript")
    # Claude Code's metadata.user_id (JSON with its session id) named the conversation
    sessions = [s for s in await gw.engine.list_sessions()
                if s.key.startswith("openai:u:#") and s.turns == 2]
    assert len(sessions) == 1, "both CLI turns rode one gateway conversation"
    key = sessions[0].key
    assert pids.get(key) is not None and gw.engine.live_pids().get(key) == pids[key], (
        "the second turn ran in the warm process of the first")
    assert time.monotonic() - started < 60
    assert os.environ.get("ANTHROPIC_BASE_URL") != gw.url  # the test's own env is untouched


# --------------------------------------------------------------------------- failures


def _error_of(status: int, data: bytes, etype: str) -> str:
    body = json.loads(data)
    assert body["type"] == "error" and body["error"]["type"] == etype, (status, body)
    message: str = body["error"]["message"]
    return message


async def test_failure_statuses(gw: Served) -> None:
    """Each documented failure of /v1/messages, produced for real, in Anthropic's shape."""
    body: Any = {"model": MODEL, "max_tokens": 10, "metadata": SHARED}
    status, headers, data = await gw.raw(
        "POST", "/v1/messages", json={**body, "messages": [user("now FAIL_429 please")]})
    assert status == 429 and headers["Retry-After"].isdigit()
    _error_of(status, data, "rate_limit_error")
    status, _, data = await gw.raw(
        "POST", "/v1/messages", json={**body, "messages": [user("now FAIL_500 please")]})
    assert status == 502
    _error_of(status, data, "api_error")
    status, _, data = await gw.raw("POST", "/v1/messages/count_tokens", json={"model": MODEL})
    assert status == 400 and "messages" in _error_of(status, data, "invalid_request_error")
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, data = await gw.raw("POST", path, json={}, headers={"x-api-key": "nope"})
        assert status == 401
        _error_of(status, data, "authentication_error")
    # the tight gateway: one request slot, a 4 KiB body limit, a 3 s activity timeout
    hang = {**body, "messages": [user("HANG until interrupted")]}
    pinned = {"X-Conversation-Id": "hang"}
    hung = asyncio.ensure_future(gw.raw("POST", "/v1/messages", json=hang, headers=pinned,
                                        tight=True))
    await wait_for(lambda: any("HANG until" in r["last_user_text"]
                               for r in gw.fake.requests()), "the hanging turn")
    status, headers, data = await gw.raw("POST", "/v1/messages", json=hang, tight=True)
    assert status == 503 and headers["Retry-After"].isdigit()
    assert "server_busy" in _error_of(status, data, "overloaded_error")
    tight = gw.tight_engine
    assert tight is not None
    await wait_for(lambda: tight.interrupt("openai:h:hang"), "the interrupt to land")
    status, _, data = await hung  # the turn was stopped (a chat's /stop, an interrupt)
    assert status == 409
    _error_of(status, data, "api_error")
    status, _, data = await gw.raw(
        "POST", "/v1/messages", json={**body, "messages": [user("x" * 5000)]}, tight=True)
    assert status == 413
    _error_of(status, data, "request_too_large")
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, data = await gw.raw("POST", path, data=b"{" * 5000, tight=True,
                                       headers={"Content-Type": "application/json"})
        assert status == 413
    status, _, data = await gw.raw(
        "POST", "/v1/messages", json={**body, "messages": [user("HANG for the timeout")]},
        tight=True)
    assert status == 504
    _error_of(status, data, "timeout_error")
    # a stream that started (verbose mode shows the first text at once) and then goes
    # silent: the timeout is an error event, in the stream's own format
    status, _, data = await gw.raw(
        "POST", "/v1/messages", tight=True, headers={"X-Stream-Mode": "verbose"},
        json={**body, "stream": True, "messages": [user("STALL after a word")]})
    events = parse_events(data)
    assert status == 200 and [n for n, _ in events][:3] == [
        "message_start", "ping", "content_block_start"]
    assert events[-1][0] == "error" and "message_stop" not in [n for n, _ in events]
    assert events[-1][1]["error"]["type"] == "timeout_error"


async def test_every_documented_status_was_seen(request: pytest.FixtureRequest) -> None:
    """Runs last: each documented (path, method, status) of this dialect met a real
    response (the guard's statuses are tests/test_http_guard.py's)."""
    skip_unless_whole_module(request, __name__)
    documented = {
        (path, method, status)
        for path, ops in DOC["paths"].items()
        if path.startswith("/v1/messages")
        for method, op in ops.items()
        for status in op["responses"]
        if status not in GUARD_STATUSES
    }
    missing = documented - SEEN
    assert not missing, f"documented but never produced: {sorted(missing)}"
