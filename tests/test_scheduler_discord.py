"""Scheduled prompts in Discord: the REAL discord.py client driven by dpytest (the fakes in
``tests/fake_discord.py``), the REAL scheduler, and the REAL engine running the REAL Claude Code
CLI against the fake Anthropic API. Only Discord's servers are faked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridges.common.schedule_commands import setup_schedules
from bridges.discord import DiscordBridge
from gateway.config import DiscordSettings
from gateway.scheduler import Scheduler, SchedulerConfig
from tests.clock import noon_zone
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_discord import GENERAL_ID, OWNER_ID, FakeDiscord

pytestmark = pytest.mark.cli

World = tuple[DiscordBridge, FakeDiscord, Scheduler]


@pytest.fixture
async def world(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> AsyncIterator[World]:
    """A bridge on a fake Discord and a scheduler, wired the way ``gateway.app`` wires them."""
    monkeypatch.chdir(tmp_path)  # dpytest writes sent attachments to ./dpytest_<n>.dat
    engine = await make_engine()
    # about noon there: in UTC the job "0 9 * * 1-5" fired itself on weekdays at 09:00
    scheduler = Scheduler(engine, SchedulerConfig(jitter=0, allow_seconds=True,
                                                  timezone=noon_zone()))
    bridge = DiscordBridge(engine, DiscordSettings(allowed_users=[OWNER_ID],
                                                   allowed_channels=[GENERAL_ID]),
                           token="not-used")
    fake = await FakeDiscord.create(bridge.client, monkeypatch, tmp_path)
    engine.add_alert_handler(bridge.core.on_alert)
    setup_schedules(bridge.core, scheduler)
    await bridge.start(connect=False)
    await scheduler.start()
    yield bridge, fake, scheduler
    await scheduler.stop()
    await bridge.stop()


async def test_schedule_from_a_dm_into_an_allowed_channel(
    world: World, fake_api: FakeAnthropic
) -> None:
    _bridge, fake, scheduler = world
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner,
                       f'/schedule add "0 9 * * 1-5" to=discord:{GENERAL_ID} name=standup'
                       " Plan my day")
    await fake.wait_for(lambda: any("Scheduled #1" in t for t in fake.texts(dm.id)),
                        what="the confirmation")
    spec = scheduler.get("standup")
    assert spec is not None and spec.target == f"discord:{GENERAL_ID}"
    assert spec.created_by == f"discord:{OWNER_ID}"

    assert scheduler.run_now(spec)
    await fake.wait_for(
        lambda: any("echo: Plan my day" in t for t in fake.texts(GENERAL_ID)),
        what="the answer in the channel",
    )
    await scheduler.wait_idle("standup")
    delivered = next(t for t in fake.texts(GENERAL_ID) if "echo: Plan my day" in t)
    assert delivered.startswith("⏰ **standup**")  # Discord Markdown, rendered by the bridge
    assert (await scheduler.store.runs("standup"))[0].status == "ok"

    # a channel that is not allowed is refused, naming the field
    await fake.message(dm, fake.owner, '/schedule add "@daily" to=discord:123456 nope')
    await fake.wait_for(lambda: any("you may not deliver to discord:123456" in t
                                    for t in fake.texts(dm.id)), what="the refusal")
    assert [v.spec.name for v in scheduler.jobs()] == ["standup"]
