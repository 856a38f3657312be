"""Load: 50 concurrent chat requests over 10 conversations with at most 4 live CLI processes.

Real engine, real bundled CLI, fake Anthropic API (each answer takes 0.2 s upstream). The
gateway is configured with a small per-conversation queue (3) and 40 requests at once, so
both limits are hit: every request either completes with its own answer, or gets 503 (or
429) with ``Retry-After``; nothing hangs (the whole run is bounded), no answer goes to the
wrong conversation, every completed turn is recorded, and after the run each of the 10
conversations continues with its history although only 4 processes were ever alive at once.
p50/p99 latencies are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.engine import TurnResult
from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory, child_pids, collect
from tests.test_api_routes import (
    GatewayFactory,
    msgs,
)

pytestmark = pytest.mark.cli

# fixtures of tests/test_api_routes.py: the API over a real engine
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine

REQUESTS = 50
CONVERSATIONS = 10
MAX_LIVE = 4
QUEUE = 3
ADMITTED = 40


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def test_fifty_concurrent_requests_over_ten_conversations(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine(max_live_sessions=MAX_LIVE, max_queued_per_conversation=QUEUE)
    gw = await make_gateway(engine, max_concurrent_requests=ADMITTED, keepalive_seconds=30.0)
    before = child_pids()
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(child_pids() - before))
            await asyncio.sleep(0.05)

    async def one(session: aiohttp.ClientSession, i: int) -> dict[str, Any]:
        conversation = f"load{i % CONVERSATIONS}"
        text = f"request {i} of {conversation}"
        gw.fake.script({"text": f"answer to {text}", "delay": 0.2}, match=text)
        started = time.monotonic()
        stream = i % 2 == 0
        async with session.post(
            gw.url + "/v1/chat/completions",
            json={"model": "sonnet", "messages": msgs(text), "stream": stream},
            headers={"X-Conversation-Id": conversation},
        ) as resp:
            raw = await resp.read()
            return {"i": i, "conversation": conversation, "status": resp.status,
                    "retry_after": resp.headers.get("Retry-After"), "raw": raw,
                    "seconds": time.monotonic() - started, "stream": stream,
                    "conversation_header": resp.headers.get("X-Conversation-Id")}

    watcher = asyncio.ensure_future(watch())
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=REQUESTS)
        ) as session:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(session, i) for i in range(REQUESTS))), 240)
    finally:
        watcher.cancel()
    wall = time.monotonic() - started

    statuses = Counter(r["status"] for r in results)
    ok = [r for r in results if r["status"] == 200]
    for r in results:
        assert r["status"] in (200, 429, 503), r
        if r["status"] != 200:
            body = json.loads(r["raw"])
            assert body["error"]["code"] in ("server_busy", "conversation_busy"), body
            assert r["retry_after"] and int(r["retry_after"]) >= 1, r
            continue
        assert r["conversation_header"] == f"h:{r['conversation']}"
        text = f"request {r['i']} of {r['conversation']}"
        if r["stream"]:
            assert r["raw"].rstrip().endswith(b"data: [DONE]")
            assert f"answer to {text}".encode() in r["raw"].replace(b'"}', b"")
        else:
            assert json.loads(r["raw"])["choices"][0]["message"]["content"] == f"answer to {text}"
    assert len(ok) >= REQUESTS // 2, statuses
    assert peak <= MAX_LIVE, f"{peak} CLI processes alive at once"

    # every completed turn was recorded in its own conversation
    per_conversation = Counter(r["conversation"] for r in ok)
    for name, count in per_conversation.items():
        info = await engine.describe(f"openai:h:{name}")
        assert info is not None and info.turns == count, (name, count, info)

    # and each conversation continues with its history (most were evicted and resumed)
    for n in range(CONVERSATIONS):
        name = f"load{n}"
        earlier = [r for r in ok if r["conversation"] == name]
        status, _, body = await gw.chat({"model": "sonnet", "messages": msgs(f"recap {name}")},
                                        headers={"X-Conversation-Id": name})
        assert status == 200, body
        seen = json.dumps(gw.seen(f"recap {name}")["messages"])
        for r in earlier:
            assert f"request {r['i']} of {name}" in seen, (name, r["i"])

    latencies = [r["seconds"] for r in ok]
    print(
        f"\nload: {REQUESTS} concurrent requests, {CONVERSATIONS} conversations,"
        f" max_live_sessions={MAX_LIVE}, queue {QUEUE}/conversation, {ADMITTED} admitted:"
        f" {dict(statuses)} in {wall:.1f} s; completed p50 {_percentile(latencies, 50):.2f} s,"
        f" p99 {_percentile(latencies, 99):.2f} s, mean {statistics.mean(latencies):.2f} s;"
        f" peak {peak} CLI processes"
    )


FAKE_CLI = str(Path(__file__).parent / "fake_cli.py")


async def test_waiting_for_a_process_slot_does_not_starve_the_owners(
    make_engine: EngineFactory,
) -> None:
    """One process and one parallel turn, two conversations with two turns each, all sent
    at once: the conversation waiting for the process must not hold the only turn slot
    while the process's owner waits for that slot to run its queued turn (a deadlock)."""
    engine = await make_engine(cli_path=FAKE_CLI, max_live_sessions=1, max_parallel_turns=1,
                               spare_processes=0)
    turns = [collect(engine, f"lk:{c}", f"{c} turn {n}") for n in (1, 2) for c in "ab"]
    results = await asyncio.wait_for(asyncio.gather(*turns), 30)
    for events in results:
        assert isinstance(events[-1], TurnResult), events[-1]
    assert sorted(r[-1].text for r in results if isinstance(r[-1], TurnResult)) == [
        "fake: a turn 1", "fake: a turn 2", "fake: b turn 1", "fake: b turn 2"]
