"""What a resent history costs a follow-up turn, for every dialect, side by side in one run.

Clients like OpenClaw resend the whole conversation on every request. The gateway continues
the same warm CLI session either way and sends the CLI only the new message, so the
difference between a follow-up carrying a tiny history and one carrying ~1 MB of it is the
gateway's own cost of reading what it already has (target: ≤ 1.25×).

One gateway process (`python -m gateway.cli`), the REAL Claude Code CLI against the fake
Anthropic API from tests/, one warm conversation per dialect. Each round measures, in a
rotating order after the machine has gone quiet:

* floor:  a follow-up of one warm streaming-input CLI driven over its pipes (no HTTP);
* for each dialect (chat: /v1/chat/completions, responses: /v1/responses with store
  false, messages: /v1/messages), streamed, no conversation key (automatic continuation):
  - tiny:   the body `[the conversation's real history (a few KB), new message]`,
            pre-serialised and sent by httpx as raw bytes, so no client library's cost is
            counted;
  - 1MB:    the same turn with ~1 MB of earlier messages in place of the first turn, in a
            second conversation of as many turns (so both CLI sessions hold as much): the
            gateway takes it for a compaction (the beginning replaced, the recent turns the
            session's own) and goes on in the same warm session, every message of the 1 MB
            read, fingerprinted and compared with the turn record; also raw bytes;
  - client: the tiny turn sent by the dialect's official client (`openai` chat or
            responses, `anthropic` messages), so the client library's own cost (building
            the request, parsing each event into its models) shows beside the raw figure.

Every turn checks that the gateway continued the conversation (the same X-Conversation-Id),
so nothing here measures a transcript seeding by mistake. Prints two Markdown tables:

* median (p95) time to the end of the reply, the 1 MB / tiny ratio against 1.25×, and each
  dialect's overhead over the floor against "10 % or 15 ms" for the raw and the client
  figures;
* CPU ms per turn of the gateway process and of this client (psutil, means): on a busy
  machine wall times wander, CPU times much less, and the client's column shows what a
  client library itself costs (the `openai` client parses every streamed event into its
  models: for /v1/responses that is most of the turn's CPU).

    .venv/bin/python bench/history_cost.py                 # ~2 minutes
    .venv/bin/python bench/history_cost.py --rounds 4      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (  # also puts the repository root on sys.path
    FakeApiProcess,
    Timing,
    TurnFailed,
    WarmCli,
    load_average,
    ms,
    quiesce,
    summary,
)
from compare import (
    MODEL_CLI,
    MODEL_HTTP,
    TURN_TIMEOUT,
    Gateway,
    MessagesGateway,
    ResponsesGateway,
    make_history,
    start_gateway,
)

from tests.fake_anthropic import bundled_cli, cli_env

DIALECTS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
VARIANTS = ("tiny", "1MB", "client")
RATIO_TARGET = 1.25


def request_body(dialect: str, messages: list[dict[str, str]]) -> bytes:
    """The JSON a client of ``dialect`` sends for ``messages`` (streamed)."""
    body: dict[str, Any] = {"model": MODEL_HTTP, "stream": True}
    if dialect == "chat":
        body["messages"] = messages
    elif dialect == "responses":
        body |= {"input": messages, "store": False}
    else:
        body |= {"messages": messages, "max_tokens": 1024}
    return json.dumps(body).encode()


def text_of(dialect: str, event: dict[str, Any]) -> str:
    """The answer text one streamed event of ``dialect`` carries ("" for none)."""
    if dialect == "chat":
        choices = event.get("choices") or [{}]
        return str((choices[0].get("delta") or {}).get("content") or "")
    if dialect == "responses":
        return str(event.get("delta") or "") if event.get("type") == (
            "response.output_text.delta") else ""
    delta = event.get("delta") or {}
    return str(delta.get("text") or "") if delta.get("type") == "text_delta" else ""


@dataclass
class Sample:
    """One measured turn, and the CPU seconds the gateway process and this client used."""

    total: float
    server_cpu: float
    client_cpu: float


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Conv:
    """One dialect's warm conversation: the turns it really had (user message, reply)."""

    dialect: str
    history: list[dict[str, str]] = field(default_factory=list)
    conversation_id: str | None = None
    turns: int = 0
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def messages(self, text: str, padding: list[dict[str, str]]) -> list[dict[str, str]]:
        """The request's messages: the real history, or ``padding`` in place of its first
        turn (a compaction), then the new message."""
        history = [*padding, *self.history[2:]] if padding else self.history
        return [*history, {"role": "user", "content": text}]

    def answered(self, text: str, reply: str) -> None:
        self.history += [{"role": "user", "content": text},
                         {"role": "assistant", "content": reply}]

    def continued(self, conversation_id: str | None) -> None:
        if conversation_id is None:
            raise TurnFailed("no X-Conversation-Id header in the response")
        if self.conversation_id is not None and conversation_id != self.conversation_id:
            raise TurnFailed(f"{self.dialect}: the gateway started {conversation_id} instead"
                             f" of continuing {self.conversation_id}")
        self.conversation_id = conversation_id


