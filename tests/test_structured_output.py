"""``response_format`` (``json_object`` / ``json_schema``) end to end: the official ``openai``
client's ``parse`` helpers and LangChain's ``with_structured_output`` -> the real API -> the
real Engine -> the REAL Claude Code CLI -> the fake Anthropic API, scripted to answer JSON
(and invalid JSON, to see the retry in the same session and the final 422). Every response is
checked against ``/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from gateway.api.chat_wire import parse_response_format
from gateway.api.structured import OutputInvalid, check_answer
from tests import test_api_routes as api_routes
from tests.test_api_routes import Gateway, GatewayFactory

pytestmark = pytest.mark.cli

# fixtures of tests/test_api_routes.py: the API over a real engine
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine


class Weather(BaseModel):
    city: str
    celsius: int
    sunny: bool


GOOD = '{"city": "Rome", "celsius": 21, "sunny": true}'
RETRY_MARK = "Your previous reply is not valid"


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(keepalive_seconds=5.0)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def texts_of(message: dict[str, Any]) -> str:
    """What a message of the CLI's history said (its last text block but reminders)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = [b["text"] for b in content
             if b.get("type") == "text" and not b["text"].startswith("<system-reminder>")]
    return texts[-1] if texts else ""


def dialogue(request: dict[str, Any]) -> list[tuple[str, str]]:
    """The user/assistant turns of a request the model got, as (role, text)."""
    turns = [(m["role"], texts_of(m)) for m in request["messages"]
             if m.get("role") in ("user", "assistant")]
    return [(role, text) for role, text in turns if text]


def schema_format(name: str = "Weather") -> dict[str, Any]:
    return {
        "type": "json_schema",
        # as the openai client sends it with strict: no other properties
        "json_schema": {"name": name, "strict": True,
                        "schema": {**Weather.model_json_schema(), "additionalProperties": False}},
    }


# --------------------------------------------------------------------------- the check


def test_check_answer_unwraps_what_claude_adds_and_names_what_is_wrong() -> None:
    weather = parse_response_format(schema_format())
    json_object = parse_response_format({"type": "json_object"})
    assert weather is not None and json_object is not None
    for answer in (GOOD, f"  {GOOD}\n", f"```json\n{GOOD}\n```", f"```\n{GOOD}```",
                   f"Here it is:\n```json\n{GOOD}\n```\nEnjoy!", f"Here it is: {GOOD}."):
        assert check_answer(weather, answer) == GOOD, answer
    assert check_answer(json_object, '{"a": [1, {"b": 2}]}') == '{"a": [1, {"b": 2}]}'
    problems = {
        "": "empty",
        "sunny": "not valid JSON",
        "{city: Rome}": "not valid JSON",
        f"{GOOD} or {GOOD}": "not valid JSON",  # two values: not guessed at
        '{"city": "Rome", "celsius": 21, "sunny": "yes"}': "at $.sunny: 'yes' is not of type",
        '{"city": "Rome", "celsius": 21, "sunny": true, "x": 1}': "Additional properties",
    }
    for answer, problem in problems.items():
        with pytest.raises(OutputInvalid) as caught:
            check_answer(weather, answer)
        assert problem in caught.value.problem, (answer, caught.value.problem)
    with pytest.raises(OutputInvalid, match="an array, not a JSON object"):
        check_answer(json_object, "[1]")


# --------------------------------------------------------------------------- openai parse


