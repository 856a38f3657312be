"""OpenAI function calling through the endpoint: the official client, the real CLI, real tool
calls that suspend the CLI turn until the client's next request brings the results."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import openai
import pytest

from tests.conftest import EngineFactory
from tests.test_api_e2e import OPENCLAW, Api, ApiFactory, text_of, user
from tests.test_api_e2e import api as api
from tests.test_api_e2e import make_api as make_api

pytestmark = pytest.mark.cli

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLIENT = {"X-Tool-Mode": "client"}


def call_weather(city: str) -> dict[str, Any]:
    return {"tool_use": {"name": "mcp__client__get_weather", "input": {"city": city}}}


async def test_non_stream_loop_with_the_openai_client(api: Api) -> None:
    api.fake.script(call_weather("Paris"), match="weather in Paris")
    messages: list[Any] = [user("What is the weather in Paris?")]
    first = await api.client.chat.completions.create(
        model="sonnet", messages=messages, tools=[WEATHER], extra_headers=CLIENT
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    offered = api.fake.requests()[-1]["tools"]
    assert "mcp__client__get_weather" in offered and "Bash" not in offered

    # the client runs its function and sends the whole history back, as OpenAI clients do
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"},
    ]
    second = await api.client.chat.completions.create(
        model="sonnet", messages=messages, tools=[WEATHER], extra_headers=CLIENT
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool said: sunny, 21 °C"
    assert second.usage is not None and second.usage.completion_tokens > 0
    requests = api.fake.requests()
    assert len(requests) == 2, "the suspended turn resumed: nothing was re-prompted"
    assert requests[-1]["tool_results"] == [
        {"tool_use_id": call.id, "content": "sunny, 21 °C", "is_error": False}
    ]


async def test_stream_loop_with_parallel_calls_and_rewritten_ids(api: Api) -> None:
    api.fake.script(
        {"tool_uses": [
            {"name": "mcp__client__get_weather", "input": {"city": "Oslo"}},
            {"name": "mcp__client__get_time", "input": {"city": "Oslo"}},
        ]},
        match="Oslo",
    )
    messages: list[Any] = [user("Weather and time in Oslo?")]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    stream = await api.client.chat.completions.create(
        model="sonnet", messages=messages, tools=[WEATHER, TIME], stream=True,
        stream_options={"include_usage": True}, extra_headers=CLIENT,
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            if delta.function is not None:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    # like OpenClaw: ids echoed without their punctuation, results in another order
    stripped = {i: re.sub(r"[^A-Za-z0-9]", "", c["id"]) for i, c in calls.items()}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": stripped[i], "type": "function",
             "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]}}
            for i in sorted(calls)
        ]},
        {"role": "tool", "tool_call_id": stripped[1], "content": "09:15"},
        {"role": "tool", "tool_call_id": stripped[0], "content": "rain"},
    ]
    stream = await api.client.chat.completions.create(
        model="sonnet", messages=messages, tools=[WEATHER, TIME], stream=True,
        extra_headers=CLIENT,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Tool said: rain\n09:15"
    sent = {r["tool_use_id"]: r["content"] for r in api.fake.requests()[-1]["tool_results"]}
    assert sent == {calls[0]["id"]: "rain", calls[1]["id"]: "09:15"}
    assert len(api.fake.requests()) == 2


async def test_openclaw_tool_round_trip_shape(api: Api) -> None:
    """OpenClaw's own tools: its captured request (12 tools, tool_choice auto, a trailing
    internal-context message), the call answered in its shape (content null, id rewritten)."""
    body = json.loads((OPENCLAW / "turn1.json").read_text())["json"]
    names = [t["function"]["name"] for t in body["tools"]]
    api.fake.script({"tool_use": {"name": "mcp__client__ls", "input": {"path": "."}}},
                    match="First message")
    status, headers, (events, done) = await api.post(body, headers={"X-Tool-Mode": "client"})
    assert status == 200 and done
    assert {f"mcp__client__{n}" for n in names} <= set(api.fake.requests()[-1]["tools"])
    deltas = [d for e in events if e["choices"] for d in e["choices"][0]["delta"].get(
        "tool_calls", [])]
    assert deltas[0]["function"]["name"] == "ls"
    call_id = deltas[0]["id"]
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {"path": "."}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["choices"] == [] and "usage" in events[-1]  # OpenClaw asks for usage

    follow = copy.deepcopy(body)
    internal = follow["messages"].pop()  # OpenClaw's trailing internal context
    follow["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": re.sub(r"[^A-Za-z0-9]", "", call_id), "type": "function",
            "function": {"name": "ls", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": re.sub(r"[^A-Za-z0-9]", "", call_id),
         "content": "README.md\nsrc"},
        internal,
    ]
    # no conversation header: the gateway recognises its own tool calls in the history
    status, headers2, (events, done) = await api.post(follow, headers={"X-Tool-Mode": "client"})
    assert status == 200 and done
    assert headers2["X-Conversation-Id"] == headers["X-Conversation-Id"]
    last = api.fake.requests()[-1]
    (result,) = last["tool_results"]
    assert result["tool_use_id"] == call_id and result["content"].startswith("README.md\nsrc")
    assert text_of(events).startswith("Tool said: README.md\nsrc")
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_a_client_that_never_returns(
    make_api: ApiFactory, make_engine: EngineFactory
) -> None:
    api = await make_api(await make_engine(client_tool_timeout=1.0))
    api.fake.script(call_weather("Rome"), match="Rome")
    first = await api.client.chat.completions.create(
        model="sonnet", messages=[user("Weather in Rome?")], tools=[WEATHER],
        extra_headers={**CLIENT, "X-Conversation-Id": "rome"},
    )
    assert first.choices[0].finish_reason == "tool_calls"
    # the client gives up on the call and writes something else later
    later = await api.client.chat.completions.create(
        model="sonnet", messages=[user("never mind, hello")], tools=[WEATHER],
        extra_headers={**CLIENT, "X-Conversation-Id": "rome"},
    )
    assert later.choices[0].message.content == "echo: never mind, hello"


async def test_agent_mode_ignores_tools_and_tool_choice_is_an_instruction(api: Api) -> None:
    done = await api.client.chat.completions.create(
        model="sonnet", messages=[user("hi")], tools=[WEATHER]
    )
    assert done.choices[0].message.content == "echo: hi"
    assert "mcp__client__get_weather" not in api.fake.requests()[-1]["tools"]
    done = await api.client.chat.completions.create(
        model="sonnet", messages=[user("hi again")], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        extra_body={"tool_mode": "hybrid"},
    )
    assert done.choices[0].finish_reason == "stop"
    request = api.fake.requests()[-1]
    assert "mcp__client__get_time" in request["tools"] and "Bash" in request["tools"]
    assert "you must call the client tool get_time" in json.dumps(request["messages"])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": {"type": "function"}}, "tools: must be an array"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "appears twice"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice: must be one of"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "not in tools"),
        ({"tool_choice": "required"}, "needs at least one tool"),
        ({"tool_mode": "robot"}, "tool_mode: must be one of agent, client, hybrid"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls: must be a boolean"),
    ],
)
async def test_bad_tool_fields_are_400_naming_the_field(
    api: Api, extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await api.client.chat.completions.create(
            model="sonnet", messages=[user("hi")], extra_body=extra
        )
    assert field in str(info.value)
    assert api.fake.requests() == [], "a refused request starts no turn"
