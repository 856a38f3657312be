"""End-to-end tests of the engine: the REAL Claude Code CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import psutil
import pytest

from gateway.engine import (
    Alert,
    Commentary,
    Engine,
    ImagePart,
    Notice,
    Prompt,
    StreamMode,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnOptions,
    TurnResult,
    TurnStarted,
)
from gateway.errors import ErrorKind
from tests.conftest import EngineFactory, child_pids, collect
from tests.fake_anthropic import RATELIMIT_GATEWAY_TOKEN, FakeAnthropic, sample_ratelimit_headers
from tests.media import png_bytes

pytestmark = pytest.mark.cli


def result_of(events: list[object]) -> TurnResult:
    last = events[-1]
    assert isinstance(last, TurnResult), f"turn failed: {last!r}"
    return last


def error_of(events: list[object]) -> TurnError:
    last = events[-1]
    assert isinstance(last, TurnError), f"turn did not fail: {last!r}"
    return last



# ----------------------------------------------------------------------------- basic turns


async def test_turn_and_warm_follow_up_share_one_process_and_history(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    first = await collect(engine, "t:1", "hello there")
    assert isinstance(first[0], TurnStarted)
    assert result_of(first).text == "echo: hello there"
    assert "".join(e.text for e in first if isinstance(e, TextDelta)) == "echo: hello there"
    pid = engine.live_pids()["t:1"]

    # how fast the warm follow-up is, is measured in bench/ (engine_followup), not here
    second = await collect(engine, "t:1", "and again")
    assert result_of(second).text == "echo: and again"
    assert engine.live_pids()["t:1"] == pid, "the follow-up must reuse the warm process"
    assert result_of(second).session_id == result_of(first).session_id

    last = fake_api.requests()[-1]
    texts = [m for m in last["messages"] if m["role"] == "assistant"]
    assert any("echo: hello there" in str(m["content"]) for m in texts), "history not sent"

    info = await engine.describe("t:1")
    assert info is not None and info.turns == 2 and info.live and info.pid == pid
    assert info.usage.input_tokens > 0 and info.cost_usd > 0


async def test_bash_round_trip_smart_streaming(engine: Engine, fake_api: FakeAnthropic) -> None:
    events = await collect(engine, "t:bash", "please RUN_BASH")
    kinds = [type(e).__name__ for e in events]
    assert Commentary("I'll run a command.") in events
    started = next(e for e in events if isinstance(e, ToolStarted))
    assert started.name == "Bash" and started.summary == "Running echo hello"
    finished = next(e for e in events if isinstance(e, ToolFinished))
    assert finished.tool_id == started.tool_id and not finished.is_error
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert answer == "Tool said: hello", "text before the tool call must not be answer text"
    assert result_of(events).text == "Tool said: hello"
    assert kinds.index("ToolStarted") < kinds.index("ToolFinished") < kinds.index("TextDelta")
    tool_results = fake_api.requests()[-1]["tool_results"]
    assert tool_results and tool_results[0]["content"].strip() == "hello"


async def test_verbose_and_final_modes(engine: Engine) -> None:
    verbose = await collect(engine, "t:v", "RUN_BASH", TurnOptions(mode=StreamMode.VERBOSE))
    text = "".join(e.text for e in verbose if isinstance(e, TextDelta))
    assert text == "I'll run a command.\n\nTool said: hello"
    final = await collect(engine, "t:f", "RUN_BASH", TurnOptions(mode=StreamMode.FINAL))
    assert not [e for e in final if isinstance(e, TextDelta)]
    assert result_of(final).text == "Tool said: hello"


async def test_image_reaches_claude_natively(engine: Engine, fake_api: FakeAnthropic) -> None:
    data = png_bytes()
    prompt = Prompt(text="what is this?", images=(ImagePart.from_bytes("image/png", data),))
    events = await collect(engine, "t:img", prompt)
    b64 = base64.b64encode(data).decode()
    assert result_of(events).text == f"image received (image/png, {len(b64)} b64 chars)"
    assert fake_api.requests()[-1]["images"] == ["image/png"]


async def test_one_megabyte_prompt_goes_over_stdin(engine: Engine, fake_api: FakeAnthropic) -> None:
    big = "x" * (1024 * 1024)
    events = await collect(engine, "t:big", big)
    assert result_of(events).text.startswith("echo: xxxx")
    assert fake_api.requests()[-1]["last_user_text"] == big


async def test_empty_prompt_and_unknown_model_are_typed_errors(engine: Engine) -> None:
    assert error_of(await collect(engine, "t:e", "   ")).kind is ErrorKind.INVALID_REQUEST
    err = error_of(await collect(engine, "t:e", "hi", TurnOptions(model="gpt-4o")))
    assert err.kind is ErrorKind.UNKNOWN_MODEL
    assert "claude-opus-4" in err.message and "claude-sonnet-4" in err.message


async def test_model_by_name_and_change_keeps_history(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    await collect(engine, "t:m", "remember kiwi", TurnOptions(model="claude-haiku-4"))
    assert fake_api.requests()[-1]["model"].startswith("claude-haiku")
    pid = engine.live_pids()["t:m"]
    events = await collect(
        engine, "t:m", "what fruit?", TurnOptions(model="claude-opus-4-5-20251101")
    )
    assert any(isinstance(e, Notice) and e.kind == "model_changed" for e in events)
    last = fake_api.requests()[-1]
    assert last["model"] == "claude-opus-4-5-20251101"
    assert "remember kiwi" in str(last["messages"]), "the history must survive a model change"
    assert engine.live_pids()["t:m"] == pid, "a model change needs no new process"
    info = await engine.describe("t:m")
    assert info is not None and info.model == "claude-opus-4-5-20251101"


async def test_system_text_is_appended_to_the_claude_code_prompt(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    await collect(engine, "t:s", "hi", TurnOptions(system="Always answer in French."))
    system = fake_api.requests()[-1]["system_text"]
    assert "Always answer in French." in system
    assert len(system) > 2000, "the full Claude Code system prompt must stay"


# ----------------------------------------------------------------------------- sessions


async def test_resume_after_eviction_uses_latest_session(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(max_live_sessions=1)
    a1 = result_of(await collect(engine, "t:a", "alpha one"))
    await collect(engine, "t:b", "bravo one")  # evicts t:a
    assert set(engine.live_pids()) == {"t:b"}
    # an evicted conversation leaves the engine's memory (its session stays in the store):
    # kept, every conversation since the start stayed in memory (bench/memory.py's growth)
    assert engine.status().sessions == 1, "t:a's entry outlived its evicted process"
    assert (await engine.describe("t:a")) is not None
    events = await collect(engine, "t:a", "alpha two")
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert started.resumed and started.session_id == a1.session_id
    assert result_of(events).session_id == a1.session_id
    assert "alpha one" in str(fake_api.requests()[-1]["messages"])
    assert set(engine.live_pids()) == {"t:a"}
    assert engine.status().sessions == 1


async def test_restart_of_the_gateway_continues_the_conversation(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    first = await make_engine()
    r1 = result_of(await collect(first, "t:r", "the code word is mango"))
    await first.stop()
    second = await make_engine()
    events = await collect(second, "t:r", "what was the code word?")
    assert result_of(events).session_id == r1.session_id
    assert "the code word is mango" in str(fake_api.requests()[-1]["messages"])
    info = await second.describe("t:r")
    assert info is not None and info.turns == 2


async def test_lost_transcript_starts_fresh_and_says_so(
    engine: Engine, fake_api: FakeAnthropic, cli_home: Path
) -> None:
    r1 = result_of(await collect(engine, "t:lost", "first"))
    await engine.reset("t:other")  # no-op on an unknown key
    # close the process and delete the transcript behind the session id
    conv_pid = engine.live_pids()["t:lost"]
    psutil.Process(conv_pid).kill()
    for path in (cli_home / ".claude" / "projects").rglob(f"{r1.session_id}.jsonl"):
        path.unlink()
    events = await collect(engine, "t:lost", "second")
    notice = next(e for e in events if isinstance(e, Notice) and e.kind == "session_reset")
    assert r1.session_id in notice.message
    assert result_of(events).session_id != r1.session_id
    assert result_of(await collect(engine, "t:lost", "third")).text == "echo: third"


async def test_reset_starts_a_fresh_session(engine: Engine, fake_api: FakeAnthropic) -> None:
    r1 = result_of(await collect(engine, "t:new", "remember papaya"))
    await engine.reset("t:new")
    assert "t:new" not in engine.live_pids()
    assert await engine.describe("t:new") is None
    r2 = result_of(await collect(engine, "t:new", "fresh start"))
    assert r2.session_id != r1.session_id
    assert "remember papaya" not in str(fake_api.requests()[-1]["messages"])


# ----------------------------------------------------------------------------- concurrency


async def test_turns_in_one_conversation_queue_and_never_overlap(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    slow = asyncio.ensure_future(collect(engine, "t:q", "SLOW first"))
    await asyncio.sleep(0.3)
    second = await collect(engine, "t:q", "second")
    first = await slow
    assert result_of(first).text == "echo: SLOW first"
    assert isinstance(second[0], Notice) and second[0].kind == "queued"
    assert result_of(second).text == "echo: second"
    users = [r["last_user_text"] for r in fake_api.requests()]
    assert users.index("SLOW first") < users.index("second"), "turns must not merge"


async def test_two_conversations_run_in_parallel(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    await asyncio.gather(collect(engine, "t:p1", "warm"), collect(engine, "t:p2", "warm"))
    a, b = await asyncio.gather(
        collect(engine, "t:p1", "SLOW one"), collect(engine, "t:p2", "SLOW two")
    )
    assert result_of(a).text == "echo: SLOW one" and result_of(b).text == "echo: SLOW two"
    assert result_of(a).session_id != result_of(b).session_id
    # a SLOW reply takes > 2 s at the fake: run in parallel, both requests arrive together
    times = {r["last_user_text"]: r["time"] for r in fake_api.requests()}
    assert abs(times["SLOW one"] - times["SLOW two"]) < 1.5, times


async def test_queue_limit_is_a_busy_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_queued_per_conversation=1)
    running = asyncio.ensure_future(collect(engine, "t:full", "SLOW one"))
    await asyncio.sleep(0.2)
    waiting = asyncio.ensure_future(collect(engine, "t:full", "two"))
    await asyncio.sleep(0.05)
    refused = await collect(engine, "t:full", "three")
    assert error_of(refused).kind is ErrorKind.BUSY
    assert result_of(await running).text == "echo: SLOW one"
    assert result_of(await waiting).text == "echo: two"


# ----------------------------------------------------------------------------- stopping turns


async def test_interrupt_ends_the_turn_within_a_second_and_session_stays(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    fake_api.script(
        {"text": "a long answer " * 50, "delay": 0.2, "chunk_delay": 1.0}, match="long one"
    )
    turn = asyncio.ensure_future(collect(engine, "t:i", "long one"))
    while not any(r["last_user_text"] == "long one" for r in fake_api.requests()):
        await asyncio.sleep(0.05)
    pid = engine.live_pids()["t:i"]
    started = time.monotonic()
    assert await engine.interrupt("t:i")
    events = await turn
    assert time.monotonic() - started < 1.0
    assert error_of(events).kind is ErrorKind.INTERRUPTED
    after = await collect(engine, "t:i", "still there?")
    assert result_of(after).text == "echo: still there?"
    assert engine.live_pids()["t:i"] == pid, "interrupt must keep the warm process"
    assert not await engine.interrupt("t:i"), "nothing runs now"


async def test_abandoned_turn_is_interrupted(engine: Engine, fake_api: FakeAnthropic) -> None:
    fake_api.script({"text": "slow " * 40, "chunk_delay": 1.0}, match="abandon me")

    async def consume_two() -> None:
        gen = engine.turn("t:ab", Prompt("abandon me"))
        async for _ in gen:
            break
        await gen.aclose()

    await consume_two()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (await engine.describe("t:ab") or _busy()).busy:
        await asyncio.sleep(0.05)
    info = await engine.describe("t:ab")
    assert info is not None and not info.busy
    assert result_of(await collect(engine, "t:ab", "next")).text == "echo: next"


def _busy() -> object:
    class Busy:
        busy = True

    return Busy()


async def test_activity_timeout_kills_the_tree_alerts_and_stays_resumable(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(activity_timeout=2.0, bash_max_timeout=2.0)
    alerts: list[Alert] = []

    async def on_alert(alert: Alert) -> None:
        alerts.append(alert)

    engine.add_alert_handler(on_alert)
    r1 = result_of(await collect(engine, "t:to", "remember lychee"))
    pid = engine.live_pids()["t:to"]
    events = await collect(engine, "t:to", "STALL now", TurnOptions(origin="api"))
    err = error_of(events)
    assert err.kind is ErrorKind.TIMEOUT and "2 s" in err.message
    assert alerts and alerts[0].key == "t:to" and alerts[0].origin == "api"
    deadline = time.monotonic() + 3  # SIGKILL was sent; give the kernel a moment
    while pid in child_pids():
        assert time.monotonic() < deadline, "the stuck CLI process was not killed"
        await asyncio.sleep(0.05)
    after = await collect(engine, "t:to", "are you back?")
    assert result_of(after).session_id == r1.session_id
    assert "remember lychee" in str(fake_api.requests()[-1]["messages"])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("trigger", "kind", "status"),
    [
        ("FAIL_500", ErrorKind.API_ERROR, 500),
        ("FAIL_429", ErrorKind.RATE_LIMITED, 429),
        ("FAIL_529", ErrorKind.OVERLOADED, 529),
        ("FAIL_401", ErrorKind.AUTHENTICATION, 401),
    ],
)
async def test_api_errors_are_typed_and_the_session_survives(
    engine: Engine, trigger: str, kind: ErrorKind, status: int
) -> None:
    err = error_of(await collect(engine, "t:err", f"{trigger} please"))
    assert err.kind is kind and err.status == status
    assert result_of(await collect(engine, "t:err", "ok now")).text == "echo: ok now"


async def test_not_logged_in(make_engine: EngineFactory, engine_config: object) -> None:
    from dataclasses import replace

    from gateway.engine import EngineConfig

    assert isinstance(engine_config, EngineConfig)
    env = {k: v for k, v in engine_config.env.items() if k != "ANTHROPIC_API_KEY"}
    env["ANTHROPIC_API_KEY"] = ""
    engine = await make_engine(env=env)
    err = error_of(await collect(engine, "t:login", "hello"))
    assert err.kind is ErrorKind.NOT_LOGGED_IN and "/login" in err.message
    del replace


async def test_api_unreachable_is_an_api_error(
    make_engine: EngineFactory, engine_config: object
) -> None:
    from gateway.engine import EngineConfig

    assert isinstance(engine_config, EngineConfig)
    env = dict(engine_config.env, ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    engine = await make_engine(env=env)
    err = error_of(await collect(engine, "t:down", "hello"))
    assert err.kind is ErrorKind.API_ERROR and "onnect" in err.message


async def test_rate_limit_events_are_kept(
    make_engine: EngineFactory, engine_config: object, fake_api: FakeAnthropic
) -> None:
    from gateway.engine import EngineConfig

    assert isinstance(engine_config, EngineConfig)
    env = {k: v for k, v in engine_config.env.items() if k != "ANTHROPIC_API_KEY"}
    env.update(ANTHROPIC_API_KEY="", ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN)
    engine = await make_engine(env=env)
    fake_api.set_ratelimit_headers(sample_ratelimit_headers("allowed_warning", 0.91))
    events = await collect(engine, "t:rl", "how close am I?")
    result_of(events)
    notice = next(e for e in events if isinstance(e, Notice) and e.kind == "rate_limit")
    assert "allowed_warning" in notice.message
    status = engine.status().rate_limit
    assert status is not None and status.status == "allowed_warning"
    assert status.resets_at and status.resets_at > time.time()


async def test_missing_cli_is_a_typed_error(make_engine: EngineFactory, tmp_path: Path) -> None:
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError) as info:
        await make_engine(cli_path=str(tmp_path / "no-such-claude"))
    assert info.value.kind is ErrorKind.CLI_MISSING and "no-such-claude" in info.value.message


# ----------------------------------------------------------------------------- environment


async def test_cli_environment_has_no_gateway_secrets(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:telegram-secret")
    monkeypatch.setenv("GATEWAY_API_KEYS", "gw-secret-key")
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "oauth-passes-through")
    engine = await make_engine(
        secret_env_vars=frozenset({"TELEGRAM_BOT_TOKEN", "GATEWAY_API_KEYS"})
    )
    await collect(engine, "t:env", "hi")
    environ = psutil.Process(engine.live_pids()["t:env"]).environ()
    assert "telegram-secret" not in str(environ) and "gw-secret-key" not in str(environ)
    assert environ.get("CLAUDECODE", "") == ""
    assert environ["CLAUDE_CODE_OAUTH_TOKEN"] == "oauth-passes-through"
    assert environ["BASH_MAX_TIMEOUT_MS"] == "60000"


async def test_stop_ends_every_process_no_orphans(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    before = child_pids()
    engine = await make_engine()
    await asyncio.gather(collect(engine, "t:x1", "one"), collect(engine, "t:x2", "two"))
    fake_api.script({"hang": True}, match="hang forever")
    hanging = asyncio.ensure_future(collect(engine, "t:x3", "hang forever"))
    while not any(r["last_user_text"] == "hang forever" for r in fake_api.requests()):
        await asyncio.sleep(0.05)
    assert len(child_pids() - before) >= 3
    started = time.monotonic()
    await engine.stop()
    assert time.monotonic() - started < 10
    events = await hanging
    assert isinstance(events[-1], TurnError)
    deadline = time.monotonic() + 5
    while child_pids() - before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert child_pids() - before == set(), "CLI processes survived the gateway's stop"
    late = await collect(engine, "t:x1", "after stop")
    assert error_of(late).kind is ErrorKind.SHUTDOWN


async def test_idle_process_is_closed_and_resumed(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(idle_timeout=0.5)
    r1 = result_of(await collect(engine, "t:idle", "first"))
    pid = engine.live_pids()["t:idle"]
    deadline = time.monotonic() + 5
    while pid in child_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "t:idle" not in engine.live_pids()
    assert pid not in child_pids(), "the idle process must be closed"
    while engine.status().sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert engine.status().sessions == 0, "the idle conversation's entry outlived its process"
    assert result_of(await collect(engine, "t:idle", "second")).session_id == r1.session_id


def test_no_stray_cli_processes_left_by_this_module() -> None:
    leftovers = [
        p
        for p in psutil.Process(os.getpid()).children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == []


async def test_global_cap_on_parallel_turns(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_parallel_turns=1)
    await asyncio.gather(collect(engine, "t:c1", "warm"), collect(engine, "t:c2", "warm"))
    started = time.monotonic()
    a, b = await asyncio.gather(
        collect(engine, "t:c1", "SLOW one"), collect(engine, "t:c2", "SLOW two")
    )
    elapsed = time.monotonic() - started
    assert result_of(a).text == "echo: SLOW one" and result_of(b).text == "echo: SLOW two"
    assert elapsed > 2.0, f"with a cap of 1 the SLOW turns must run in turn ({elapsed:.1f} s)"


async def _start_long_bash(
    engine: Engine, fake_api: FakeAnthropic, key: str
) -> asyncio.Future[list[object]]:
    # (Claude Code refuses "sleep N; ..." chains, so sleep inside Python)
    command = 'python3 -c "import time; time.sleep(37)" && echo done'
    fake_api.script({"tool_use": {"name": "Bash", "input": {"command": command}}},
                    match="long bash")
    turn: asyncio.Future[list[object]] = asyncio.ensure_future(
        collect(engine, key, "long bash")
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any("time.sleep(37)" in p for p in _descendants()):
            return turn
        await asyncio.sleep(0.1)
    raise AssertionError("the Bash command never started")


def _descendants() -> list[str]:
    """Command lines of the live descendants of this test process."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return out


