"""``/schedule`` and scheduled answers in Telegram: the REAL python-telegram-bot against the fake
Bot API, the REAL scheduler (APScheduler 3) and engine running the REAL Claude Code CLI
against the fake Anthropic API. Only Telegram's servers are faked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bridges.common.schedule_commands import setup_schedules
from bridges.telegram import TelegramBridge
from gateway.config import TelegramSettings
from gateway.scheduler import JobSpec, Scheduler, SchedulerConfig
from tests.clock import noon_zone
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import BotMessage, FakeTelegram

pytestmark = pytest.mark.cli

OWNER = 4242
FRIEND = 5151  # allowed too, in the group only
STRANGER = 999
GROUP = -1001234
OTHER_GROUP = -1009999


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def setup(
    make_engine: EngineFactory, tg: FakeTelegram
) -> AsyncIterator[tuple[TelegramBridge, Scheduler]]:
    """A running bridge and scheduler, wired the way ``gateway.app`` wires them, with one
    read-only config job. In a zone where it is about noon: in UTC the config job fired into
    the group on weekdays at 09:00, next to a test's own messages there."""
    engine = await make_engine()
    config_job = JobSpec("team-digest", "0 9 * * 1-5", "digest for the team", f"telegram:{GROUP}")
    scheduler = Scheduler(engine, SchedulerConfig(jitter=0, allow_seconds=True,
                                                  timezone=noon_zone()), (config_job,))
    settings = TelegramSettings(
        base_url=tg.base_url, base_file_url=tg.base_file_url, allowed_users=[OWNER],
        allowed_chats=[GROUP], poll_timeout=5.0, stream_interval=0.3, status_interval=1.0,
        status_delay=0.5,
    )
    bridge = TelegramBridge(engine, settings, token=tg.token)
    engine.add_alert_handler(bridge.core.on_alert)
    setup_schedules(bridge.core, scheduler)
    await bridge.start()
    await scheduler.start()
    yield bridge, scheduler
    await scheduler.stop()
    await bridge.stop()


async def reply_to(tg: FakeTelegram, chat: int, text: str, *, user: int | None = None,
                   contains: str = "") -> BotMessage:
    """Send ``text`` as ``user`` and wait for the bot's next message (containing ``contains``)."""
    before = len(tg.sent(chat))
    tg.user_text(chat, text, user_id=user if user is not None else chat)

    def find() -> BotMessage | None:
        return next((m for m in tg.sent(chat)[before:] if m.kind == "text"
                     and contains in m.text), None)

    return await tg.wait_for(find, 30, what=f"a reply to {text!r}")


def in_seconds(seconds: int) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"{at.second} * * * * *"


async def test_add_from_chat_fires_and_the_answer_arrives_in_the_chat(
    setup: tuple[TelegramBridge, Scheduler], tg: FakeTelegram, fake_api: FakeAnthropic,
) -> None:
    _bridge, scheduler = setup
    menu = [c["command"] for c in tg.calls_of("setMyCommands")[-1].params["commands"]]
    assert "schedule" in menu
    cron = in_seconds(3)
    added = await reply_to(tg, OWNER, f"/schedule add “{cron}” name=ping Say pong")
    assert added.text.startswith(f"✅ Scheduled #1 “ping”: {cron} → this chat.\n   next ")
    spec = scheduler.get("ping")
    assert spec is not None and spec.target == f"telegram:{OWNER}"
    assert spec.created_by == f"telegram:{OWNER}" and spec.prompt == "Say pong"

    # a slot missed by a very slow machine comes round again a minute later
    answer = await tg.wait_for(
        lambda: next((m for m in tg.sent(OWNER) if "echo: Say pong" in m.text), None), 75,
        what="the scheduled answer",
    )
    assert answer.text.startswith("⏰ ping")
    assert any(e["type"] == "bold" for e in answer.entities)  # formatted by the bridge
    await scheduler.wait_idle("ping")  # the history is written after the delivery
    runs = await scheduler.store.runs("ping")
    assert runs[0].status == "ok" and runs[0].trigger == "cron"

    listing = await reply_to(tg, OWNER, "/schedule list", contains="Scheduled prompts")
    assert f"#1 ping: {cron} → this chat" in listing.text
    assert "✅ ok (cron)" in listing.text and "“Say pong”" in listing.text
    # the config job delivers to a group on allowed_chats: shown, read-only
    assert f"team-digest (config, read-only): 0 9 * * 1-5 → telegram:{GROUP}" in listing.text

    shown = await reply_to(tg, OWNER, "/schedule show 1", contains="Recent runs")
    assert "Prompt: Say pong" in shown.text and "✅ ok (cron)" in shown.text

    paused = await reply_to(tg, OWNER, "/schedule pause 1")
    assert paused.text.startswith("⏸ Paused “ping”")
    assert not (scheduler.get("1") or spec).enabled
    resumed = await reply_to(tg, OWNER, "/schedule resume ping")
    assert resumed.text.startswith("▶️ Resumed “ping”. Next run:")
    removed = await reply_to(tg, OWNER, "/schedule remove #1")
    assert removed.text == "🗑 Removed “ping”."
    assert scheduler.get("ping") is None