async def test_openai_parse_gets_the_model_and_the_instruction_stays_in_its_turn(
    gw: Gateway,
) -> None:
    gw.fake.script({"text": GOOD}, match="weather in Rome")
    raw = await gw.client.chat.completions.with_raw_response.parse(
        model="sonnet", messages=[user("What is the weather in Rome?")], response_format=Weather
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.message.parsed == Weather(city="Rome", celsius=21, sunny=True)
    assert choice.message.content == GOOD and choice.finish_reason == "stop"
    seen = gw.seen("weather in Rome")
    assert seen["last_user_text"].startswith("What is the weather in Rome?")
    assert "JSON Schema" in seen["last_user_text"] and '"celsius"' in seen["last_user_text"]
    assert "For this reply only" in seen["last_user_text"]
    assert "JSON Schema" not in seen["system_text"]  # a prompt suffix, not system text

    # The next turn of the conversation, without response_format, runs in the same warm
    # session (its history holds the first turn) and gets no instruction of its own.
    conversation = raw.headers["x-conversation-id"]
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": [user("And tomorrow?")]},
        headers={"X-Conversation-Id": conversation},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: And tomorrow?"
    follow = gw.seen("And tomorrow?")
    assert follow["last_user_text"] == "And tomorrow?"
    assert dialogue(follow) == [
        ("user", seen["last_user_text"]), ("assistant", GOOD), ("user", "And tomorrow?")]
    assert len(gw.fake.requests()) == 2


async def test_invalid_json_is_retried_once_in_the_same_session(gw: Gateway) -> None:
    gw.fake.script(
        {"text": "Sure! The weather: {city: Rome, celsius: 21}", "usage": {"output_tokens": 9}},
        match="Paris weather",
    )
    gw.fake.script({"text": "```json\n" + GOOD + "\n```", "usage": {"output_tokens": 11}},
                   match=RETRY_MARK)
    completion = await gw.client.chat.completions.parse(
        model="sonnet", messages=[user("Paris weather, please")], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Rome", celsius=21, sunny=True)
    assert completion.choices[0].message.content == GOOD  # the fence is gone
    assert completion.usage is not None and completion.usage.completion_tokens == 9 + 11
    first, retry = gw.fake.requests()
    assert first["last_user_text"].startswith("Paris weather, please")
    # The retry went to the same CLI session: its history is the first question and the
    # invalid answer, and the new user message names what was wrong.
    assert dialogue(retry) == [
        ("user", first["last_user_text"]),
        ("assistant", "Sure! The weather: {city: Rome, celsius: 21}"),
        ("user", retry["last_user_text"]),
    ]
    assert retry["last_user_text"].startswith(RETRY_MARK)
    assert "not valid JSON" in retry["last_user_text"]

    # The client resends its history with the JSON it got: that continues the same session
    # (the gateway remembered the delivered JSON as the reply), nothing is sent twice.
    status, _, body = await gw.chat({"model": "sonnet", "messages": [
        user("Paris weather, please"), {"role": "assistant", "content": GOOD}, user("Thanks!")]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: Thanks!"
    follow = gw.seen("Thanks!")
    assert follow["last_user_text"] == "Thanks!"
    # (the session holds Claude's own words: the fenced JSON the gateway unwrapped)
    assert dialogue(follow)[:-1] == [*dialogue(retry), ("assistant", "```json\n" + GOOD + "\n```")]


async def test_schema_mismatch_twice_is_a_422_naming_the_problem(gw: Gateway) -> None:
    wrong = '{"city": "Rome", "celsius": "warm", "sunny": true}'
    gw.fake.script({"text": wrong}, match="Oslo weather")
    gw.fake.script({"text": wrong}, match=RETRY_MARK)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await gw.client.chat.completions.parse(
            model="sonnet", messages=[user("Oslo weather")], response_format=Weather
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_json_output"
    assert "$.celsius" in error["message"] and "'warm' is not of type 'integer'" in (
        error["message"])
    retry = gw.seen(RETRY_MARK)
    assert "$.celsius" in retry["last_user_text"]
    assert len(gw.fake.requests()) == 2  # one retry, not more
    assert caught.value.response.headers["x-conversation-id"]


async def test_json_object_and_text(gw: Gateway) -> None:
    gw.fake.script({"text": "[1, 2, 3]"}, match="list as object")
    gw.fake.script({"text": '{"items": [1, 2, 3]}'}, match=RETRY_MARK)
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": [user("list as object")],
         "response_format": {"type": "json_object"}}
    )
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"items": [1, 2, 3]}
    assert "an array, not a JSON object" in gw.seen(RETRY_MARK)["last_user_text"]
    assert "single JSON object" in gw.seen("list as object")["last_user_text"]

    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": [user("plain text")], "response_format": {"type": "text"}}
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: plain text"
    assert gw.seen("plain text")["last_user_text"] == "plain text"


# --------------------------------------------------------------------------- streaming


async def test_stream_sends_the_checked_json_in_one_piece(gw: Gateway) -> None:
    gw.fake.script({"text": "Here you go: {city: Rome}"}, match="stream weather")
    gw.fake.script({"text": GOOD, "chunk_delay": 0.05}, match=RETRY_MARK)
    async with gw.client.chat.completions.stream(
        model="sonnet", messages=[user("stream weather")], response_format=Weather
    ) as stream:
        contents = [e.delta async for e in stream if e.type == "content.delta" and e.delta]
        final = await stream.get_final_completion()
    assert contents == [GOOD]  # nothing of the invalid first answer, the JSON at once
    assert final.choices[0].message.parsed == Weather(city="Rome", celsius=21, sunny=True)

    gw.fake.script({"text": '{"city": 1}'}, match="bad stream")
    gw.fake.script({"text": '{"city": 2}'}, match=RETRY_MARK)
    status, headers, body = await gw.chat(
        {"model": "sonnet", "messages": [user("bad stream")], "stream": True,
         "response_format": schema_format()}
    )
    # nothing was sent before the check, so the failure still has its real status
    assert status == 422 and headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == "invalid_json_output"
    assert "'celsius' is a required property" in body["error"]["message"]


async def test_stream_failure_after_keepalives_is_an_error_event_not_stop(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(keepalive_seconds=0.2)
    gw.fake.script({"text": "nope", "delay": 0.5}, match="slow weather")
    gw.fake.script({"text": "nope again", "delay": 0.5}, match=RETRY_MARK)
    status, _, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": [user("slow weather")], "stream": True,
         "response_format": {"type": "json_object"}}
    )
    assert status == 200 and done
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "invalid_json_output"
    assert events[-1] is errors[0]
    chunks = [e for e in events if "choices" in e]
    assert chunks and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert all(not c["choices"][0]["delta"].get("content") for c in chunks)


# --------------------------------------------------------------------------- LangChain


async def test_langchain_with_structured_output(gw: Gateway) -> None:
    llm = ChatOpenAI(model="sonnet", base_url=f"{gw.url}/v1", api_key="sk-test",  # type: ignore[arg-type]
                     max_retries=0)
    gw.fake.script({"text": GOOD}, match="LangChain json_schema")
    got = await llm.with_structured_output(Weather, method="json_schema").ainvoke(
        "LangChain json_schema weather")
    assert got == Weather(city="Rome", celsius=21, sunny=True)
    assert "JSON Schema" in gw.seen("LangChain json_schema")["last_user_text"]

    # its default method (json_schema in langchain-openai 1.x) works the same way, here with
    # an invalid first answer that the gateway has corrected before LangChain parses
    gw.fake.script({"text": '{"city": "Rome", "celsius": 21}'}, match="LangChain default")
    gw.fake.script({"text": GOOD}, match=RETRY_MARK)
    assert await llm.with_structured_output(Weather).ainvoke("LangChain default") == got
    assert "JSON Schema" in gw.seen("LangChain default")["last_user_text"]
    assert "'sunny' is a required property" in gw.seen(RETRY_MARK)["last_user_text"]

    gw.fake.script({"text": '{"city": "Rome"}'}, match="LangChain json_mode")
    got_dict = await llm.with_structured_output(method="json_mode").ainvoke(
        "LangChain json_mode: answer in JSON")
    assert got_dict == {"city": "Rome"}

    # function calling goes through the client's tools: in the default agent tool mode they
    # are ignored, Claude answers in words and LangChain finds no call (None) ...
    assert await llm.with_structured_output(Weather, method="function_calling").ainvoke(
        "LangChain agent-mode tools") is None
    assert "mcp__client__Weather" not in gw.seen("LangChain agent-mode tools")["tools"]
    # ... with X-Tool-Mode: client (or hybrid) Claude gets the tool and LangChain the call
    tools_llm = ChatOpenAI(model="sonnet", base_url=f"{gw.url}/v1", api_key="sk-test",  # type: ignore[arg-type]
                           max_retries=0, default_headers={"X-Tool-Mode": "client"})
    gw.fake.script({"tool_use": {"name": "mcp__client__Weather",
                                 "input": {"city": "Rome", "celsius": 21, "sunny": True}}},
                   match="must call the client tool Weather")  # LangChain forces the tool
    called = await tools_llm.with_structured_output(Weather, method="function_calling").ainvoke(
        "LangChain tools weather")
    assert called == got
    assert "mcp__client__Weather" in gw.seen("must call the client tool Weather")["tools"]
