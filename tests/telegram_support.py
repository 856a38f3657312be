"""Shared by the Telegram tests: the fake Bot API and a running bridge as fixtures, and
helpers to wait for what the bot shows. Test modules load it with
``pytest_plugins = ["tests.telegram_support"]``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bridges.common import VoiceBackend
from bridges.telegram import TelegramBridge
from gateway.api.conversation import KEY_PREFIX as API_KEY_PREFIX
from gateway.config import TelegramSettings
from gateway.engine import Engine
from tests.conftest import EngineFactory
from tests.fake_telegram import BotMessage, FakeTelegram
from tests.media import png_bytes as png_bytes  # re-exported for the Telegram tests

OWNER = 4242
STRANGER = 999
GROUP = -1001234
FORUM = -1005678
BOT = "@claude_test_bot"
BridgeFactory = Callable[..., Awaitable[TelegramBridge]]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def make_bridge(
    make_engine: EngineFactory, tg: FakeTelegram
) -> AsyncIterator[BridgeFactory]:
    """``await make_bridge(engine=None, notify=None, voice=None, **telegram_settings)``: a
    running bridge, wired to the engine the way ``gateway.app`` wires it; all are stopped at
    teardown."""
    bridges: list[TelegramBridge] = []

    async def factory(engine: Engine | None = None, notify: int | None = None,
                      voice: VoiceBackend | None = None, **overrides: Any) -> TelegramBridge:
        engine = engine or await make_engine()
        values: dict[str, Any] = {
            "base_url": tg.base_url, "base_file_url": tg.base_file_url,
            "allowed_users": [OWNER], "poll_timeout": 5.0, "stream_interval": 0.3,
            "status_interval": 1.0, "status_delay": 0.5,
        }
        values.update(overrides)
        bridge = TelegramBridge(engine, TelegramSettings(**values), token=tg.token,
                                notify_chat_id=notify, voice=voice)
        engine.register_file_sink(bridge.core.key_prefix, bridge.core.deliver_file)
        engine.add_alert_handler(bridge.core.on_alert)
        engine.add_usage_warning_handler(bridge.core.on_usage_warning)
        if notify:  # the HTTP API's approval requests go to the notification chat
            engine.register_permissions(API_KEY_PREFIX, approver=bridge.approvals)
        await bridge.start()
        bridges.append(bridge)
        return bridge

    yield factory
    for bridge in bridges:
        await bridge.stop()


# ----------------------------------------------------------------------------- helpers


def texts(tg: FakeTelegram, chat: int, thread: int | str | None = "any") -> list[str]:
    return [m.text for m in tg.visible(chat, thread) if m.kind == "text"]


async def answer(tg: FakeTelegram, chat: int, text: str, thread: int | str | None = "any",
                 within: float = 30.0) -> BotMessage:
    """Wait until the bot shows a message with exactly ``text``."""

    def find() -> BotMessage | None:
        return next((m for m in tg.visible(chat, thread) if m.text == text), None)

    return await tg.wait_for(find, within, what=f"answer {text!r} in {chat}")


async def idle(bridge: TelegramBridge, chat: int, thread: int | None = None) -> None:
    """Wait until the chat has no turn running or waiting (its display is final)."""
    key = f"telegram:{chat}" + (f":{thread}" if thread else "")
    target = bridge.platform.chat_for_key(key)
    assert target is not None
    deadline = time.monotonic() + 30
    while bridge.core.busy(target):
        assert time.monotonic() < deadline, "the chat stayed busy"
        await asyncio.sleep(0.02)


def status_messages(tg: FakeTelegram, chat: int) -> list[BotMessage]:
    return [m for m in tg.sent(chat) if m.kind == "text" and m.history[0].startswith("⚙️")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
