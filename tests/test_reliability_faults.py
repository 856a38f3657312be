"""Faults under the HTTP API with the REAL Claude Code CLI and the fake Anthropic API.

What tests/test_api_routes.py, test_api_e2e.py and test_engine_faults.py already prove is
not repeated (statuses of each upstream error, the scripted CLI dying, garbage, silence).
Added here:

* the real CLI killed with SIGKILL from outside mid-turn, non-streamed and streamed (before
  and after text went out): typed 502 / in-stream error, and the next turn continues the
  same Claude Code session with its history;
* a CLI that cannot start (exits 1 with a reason on stderr; not executable): a WARNING with
  the reason and a typed 502 ``cli_crashed`` naming it; a crash the gateway did not cause
  keeps the SDK's ERROR and gets the engine's WARNING;
* every upstream fault in a row in ONE conversation (500, 429, 529, 401, a hang before the
  response headers ended by the CLI's API timeout, a stall mid-stream ended by the activity
  timeout), counting processes after each: never more than the conversation's own, the
  stalled process is gone, and after the engine stops none is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.engine import EngineConfig
from gateway.engine.session import SDK_QUERY_LOGGER
from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory, child_pids
from tests.test_api_routes import (
    Gateway,
    GatewayFactory,
    msgs,
    parse_sse,
    text_of,
    wait_for,
)

pytestmark = pytest.mark.cli

# fixtures of tests/test_api_routes.py: the API over a real engine
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine


def _history(gw: Gateway, text: str) -> str:
    request = gw.seen(text)
    return json.dumps(request["messages"])


async def _kill_when_seen(gw: Gateway, key: str, text: str) -> int:
    await wait_for(lambda: gw.saw(text), f"{text!r} to reach the model")
    pid = gw.engine.live_pids()[key]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_cli_sigkilled_mid_turn_is_502_and_the_session_goes_on(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gw = await make_gateway(keepalive_seconds=5.0)
    conv = {"X-Conversation-Id": "killed"}
    key = "openai:h:killed"
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("remember the word tangerine")}, headers=conv)
    assert status == 200, body
    info = await gw.engine.describe(key)
    assert info is not None and info.session_id
    session = info.session_id

    # 1. not streamed: the model is slow, the CLI dies meanwhile
    gw.fake.script({"text": "too late", "delay": 20.0}, match="slow question")
    pending = asyncio.ensure_future(
        gw.chat({"model": "sonnet", "messages": msgs("slow question")}, headers=conv))
    dead = [await _kill_when_seen(gw, key, "slow question")]
    status, headers, body = await pending
    assert status == 502 and body["error"]["code"] == "cli_crashed", body
    assert "conversation is kept" in body["error"]["message"]
    assert headers["X-Conversation-Id"] == "h:killed"

    # 2. streamed, nothing said yet (smart mode): still a real status
    gw.fake.script({"text": "too late", "delay": 20.0}, match="quiet stream")
    pending = asyncio.ensure_future(gw.chat(
        {"model": "sonnet", "messages": msgs("quiet stream"), "stream": True}, headers=conv))
    dead.append(await _kill_when_seen(gw, key, "quiet stream"))
    status, _, body = await pending
    assert status == 502 and body["error"]["code"] == "cli_crashed", body

    # 3. streamed, after text went out: an in-stream error, then [DONE]
    gw.fake.script({"text": "first words, " * 20, "chunk_delay": 20.0}, match="loud stream")
    async with aiohttp.ClientSession() as session_http:
        async with session_http.post(
            gw.url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": msgs("loud stream"), "stream": True},
            headers={**conv, "X-Stream-Mode": "verbose"},
        ) as resp:
            assert resp.status == 200
            raw = b""
            while b"first words" not in raw:
                raw += await resp.content.readline()
            pid = gw.engine.live_pids()[key]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            dead.append(pid)
            raw += await asyncio.wait_for(resp.content.read(), 20)
    events, done = parse_sse(raw)
    assert done and text_of(events[:-1]).startswith("first words")
    assert events[-1]["error"]["code"] == "cli_crashed"

    # the next turn resumes the same session, with its history
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("which fruit did I name?")}, headers=conv)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "echo: which fruit did I name?"
    assert "remember the word tangerine" in _history(gw, "which fruit did I name?")
    info = await gw.engine.describe(key)
    assert info is not None and info.session_id == session
    assert not set(dead) & child_pids(), "killed CLIs are reaped"
    assert set(gw.engine.live_pids().values()) == child_pids()
    # a crash the gateway did not cause stays loud: the SDK's ERROR and the engine's WARNING
    sdk_errors = [r for r in caplog.records
                  if r.name == SDK_QUERY_LOGGER and r.levelno == logging.ERROR]
    crashes = [r for r in caplog.records if r.name == "gateway.engine.runner"
               and r.levelno == logging.WARNING and "crashed" in r.getMessage()]
    assert len(sdk_errors) == len(dead) and len(crashes) == len(dead), caplog.text


async def test_a_cli_that_cannot_start_is_a_warning_and_a_typed_error(
    make_gateway: GatewayFactory, new_engine: EngineFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CLI passes the start-up check (``--version``) but then cannot start: it exits 1
    with a reason on stderr (a broken settings file, say), or it is no longer executable.
    The client gets a typed 502 naming the reason, the log a WARNING with it."""
    cli = tmp_path / "claude"
    cli.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "2.1.332 (Claude Code)"; exit 0; fi\n'
        'echo "Error: settings.json is not valid JSON at line 3" >&2\n'
        "exit 1\n"
    )
    cli.chmod(0o755)
    gw = await make_gateway(await new_engine(cli_path=str(cli)))
    caplog.set_level(logging.INFO)
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "hello?"}])
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "cli_crashed", error
    assert "failed to start" in error["message"] and "not valid JSON" in error["message"]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "gateway.engine.session"]
    assert any("failed to start" in w and "not valid JSON" in w for w in warnings), warnings
    # no longer executable (an update half done, a wrong chmod): the same, with the reason
    cli.chmod(0o644)
    caplog.clear()
    status, _, body = await gw.chat({"model": "sonnet", "messages": msgs("again?")},
                                    headers={"X-Conversation-Id": "noexec"})
    assert status == 502 and body["error"]["code"] == "cli_crashed", body
    assert "Permission denied" in body["error"]["message"]
    assert any(r.levelno == logging.WARNING and "Permission denied" in r.getMessage()
               for r in caplog.records), caplog.text
    assert gw.engine.live_pids() == {} and gw.fake.requests() == []


