"""A chat message survives the gateway's death: the real ``claude-max-api`` command in a
subprocess with its REAL Telegram bridge (python-telegram-bot against
``tests/fake_telegram.py`` at ~100 ms a call) and the REAL bundled CLI against the fake
Anthropic API, SIGKILLed while Claude answers, then started again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.fake_telegram import FakeTelegram
from tests.reliability_support import GatewayProcess, cli_processes_of
from tests.telegram_support import OWNER, STRANGER, answer

pytestmark = pytest.mark.cli


def _telegram_gateway(root: Path, fake_api: FakeAnthropic, home: Path, tg: FakeTelegram,
                      telegram: str = "") -> GatewayProcess:
    """The real command with its Telegram bridge on ``tg`` (the owner allowed); ``telegram``:
    more lines of the ``[telegram]`` section."""
    env = cli_env(fake_api.base_url, str(home))
    env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
    for name in list(env):
        if name.startswith(("CMG_", "TELEGRAM_", "DISCORD_")):
            del env[name]
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["TELEGRAM_BOT_TOKEN"] = tg.token
    return GatewayProcess(
        root, env,
        extra=f"[telegram]\nbase_url = {json.dumps(tg.base_url)}\n"
              f"allowed_users = [{OWNER}]\npoll_timeout = 5\n{telegram}",
    )


def _kill_all(gateway: GatewayProcess, home: Path) -> None:
    """Cleanup: the gateway and every CLI process of this test's ``HOME``."""
    gateway.kill()
    for proc in cli_processes_of(str(home)):
        proc.kill()


def _in_inbox(db_path: Path, message_id: int) -> bool:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT 1 FROM chat_inbox WHERE message_id = ?",
                         (message_id,)).fetchone()
    db.close()
    return row is not None


async def test_sigkill_during_a_telegram_turn_then_a_restart_answers_or_tells_the_chat(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path,
) -> None:
    async with FakeTelegram(latency=0.1, jitter=0.05) as tg:
        gateway = _telegram_gateway(tmp_path, fake_api, cli_home, tg, "status_delay = 0.5\n")
        try:
            await asyncio.to_thread(gateway.start)
            await tg.wait_for(lambda: tg.calls_of("getUpdates"), what="polling")
            # Claude is answering the first message (slowly) when the gateway dies; the
            # second waits behind it and never reaches Claude
            fake_api.script({"hang": True}, match="the doomed question")
            doomed = tg.user_text(OWNER, "the doomed question\nwith its details")
            await tg.wait_for(lambda: any("doomed" in r["last_user_text"]
                                          for r in fake_api.requests()), what="Claude at work")
            behind = tg.user_text(OWNER, "the question behind it")
            await tg.wait_for(lambda: _in_inbox(gateway.db_path, behind["message_id"]),
                              what="the second message in the inbox")
            gateway.signal(signal.SIGKILL)
            await asyncio.to_thread(gateway.wait, 10)
            killed = time.monotonic()
            shown_before = len(tg.sent(OWNER))

            await asyncio.to_thread(gateway.start)
            notice = ("⚠️ I was restarted while working on: the doomed question. Send it"
                      " again or /retry")
            await answer(tg, OWNER, notice, within=60)
            await answer(tg, OWNER, "echo: the question behind it", within=60)
            elapsed = time.monotonic() - killed
            assert elapsed < 60, elapsed
            asked = [r["last_user_text"] for r in fake_api.requests()]
            assert asked.count("the question behind it") == 1, asked
            assert asked.count("the doomed question\nwith its details") == 1, \
                "what reached Claude is not run again by itself"

            log = gateway.log()
            for message in (doomed, behind):  # named by id, never by its text
                assert f"message {message['message_id']} of telegram:{OWNER}" in log, log
            assert "doomed question" not in log and "question behind it" not in log

            tg.user_text(STRANGER, "/retry")  # a stranger cannot make it run again
            await tg.wait_for(lambda: tg.sent(STRANGER), what="the stranger's refusal")
            assert "allow-list" in tg.sent(STRANGER)[0].text
            tg.user_text(OWNER, "/retry")
            await answer(tg, OWNER, "echo: the doomed question\nwith its details")
            asked = [r["last_user_text"] for r in fake_api.requests()]
            assert asked.count("the doomed question\nwith its details") == 2, asked
            tg.user_text(OWNER, "/retry")  # it got its answer now
            await answer(tg, OWNER, "Nothing to retry: every message here got its answer.")
            new = [m.text for m in tg.sent(OWNER)[shown_before:]]
            assert new.count(notice) == 1 and new.count("echo: the question behind it") == 1
            print(f"\nSIGKILL mid-turn, restart: the notice and the re-run's answer"
                  f" {elapsed:.1f} s after the kill; /retry answered the lost message")

            gateway.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.wait, 30) == 0
        finally:
            _kill_all(gateway, cli_home)


async def test_a_telegram_outage_at_start_up_leaves_the_gateway_serving_and_the_bot_comes_up(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path,
) -> None:
    """Telegram down while the gateway starts: the HTTP API serves, /health says why it is
    degraded, and the bot starts by itself once the Bot API answers again."""
    async with FakeTelegram(latency=0.1, jitter=0.05) as tg:
        tg.down = True
        gateway = _telegram_gateway(tmp_path, fake_api, cli_home, tg)
        try:
            await asyncio.to_thread(gateway.start)
            await tg.wait_for(lambda: "tries again" in gateway.log(), what="the warning")
            health = await asyncio.to_thread(gateway.health)
            assert health["status"] == "degraded", health
            assert any("Telegram" in p and "retrying" in p for p in health["problems"]), health
            status, _, body = await asyncio.to_thread(gateway.chat, "the API still works")
            assert status == 200 and b"echo: the API still works" in body, body
            assert gateway.proc is not None and gateway.proc.poll() is None

            tg.down = False
            await tg.wait_for(lambda: tg.calls_of("getUpdates"), what="polling", within=30)
            tg.user_text(OWNER, "hello after the outage")
            await answer(tg, OWNER, "echo: hello after the outage")
            health = await asyncio.to_thread(gateway.health)
            assert health["status"] == "ok", health
            warnings = [line for line in gateway.log().splitlines() if " WARNING " in line]
            assert any("reachable again" in line for line in warnings), warnings

            gateway.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.wait, 30) == 0
        finally:
            _kill_all(gateway, cli_home)
