"""Forking a conversation at a turn (TurnOptions.fork_at = a TurnResult's mark): the real CLI
continues the marked session from exactly that turn, in a new session, against the fake API.

One engine and one fake API serve the module (each test uses its own conversation keys);
only the restart test starts engines of its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from claude_agent_sdk import AssistantMessage, ResultMessage, TextBlock

from gateway.engine import (
    ClientTool,
    Engine,
    EngineConfig,
    Event,
    Notice,
    Prompt,
    ToolCallsRequested,
    ToolMode,
    ToolResult,
    TurnError,
    TurnMark,
    TurnOptions,
    TurnResult,
)
from gateway.engine.conversation import Request
from gateway.engine.translate import TurnTranslator
from gateway.errors import ErrorKind
from gateway.store import Store
from tests.fake_anthropic import SYSTEM_REMINDER, FakeAnthropic, bundled_cli, cli_env

pytestmark = pytest.mark.cli
#: the real-CLI tests share the module's engine (and its CLI processes)
shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fork")


@pytest.fixture(scope="module")
def config(root: Path, api: FakeAnthropic) -> EngineConfig:
    home = root / "home"
    home.mkdir()
    env = cli_env(api.base_url, str(home), inherit=False)
    env.pop("PATH", None)
    return EngineConfig(workspace=root / "workspace", cli_path=bundled_cli(), env=env,
                        activity_timeout=60.0, bash_max_timeout=60.0, idle_timeout=300.0,
                        spare_processes=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(config: EngineConfig, root: Path) -> AsyncIterator[Engine]:
    engine = Engine(config, Store(root / "gateway.sqlite3"))
    await engine.start()
    yield engine
    await engine.stop()


async def turn(engine: Engine, key: str, text: str,
               fork_at: TurnMark | None = None) -> tuple[list[Event], TurnResult]:
    options = TurnOptions(fork_at=fork_at)
    events = [e async for e in engine.turn(key, Prompt(text=text), options)]
    assert isinstance(events[-1], TurnResult), events[-1]
    return events, events[-1]


WEATHER = ClientTool("get_weather", "The weather of a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def dialogue(request: dict[str, Any]) -> list[tuple[str, str]]:
    """The conversation one API request carried: (role, text) per message, Claude Code's
    reminders and tool blocks left out, tool results as ("tool_result", their text)."""
    out: list[tuple[str, str]] = []
    for message in request["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block.get("type") == "text" and not block["text"].startswith(SYSTEM_REMINDER):
                out.append((message["role"], block["text"]))
            elif block.get("type") == "tool_result":
                out.append(("tool_result", json.dumps(block.get("content"))))
    return [(role, text) for role, text in out if role != "system"]


def last_request(api: FakeAnthropic, text: str) -> dict[str, Any]:
    return [r for r in api.requests() if r["last_user_text"] == text][-1]


def transcript(config: EngineConfig, session_id: str) -> Path:
    home = Path(config.env["HOME"])
    paths = list((home / ".claude" / "projects").rglob(f"{session_id}.jsonl"))
    assert len(paths) == 1, paths
    return paths[0]


def assistant_uuids(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["uuid"] for r in rows if r.get("type") == "assistant" and not r.get("isSidechain")]


def check_mark(config: EngineConfig, result: TurnResult) -> TurnMark:
    """The mark of a turn just finished names its session and the latest assistant entry
    of that session's transcript."""
    mark = result.mark
    assert mark is not None
    assert mark.session_id == result.session_id
    assert assistant_uuids(transcript(config, mark.session_id))[-1] == mark.message_id
    return mark