async def test_run_now_and_errors_delivered_as_errors_in_a_group(
    setup: tuple[TelegramBridge, Scheduler], tg: FakeTelegram, fake_api: FakeAnthropic,
) -> None:
    _bridge, scheduler = setup
    added = await reply_to(tg, GROUP, '/schedule add "@daily" name=broken FAIL_401 today',
                           user=OWNER)
    assert "Scheduled #1 “broken”" in added.text
    started = await reply_to(tg, GROUP, "/schedule run broken", user=OWNER)
    assert started.text == "▶️ Running “broken” now; the answer comes here."
    failure = await tg.wait_for(
        lambda: next((m for m in tg.sent(GROUP) if "failed" in m.text), None), 30,
        what="the error",
    )
    assert failure.text.startswith("⏰ Scheduled prompt “broken” failed:\n")
    await scheduler.wait_idle("broken")
    assert (await scheduler.store.runs("broken"))[0].status == "error"

    # the config job targets this group: listed here, read-only, but it may be run
    listing = await reply_to(tg, GROUP, "/schedule", user=OWNER, contains="Scheduled")
    assert "team-digest (config, read-only): 0 9 * * 1-5 → this chat" in listing.text
    refused = await reply_to(tg, GROUP, "/schedule remove team-digest", user=OWNER)
    assert "read-only" in refused.text and "config.toml" in refused.text
    ran = await reply_to(tg, GROUP, "/schedule run team-digest", user=OWNER)
    assert ran.text.startswith("▶️ Running “team-digest” now")
    await tg.wait_for(
        lambda: any("echo: digest for the team" in m.text for m in tg.sent(GROUP)), 30,
        what="the config job's answer",
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ('/schedule add "0 25 * * *" hi', "cron: '0 25 * * *': hour '25'"),
        ('/schedule add "0 9 * *" hi', "cron: '0 9 * *' has 4 field(s)"),
        ("/schedule add", "cron: missing"),
        ('/schedule add "0 9 * * *"', "prompt: is empty"),
        ('/schedule add "0 9 * * *" to=slack:1 hi', "target: unknown target 'slack:1'"),
        ('/schedule add "0 9 * * *" to=discord:123 hi', "target: you may not deliver to"
                                                         " discord:123"),
        (f'/schedule add "0 9 * * *" to=telegram:{OTHER_GROUP} hi',
         f"target: you may not deliver to telegram:{OTHER_GROUP}"),
        ('/schedule add "0 9 * * *" name=team-digest hi', "'team-digest': name: a job with"
                                                          " this name exists"),
        ('/schedule add "0 9 * * *" tz=Mars/Base hi', "timezone: unknown time zone"),
        ('/schedule add "0 9 * * *" session=sometimes hi', "session: expected"),
        ("/schedule remove 42", "no such job here"),
        ("/schedule pause", "missing"),
        ("/schedule frobnicate", "Unknown /schedule command 'frobnicate'"),
    ],
)
async def test_bad_input_gets_a_reply_naming_the_field(
    setup: tuple[TelegramBridge, Scheduler], tg: FakeTelegram, command: str, expected: str,
) -> None:
    _bridge, scheduler = setup
    reply = await reply_to(tg, OWNER, command)
    assert expected in reply.text, reply.text
    # nothing else was affected
    assert [v.spec.name for v in scheduler.jobs()] == ["team-digest"]


async def test_targets_a_user_may_use_and_strangers(
    setup: tuple[TelegramBridge, Scheduler], tg: FakeTelegram, fake_api: FakeAnthropic,
) -> None:
    _bridge, scheduler = setup
    # from a private chat, into a group on allowed_chats: allowed, delivered there
    # not "@hourly": at the full hour it answered in the group, where the friend's refusal
    # is awaited
    added = await reply_to(tg, OWNER, f'/schedule add "@daily" to=telegram:{GROUP} name=g hi')
    assert "Scheduled #1 “g”" in added.text and f"→ telegram:{GROUP}" in added.text
    scheduler.run_now(scheduler.get("g") or JobSpec("g", "", "", ""))
    await tg.wait_for(lambda: any("echo: hi" in m.text for m in tg.sent(GROUP)), 30,
                      what="the answer in the group")
    # a member of the allowed group may schedule into the group, not into the owner's chat
    friend = await reply_to(tg, GROUP, f'/schedule add "@daily" to=telegram:{OWNER} x',
                            user=FRIEND)
    assert f"you may not deliver to telegram:{OWNER}" in friend.text
    # and does not see or touch the owner's private jobs
    await reply_to(tg, OWNER, '/schedule add "@daily" name=private mine')
    other = await reply_to(tg, GROUP, "/schedule remove private", user=FRIEND)
    assert "no such job here" in other.text
    # a stranger is refused by the bridge's allow-list before any command runs
    before = len(scheduler.jobs())
    tg.user_text(STRANGER, '/schedule add "@daily" spam')
    refusal = await tg.wait_for(lambda: next(iter(tg.sent(STRANGER)), None), 30,
                                what="the refusal")
    assert "not on its allow-list" in refusal.text
    await asyncio.sleep(0.2)
    assert len(scheduler.jobs()) == before


async def test_long_scheduled_answers_are_split_for_telegram(
    setup: tuple[TelegramBridge, Scheduler], tg: FakeTelegram, fake_api: FakeAnthropic,
) -> None:
    _bridge, scheduler = setup
    long_text = "\n\n".join(f"Paragraph {i}: " + "word " * 150 for i in range(12))
    fake_api.script({"text": long_text}, match="write a lot")
    spec = await scheduler.add(name="essay", cron="@daily", prompt="write a lot",
                               target=f"telegram:{OWNER}")
    started = time.monotonic()
    scheduler.run_now(spec)
    await scheduler.wait_idle("essay")
    parts = [m for m in tg.sent(OWNER) if m.kind == "text"]
    assert len(parts) >= 2 and all(len(m.text) <= 4096 for m in parts)
    joined = " ".join(" ".join(m.text.split()) for m in parts)
    assert "Paragraph 0:" in joined and "Paragraph 11:" in joined
    assert time.monotonic() - started < 60
    assert (await scheduler.store.runs("essay"))[0].status == "ok"
