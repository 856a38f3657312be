"""``TurnOptions.coalesce``: chat messages sent while Claude works become one next turn, in
the engine (the REAL Claude Code CLI against the fake Anthropic API)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine import Engine, Notice, Prompt, StreamMode, TurnError, TurnOptions, TurnResult
from gateway.errors import ErrorKind
from tests.conftest import EngineFactory, collect
from tests.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.cli

CHAT = TurnOptions(coalesce=True, origin="chat")


async def _until_sent(fake_api: FakeAnthropic, text: str) -> None:
    while not any(r["last_user_text"] == text for r in fake_api.requests()):
        await asyncio.sleep(0.02)


async def test_prompts_sent_during_a_turn_are_one_next_turn_for_every_caller(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    first = asyncio.ensure_future(collect(engine, "c:1", "SLOW first", CHAT))
    await _until_sent(fake_api, "SLOW first")
    two = asyncio.ensure_future(collect(engine, "c:1", "two", CHAT))
    await asyncio.sleep(0.05)
    three = asyncio.ensure_future(collect(engine, "c:1", "three", CHAT))
    await asyncio.sleep(0.05)
    # different options never merge: this one queues a turn of its own
    final = asyncio.ensure_future(
        collect(engine, "c:1", "four", TurnOptions(coalesce=True, mode=StreamMode.FINAL)))
    first_events, two_events, three_events, four_events = await asyncio.gather(
        first, two, three, final)

    assert isinstance(first_events[-1], TurnResult)
    assert isinstance(two_events[0], Notice) and two_events[0].kind == "queued"
    joined = three_events[0]
    assert isinstance(joined, Notice) and joined.kind == "coalesced"
    assert joined.data == {"ahead": 1, "prompts": 2}
    # both callers read the very same turn
    assert two_events[1:] == three_events[1:]
    result = two_events[-1]
    assert isinstance(result, TurnResult) and result.text == "echo: two\n\nthree"
    assert isinstance(four_events[-1], TurnResult) and four_events[-1].text == "echo: four"
    users = [r["last_user_text"] for r in fake_api.requests()]
    assert users == ["SLOW first", "two\n\nthree", "four"]
    info = await engine.describe("c:1")
    assert info is not None and info.turns == 3


async def test_a_caller_that_leaves_before_the_turn_takes_its_prompt_out(
    engine: Engine, fake_api: FakeAnthropic
) -> None:
    first = asyncio.ensure_future(collect(engine, "c:2", "SLOW first", CHAT))
    await _until_sent(fake_api, "SLOW first")
    lead = engine.turn("c:2", Prompt("withdrawn"), CHAT)
    assert isinstance(await anext(lead), Notice)  # queued
    stays = asyncio.ensure_future(collect(engine, "c:2", "kept", CHAT))
    await asyncio.sleep(0.05)
    await lead.aclose()  # the first caller of the queued turn goes away: the turn stays
    events = await stays
    await first
    result = events[-1]
    assert isinstance(result, TurnResult) and result.text == "echo: kept"
    assert [r["last_user_text"] for r in fake_api.requests()] == ["SLOW first", "kept"]


async def test_waiting_prompts_count_against_the_queue_limit(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(max_queued_per_conversation=2)
    first = asyncio.ensure_future(collect(engine, "c:3", "SLOW first", CHAT))
    await _until_sent(fake_api, "SLOW first")
    waiting = [asyncio.ensure_future(collect(engine, "c:3", t, CHAT)) for t in ("a", "b")]
    await asyncio.sleep(0.05)
    refused = await collect(engine, "c:3", "c", CHAT)
    assert isinstance(refused[-1], TurnError) and refused[-1].kind is ErrorKind.BUSY
    a, b = await asyncio.gather(*waiting)
    await first
    assert a[-1] == b[-1] and isinstance(a[-1], TurnResult) and a[-1].text == "echo: a\n\nb"