@shared_loop
async def test_a_fork_into_another_key_holds_the_turns_up_to_the_mark_only(
    engine: Engine, api: FakeAnthropic, config: EngineConfig
) -> None:
    marks: list[TurnMark] = []
    for text in ("alpha one", "RUN_BASH alpha two", "alpha three"):  # 2: with a tool call
        _, result = await turn(engine, "f:a", text)
        marks.append(check_mark(config, result))
        if text == "alpha one":
            a1 = result
    source = transcript(config, a1.session_id)
    before = source.read_bytes()

    _, b1 = await turn(engine, "f:b", "beta after two", fork_at=marks[1])
    assert b1.text == "echo: beta after two"
    assert b1.session_id != a1.session_id
    assert dialogue(last_request(api, "beta after two")) == [
        ("user", "alpha one"), ("assistant", "echo: alpha one"),
        ("user", "RUN_BASH alpha two"), ("assistant", "I'll run a command."),
        ("tool_result", json.dumps("hello")), ("assistant", "Tool said: hello"),
        ("user", "beta after two"),
    ], "turns 1-2 as real history (the tool call too), not turn 3, nothing seeded"
    assert source.read_bytes() == before, "the source transcript is left as it was"
    b_mark = check_mark(config, b1)
    # the fork's transcript is a copy of the kept entries, uuids and all
    kept = assistant_uuids(transcript(config, b1.session_id))
    assert kept[:-1] == assistant_uuids(source)[:len(kept) - 1]
    assert marks[0].message_id in kept and marks[1].message_id == kept[-2]
    info = await engine.describe("f:b")
    assert info is not None and info.session_id == b1.session_id

    # both branches go on: A still has 1-3, B has 1-2 and its own turn
    _, a4 = await turn(engine, "f:a", "alpha four")
    assert a4.session_id == a1.session_id
    assert [t for r, t in dialogue(last_request(api, "alpha four")) if r == "user"] == [
        "alpha one", "RUN_BASH alpha two", "alpha three", "alpha four"]
    _, b2 = await turn(engine, "f:b", "beta two")
    assert b2.session_id == b1.session_id
    assert [t for r, t in dialogue(last_request(api, "beta two")) if r == "user"] == [
        "alpha one", "RUN_BASH alpha two", "beta after two", "beta two"]
    assert b2.mark is not None and b2.mark != b_mark

    # a key with a live process of its own forks another branch: its process is replaced
    pid = engine.live_pids()["f:b"]
    _, b3 = await turn(engine, "f:b", "beta from three", fork_at=marks[2])
    assert engine.live_pids()["f:b"] != pid
    assert b3.session_id not in (a1.session_id, b1.session_id)
    assert [t for r, t in dialogue(last_request(api, "beta from three")) if r == "user"] == [
        "alpha one", "RUN_BASH alpha two", "alpha three", "beta from three"]


@shared_loop
async def test_rewinding_a_key_in_place_survives_a_restart(
    api: FakeAnthropic, config: EngineConfig, tmp_path: Path
) -> None:
    cfg = replace(config, spare_processes=0)
    store = tmp_path / "gateway.sqlite3"
    first = Engine(cfg, Store(store))
    await first.start()
    try:
        _, r1 = await turn(first, "f:rw", "rewind one")
        await turn(first, "f:rw", "rewind two")
        assert r1.mark is not None
        _, again = await turn(first, "f:rw", "rewind instead", fork_at=r1.mark)
        assert again.session_id != r1.session_id
        assert [t for r, t in dialogue(last_request(api, "rewind instead")) if r == "user"] \
            == ["rewind one", "rewind instead"]
    finally:
        await first.stop()
    second = Engine(cfg, Store(store))
    await second.start()
    try:
        info = await second.describe("f:rw")
        assert info is not None and info.session_id == again.session_id
        _, after = await turn(second, "f:rw", "rewind after restart")
        assert after.session_id == again.session_id
        assert [t for r, t in dialogue(last_request(api, "rewind after restart"))
                if r == "user"] == ["rewind one", "rewind instead", "rewind after restart"]
    finally:
        await second.stop()


@shared_loop
@pytest.mark.parametrize("lost", ["transcript", "message"])
async def test_a_fork_whose_point_is_gone_answers_in_a_new_session_and_says_so(
    engine: Engine, api: FakeAnthropic, config: EngineConfig, lost: str
) -> None:
    _, r1 = await turn(engine, f"f:gone-{lost}", f"soon gone {lost}")
    mark = check_mark(config, r1)
    if lost == "transcript":
        _, kept = await turn(engine, "f:kept", "forked before", fork_at=mark)
        await engine.reset(f"f:gone-{lost}")
        transcript(config, mark.session_id).unlink()
        # a fork made before goes on without its source (a new process resumes it)
        psutil.Process(engine.live_pids()["f:kept"]).kill()
        _, later = await turn(engine, "f:kept", "forked after")
        assert later.session_id == kept.session_id
        assert [t for r, t in dialogue(last_request(api, "forked after")) if r == "user"] \
            == ["soon gone transcript", "forked before", "forked after"]
    else:  # the session is there, the message is not (a rewritten transcript)
        mark = replace(mark, message_id="00000000-0000-4000-8000-000000000000")
    events, result = await turn(engine, f"f:lost-{lost}", f"still answered {lost}",
                                fork_at=mark)
    notice = next(e for e in events if isinstance(e, Notice) and e.kind == "session_reset")
    assert notice.data == {"lost_session_id": mark.session_id, "fork_at": mark.message_id}
    assert result.text == f"echo: still answered {lost}"
    assert result.session_id != mark.session_id
    assert [t for r, t in dialogue(last_request(api, f"still answered {lost}"))
            if r == "user"] == [f"still answered {lost}"]
    check_mark(config, result)
    # the conversation goes on in its new session
    _, nxt = await turn(engine, f"f:lost-{lost}", f"and then {lost}")
    assert nxt.session_id == result.session_id


