"""100 HTTP clients that hang up mid-stream: nothing leaks (processes, asyncio tasks, file
descriptors), memory stays flat, and every conversation is still usable.

Real engine, real bundled CLI, fake Anthropic API. Each client streams (verbose: text goes
out as it arrives), reads until the first answer text and closes its connection; the reply
it asked for would take minutes, so only the interrupt can end its turn. The clients come in
two waves of 50 over four conversations, 25 queued per conversation at most: the second wave
must not cost more memory than the first.

A client that leaves before its turn has started (it waited for a process or turn slot of a
busy engine) gets its turn withdrawn: no CLI process is started for it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time

import aiohttp
import psutil
import pytest

from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory, child_pids
from tests.test_api_routes import (
    GatewayFactory,
    msgs,
    text_of,
    wait_for,
)

pytestmark = pytest.mark.cli

# fixtures of tests/test_api_routes.py: the API over a real engine
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine

CONVERSATIONS = 4
WAVE = 50


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6


async def _hang_up(url: str, conversation: str, text: str) -> float:
    """Stream ``text`` and close the connection after the first answer text."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": msgs(text), "stream": True},
            headers={"X-Conversation-Id": conversation, "X-Stream-Mode": "verbose"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            while True:
                line = await resp.content.readline()
                assert line, "the stream ended before any text"
                if line.startswith(b"data: {") and text_of([json.loads(line[6:])]):
                    break
            resp.close()
    return time.monotonic() - started


async def test_a_hundred_clients_hanging_up_mid_stream_leak_nothing(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine(max_live_sessions=CONVERSATIONS, max_queued_per_conversation=30)
    gw = await make_gateway(engine, keepalive_seconds=30.0, max_concurrent_requests=128)
    names = [f"drop{i}" for i in range(CONVERSATIONS)]
    for name in names:  # warm: one process per conversation
        status, _, body = await gw.chat({"model": "sonnet", "messages": msgs(f"hello {name}")},
                                        headers={"X-Conversation-Id": name})
        assert status == 200, body
    pids = set(engine.live_pids().values())
    base_children = child_pids()
    assert pids <= base_children
    await asyncio.sleep(0.2)
    base_tasks, base_fds = len(asyncio.all_tasks()), _fds()

    async def wave(first: int) -> list[float]:
        for i in range(first, first + WAVE):
            # five deltas a minute apart: only an interrupt ends this turn in time
            gw.fake.script({"text": f"answer {i} " * 20, "chunk_delay": 60.0},
                           match=f"#{i}#")
        clients = [_hang_up(gw.url, names[i % CONVERSATIONS], f"question #{i}#")
                   for i in range(first, first + WAVE)]
        return await asyncio.wait_for(asyncio.gather(*clients), 120)

    async def settled() -> bool:
        status = engine.status()
        return status.running_turns == 0 and status.queued_turns == 0

    started = time.monotonic()
    first = await wave(0)
    await wait_for(settled, "the first wave's turns to end", within=30)
    rss_first = _rss_mb()
    second = await wave(WAVE)
    await wait_for(settled, "the second wave's turns to end", within=30)
    elapsed = time.monotonic() - started
    rss_second = _rss_mb()

    # processes: the same warm ones, nothing else
    assert child_pids() == base_children, "a CLI process leaked or was lost"
    assert set(engine.live_pids().values()) == pids, "disconnects must not kill processes"
    # asyncio tasks and file descriptors come back to where they were
    await wait_for(lambda: len(asyncio.all_tasks()) <= base_tasks, "tasks to finish", within=10)
    await wait_for(lambda: _fds() <= base_fds + 2, "file descriptors to close", within=10)
    # memory: the second 50 cost (about) nothing more than the first 50
    assert rss_second - rss_first < 20, (rss_first, rss_second)
    # no turn completed, so no reply was remembered; and every conversation still answers
    for name in names:
        info = await engine.describe(f"openai:h:{name}")
        assert info is not None and info.turns == 1 and not info.busy
        status, _, body = await gw.chat({"model": "sonnet", "messages": msgs(f"still {name}?")},
                                        headers={"X-Conversation-Id": name})
        assert status == 200 and body["choices"][0]["message"]["content"] == f"echo: still {name}?"
    waits = sorted(first + second)
    print(f"\n{2 * WAVE} clients hung up mid-stream in {elapsed:.1f} s"
          f" (first text after p50 {waits[len(waits) // 2]:.2f} s, max {waits[-1]:.2f} s);"
          f" tasks {base_tasks}->{len(asyncio.all_tasks())}, fds {base_fds}->{_fds()},"
          f" RSS {rss_first:.0f}->{rss_second:.0f} MB, CLI processes {len(pids)}->"
          f"{len(child_pids())}")


@pytest.mark.parametrize(
    ("caps", "on_disconnect"),
    [({"max_live_sessions": 1}, "interrupt"), ({"max_parallel_turns": 1}, "finish")],
    ids=["waiting-for-a-process-slot", "waiting-for-a-turn-slot-on_disconnect-finish"],
)
async def test_a_client_that_leaves_before_its_turn_starts_starts_no_process(
    caps: dict[str, int], on_disconnect: str, make_gateway: GatewayFactory,
    new_engine: EngineFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine is busy (one process or one turn at a time, a slow answer running); a
    streaming request waits for its turn and its client hangs up. It is withdrawn: no CLI
    process is started for it, the busy conversation's process is not evicted for it, and
    its prompt never reaches the model."""
    caplog.set_level(logging.INFO, logger="gateway")
    engine = await new_engine(**caps)
    gw = await make_gateway(engine, keepalive_seconds=0.3, on_disconnect=on_disconnect)
    gw.fake.script({"text": "busy answer " * 10, "chunk_delay": 0.5}, match="busy work")
    busy = asyncio.create_task(gw.chat({"model": "sonnet", "messages": msgs("busy work")},
                                       headers={"X-Conversation-Id": "busy"}))
    await wait_for(lambda: gw.saw("busy work"), "the busy turn to reach the model")
    busy_pid = engine.live_pids()["openai:h:busy"]
    before = child_pids()
    leaver = "openai:h:leaver"

    def waiting() -> bool:  # its worker holds it, waiting for a slot
        conv = engine._conversations.get(leaver)
        return conv is not None and conv.worker is not None and not conv.worker.done()

    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": msgs("leaver question"), "stream": True},
            headers={"X-Conversation-Id": "leaver"},
        ) as resp:
            assert resp.status == 200  # headers and keepalives while it waits
            await wait_for(waiting, "the request to wait in the engine")
            resp.close()
    assert not busy.done(), "the client must leave while the busy turn still runs"
    status, _, body = await asyncio.wait_for(busy, 30)
    assert status == 200 and "busy answer" in body["choices"][0]["message"]["content"]

    def settled() -> bool:
        conv = engine._conversations.get(leaver)
        return conv is None or ((conv.worker is None or conv.worker.done()) and not conv.pending)

    await wait_for(settled, "the withdrawn request's worker to end")
    assert leaver not in engine.live_pids(), "no CLI process was started for it"
    assert child_pids() == before, "no process started, none ended"
    assert engine.live_pids()["openai:h:busy"] == busy_pid, "the busy process was not evicted"
    assert gw.saw("leaver question") is None, "its prompt never reached the model"
    assert any("withdrawn" in r.getMessage() for r in caplog.records)
    info = await engine.describe("openai:h:busy")
    assert info is not None and info.turns == 1
