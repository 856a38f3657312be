"""``/v1/responses`` end to end: the official ``openai`` SDK (``responses.create`` /
``responses.stream`` / ``retrieve``) and the OpenAI Agents SDK -> the API -> the real Engine
-> the REAL Claude Code CLI -> the fake Anthropic API. One gateway serves the whole module.

Every body is validated against the ``openai`` SDK's own models
(``openai.types.responses``) and against ``/openapi.json``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.types.responses import Response

from gateway.api.responses import ResponseBuilder
from gateway.api.responses_wire import parse_request
from gateway.engine.events import TurnResult, Usage
from tests.media import png_bytes
from tests.responses_support import EVENTS, KEY, OTHER_KEY, Api, serve_api
from tests.test_api_routes import check_openapi

pytestmark = [pytest.mark.cli, pytest.mark.asyncio(loop_scope="module")]

USAGE = {"input_tokens": 12, "output_tokens": 34, "cache_read_input_tokens": 56,
         "cache_creation_input_tokens": 7}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    async with serve_api(tmp_path_factory.mktemp("responses")) as gateway:
        yield gateway


def event_types(events: list[dict[str, Any]]) -> list[str]:
    """The types of a stream's events without the keepalives: after 0.3 s of silence (here;
    a new CLI takes longer to start) the gateway says response.in_progress again."""
    types = [e["type"] for e in events]
    return types[:2] + [t for t in types[2:] if t != "response.in_progress"]


def check_response(body: dict[str, Any]) -> Response:
    """A non-streamed body is the openai SDK's Response, strictly validated."""
    return Response.model_validate(body)


# --------------------------------------------------------------------------- the SDK


async def test_create_text_usage_and_retrieve(api: Api) -> None:
    api.fake.script({"text": "Hello from the fake.", "usage": USAGE}, match="say hello")
    raw = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", input="say hello", instructions="Be brief.",
        metadata={"ticket": "42"},
    )
    response = raw.parse()
    assert response.output_text == "Hello from the fake."
    assert response.status == "completed" and response.model == "claude-sonnet-4"
    assert response.id.startswith("resp_") and len(response.id) > 40
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == 12 + 56 + 7 and usage.output_tokens == 34
    assert usage.input_tokens_details.cached_tokens == 56
    assert usage.total_tokens == 12 + 56 + 7 + 34
    assert response.metadata == {"ticket": "42"} and response.instructions == "Be brief."
    check_response(json.loads(raw.content))
    assert "Be brief." in api.seen("say hello")["system_text"]
    conversation = raw.headers["x-conversation-id"]
    assert conversation.startswith("auto:")

    again = await api.client.responses.retrieve(response.id)
    assert again.output_text == "Hello from the fake." and again.id == response.id
    status, headers, data = await api.raw("GET", f"/v1/responses/{response.id}")
    check_openapi("GET", "/v1/responses/{response_id}", status, json.loads(data))
    assert headers["X-Conversation-Id"] == conversation


async def test_stream_sends_the_documented_events(api: Api) -> None:
    api.fake.script({"text": "Streaming works fine.", "usage": USAGE}, match="stream me")
    async with api.client.responses.stream(model="claude-sonnet-4", input="stream me") as s:
        deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
        final = await s.get_final_response()
    assert "".join(deltas) == "Streaming works fine."
    assert final.output_text == "Streaming works fine."
    assert final.usage is not None and final.usage.output_tokens == 34

    api.fake.script({"text": "Raw events.", "usage": USAGE}, match="raw stream")
    status, _, events = await api.post({"model": "sonnet", "input": "raw stream",
                                        "stream": True})
    assert status == 200
    types = event_types(events)
    text_deltas = types.count("response.output_text.delta")
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * text_deltas,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[-1]["response"]
    assert done["output"][0]["content"][0]["text"] == "Raw events."
    assert events[-2]["item"]["status"] == "completed"
    check_response(done)