@shared_loop
async def test_a_fork_never_takes_the_spare_and_the_spare_still_serves(
    engine: Engine, api: FakeAnthropic, config: EngineConfig
) -> None:
    _, r1 = await turn(engine, "f:s1", "spare source")
    assert r1.mark is not None
    _, forked = await turn(engine, "f:s2", "spare fork", fork_at=r1.mark)
    assert [t for r, t in dialogue(last_request(api, "spare fork")) if r == "user"] == [
        "spare source", "spare fork"], "a spare (a new session) would have no history"
    # a forked process counts its cost from 0: its first turn (reading more) costs more
    assert forked.cost_usd >= r1.cost_usd > 0
    _, fresh = await turn(engine, "f:s3", "spare fresh")
    assert fresh.session_id not in (r1.session_id, forked.session_id)
    assert [t for r, t in dialogue(last_request(api, "spare fresh")) if r == "user"] == [
        "spare fresh"]


def test_a_fork_turn_never_coalesces() -> None:
    mark = TurnMark("s", "m")
    forking = Request(Prompt("a"), TurnOptions(coalesce=True, fork_at=mark), None)
    assert not forking.can_take(TurnOptions(coalesce=True, fork_at=mark), None, Prompt("b"))
    assert not forking.can_take(TurnOptions(coalesce=True), None, Prompt("b"))
    plain = Request(Prompt("a"), TurnOptions(coalesce=True), None)
    assert plain.can_take(TurnOptions(coalesce=True), None, Prompt("b"))
    assert not plain.can_take(TurnOptions(coalesce=True, fork_at=mark), None, Prompt("b"))


def test_the_mark_is_the_last_top_level_assistant_message_of_the_turn() -> None:
    def result(tr: TurnTranslator) -> TurnResult:
        done = tr.feed(ResultMessage("success", 1, 1, False, 1, "sess", result="x"))
        assert isinstance(done[-1], TurnResult)
        return done[-1]

    tr = TurnTranslator()
    tr.feed(AssistantMessage([TextBlock("a")], "m", session_id="sess", uuid="first"))
    tr.feed(AssistantMessage([TextBlock("b")], "m", session_id="sess", uuid="answer"))
    tr.feed(AssistantMessage([TextBlock("sub")], "m", parent_tool_use_id="toolu_1",
                             session_id="sess", uuid="sub-agent"))  # in its side-chain
    assert result(tr).mark == TurnMark("sess", "answer")
    no_uuid = TurnTranslator()
    no_uuid.feed(AssistantMessage([TextBlock("a")], "m", session_id="sess"))
    assert result(no_uuid).mark is None


@shared_loop
async def test_a_fork_at_something_not_a_mark_is_refused_before_it_starts(
    engine: Engine
) -> None:
    good = "00000000-0000-4000-8000-000000000000"
    cases = [
        (TurnMark("--help", good), Prompt("x"), "session by its UUID"),
        (TurnMark(good, "not-a-uuid"), Prompt("x"), "message by its UUID"),
    ]
    for mark, prompt, says in cases:
        events = [e async for e in engine.turn("f:bad", prompt, TurnOptions(fork_at=mark))]
        assert len(events) == 1 and isinstance(events[0], TurnError), events
        assert events[0].kind is ErrorKind.INVALID_REQUEST and says in events[0].message
    assert await engine.describe("f:bad") is None, "nothing started"


@shared_loop
async def test_tool_results_with_a_fork_go_to_the_fork_not_to_the_suspended_turn(
    engine: Engine, api: FakeAnthropic
) -> None:
    tools = TurnOptions(tools=(WEATHER,), tool_mode=ToolMode.CLIENT)
    _, first = await turn(engine, "f:tools", "tools one")
    assert first.mark is not None
    api.script({"tool_use": {"name": "mcp__client__get_weather", "input": {"city": "Oslo"}}},
               match="weather in Oslo")
    calls = [e async for e in engine.turn("f:tools", Prompt("weather in Oslo?"), tools)]
    assert isinstance(calls[-1], ToolCallsRequested)
    (call,) = calls[-1].calls
    results = Prompt(tool_results=(ToolResult(call.call_id, "snow"),))
    events = [e async for e in engine.turn("f:tools", results,
                                           replace(tools, fork_at=first.mark))]
    assert isinstance(events[-1], TurnResult), events[-1]
    said = f"[result of tool call {call.call_id}]\nsnow"
    assert events[-1].text == f"echo: {said}"
    assert [t for r, t in dialogue(api.requests()[-1]) if r == "user"] == ["tools one", said]
    assert events[-1].session_id != first.session_id