async def raw_turn(http: httpx.AsyncClient, base_url: str, conv: Conv, body: bytes
                   ) -> tuple[str, Timing]:
    """Send pre-built bytes, read the stream to its end; (reply text, timing)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if conv.dialect == "messages":
        headers["anthropic-version"] = "2023-06-01"
    parts: list[str] = []
    ttft: float | None = None
    started = time.perf_counter()
    async with http.stream("POST", base_url + PATHS[conv.dialect], content=body,
                           headers=headers) as response:
        if response.status_code != 200:
            raise TurnFailed(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        conv.continued(response.headers.get("x-conversation-id"))
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            piece = text_of(conv.dialect, json.loads(line[6:]))
            if piece:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                parts.append(piece)
    total = time.perf_counter() - started
    reply = "".join(parts)
    if not reply.strip():
        raise TurnFailed(f"{conv.dialect}: empty reply")
    return reply, Timing(ttft, total)


async def main(args: argparse.Namespace) -> int:
    cli = args.cli or bundled_cli()
    padding = make_history(args.history_kb * 1024)  # user, assistant, ..., assistant
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="cmg-history-") as tmp_name, FakeApiProcess() as fake:
        tmp = Path(tmp_name)
        for sub in ("home", "work-floor"):
            (tmp / sub).mkdir()
        env = cli_env(fake.base_url, str(tmp / "home"), api_timeout_ms=60000)
        gateway = await start_gateway(tmp, cli, env, max_live=6, parallel=4, name="gateway")
        clients: dict[str, Gateway] = {
            "chat": gateway,
            "responses": ResponsesGateway("responses", gateway.base_url, gateway.proc,
                                          gateway.log_path),
            "messages": MessagesGateway("messages", gateway.base_url, gateway.proc,
                                        gateway.log_path),
        }
        floor = await WarmCli(cli, env, tmp / "work-floor", MODEL_CLI).start()
        floor_samples: list[Sample] = []
        server, me = psutil.Process(gateway.proc.pid), psutil.Process()
        convs = {d: Conv(d) for d in DIALECTS}  # tiny and client turns; samples
        #: the 1 MB turns: a conversation of their own, so each keeps one consistent history
        bigs = {d: Conv(d) for d in DIALECTS}
        try:
            async with httpx.AsyncClient(timeout=TURN_TIMEOUT) as http:
                await floor.turn("Hello: let us talk.")
                for which, conv in [*(("", c) for c in convs.values()),
                                    *(("1 MB ", c) for c in bigs.values())]:
                    for k in range(3):  # three turns, not measured
                        text = (f"Hello from {conv.dialect} {which}turn {k}: let us talk about"
                                " Lisbon.")
                        body = request_body(conv.dialect, conv.messages(text, []))
                        reply, _ = await raw_turn(http, gateway.base_url, conv, body)
                        conv.answered(text, reply)

                async def dialect_turn(dialect: str, variant: str) -> Timing:
                    conv = (bigs if variant == "1MB" else convs)[dialect]
                    conv.turns += 1
                    text = f"Turn {conv.turns}: and what about tomorrow?"
                    if variant == "client":
                        messages = conv.messages(text, [])
                        reply, timing, cid = await clients[conv.dialect]._request(messages)
                        conv.continued(cid)
                    else:
                        body = request_body(conv.dialect, conv.messages(
                            text, padding if variant == "1MB" else []))
                        reply, timing = await raw_turn(http, gateway.base_url, conv, body)
                    conv.answered(text, reply)
                    return timing

                jobs: list[tuple[str, Callable[[], Awaitable[Timing]], list[Sample]]] = [
                    ("floor", lambda: floor.turn("And what about tomorrow?"), floor_samples)]
                for conv in convs.values():
                    for variant in VARIANTS:
                        jobs.append((f"{conv.dialect} {variant}",
                                     lambda d=conv.dialect, v=variant: dialect_turn(d, v),
                                     conv.samples.setdefault(variant, [])))
                for r in range(args.rounds):
                    k = r % len(jobs)
                    for _, turn, into in jobs[k:] + jobs[:k]:
                        await quiesce()
                        server_before, client_before = cpu_seconds(server), cpu_seconds(me)
                        timing = await asyncio.wait_for(turn(), TURN_TIMEOUT)
                        into.append(Sample(timing.total, cpu_seconds(server) - server_before,
                                           cpu_seconds(me) - client_before))
                    print(f"… round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        finally:
            await floor.stop()
            for client in clients.values():
                await client.stop()
    print(report(floor_samples, convs, args, load_before, len(request_body(
        "chat", convs["chat"].messages("x", padding)))))
    return 0


def report(floor: list[Sample], convs: dict[str, Conv], args: argparse.Namespace,
           load_before: tuple[float, float, float], big_bytes: int) -> str:
    def med(samples: list[Sample]) -> float:
        return float(summary([t.total for t in samples])["median"])

    def cell(samples: list[Sample]) -> str:
        s = summary([t.total for t in samples])
        return f"{ms(s['median'])} ({ms(s['p95'])})"

    def cpu(samples: list[Sample], who: str) -> str:
        values = [t.server_cpu if who == "server" else t.client_cpu for t in samples]
        return ms(sum(values) / len(values))

    floor_med = med(floor)
    allowed = max(0.10 * floor_med, 0.015)
    lines = [
        f"{args.rounds} rounds; 1 MB body = {big_bytes / 1e6:.2f} MB"
        f" ({args.history_kb} KB of history text); load average {load_before[0]} before;"
        f" floor follow-up {cell(floor)} ms; overhead allowed {allowed * 1000:.1f} ms"
        " (10 % of the floor or 15 ms).",
        "",
        "| dialect | tiny, raw bytes | 1 MB, raw bytes | 1 MB / tiny (≤ 1.25×) "
        "| raw over floor | official client | client over floor |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for dialect, conv in convs.items():
        tiny, big, client = (med(conv.samples[v]) for v in VARIANTS)
        ratio = big / tiny
        raw_over, client_over = tiny - floor_med, client - floor_med
        lines.append(
            f"| {dialect} | {cell(conv.samples['tiny'])} | {cell(conv.samples['1MB'])}"
            f" | {ratio:.2f}× {'yes' if ratio <= RATIO_TARGET else '**no**'}"
            f" | {raw_over * 1000:+.1f} ms {'yes' if raw_over <= allowed else '**no**'}"
            f" | {cell(conv.samples['client'])}"
            f" | {client_over * 1000:+.1f} ms {'yes' if client_over <= allowed else '**no**'} |")
    lines += [
        "",
        "Times: median (p95) ms to the end of the reply. CPU ms per turn (means; the kernel"
        " counts in 10 ms ticks), of the gateway process and of this client:",
        "",
        "| dialect | gateway CPU: tiny | 1 MB | official client | client CPU: raw tiny | 1 MB "
        "| official client |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for dialect, conv in convs.items():
        lines.append(f"| {dialect} | " + " | ".join(
            cpu(conv.samples[v], who) for who in ("server", "client") for v in VARIANTS) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="turns per figure (default 12)")
    parser.add_argument("--history-kb", type=int, default=1000,
                        help="history text between the first message and the reply (1000)")
    parser.add_argument("--cli", default="", help="CLI to measure (default: the bundled one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
