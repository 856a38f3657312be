"""Pre-started spare CLI processes: a new conversation's first turn skips the process start."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.engine import Engine, TurnOptions, TurnResult
from gateway.engine.conversation import text_hash
from gateway.engine.tools import SEND_FILE
from tests.conftest import EngineFactory, child_pids, collect, file_sink
from tests.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.cli


async def spare_pids(engine: Engine, count: int = 1, within: float = 20) -> set[int]:
    deadline = time.monotonic() + within
    while engine.status().spare_processes < count:
        assert time.monotonic() < deadline, "no spare process was started"
        await asyncio.sleep(0.05)
    return {s.pid for s in engine._pool.spares if s.pid}


async def test_a_new_conversation_takes_the_spare_and_a_new_one_is_started(
    engine: Engine,
) -> None:
    (spare,) = await spare_pids(engine)
    events = await collect(engine, "s:1", "hello")
    assert isinstance(events[-1], TurnResult)
    assert engine.live_pids()["s:1"] == spare, "the first turn must run in the spare"
    (refill,) = await spare_pids(engine)
    assert refill != spare
    # resuming an existing session never takes a spare (it needs --resume)
    await engine.reset("s:1")


async def test_spares_match_the_system_text(engine: Engine, fake_api: FakeAnthropic) -> None:
    (plain,) = await spare_pids(engine)
    options = TurnOptions(system="You are a pirate.")
    await collect(engine, "s:pirate", "ahoy", options)
    assert engine.live_pids()["s:pirate"] != plain, "a spare without the text must not be used"
    assert "You are a pirate." in fake_api.requests()[-1]["system_text"]
    deadline = time.monotonic() + 20  # the refill replaces the plain spare by a pirate one
    while not [s for s in engine._pool.spares if s.system_hash == text_hash("You are a pirate.")]:
        assert time.monotonic() < deadline, "no spare with the new system text"
        await asyncio.sleep(0.05)
    (pirate_spare,) = await spare_pids(engine)
    await collect(engine, "s:pirate2", "ahoy again", options)
    assert engine.live_pids()["s:pirate2"] == pirate_spare
    assert "You are a pirate." in fake_api.requests()[-1]["system_text"]


async def test_a_spare_never_pushes_out_a_conversation(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_live_sessions=1)
    await spare_pids(engine)
    await collect(engine, "s:only", "hello")
    pid = engine.live_pids()["s:only"]
    await asyncio.sleep(1.0)  # a refill would have happened by now
    assert engine.status().spare_processes == 0
    assert engine.live_pids()["s:only"] == pid
    assert pid in child_pids()


async def test_spare_tools_belong_to_the_conversation_that_takes_it(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine()
    sent = file_sink(engine, "chat:")
    await collect(engine, "chat:first", "hello")  # its refill is a spare with the chat tools
    deadline = time.monotonic() + 20
    while not any(s.profile == "chat:" for s in engine._pool.spares):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    spare = next(s.pid for s in engine._pool.spares if s.profile == "chat:")
    (engine.config.workspace / "a.txt").write_text("x")
    fake_api.script({"tool_use": {"name": SEND_FILE, "input": {"path": "a.txt"}}},
                    match="send a")
    await collect(engine, "chat:second", "send a")
    assert engine.live_pids()["chat:second"] == spare
    assert [s.key for s in sent] == ["chat:second"]


async def test_no_spares_when_disabled(make_engine: EngineFactory) -> None:
    engine = await make_engine(spare_processes=0)
    await collect(engine, "s:x", "hello")
    await asyncio.sleep(0.5)
    assert engine.status().spare_processes == 0