async def test_stop_during_a_bash_command_kills_the_whole_tree(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine()
    turn = await _start_long_bash(engine, fake_api, "t:tree")
    await engine.stop()
    assert isinstance((await turn)[-1], TurnError)
    deadline = time.monotonic() + 5
    while _descendants() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _descendants() == []


async def test_timeout_during_a_silent_bash_command_kills_its_children(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(activity_timeout=3.0, bash_max_timeout=3.0)
    turn = await _start_long_bash(engine, fake_api, "t:tree2")
    events = await turn
    assert error_of(events).kind is ErrorKind.TIMEOUT
    deadline = time.monotonic() + 5
    while any("time.sleep(37)" in p for p in _descendants()):
        assert time.monotonic() < deadline, "the Bash command outlived the timeout"
        await asyncio.sleep(0.1)
    assert result_of(await collect(engine, "t:tree2", "still here?")).text == "echo: still here?"


async def test_set_model_and_attach_a_terminal_session(
    engine: Engine, fake_api: FakeAnthropic, cli_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.errors import GatewayError

    assert await engine.set_model("t:set", "claude-haiku-4") == "haiku"
    await collect(engine, "t:set", "hello")
    assert fake_api.requests()[-1]["model"].startswith("claude-haiku")
    with pytest.raises(GatewayError) as bad:
        await engine.set_model("t:set", "gpt-5")
    assert bad.value.kind is ErrorKind.UNKNOWN_MODEL

    # a session "started at the desk" in another conversation, then continued from a chat
    desk = result_of(await collect(engine, "t:desk", "desk work: the bug is in parser.py"))
    monkeypatch.setenv("HOME", str(cli_home))  # where the CLI keeps its transcripts here
    listed = await engine.cli_sessions()
    assert desk.session_id in [s.session_id for s in listed]
    await engine.attach_session("t:phone", desk.session_id)
    events = await collect(engine, "t:phone", "where was the bug?")
    assert result_of(events).session_id == desk.session_id
    assert "the bug is in parser.py" in str(fake_api.requests()[-1]["messages"])
    with pytest.raises(GatewayError):
        await engine.attach_session("t:phone", "not-a-uuid")
