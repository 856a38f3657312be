"""The streaming policy and error classification, on recorded output of the real CLI.

The files under tests/data/cli-events/ were captured from Claude Code 2.1.197/2.1.331
(see the project's shared reference); they are parsed with claude-agent-sdk's own parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ResultMessage, StreamEvent, ToolUseBlock
from claude_agent_sdk._internal.message_parser import parse_message

from gateway.engine import (
    Commentary,
    Event,
    Notice,
    StepBoundary,
    StreamMode,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnResult,
)
from gateway.engine.translate import TurnTranslator, tool_summary
from gateway.errors import ErrorKind

DATA = Path(__file__).parent / "data" / "cli-events"


def load(name: str) -> list[list[Any]]:
    """The parsed messages of a capture, split into turns (each ends with a result)."""
    turns: list[list[Any]] = [[]]
    for line in (DATA / name).read_text().splitlines():
        raw = json.loads(line)
        if "msg" in raw and "dir" in raw:  # timestamped capture of stdin and stdout
            if raw["dir"] != "out":
                continue
            raw = raw["msg"]
        if raw.get("type") in ("control_response", "control_request"):
            continue
        msg = parse_message(raw)
        if msg is None:
            continue
        turns[-1].append(msg)
        if isinstance(msg, ResultMessage):
            turns.append([])
    return [t for t in turns if t]


def run(messages: list[Any], mode: StreamMode = StreamMode.SMART, **kw: Any) -> list[Event]:
    tr = TurnTranslator(mode=mode, **kw)
    out: list[Event] = []
    for msg in messages:
        out += tr.feed(msg)
    return out


def answer(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_plain_turn_streams_the_answer() -> None:
    turns = load("sdk-protocol-stdout.jsonl")
    events = run(turns[0])
    assert answer(events) == "echo: turn one"
    result = events[-1]
    assert isinstance(result, TurnResult) and result.text == "echo: turn one"
    assert result.usage.input_tokens > 0 and result.session_id


def test_tool_turn_smart_hides_the_preamble_and_reports_the_tool() -> None:
    events = run(load("sdk-protocol-stdout.jsonl")[1])
    assert answer(events) == "Tool said: hello"
    assert Commentary("I'll run a command.") in events
    tool = next(e for e in events if isinstance(e, ToolStarted))
    assert tool.name == "Bash" and tool.summary == "Running echo hello"
    assert any(isinstance(e, ToolFinished) and e.tool_id == tool.tool_id for e in events)
    assert StepBoundary(2) in events
    order = [type(e) for e in events]
    assert order.index(Commentary) < order.index(ToolStarted) < order.index(StepBoundary)
    result = events[-1]
    assert isinstance(result, TurnResult) and result.text == "Tool said: hello"
    assert result.num_turns == 2


def test_tool_turn_verbose_and_final() -> None:
    turn = load("sdk-protocol-stdout.jsonl")[1]
    verbose = run(turn, StreamMode.VERBOSE)
    assert answer(verbose) == "I'll run a command.\n\nTool said: hello"
    assert not any(isinstance(e, Commentary) for e in verbose)
    final = run(turn, StreamMode.FINAL)
    assert answer(final) == ""
    assert isinstance(final[-1], TurnResult) and final[-1].text == "Tool said: hello"


def test_interrupted_turn_then_next_turn() -> None:
    turns = load("sdk-protocol-stdout.jsonl")
    interrupted = run(turns[3])
    assert isinstance(interrupted[-1], TurnError)
    assert interrupted[-1].kind is ErrorKind.INTERRUPTED
    assert answer(run(turns[4])) == "echo: after interrupt"
    raw = run(load("j-interrupt-control-request.jsonl")[0])
    assert isinstance(raw[-1], TurnError) and raw[-1].kind is ErrorKind.INTERRUPTED


def test_without_stream_events_the_result_is_the_answer() -> None:
    events = run(load("c-bash-root-skip-issandbox.jsonl")[0])
    assert answer(events) == "Tool said: hello"
    assert any(isinstance(e, ToolStarted) for e in events)


def test_partial_capture_from_the_npm_cli() -> None:
    events = run(load("b-partial.jsonl")[0])
    result = events[-1]
    assert isinstance(result, TurnResult)
    assert answer(events) == result.text and result.text.startswith("echo:")


@pytest.mark.parametrize(
    ("capture", "kind"),
    [
        ("noauth.jsonl", ErrorKind.NOT_LOGGED_IN),
        ("i-401.jsonl", ErrorKind.AUTHENTICATION),
        ("i-429.jsonl", ErrorKind.RATE_LIMITED),
        ("conn-refused.jsonl", ErrorKind.API_ERROR),
    ],
)
def test_error_results_are_typed(capture: str, kind: ErrorKind) -> None:
    events = run(load(capture)[0])
    error = events[-1]
    assert isinstance(error, TurnError) and error.kind is kind, error
    assert error.message
    assert answer(events) == "", "an error must not be streamed as answer text"


def test_retries_become_notices() -> None:
    events = run(load("i-500-once.jsonl")[0])
    notices = [e for e in events if isinstance(e, Notice) and e.kind == "retrying"]
    assert notices and "HTTP 500" in notices[0].message
    assert isinstance(events[-1], TurnResult)
    retries_401 = [e for e in run(load("i-401.jsonl")[0]) if isinstance(e, Notice)]
    assert len(retries_401) == 10


# ------------------------------------------------------------------ synthetic streams


def stream(*events: dict[str, Any], parent: str | None = None) -> list[StreamEvent]:
    return [StreamEvent(uuid=str(i), session_id="s", event=e, parent_tool_use_id=parent)
            for i, e in enumerate(events)]


def text_step(*pieces: str, stop: str = "end_turn") -> list[StreamEvent]:
    return stream(
        {"type": "message_start", "message": {"model": "m"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": p}} for p in pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop}},
        {"type": "message_stop"},
    )


def test_long_answer_streams_before_the_step_ends() -> None:
    tr = TurnTranslator(mode=StreamMode.SMART, holdback_chars=20)
    msgs = text_step("short ", "still short ", "now it is long enough ", "tail")
    emitted_before_stop: list[Event] = []
    for msg in msgs:
        out = tr.feed(msg)
        if msg.event["type"] == "content_block_delta":
            emitted_before_stop += out
    assert answer(emitted_before_stop) == "short still short now it is long enough tail"


def test_short_text_is_held_until_its_fate_is_known() -> None:
    tr = TurnTranslator(mode=StreamMode.SMART)
    steps = text_step("Let me ", "check.")
    deltas = [tr.feed(m) for m in steps]
    assert all(not out for out in deltas[:-2]), "nothing may leak before the step ends"
    assert answer([e for out in deltas for e in out]) == "Let me check."


def test_second_text_block_and_steps_never_run_together() -> None:
    events: list[Event] = []
    tr = TurnTranslator(mode=StreamMode.SMART)
    two_blocks = stream(
        {"type": "message_start", "message": {}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "A"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "B"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
    )
    for msg in [*two_blocks, *text_step("C")]:
        events += tr.feed(msg)
    assert answer(events) == "A\n\nB\n\nC"


def test_sub_agent_text_is_never_answer_text() -> None:
    tr = TurnTranslator(mode=StreamMode.VERBOSE)
    events: list[Event] = []
    for msg in text_step("secret sub-agent notes") :
        msg.parent_tool_use_id = "toolu_parent"
        events += tr.feed(msg)
    assert answer(events) == ""


@pytest.mark.parametrize(
    ("name", "args", "summary"),
    [
        ("Bash", {"command": "npm test\n--watch"}, "Running npm test --watch"),
        ("Read", {"file_path": "/ws/src/app.py"}, "Reading src/app.py"),
        ("Edit", {"file_path": "/elsewhere/x.py"}, "Editing /elsewhere/x.py"),
        ("Grep", {"pattern": "TODO"}, "Searching for TODO"),
        ("WebFetch", {"url": "https://example.org"}, "Fetching https://example.org"),
        ("Task", {"description": "explore the repo"}, "Delegating: explore the repo"),
        ("mcp__gateway__send_file", {"path": "a"}, "Using gateway: send_file"),
        ("Frobnicate", {}, "Using Frobnicate"),
    ],
)
def test_tool_summaries(name: str, args: dict[str, Any], summary: str) -> None:
    assert tool_summary(ToolUseBlock(id="t", name=name, input=args), cwd="/ws") == summary


def test_long_command_summary_is_one_short_line() -> None:
    block = ToolUseBlock(id="t", name="Bash", input={"command": "echo " + "x" * 500})
    text = tool_summary(block)
    assert len(text) <= 90 and "\n" not in text and text.endswith("…")
