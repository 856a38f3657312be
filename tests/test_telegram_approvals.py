"""Approvals from the phone on Telegram, end to end: the REAL python-telegram-bot against the
fake Bot API (inline keyboards, callback queries, answerCallbackQuery; ~100 ms a call where
timing matters) and the REAL engine running the REAL CLI against the fake Anthropic API,
scripted to ask for a Bash command and a file edit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engine import PermissionMode, Prompt, TurnOptions, TurnResult
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import BotMessage, FakeTelegram
from tests.telegram_support import (
    BOT,
    GROUP,
    OWNER,
    STRANGER,
    BridgeFactory,
    answer,
    idle,
    status_messages,
)

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.cli


@pytest.fixture
def bridge_on(make_bridge: BridgeFactory, make_engine: EngineFactory) -> BridgeFactory:
    """``make_bridge`` on an engine without pre-started spare processes (they only cost CPU
    here); ``engine=`` still picks one."""

    async def factory(**settings: Any) -> Any:
        engine = settings.pop("engine", None) or await make_engine(spare_processes=0)
        return await make_bridge(engine=engine, **settings)

    return factory


def _bash(command: str) -> dict[str, Any]:
    return {"tool_use": {"name": "Bash", "input": {"command": command, "description": "cmd"}}}


async def _request(tg: FakeTelegram, chat: int, summary: str) -> BotMessage:
    """The approval message for ``summary``, with its buttons."""

    def find() -> BotMessage | None:
        return next((m for m in tg.visible(chat) if m.buttons() and summary in m.text), None)

    return await tg.wait_for(find, 30, what=f"an approval request for {summary!r}")


def _button(message: BotMessage, starts: str) -> str:
    return next(b["callback_data"] for b in message.buttons() if b["text"].startswith(starts))


async def _press(tg: FakeTelegram, message: BotMessage, starts: str, user: int = OWNER,
                 ) -> str:
    query = tg.user_press(message, _button(message, starts), user_id=user)
    found = await tg.wait_for(lambda: tg.answer_to(query), 30, what="answerCallbackQuery")
    return str(found["text"])


async def test_allow_once_runs_the_command_and_a_second_press_changes_nothing(
        bridge_on: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic) -> None:
    bridge = await bridge_on(permission_mode="ask")
    tg.slow(latency=0.1, jitter=0.05, seed=18)
    marker = bridge.engine.workspace / "ran"
    fake_api.script(_bash(f"touch {marker} && echo it ran"), match="make the file")
    tg.user_text(OWNER, "please make the file")
    request = await _request(tg, OWNER, f"Run: touch {marker} && echo it ran")
    assert [b["text"] for b in request.buttons()] == ["✅ Allow once", "🚫 Deny"]  # no prefix
    assert not request.silent and not marker.exists()
    await tg.wait_for(lambda: any("Waiting for your approval" in text
                                  for m in status_messages(tg, OWNER) for text in m.history),
                      10, what="the status line")
    allow = _button(request, "✅")
    assert await _press(tg, request, "✅") == "✅ Allowed once."
    await answer(tg, OWNER, "Tool said: it ran")
    assert marker.exists()
    assert request.text.startswith("✅ Allowed once by Owner: Run: touch") and not request.buttons()
    again = tg.user_press(request, allow, user_id=OWNER)  # a double press (a slow client)
    found = await tg.wait_for(lambda: tg.answer_to(again), 30, what="answerCallbackQuery")
    assert "already answered" in found["text"]
    await idle(bridge, OWNER)


async def test_deny_runs_nothing_and_a_typed_reason_reaches_claude(
        bridge_on: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic) -> None:
    bridge = await bridge_on(permission_mode="ask")
    workspace = bridge.engine.workspace
    workspace.mkdir(parents=True, exist_ok=True)
    app = workspace / "app.py"
    app.write_text("a = 1\nb = 2\n")
    marker = workspace / "never"
    fake_api.script(
        {"tool_uses": [
            {"name": "Bash", "input": {"command": f"touch {marker}"}},
            {"name": "Edit", "input": {"file_path": str(app), "old_string": "a = 1",
                                       "new_string": "a = 10\nc = 3"}}]},
        match="change things")
    tg.user_text(OWNER, "change things")
    first = await _request(tg, OWNER, f"Run: touch {marker}")
    assert await _press(tg, first, "🚫") == "🚫 Denied."
    second = await _request(tg, OWNER, "Edit app.py (+2 −1)")  # its own message
    assert [b["text"] for b in second.buttons()] == [
        "✅ Allow once", "♾ Always allow Edit here", "🚫 Deny"]
    tg.user_text(OWNER, "not now, use the staging branch")
    done = await tg.wait_for(
        lambda: next((m for m in tg.visible(OWNER) if "staging branch" in m.text
                      and m.text.startswith("Tool said")), None), 30, what="the answer")
    assert app.read_text() == "a = 1\nb = 2\n" and not marker.exists()
    assert second.text.startswith("🚫 Denied") and "staging branch" in second.text
    assert first.text.startswith("🚫 Denied by Owner")
    assert "reads your reason" in "\n".join(m.text for m in tg.visible(OWNER))
    assert done is not None
    # the typed reason was no new message to Claude
    assert not any(r["last_user_text"].startswith("not now") for r in fake_api.requests())
    await idle(bridge, OWNER)


async def test_always_allow_persists_across_a_restart_and_old_buttons_are_stale(
        bridge_on: BridgeFactory, make_engine: EngineFactory, tg: FakeTelegram,
        fake_api: FakeAnthropic) -> None:
    engine = await make_engine(spare_processes=0)
    bridge = await bridge_on(engine=engine, permission_mode="ask")
    fake_api.script(_bash("mkdir -p one"), match="first folder")
    tg.user_text(OWNER, "first folder")
    request = await _request(tg, OWNER, "Run: mkdir -p one")
    assert await _press(tg, request, "♾ Always allow “mkdir” commands") == \
        "♾ Always allowed here."
    await answer(tg, OWNER, "Tool said: (Bash completed with no output)")
    await idle(bridge, OWNER)
    # a fresh request that is never answered before the restart: its button goes stale
    fake_api.script(_bash("rm -rf one"), match="remove it")
    tg.user_text(OWNER, "remove it")
    stale = await _request(tg, OWNER, "Run: rm -rf one")
    stale_data = _button(stale, "🚫")
    await bridge.stop()
    await engine.stop()
    again = await bridge_on(engine=await make_engine(spare_processes=0), permission_mode="ask")
    query = tg.user_press(stale, stale_data, user_id=OWNER)
    found = await tg.wait_for(lambda: tg.answer_to(query), 30, what="answerCallbackQuery")
    assert "no longer waiting" in found["text"]
    workspace = again.engine.workspace
    fake_api.script(_bash("mkdir -p two"), match="second folder")
    tg.user_text(OWNER, "second folder")
    await tg.wait_for(lambda: (workspace / "two").is_dir(), 30, what="mkdir to run")
    await idle(again, OWNER)
    asked = [m for m in tg.sent(OWNER) if "mkdir -p two" in m.text and m.history[0]
             .startswith("🔐")]
    assert asked == []  # the rule allowed it without asking
    tg.user_text(OWNER, "/allowed")
    listing = await tg.wait_for(lambda: next(
        (m for m in tg.visible(OWNER) if m.text.startswith("Always allowed in this chat")),
        None), 30, what="/allowed")
    assert "1. “mkdir” commands" in listing.text
    tg.user_text(OWNER, "/allowed remove 1")
    await answer(tg, OWNER, "Revoked: “mkdir” commands.")


async def test_a_strangers_press_changes_nothing_and_the_timeout_denies(
        bridge_on: BridgeFactory, make_engine: EngineFactory, tg: FakeTelegram,
        fake_api: FakeAnthropic) -> None:
    engine = await make_engine(approval_timeout=3.0, spare_processes=0)
    bridge = await bridge_on(engine=engine, permission_mode="edits")
    marker = engine.workspace / "late"
    fake_api.script(_bash(f"curl -s http://127.0.0.1:9/ > {marker}"), match="fetch it")
    tg.user_text(GROUP, f"{BOT} fetch it", user_id=OWNER)
    request = await _request(tg, GROUP, "Run: curl")
    answer_text = await _press(tg, request, "✅", user=STRANGER)
    assert "Only the people this assistant works for" in answer_text
    assert request.buttons() and engine.pending_approvals(f"telegram:{GROUP}")
    await tg.wait_for(lambda: request.text.startswith("⏱ Nobody answered in 3 s"), 30,
                      what="the timeout")
    assert not marker.exists()
    await tg.wait_for(lambda: any("Nobody answered the approval request" in m.text
                                  for m in tg.visible(GROUP)), 30, what="the answer")
    await idle(bridge, GROUP)


async def test_plan_mode_runs_no_tool_and_stop_denies_a_waiting_request(
        bridge_on: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic) -> None:
    bridge = await bridge_on()
    marker = bridge.engine.workspace / "planned"
    tg.user_text(OWNER, "/mode plan")
    await tg.wait_for(lambda: any(m.text.startswith("Permission mode: plan")
                                  for m in tg.visible(OWNER)), 30, what="/mode plan")
    fake_api.script(_bash(f"touch {marker}"), match="plan the file")
    tg.user_text(OWNER, "plan the file")
    await tg.wait_for(lambda: any(m.text.startswith("Tool said") for m in tg.visible(OWNER)),
                      30, what="the answer")
    await idle(bridge, OWNER)
    assert not marker.exists() and not any(m.buttons() for m in tg.sent(OWNER))
    tg.user_text(OWNER, "/status")
    await tg.wait_for(lambda: any("Permissions: plan" in m.text for m in tg.visible(OWNER)),
                      30, what="/status")
    # /mode ask on the same session; /stop while a request waits denies it and ends the turn
    key = f"telegram:{OWNER}"
    before = await bridge.engine.describe(key)
    tg.user_text(OWNER, "/mode ask")
    fake_api.script(_bash(f"touch {marker}"), match="wait for me")
    tg.user_text(OWNER, "wait for me")
    request = await _request(tg, OWNER, f"Run: touch {marker}")
    now = await bridge.engine.describe(key)
    assert before is not None and now is not None
    assert now.session_id == before.session_id and now.pid == before.pid  # the same process
    tg.user_text(OWNER, "/stop")
    await tg.wait_for(lambda: request.text.startswith("⏹ Not run"), 30, what="/stop")
    await idle(bridge, OWNER)
    assert not marker.exists() and bridge.engine.pending_approvals() == []


async def test_an_api_turn_is_approved_from_the_notification_chat(
        bridge_on: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic) -> None:
    bridge = await bridge_on(notify=OWNER)
    engine = bridge.engine
    marker = engine.workspace / "from-the-api"
    fake_api.script(_bash(f"touch {marker} && echo api ran"), match="api work")
    turn = engine.turn("openai:abc", Prompt(text="api work"),
                       TurnOptions(origin="api", permission_mode=PermissionMode.ASK))
    events = asyncio.ensure_future(_all(turn))
    request = await _request(tg, OWNER, f"Run: touch {marker}")
    assert request.text.startswith("🔐 A turn of openai:abc (api) wants to:")
    assert [b["text"] for b in request.buttons()] == ["✅ Allow once", "🚫 Deny"]
    assert await _press(tg, request, "✅") == "✅ Allowed once."
    final = (await asyncio.wait_for(events, 30))[-1]
    assert isinstance(final, TurnResult) and "api ran" in final.text and marker.exists()


async def _all(turn: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in turn]
