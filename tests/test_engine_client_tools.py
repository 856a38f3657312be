"""Client tools (OpenAI function calling) through the real CLI: the turn waits inside the call."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence

import pytest

from gateway.engine import (
    ClientTool,
    Engine,
    Event,
    Prompt,
    ToolCall,
    ToolCallsRequested,
    ToolMode,
    ToolResult,
    TurnOptions,
    TurnResult,
)
from gateway.engine.client_tools import CallBroker
from tests.conftest import EngineFactory, collect
from tests.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.cli

WEATHER = ClientTool(
    "get_weather",
    "The current weather of a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ClientTool("get_time", "The local time of a city.", {
    "type": "object", "properties": {"city": {"type": "string"}},
})


def client(
    *tools: ClientTool, mode: ToolMode = ToolMode.CLIENT, choice: str = "auto"
) -> TurnOptions:
    return TurnOptions(tools=tools, tool_mode=mode, tool_choice=choice)


def calls_of(events: Sequence[Event]) -> tuple[ToolCall, ...]:
    last = events[-1]
    assert isinstance(last, ToolCallsRequested), f"expected tool calls, got {last!r}"
    return last.calls


def result_of(events: Sequence[Event]) -> TurnResult:
    last = events[-1]
    assert isinstance(last, TurnResult), f"turn did not finish: {last!r}"
    return last


async def test_one_call_round_trip_resumes_the_same_turn(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    fake_api.script(
        {"text": "Let me check.", "tool_use": {"name": "mcp__client__get_weather",
                                               "input": {"city": "Paris"}}},
        match="weather in Paris",
    )
    events = await collect(engine, "c:1", "What is the weather in Paris?", client(WEATHER))
    (call,) = calls_of(events)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    first = fake_api.requests()[-1]
    assert "mcp__client__get_weather" in first["tools"]
    assert "Bash" not in first["tools"], "client mode turns Claude Code's built-in tools off"

    results = Prompt(tool_results=(ToolResult(call.call_id, "sunny, 21 °C"),))
    events = await collect(engine, "c:1", results, client(WEATHER))
    assert result_of(events).text == "Tool said: sunny, 21 °C"
    last = fake_api.requests()[-1]
    assert last["tool_results"] == [
        {"tool_use_id": call.call_id, "content": "sunny, 21 °C", "is_error": False}
    ]
    # one CLI turn: the model saw a real tool result, nothing was re-prompted
    assert len(fake_api.requests()) == 2
    # and the conversation goes on as usual
    events = await collect(engine, "c:1", "thanks", client(WEATHER))
    assert result_of(events).text == "echo: thanks"


async def test_parallel_calls_with_rewritten_ids_and_an_error_result(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    fake_api.script(
        {"tool_uses": [
            {"name": "mcp__client__get_weather", "input": {"city": "Oslo"}},
            {"name": "mcp__client__get_time", "input": {"city": "Oslo"}},
        ]},
        match="Oslo",
    )
    events = await collect(engine, "c:2", "Weather and time in Oslo?", client(WEATHER, TIME))
    calls = calls_of(events)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    # OpenClaw strips everything but letters and digits from the ids it echoes back
    results = Prompt(tool_results=(
        ToolResult(re.sub(r"[^A-Za-z0-9]", "", calls[1].call_id), "09:15"),
        ToolResult(re.sub(r"[^A-Za-z0-9]", "", calls[0].call_id), "no such city", True),
    ))
    events = await collect(engine, "c:2", results, client(WEATHER, TIME))
    result_of(events)
    got = {r["tool_use_id"]: r for r in fake_api.requests()[-1]["tool_results"]}
    assert got[calls[1].call_id]["content"] == "09:15"
    assert got[calls[0].call_id]["content"] == "no such city"
    assert got[calls[0].call_id]["is_error"] is True


async def test_an_abandoned_call_times_out_and_the_conversation_stays_usable(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(client_tool_timeout=1.0)
    fake_api.script({"tool_use": {"name": "mcp__client__get_weather", "input": {"city": "Rome"}}},
                    match="Rome")
    calls_of(await collect(engine, "c:3", "Weather in Rome?", client(WEATHER)))
    # the client never sends the result: after client_tool_timeout the turn is ended
    events = await collect(engine, "c:3", "never mind, say hi", client(WEATHER))
    assert result_of(events).text == "echo: never mind, say hi"
    failed = [r for r in fake_api.requests() if r["tool_results"]]
    assert not failed or failed[-1]["tool_results"][0]["is_error"]


async def test_a_new_message_instead_of_results_ends_the_waiting_turn(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    fake_api.script({"tool_use": {"name": "mcp__client__get_weather", "input": {"city": "Lima"}}},
                    match="Lima")
    calls_of(await collect(engine, "c:4", "Weather in Lima?", client(WEATHER)))
    events = await collect(engine, "c:4", "forget it, what is 2+2?", client(WEATHER))
    assert result_of(events).text == "echo: forget it, what is 2+2?"
    info = await engine.describe("c:4")
    assert info is not None and not info.busy


async def test_text_sent_with_the_results_reaches_the_model(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    fake_api.script({"tool_use": {"name": "mcp__client__get_weather", "input": {"city": "Kyiv"}}},
                    match="Kyiv")
    (call,) = calls_of(await collect(engine, "c:5", "Weather in Kyiv?", client(WEATHER)))
    prompt = Prompt(text="and in Celsius please",
                    tool_results=(ToolResult(call.call_id, "70 F"),))
    result_of(await collect(engine, "c:5", prompt, client(WEATHER)))
    (sent,) = fake_api.requests()[-1]["tool_results"]
    assert sent["content"].startswith("70 F") and "and in Celsius please" in sent["content"]


async def test_results_without_a_waiting_turn_arrive_as_text(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    # e.g. the gateway restarted between the call and the result
    prompt = Prompt(tool_results=(ToolResult("call_9", "42 items"),))
    result_of(await collect(engine, "c:6", prompt, client(WEATHER)))
    text = fake_api.requests()[-1]["last_user_text"]
    assert "call_9" in text and "42 items" in text


async def test_hybrid_mode_keeps_built_ins_but_hides_configured_ones(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(hybrid_hidden_tools=("WebFetch",))
    result_of(await collect(engine, "c:7", "hi", client(WEATHER, mode=ToolMode.HYBRID)))
    tools = fake_api.requests()[-1]["tools"]
    assert "Bash" in tools and "mcp__client__get_weather" in tools
    assert "WebFetch" not in tools
    # agent mode: the client's tools are not offered at all
    result_of(await collect(engine, "c:8", "hi", client(WEATHER, mode=ToolMode.AGENT)))
    assert "mcp__client__get_weather" not in fake_api.requests()[-1]["tools"]


async def test_tool_choice_becomes_an_instruction(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    result_of(await collect(engine, "c:9", "hi", client(WEATHER, choice="required")))
    assert "must call at least one of the client tools (get_weather)" in json.dumps(
        fake_api.requests()[-1]["messages"]
    )


async def test_a_result_that_comes_before_the_cli_calls_the_handler_is_kept() -> None:
    # the client can answer faster than the CLI invokes the MCP handler (seen under load)
    broker = CallBroker()
    broker.announce("toolu_01-A", "get_weather", {"city": "Bern"})
    assert broker.resolve((ToolResult("toolu01A", "snow"),)) == []
    assert await asyncio.wait_for(broker.handle("get_weather", {"city": "Bern"}), 1) == (
        ToolResult("toolu01A", "snow")
    )
    # the handler may also run first, with no id yet; the id comes with the block
    waiting = asyncio.ensure_future(broker.handle("get_time", {"city": "Bern"}))
    await asyncio.sleep(0)
    broker.announce("toolu_02", "get_time", {"city": "Bern"})
    assert broker.resolve((ToolResult("other", "x"), ToolResult("toolu_02", "noon"))) == ["other"]
    assert (await asyncio.wait_for(waiting, 1)).content == "noon"
    # a new turn drops what an interrupted one left behind
    broker.announce("toolu_03", "get_time", {"city": "Bern"})
    broker.reset()
    assert broker.resolve((ToolResult("toolu_03", "late"),)) == ["toolu_03"]