def _ended(pid: int) -> bool:
    return pid not in child_pids()


# (user text, HTTP status, error code, Retry-After header)
FAULTS: list[tuple[str, int, str, str | None]] = [
    ("FAIL_500 now", 502, "upstream_error", None),
    ("FAIL_429 now", 429, "rate_limit_exceeded", "60"),
    ("FAIL_529 now", 503, "overloaded", "10"),
    ("FAIL_401 now", 502, "upstream_authentication_failed", None),
    ("HANG before the headers", 502, "upstream_error", None),
    ("STALL mid-stream", 504, "timeout", None),
]


async def test_upstream_faults_in_a_row_leave_no_process_behind(
    make_gateway: GatewayFactory, new_engine: EngineFactory, engine_config: EngineConfig,
) -> None:
    # the CLI gives up on a silent API after 2 s; the gateway on a silent CLI after 4 s
    env = {**engine_config.env, "API_TIMEOUT_MS": "2000"}
    engine = await new_engine(env=env, activity_timeout=4.0, bash_max_timeout=4.0)
    gw = await make_gateway(engine, keepalive_seconds=30.0)
    before = child_pids()
    conv = {"X-Conversation-Id": "faults"}
    key = "openai:h:faults"
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("my name is Ada")}, headers=conv)
    assert status == 200, body
    seen: list[dict[str, Any]] = []
    for text, want, code, retry in FAULTS:
        pid = gw.engine.live_pids()[key]
        started = time.monotonic()
        stream = len(seen) % 2 == 1  # alternate: a failure before output is a real status
        status, headers, body = await gw.chat(
            {"model": "sonnet", "messages": msgs(text), "stream": stream}, headers=conv)
        elapsed = time.monotonic() - started
        assert status == want and body["error"]["code"] == code, (text, body)
        assert headers.get("Retry-After") == retry, (text, headers)
        seen.append({"fault": text, "status": status, "seconds": round(elapsed, 1)})
        now = child_pids() - before
        live = set(gw.engine.live_pids().values())
        assert now <= live, f"after {text!r}: stray processes {now - live}"
        if code == "timeout":
            # SIGKILL goes out before the 504; the kernel ends the process a moment later
            await wait_for(partial(_ended, pid), "the stalled CLI to end", within=5)
            assert 3.5 < elapsed < 10, elapsed
        if text.startswith("HANG"):
            assert "timed out" in body["error"]["message"].lower(), body
            assert 1.5 < elapsed < 10, elapsed
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("what is my name?")}, headers=conv)
    assert status == 200, body
    assert "my name is Ada" in _history(gw, "what is my name?")
    await engine.stop()
    await wait_for(lambda: not (child_pids() - before), "every CLI to end", within=10)
    print("\nupstream faults:", json.dumps(seen))