async def test_an_image_reaches_claude(api: Api) -> None:
    data = base64.b64encode(png_bytes()).decode()
    response = await api.client.responses.create(model="claude-sonnet-4", input=[{
        "role": "user", "content": [
            {"type": "input_text", "text": "what is in the picture"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{data}"},
        ],
    }])
    assert response.output_text == f"image received (image/png, {len(data)} b64 chars)"
    assert api.fake.requests()[-1]["images"] == ["image/png"]


async def test_previous_response_id_continues_the_same_cli_session(api: Api) -> None:
    first = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", input="remember the word tangerine")
    conversation = first.headers["x-conversation-id"]
    session = await api.session_of(conversation)
    second = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", input="which word did I ask you to remember",
        previous_response_id=first.parse().id)
    assert second.headers["x-conversation-id"] == conversation
    assert await api.session_of(conversation) == session
    seen = api.seen("which word did I ask")
    # the CLI's own history, not a transcript: the first turn is an earlier message
    assert "remember the word tangerine" in json.dumps(seen["messages"][:-1])
    assert "conversation_history" not in json.dumps(seen["messages"])
    assert second.parse().previous_response_id == first.parse().id

    # an earlier response of the conversation forks its session where that response ended
    branch = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", input="a branch from the first answer",
        previous_response_id=first.parse().id)
    assert branch.headers["x-conversation-id"] == conversation  # the key moves to the fork
    seen = json.dumps(api.seen("a branch from the first")["messages"])
    assert "remember the word tangerine" in seen and "which word" not in seen
    # and the older branch is still there to go on from
    await api.client.responses.create(
        model="claude-sonnet-4", input="back on the second answer",
        previous_response_id=second.parse().id)
    seen = json.dumps(api.seen("back on the second")["messages"])
    assert "which word did I ask" in seen and "a branch from" not in seen
    assert "conversation_history" not in seen

    # nor one whose conversation was reset since
    await api.engine.reset(f"openai:{conversation}")
    status, _, body = await api.post({"model": "sonnet", "input": "after the reset",
                                      "previous_response_id": second.parse().id})
    assert status == 400 and "was reset" in body["error"]["message"]


async def test_store_false_is_not_kept_but_resent_history_continues(api: Api) -> None:
    api.fake.script({"text": "First answer."}, match="history one")
    first = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", input="history one", store=False)
    response = first.parse()
    assert response.store is False
    status, _, body = await api.raw("GET", f"/v1/responses/{response.id}")
    assert status == 404 and json.loads(body)["error"]["code"] == "response_not_found"
    # OpenClaw's way: no previous_response_id, the whole history again
    second = await api.client.responses.with_raw_response.create(
        model="claude-sonnet-4", store=False, input=[
            {"role": "user", "content": "history one"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "First answer."}]},
            {"role": "user", "content": "history two"},
        ])
    assert second.headers["x-conversation-id"] == first.headers["x-conversation-id"]
    assert "conversation_history" not in json.dumps(api.seen("history two")["messages"])


async def test_function_tool_round_trip(api: Api) -> None:
    api.fake.script({"tool_use": {"name": "mcp__client__get_weather",
                                  "input": {"city": "Paris"}}}, match="weather in Paris")
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather now.",
                   "parameters": {"type": "object",
                                  "properties": {"city": {"type": "string"}}}},
                  {"type": "web_search"}]  # a hosted tool: accepted, not offered to Claude
    tool_mode = {"X-Tool-Mode": "client"}
    first = await api.client.responses.create(
        model="claude-sonnet-4", input="what is the weather in Paris", tools=tools,
        extra_headers=tool_mode)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert [t.type for t in first.tools] == ["function"]
    assert "mcp__client__get_weather" in api.seen("weather in Paris")["tools"]

    second = await api.client.responses.create(
        model="claude-sonnet-4", previous_response_id=first.id, tools=tools,
        extra_headers=tool_mode,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "sunny, 21 C"}])
    assert second.output_text == "Tool said: sunny, 21 C"
    results = api.fake.requests()[-1]["tool_results"]
    assert results and results[0]["content"] == "sunny, 21 C"  # a real tool result

    # streamed: the call's events
    api.fake.script({"tool_use": {"name": "mcp__client__get_weather",
                                  "input": {"city": "Oslo"}}}, match="weather in Oslo")
    status, _, events = await api.post(
        {"model": "sonnet", "input": "weather in Oslo", "tools": tools, "stream": True},
        headers=tool_mode)
    assert status == 200
    types = event_types(events)
    assert types[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.done", "response.output_item.done",
                         "response.completed"]
    assert json.loads(events[-2]["item"]["arguments"]) == {"city": "Oslo"}
    check_response(events[-1]["response"])


