"""Memory stays flat: the gateway's RSS after one conversation against after many.

This gateway runs as its own process (``python -m gateway.cli``, a temporary config with
``max_live_sessions = 4``, so older conversations' CLI processes are evicted and only the
gateway's own bookkeeping can grow), with the real CLI against ``tests/fake_anthropic.py``
and the Telegram bridge against ``tests/fake_telegram.py``. Conversations take turns over
four frontends, each conversation its own key and two turns long:

* chat:      Chat Completions (``/v1/chat/completions``, streamed, ``X-Conversation-Id``);
* responses: the Responses API with ``store: true`` (streamed; the second turn names the
             first by ``previous_response_id``, so every conversation leaves stored
             responses behind);
* messages:  the Anthropic Messages API (``/v1/messages``, streamed, ``X-Conversation-Id``);
* telegram:  a private chat of its own (the messages go through the durable inbox).

The gateway's RSS (psutil, its CLI processes not counted) is read once its child processes
are quiet: after the first conversation, after the first round (one conversation of every
frontend: every code path has been used once) and after the last. Target (issue #23): within
10 MB after 100 conversations.

    .venv/bin/python bench/memory.py                       # 100 conversations, ~4 minutes
    .venv/bin/python bench/memory.py --conversations 20    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _common import FakeApiProcess, load_average, mb, quiesce, rss
from compare import MODEL_HTTP, Gateway, start_gateway

from tests.fake_anthropic import bundled_cli, cli_env
from tests.fake_telegram import FakeTelegram

KINDS = ("chat", "responses", "messages", "telegram")
FIRST_CHAT = 70_000
TIMEOUT = 60.0


async def _sse_text(response: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    """Read a streamed answer; returns the raw text and the last JSON event that had an
    ``id`` of a response (Responses API)."""
    if response.status_code != 200:
        body = (await response.aread()).decode(errors="replace")
        raise RuntimeError(f"HTTP {response.status_code}: {body[:200]}")
    parts: list[str] = []
    last: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        parts.append(line)
        event = json.loads(line[6:])
        if isinstance(event, dict) and isinstance(event.get("response"), dict):
            last = event["response"]
    return "\n".join(parts), last


class Driver:
    def __init__(self, gateway: Gateway, tg: FakeTelegram) -> None:
        self.base = gateway.base_url
        self.tg = tg
        self.http = httpx.AsyncClient(timeout=TIMEOUT)

    async def chat(self, n: int) -> None:
        messages: list[dict[str, str]] = []
        for turn in range(2):
            messages.append({"role": "user", "content": f"chat {n}, turn {turn}: hello"})
            async with self.http.stream(
                "POST", self.base + "/v1/chat/completions",
                headers={"X-Conversation-Id": f"mem-chat-{n}"},
                json={"model": MODEL_HTTP, "stream": True, "messages": messages},
            ) as response:
                raw, _ = await _sse_text(response)
            if "echo:" not in raw:
                raise RuntimeError(f"chat {n}: no answer")
            messages.append({"role": "assistant", "content": f"echo: chat {n}, turn {turn}:"
                             " hello"})

    async def responses(self, n: int) -> None:
        previous: str | None = None
        for turn in range(2):
            body: dict[str, Any] = {"model": MODEL_HTTP, "stream": True, "store": True,
                                    "input": f"responses {n}, turn {turn}: hello"}
            if previous:
                body["previous_response_id"] = previous
            async with self.http.stream("POST", self.base + "/v1/responses",
                                        json=body) as response:
                raw, last = await _sse_text(response)
            if last is None or not last.get("id"):
                raise RuntimeError(f"responses {n}: no response id in {raw[-200:]!r}")
            previous = str(last["id"])

    async def messages(self, n: int) -> None:
        messages: list[dict[str, str]] = []
        for turn in range(2):
            messages.append({"role": "user", "content": f"messages {n}, turn {turn}: hello"})
            async with self.http.stream(
                "POST", self.base + "/v1/messages",
                headers={"X-Conversation-Id": f"mem-messages-{n}",
                         "anthropic-version": "2023-06-01"},
                json={"model": MODEL_HTTP, "max_tokens": 256, "stream": True,
                      "messages": messages},
            ) as response:
                raw, _ = await _sse_text(response)
            if "echo:" not in raw:
                raise RuntimeError(f"messages {n}: no answer")
            messages.append({"role": "assistant", "content": f"echo: messages {n}, turn"
                             f" {turn}: hello"})

    async def telegram(self, n: int) -> None:
        chat = FIRST_CHAT + n
        for turn in range(2):
            text = f"telegram {n}, turn {turn}: hello"
            start = len(self.tg.calls)
            self.tg.user_text(chat, text)
            await self.tg.wait_for(
                lambda start=start, text=text: any(  # type: ignore[misc]
                    c.method == "sendMessage" and c.params.get("text") == f"echo: {text}"
                    for c in self.tg.calls[start:]),
                within=TIMEOUT, what=f"the answer in chat {chat}")

    async def close(self) -> None:
        await self.http.aclose()


async def main(args: argparse.Namespace) -> int:
    cli = args.cli or bundled_cli()
    load_before = load_average()
    readings: list[tuple[str, int]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cmg-bench-mem-") as tmp_name, \
            FakeApiProcess() as fake:
        tmp = Path(tmp_name)
        (tmp / "home").mkdir()
        env = cli_env(fake.base_url, str(tmp / "home"), api_timeout_ms=60000)
        async with FakeTelegram() as tg:
            users = [FIRST_CHAT + n for n in range(args.conversations)]
            extra = ("[telegram]\n"
                     f"base_url = {json.dumps(tg.base_url)}\n"
                     f"allowed_users = {json.dumps(users)}\n"
                     "poll_timeout = 30\n")
            gateway = await start_gateway(tmp, cli, env, max_live=4, parallel=4,
                                          extra_config=extra,
                                          extra_env={"TELEGRAM_BOT_TOKEN": tg.token})
            driver = Driver(gateway, tg)
            runs: dict[str, Callable[[int], Awaitable[None]]] = {
                "chat": driver.chat, "responses": driver.responses,
                "messages": driver.messages, "telegram": driver.telegram}
            try:
                await quiesce(limit=10)
                readings.append(("idle after start", rss(gateway.server_pid())))
                for n in range(args.conversations):
                    kind = KINDS[n % len(KINDS)]
                    await runs[kind](n)
                    done = n + 1
                    if done == 1 or done == len(KINDS) or done == args.conversations or (
                            done % 20 == 0):
                        await quiesce(limit=10)
                        readings.append((f"after {done} conversation{'s' * (done > 1)}",
                                         rss(gateway.server_pid())))
                        print(f"… {readings[-1][0]}: {mb(readings[-1][1])} MB",
                              file=sys.stderr, flush=True)
            finally:
                await driver.close()
                await gateway.stop()
    load_after = load_average()
    values = dict(readings)
    one = values["after 1 conversation"]
    first_round = values.get(f"after {len(KINDS)} conversations", one)
    last = readings[-1][1]
    print(f"## Gateway memory over {args.conversations} conversations"
          f" ({', '.join(KINDS)} in turn, 2 turns each, max_live_sessions = 4)\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load_before}"
          f" before, {load_after} after; {time.time() - started:.0f} s\n")
    print("| reading | gateway RSS MB |\n|---|--:|")
    for name, value in readings:
        print(f"| {name} | {value / 2**20:.1f} |")
    grow_one = (last - one) / 2**20
    grow_round = (last - first_round) / 2**20
    print(f"\n{readings[-1][0]} − after 1: **{grow_one:+.1f} MB**; − after the first round"
          f" (one of each frontend): **{grow_round:+.1f} MB**; target ≤ 10 MB:"
          f" {'met' if grow_one <= 10 else 'NOT met'}")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--cli", help="the Claude Code CLI (default: the bundled one)")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
