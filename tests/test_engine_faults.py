"""Faults the real CLI cannot show on demand, through the scripted fake CLI (tests/fake_cli.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.engine import Alert, TextDelta, TurnError, TurnResult, TurnStarted
from gateway.errors import ErrorKind
from tests.conftest import EngineFactory, child_pids, collect

FAKE_CLI = str(Path(__file__).parent / "fake_cli.py")


@pytest.fixture
async def fake_engine(make_engine: EngineFactory):  # type: ignore[no-untyped-def]
    engine = await make_engine(cli_path=FAKE_CLI, activity_timeout=1.5, bash_max_timeout=1.0)
    alerts: list[Alert] = []

    async def on_alert(alert: Alert) -> None:
        alerts.append(alert)

    engine.add_alert_handler(on_alert)
    engine.alerts = alerts  # type: ignore[attr-defined]
    return engine


async def test_sudden_death_mid_turn_is_a_crash_and_the_next_turn_resumes(fake_engine) -> None:  # type: ignore[no-untyped-def]
    first = await collect(fake_engine, "f:die", "hello")
    assert isinstance(first[-1], TurnResult)
    session = first[-1].session_id
    dead_pid = fake_engine.live_pids()["f:die"]
    events = await collect(fake_engine, "f:die", "please DIE now")
    error = events[-1]
    assert isinstance(error, TurnError) and error.kind is ErrorKind.CRASHED
    assert "conversation is kept" in error.message
    assert fake_engine.alerts and fake_engine.alerts[0].error.kind is ErrorKind.CRASHED
    after = await collect(fake_engine, "f:die", "are you back?")
    started = next(e for e in after if isinstance(e, TurnStarted))
    assert started.resumed and started.session_id == session
    assert isinstance(after[-1], TurnResult) and after[-1].session_id == session
    assert dead_pid not in child_pids(), "the crashed process must be reaped"
    assert fake_engine.live_pids()["f:die"] != dead_pid


async def test_garbage_on_stdout_does_not_lose_the_turn(fake_engine) -> None:  # type: ignore[no-untyped-def]
    events = await collect(fake_engine, "f:garbage", "GARBAGE please")
    last = events[-1]
    if isinstance(last, TurnResult):
        assert last.text == "fake: GARBAGE please"
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == last.text
    else:
        # the SDK refuses a line it cannot parse: that must be a typed crash, not a hang
        assert isinstance(last, TurnError) and last.kind is ErrorKind.CRASHED
    assert isinstance((await collect(fake_engine, "f:garbage", "next"))[-1], TurnResult)


async def test_silence_ends_by_the_activity_timeout(fake_engine) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    events = await collect(fake_engine, "f:silent", "SILENCE please")
    elapsed = time.monotonic() - started
    error = events[-1]
    assert isinstance(error, TurnError) and error.kind is ErrorKind.TIMEOUT
    assert 1.4 < elapsed < 5, elapsed
    assert any(a.error.kind is ErrorKind.TIMEOUT for a in fake_engine.alerts)
    assert isinstance((await collect(fake_engine, "f:silent", "hello"))[-1], TurnResult)


async def test_exit_after_a_result_is_noticed_before_the_next_turn(fake_engine) -> None:  # type: ignore[no-untyped-def]
    first = await collect(fake_engine, "f:exit", "EXIT_AFTER_RESULT")
    assert isinstance(first[-1], TurnResult)
    second = await collect(fake_engine, "f:exit", "again")
    assert isinstance(second[-1], TurnResult) and second[-1].text == "fake: again"