async def test_agents_sdk_with_a_function_tool(api: Api) -> None:
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool

    @function_tool
    def lucky_number(name: str) -> str:
        """The lucky number of a person."""
        return f"{name}'s lucky number is 7"

    api.fake.script({"tool_use": {"name": "mcp__client__lucky_number",
                                  "input": {"name": "Ada"}}}, match="lucky number of Ada")
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0,
                                default_headers={"X-Tool-Mode": "client"})
    agent = Agent(name="helper", instructions="Use the tools.", tools=[lucky_number],
                  model=OpenAIResponsesModel("claude-sonnet-4", client))
    result = await Runner.run(agent, "what is the lucky number of Ada",
                              run_config=RunConfig(tracing_disabled=True))
    await client.close()
    assert result.final_output == "Tool said: Ada's lucky number is 7"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("body", "message"), [
    ({"input": "hi"}, "model: is required"),
    ({"model": "sonnet"}, "input: is required"),
    ({"model": "sonnet", "input": 5}, "input: must be an array, not a number"),
    ({"model": "sonnet", "input": [{"type": "function_call", "name": "f"}]},
     "input[0].call_id: is required"),
    ({"model": "sonnet", "input": [{"role": "user", "content": [{"type": "input_txt"}]}]},
     "input[0].content[0]: type 'input_txt' is not supported"),
    ({"model": "sonnet", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[0].content[0].image_url: remote image URLs are not fetched"),
    ({"model": "sonnet", "input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].image_url: is required: file ids are not supported"),
    ({"model": "sonnet", "input": [{"role": "user", "content": "x"},
                                   {"role": "assistant", "content": "y"}]},
     "input[1]: the input ends with the assistant's own output"),
    ({"model": "sonnet", "input": "x", "tools": [{"type": "function", "name": "a b"}]},
     "tools[0].name: must be 1-64 letters"),
    ({"model": "sonnet", "input": "x", "tool_choice": "maybe"},
     "tool_choice: must be 'auto', 'none' or 'required'"),
    ({"model": "sonnet", "input": "x", "background": True}, "background: "),
    ({"model": "sonnet", "input": "x", "text": {"format": {"type": "json_object"}}},
     "text.format.type: 'json_object' is not supported"),
    ({"model": "no-such-model", "input": "x"}, "model: "),
    ({"model": "sonnet", "input": "x", "previous_response_id": "resp_nope"},
     "previous_response_id: no response 'resp_nope' was found"),
])
async def test_bad_requests_are_400_naming_the_field(
    api: Api, body: dict[str, Any], message: str
) -> None:
    status, _, error = await api.post(body)
    assert status == 400, error
    assert error["error"]["message"].startswith(message), error


async def test_a_failure_after_the_stream_started_is_an_error_event(api: Api) -> None:
    api.fake.script({"error": 500, "message": "upstream broke", "delay": 1.0},
                    match="break later")
    status, _, events = await api.post({"model": "sonnet", "input": "break later",
                                        "stream": True})
    assert status == 200
    types = [e["type"] for e in events]
    # a keepalive (0.3 s) started the stream; each later one is response.in_progress again
    assert types[:2] == ["response.created", "response.in_progress"]
    assert set(types[2:-2]) <= {"response.in_progress"} and len(types) > 4
    assert types[-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    check_response(failed)
    # before any output, a failure keeps its HTTP status
    status, _, error = await api.post({"model": "sonnet", "input": "FAIL_500 now"})
    assert status == 502 and error["error"]["code"] == "upstream_error"


# --------------------------------------------------------------------------- security


async def test_browser_pages_and_missing_keys_are_refused(api: Api) -> None:
    created = await api.client.responses.create(model="sonnet", input="private answer")
    body = {"model": "sonnet", "input": "from a web page"}
    page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    status, _, _ = await api.raw("POST", "/v1/responses", json=body, headers=page)
    assert status == 403
    status, _, _ = await api.raw("GET", f"/v1/responses/{created.id}", headers=page)
    assert status == 403
    # a form post (no preflight) is not JSON
    status, _, _ = await api.raw("POST", "/v1/responses", data=json.dumps(body),
                                 headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = await api.raw("POST", "/v1/responses", key=None, json=body)
    assert status == 401
    status, _, _ = await api.raw("GET", f"/v1/responses/{created.id}", key=None)
    assert status == 401
    assert not [r for r in api.fake.requests() if "from a web page" in r["last_user_text"]]

    # another key: neither reads nor continues it
    status, _, data = await api.raw("GET", f"/v1/responses/{created.id}", key=OTHER_KEY)
    assert status == 404 and b"private answer" not in data
    status, _, data = await api.raw("POST", "/v1/responses", key=OTHER_KEY, json={
        "model": "sonnet", "input": "continue theirs", "previous_response_id": created.id})
    assert status == 400 and json.loads(data)["error"]["code"] == "previous_response_not_found"



def test_an_answer_cut_at_the_token_limit_is_incomplete() -> None:
    """The renderer alone (the CLI does not report max_tokens to the gateway on demand)."""
    request = parse_request({"model": "sonnet", "input": "long", "stream": True})
    builder = ResponseBuilder(request, "resp_test")
    events = builder.start() + builder.text("A long answer that")
    events += builder.result(TurnResult("A long answer that", "s", None, Usage(1, 2), 0.0, 1,
                                        1, 1, stop_reason="max_tokens"), "A long answer that")
    data = [json.loads(e.model_dump_json()) for e in events]
    for event in data:
        EVENTS.validate_python(event)
    assert data[-1]["type"] == "response.incomplete"
    response = check_response(data[-1]["response"])
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "A long answer that"
