"""End to end through HTTP: the official ``openai`` client -> the API -> the real Engine ->
the REAL Claude Code CLI -> the fake Anthropic API (which echoes, so what the model saw is
visible in its request log). Every response is validated against ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.engine import EngineConfig
from tests.conftest import EngineFactory, child_pids
from tests.fake_anthropic import FakeAnthropic
from tests.media import png_bytes
from tests.test_api_routes import Gateway, check_openapi, gateway_factory

pytestmark = pytest.mark.cli

OPENCLAW = Path(__file__).parent / "data" / "openclaw-requests"
FAKE_CLI = str(Path(__file__).parent / "fake_cli.py")
USAGE = {
    "input_tokens": 12,
    "output_tokens": 34,
    "cache_read_input_tokens": 56,
    "cache_creation_input_tokens": 7,
}


class Api(Gateway):
    """The API over a real engine (with its spare processes), the fake API behind it."""

    async def post(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """POST /v1/chat/completions; returns the parsed JSON or (events, done) for streams."""
        return await self.chat(body, headers=headers)

    def requests_for(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.fake.requests() if text in r["last_user_text"]]


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> AsyncIterator[ApiFactory]:
    async with AsyncExitStack() as stack:
        yield gateway_factory(stack, make_engine, fake_api, Api)


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def user(text: str) -> Any:
    return {"role": "user", "content": text}


def assistant(text: str) -> Any:
    return {"role": "assistant", "content": text}



# --------------------------------------------------------------------------- the basics


async def test_health_models_and_openapi(api: Api) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(api.url + "/health") as resp:
            health = await resp.json()
            check_openapi("GET", "/health", resp.status, health)
        async with session.get(api.url + "/openapi.json") as resp:
            assert (await resp.json())["paths"]["/v1/chat/completions"]
        async with session.get(api.url + "/v1/models") as resp:
            check_openapi("GET", "/v1/models", resp.status, await resp.json())
    assert health["status"] == "ok" and health["cli_version"] and health["cli_path"]
    ids = [m.id for m in (await api.client.models.list()).data]
    assert ids == ["claude-opus-4", "claude-sonnet-4", "claude-haiku-4"]  # each model once
    assert (await api.client.models.retrieve("sonnet")).id == "sonnet"  # aliases still answer
    assert (await api.client.models.retrieve("claude-haiku-4")).id == "claude-haiku-4"


async def test_non_stream_with_real_usage(api: Api) -> None:
    api.fake.script({"text": "Hello from the fake.", "usage": USAGE}, match="say hello")
    raw = await api.client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4", messages=[user("say hello")]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-sonnet-4"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 12 + 56 + 7
    assert completion.usage.completion_tokens == 34
    assert completion.usage.total_tokens == 12 + 56 + 7 + 34
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 56
    assert raw.headers["x-conversation-id"].startswith("auto:")
    assert api.requests_for("say hello")[-1]["model"].startswith("claude-sonnet")


async def test_stream_include_usage_and_stream_helper(api: Api) -> None:
    api.fake.script({"text": "Streaming works fine.", "usage": USAGE}, match="stream me")
    stream = await api.client.chat.completions.create(
        model="claude-sonnet-4",
        messages=[user("stream me")],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Streaming works fine."
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 75 and chunks[-1].usage.completion_tokens == 34

    api.fake.script({"text": "Helper works.", "usage": USAGE}, match="helper please")
    async with api.client.chat.completions.stream(
        model="claude-sonnet-4",
        messages=[user("helper please")],
        stream_options={"include_usage": True},
    ) as helper:
        async for _ in helper:
            pass
        final = await helper.get_final_completion()
    assert final.choices[0].message.content == "Helper works."
    assert final.usage is not None and final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 56

    status, headers, (events, _) = await api.post(
        {"model": "sonnet", "messages": [user("raw stream")], "stream": True}
    )
    assert status == 200 and text_of(events) == "echo: raw stream"
    assert headers["Cache-Control"] == "no-cache"


async def test_stream_modes_with_a_real_tool(api: Api) -> None:
    smart = await api.client.chat.completions.create(
        model="sonnet", messages=[user("please RUN_BASH")]
    )
    assert smart.choices[0].message.content == "Tool said: hello"
    status, _, (events, _) = await api.post(
        {"model": "sonnet", "messages": [user("RUN_BASH again")], "stream": True},
        headers={"X-Stream-Mode": "verbose"},
    )
    text = text_of(events)
    assert status == 200
    assert "I'll run a command." in text and "[tool] " in text and text.endswith("Tool said: hello")


async def test_keepalive_deltas_while_a_slow_tool_runs(make_api: ApiFactory) -> None:
    api = await make_api(keepalive_seconds=0.3)
    api.fake.script(
        {"tool_use": {"name": "Bash", "input": {"command": "sleep 2", "description": "Wait"}}},
        match="slow tool",
    )
    started = time.monotonic()
    status, _, (events, _) = await api.post(
        {"model": "sonnet", "messages": [user("slow tool")], "stream": True}
    )
    assert status == 200 and time.monotonic() - started >= 2
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    keepalives = [d for d in deltas[1:] if d == {"role": "assistant", "content": ""}]
    assert len(keepalives) >= 4, deltas
    assert text_of(events).startswith("Tool said:")


# --------------------------------------------------------------------------- conversations


async def test_rule2_resent_history_continues_and_sends_only_the_new_message(api: Api) -> None:
    system: Any = {"role": "system", "content": "Be brief."}
    first = await api.client.chat.completions.create(
        model="sonnet", messages=[system, user("my name is Ada")]
    )
    reply = first.choices[0].message.content or ""
    assert reply == "echo: my name is Ada"
    pid = api.engine.live_pids()
    assert len(pid) == 1
    raw = await api.client.chat.completions.with_raw_response.create(
        model="sonnet",
        messages=[
            system,
            user("my name is Ada"),
            assistant(reply),
            user("what is my name?"),
        ],
    )
    assert raw.parse().choices[0].message.content == "echo: what is my name?"
    request = api.requests_for("what is my name?")[-1]
    assert request["last_user_text"] == "what is my name?", "only the new message is sent"
    seen = json.dumps(request["messages"])
    assert "my name is Ada" in seen, "the session remembers turn 1"
    assert "conversation_history" not in seen
    assert "Be brief." in request["system_text"]
    assert api.engine.live_pids() == pid, "the same warm process answered"


async def test_rule1_keys_continue_with_only_new_messages(api: Api) -> None:
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({}, {"X-Conversation-Id": "conv-h"}),
        ({"prompt_cache_key": "sess-A:0"}, {}),
        ({"user": "alice"}, {}),
    ]
    for extra, headers in cases:
        tag = next(iter(headers.values()), None) or next(iter(extra.values()))
        s1, h1, _ = await api.post(
            {"model": "sonnet", "messages": [user(f"remember {tag}")], **extra}, headers
        )
        s2, h2, body = await api.post(
            {"model": "sonnet", "messages": [user(f"recall {tag}")], **extra}, headers
        )
        assert s1 == s2 == 200 and h1["X-Conversation-Id"] == h2["X-Conversation-Id"]
        assert body["choices"][0]["message"]["content"] == f"echo: recall {tag}"
        request = api.requests_for(f"recall {tag}")[-1]
        assert f"remember {tag}" in json.dumps(request["messages"])
    assert sorted(k for k in api.engine.live_pids()) == [
        "openai:h:conv-h",
        "openai:pck:sess-A:0",
        "openai:u:alice",
    ]


async def test_rule3_new_session_is_seeded_with_the_history(api: Api) -> None:
    messages = [
        user("the secret is 42"),
        assistant("Noted, the secret is 42."),
        user("and the colour is teal"),
        assistant("Teal it is."),
        user("what do you know?"),
    ]
    status, headers, body = await api.post({"model": "sonnet", "messages": messages})
    assert status == 200 and headers["X-Conversation-Id"].startswith("auto:")
    request = api.requests_for("what do you know?")[-1]
    text = request["last_user_text"]
    assert text.index("<conversation_history>") < text.index("the secret is 42")
    assert "[assistant]\nTeal it is." in text
    assert text.endswith("</conversation_history>\n\nwhat do you know?")
    # and it continues from there by rule 2
    reply = body["choices"][0]["message"]["content"]
    _, h2, _ = await api.post(
        {"model": "sonnet", "messages": [*messages, assistant(reply), user("thanks")]}
    )
    assert h2["X-Conversation-Id"] == headers["X-Conversation-Id"]
    assert api.requests_for("thanks")[-1]["last_user_text"] == "thanks"


async def test_images_reach_claude(api: Api) -> None:
    data = base64.b64encode(png_bytes()).decode()
    completion = await api.client.chat.completions.create(
        model="sonnet",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                    {"type": "text", "text": "what is in this picture?"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == (
        f"image received (image/png, {len(data)} b64 chars)"
    )
    assert api.fake.requests()[-1]["images"] == ["image/png"]


async def test_one_megabyte_history(api: Api) -> None:
    messages: list[dict[str, Any]] = []
    for i in range(50):
        messages += [user(f"part {i} " + "z" * 11_000), assistant(f"ok {i} " + "w" * 10_000)]
    messages.append(user("summarise the above"))
    assert len(json.dumps(messages)) > 1_000_000
    status, _, body = await api.post({"model": "sonnet", "messages": messages})
    assert status == 200, body
    request = api.fake.requests()[-1]
    assert len(request["last_user_text"]) > 1_000_000
    assert "part 0 " in request["last_user_text"] and "ok 49 " in request["last_user_text"]


async def test_openclaw_turns_replayed(api: Api) -> None:
    turn1 = json.loads((OPENCLAW / "turn1.json").read_text())["json"]
    turn2 = json.loads((OPENCLAW / "turn2.json").read_text())["json"]
    status, h1, (events, _) = await api.post(turn1)
    assert status == 200
    reply = text_of(events)
    assert reply.startswith("echo: ")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    first = api.fake.requests()[-1]
    assert "You are a personal assistant running inside OpenClaw." in first["system_text"]
    assert "OPENCLAW_INTERNAL_CONTEXT" in first["last_user_text"]
    assert "remember the word banana" in first["last_user_text"]

    verbatim = json.loads(json.dumps(turn2))
    turn2["messages"][2]["content"] = reply  # what OpenClaw keeps in its history
    status, h2, (events, _) = await api.post(turn2)
    assert status == 200 and h2["X-Conversation-Id"] == h1["X-Conversation-Id"]
    second = api.fake.requests()[-1]
    assert second["last_user_text"].startswith("[Tue 2026-11-24 16:28 UTC] Second message")
    assert "OPENCLAW_INTERNAL_CONTEXT" in second["last_user_text"]
    assert "banana" not in second["last_user_text"], "turn 1 is not resent"
    assert "banana" in json.dumps(second["messages"]), "the session has turn 1"

    # The captured turn 2 (another backend's reply in it) cannot continue: a seeded session.
    status, h3, _ = await api.post(verbatim)
    assert status == 200 and h3["X-Conversation-Id"] != h1["X-Conversation-Id"]
    third = api.fake.requests()[-1]["last_user_text"]
    assert "<conversation_history>" in third and "STUB-REPLY #1" in third and "banana" in third


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("trigger", "status", "code"),
    [
        ("FAIL_429", 429, "rate_limit_exceeded"),
        ("FAIL_529", 503, "overloaded"),
        ("FAIL_500", 502, "upstream_error"),
        ("FAIL_401", 502, "upstream_authentication_failed"),
    ],
)
async def test_upstream_errors_map_to_statuses(
    api: Api, trigger: str, status: int, code: str
) -> None:
    for stream in (False, True):
        got, headers, body = await api.post(
            {"model": "sonnet", "messages": [user(f"{trigger} {stream}")], "stream": stream}
        )
        assert got == status, body
        assert body["error"]["code"] == code and body["error"]["message"]
        if status in (429, 503):
            assert int(headers["Retry-After"]) >= 1
        if status == 429:
            with pytest.raises(openai.RateLimitError):
                await api.client.chat.completions.create(
                    model="sonnet", messages=[user(f"{trigger} again")]
                )
    # the conversation is still usable
    assert (await api.post({"model": "sonnet", "messages": [user("fine now")]}))[0] == 200


async def test_not_logged_in_is_503_with_instructions(
    make_api: ApiFactory, make_engine: EngineFactory, engine_config: EngineConfig
) -> None:
    env = dict(engine_config.env, ANTHROPIC_API_KEY="")
    api = await make_api(await make_engine(env=env))
    status, _, body = await api.post({"model": "sonnet", "messages": [user("hello")]})
    assert status == 503 and body["error"]["code"] == "cli_not_logged_in"
    assert "/login" in body["error"]["message"]


async def test_activity_timeout_is_504_and_in_stream_error(
    make_api: ApiFactory, make_engine: EngineFactory
) -> None:
    engine = await make_engine(activity_timeout=2.0, bash_max_timeout=2.0)
    api = await make_api(engine, keepalive_seconds=0.5)
    status, _, body = await api.post({"model": "sonnet", "messages": [user("STALL here")]})
    assert status == 504 and body["error"]["code"] == "timeout"
    # streamed: the keepalive opened the stream, so the error arrives in it, then [DONE]
    status, _, (events, done) = await api.post(
        {"model": "sonnet", "messages": [user("STALL there")], "stream": True}
    )
    assert status == 200 and done and events[-1]["error"]["code"] == "timeout"
    stream = await api.client.chat.completions.create(
        model="sonnet", messages=[user("STALL again")], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_cli_crash_is_502(make_api: ApiFactory, make_engine: EngineFactory) -> None:
    engine = await make_engine(cli_path=FAKE_CLI, activity_timeout=5.0, bash_max_timeout=1.0)
    api = await make_api(engine)
    status, headers, body = await api.post({"model": "sonnet", "messages": [user("please DIE")]})
    assert status == 502 and body["error"]["code"] == "cli_crashed"
    crashed = {"X-Conversation-Id": headers["X-Conversation-Id"]}
    # streamed, before any answer text (smart mode holds the step's text): still a real 502
    status, _, body = await api.post(
        {"model": "sonnet", "messages": [user("DIE early")], "stream": True}
    )
    assert status == 502 and body["error"]["code"] == "cli_crashed"
    # after text went out (verbose streams it at once): in-stream error, then [DONE]
    status, _, (events, done) = await api.post(
        {"model": "sonnet", "messages": [user("DIE midway")], "stream": True},
        headers={"X-Stream-Mode": "verbose"},
    )
    assert status == 200 and done and events[-1]["error"]["code"] == "cli_crashed"
    assert text_of(events[:-1])
    # and the crashed conversation continues (its session is resumed)
    status, _, body = await api.post(
        {"model": "sonnet", "messages": [user("hello again")]}, headers=crashed
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "fake: hello again"


async def test_request_errors(make_api: ApiFactory) -> None:
    api = await make_api(api_keys=("gw-key",), max_body_bytes=256 * 1024)
    authed = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="gw-key", max_retries=0)
    async with authed:
        await _request_errors(api, authed)


async def _request_errors(api: Api, authed: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        await api.client.chat.completions.create(model="sonnet", messages=[user("hi")])
    status, _, _ = await api.post({"model": "sonnet", "messages": [user("hi")]})
    assert status == 401
    with pytest.raises(openai.BadRequestError, match="model"):
        await authed.chat.completions.create(model="gpt-4o", messages=[user("hi")])
    with pytest.raises(openai.BadRequestError, match="n:"):
        await authed.chat.completions.create(model="sonnet", messages=[user("hi")], n=2)
    with pytest.raises(openai.APIStatusError) as info:
        await authed.chat.completions.create(model="sonnet", messages=[user("x" * 300_000)])
    assert info.value.status_code == 413
    ok = await authed.chat.completions.create(model="sonnet", messages=[user("hi")])
    assert ok.choices[0].message.content == "echo: hi"


# --------------------------------------------------------------------------- disconnects


async def test_client_disconnect_interrupts_and_the_conversation_stays_usable(
    make_api: ApiFactory, make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    # no spare: a refill started by the new conversation would count as an extra process
    api = await make_api(await make_engine(spare_processes=0))
    await api.post({"model": "sonnet", "messages": [user("warm up")]})
    before = child_pids()
    # five deltas 3 s apart: the turn would take 12 s if it were not interrupted
    fake_api.script({"text": "slow answer " * 40, "chunk_delay": 3.0}, match="long answer")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            api.url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": [user("long answer")], "stream": True},
        ) as resp:
            conversation = resp.headers["X-Conversation-Id"]
            while b"slow answer" not in await resp.content.readline():
                pass
            resp.close()
    closed = time.monotonic()
    key = "openai:" + conversation
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = await api.engine.describe(key)
        if info is not None and not info.busy:
            break
        await asyncio.sleep(0.1)
    info = await api.engine.describe(key)
    assert info is not None and not info.busy, "the turn must be interrupted"
    assert time.monotonic() - closed < 3
    pid = api.engine.live_pids()[key]
    assert child_pids() - before <= {pid}, "no process beyond the conversation's own"
    status, _, body = await api.post(
        {"model": "sonnet", "messages": [user("still there?")]},
        headers={"X-Conversation-Id": conversation},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: still there?"
    assert api.engine.live_pids()[key] == pid
    assert "long answer" in json.dumps(fake_api.requests()[-1]["messages"])
