"""What a resent history and a new conversation cost the gateway, for every dialect, side
by side with driving the CLI directly, in one run, with requests sent as raw bytes.

Clients like OpenClaw resend the whole conversation on every request. The gateway continues
the same warm CLI session either way and sends the CLI only the new message, so the
difference between a follow-up carrying a tiny history and one carrying ~1 MB of it is the
gateway's own cost of reading what it already has (target: ≤ 1.25×). A new conversation
has no warm session yet: the gateway hands it a pre-started spare CLI, which is what the
floor does best too (targets: a first turn ≤ the floor + 15 ms; a new conversation carrying
a 200 KB history ≤ the floor + 30 %).

One gateway process (`python -m gateway.cli`), the REAL Claude Code CLI against the fake
Anthropic API from tests/. Every gateway request is streamed, carries no conversation key
(the gateway's automatic continuation decides), and is pre-serialised and sent by httpx as
raw bytes, so no client library's CPU is counted, unless said otherwise. The dialects:
chat (/v1/chat/completions), responses (/v1/responses with store false), messages
(/v1/messages). Three parts (``--parts``, default all):

* followup: one warm conversation per dialect; each round measures
  - floor:  a follow-up of one warm streaming-input CLI driven over its pipes (no HTTP);
  - tiny:   the body `[the conversation's real history (a few KB), new message]`;
  - 1MB:    the same turn with ~1 MB of earlier messages in place of the first turn, in a
            second conversation of as many turns (so both CLI sessions hold as much): the
            gateway takes it for a compaction (the beginning replaced, the recent turns the
            session's own) and goes on in the same warm session, every message of the 1 MB
            read, fingerprinted and compared with the turn record;
  - client: the tiny turn sent by the dialect's official client (`openai` chat or
            responses, `anthropic` messages), so the client library's own cost (building
            the request, parsing each event into its models) shows beside the raw figure.
  Every turn checks that the gateway continued the conversation (the same
  X-Conversation-Id), so nothing here measures a transcript seeding by mistake.
* first:  a new conversation: one user message, a new text each time;
* 200KB:  a new conversation whose body carries ~200 KB of earlier messages
  (``--new-history-kb``) and then the question.
  The floor of both is compare.py's: a pre-started CLI (the first turn's text, or the
  history written as one transcript prompt before the question), closed after its turn so
  the CLIs do not pile up. Before each turn the gateway has a spare CLI ready too (the
  report counts the turns measured without one), and its max_live_sessions leaves room for
  every conversation the run opens and the spare, so none pays an eviction. Each gateway
  turn checks that it opened a conversation no earlier turn had. One unmeasured warm-up
  round first; a failed measured turn is counted and its error printed, the run goes on.

How the clock runs: every turn, of the floor and of each dialect, takes its place in one
rotating order (each round starts one job further), after the machine's child processes
have gone quiet (bench/_common.py quiesce) and, for a new conversation, after the spares
are ready. A turn's time runs from sending the request (or writing the CLI's stdin) to the
end of the reply, its TTFT to the first answer text; building the body is not counted.

Prints Markdown tables:

* follow-ups: median (p95) time to the end of the reply, the 1 MB / tiny ratio against
  1.25×, and each dialect's overhead over the floor against "10 % or 15 ms" for the raw
  and the client figures; then CPU ms per turn of the gateway process and of this client
  (psutil, means): on a busy machine wall times wander, CPU times much less, and the
  client's column shows what a client library itself costs (the `openai` client parses
  every streamed event into its models: for /v1/responses that is most of the turn's CPU);
* new conversations: per part and dialect, median (p95) total time and TTFT, the floor's,
  the overhead over the floor (ms and %) against its target, and the gateway process's CPU
  ms per turn.

    .venv/bin/python bench/history_cost.py                       # all, ~4 minutes
    .venv/bin/python bench/history_cost.py --parts first 200KB   # new conversations, ~3 min
    .venv/bin/python bench/history_cost.py --rounds 4 --new-rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (  # also puts the repository root on sys.path
    FakeApiProcess,
    Timing,
    TurnFailed,
    load_average,
    ms,
    quiesce,
    summary,
)
from compare import (
    MODEL_HTTP,
    TURN_TIMEOUT,
    Floor,
    Gateway,
    MessagesGateway,
    ResponsesGateway,
    failure,
    make_history,
    start_gateway,
)

from tests.fake_anthropic import bundled_cli, cli_env

DIALECTS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
VARIANTS = ("tiny", "1MB", "client")
RATIO_TARGET = 1.25
PARTS = ("followup", "first", "200KB")
NEW_PARTS = ("first", "200KB")  # new conversations, against the floor's pre-started CLI
FIRST_MARGIN = 0.015  # a first turn: ≤ the floor + 15 ms
HISTORY_FACTOR = 1.30  # a new conversation with the 200 KB history: ≤ the floor + 30 %
LABELS = {"floor": "floor: pre-started CLI"}


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
    """One measured turn, and the CPU seconds the gateway process and this client used
    (``error``: why the turn failed; its times are then NaN)."""

    total: float
    server_cpu: float
    client_cpu: float
    ttft: float | None = None
    error: str | None = None


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


@dataclass
class Job:
    """One turn of a rotation: ``ready`` runs before the machine goes quiet, then ``turn``
    is measured into ``into``."""

    turn: Callable[[], Awaitable[Timing]]
    into: list[Sample]
    ready: Callable[[], Awaitable[None]] | None = None
    #: its turns share nothing (a new conversation each), so a failed one is a figure of the
    #: run and the run goes on; a failed follow-up stops it (its conversation is broken)
    independent: bool = False


async def rotate(jobs: list[Job], rounds: int, server: psutil.Process, label: str, *,
                 keep: bool = True) -> None:
    """``rounds`` rounds of every job, each round starting one job further, every turn
    after the machine has gone quiet. ``keep`` false: a warm-up, nothing recorded, and any
    failure stops the run (as a failed set-up turn does)."""
    me = psutil.Process()
    for r in range(rounds):
        k = r % len(jobs)
        for job in jobs[k:] + jobs[:k]:
            if job.ready is not None:
                await job.ready()
            await quiesce()
            server_before, client_before = cpu_seconds(server), cpu_seconds(me)
            try:
                timing = await asyncio.wait_for(job.turn(), TURN_TIMEOUT)
            except Exception as exc:
                if not (keep and job.independent):
                    raise
                job.into.append(Sample(math.nan, math.nan, math.nan, error=failure(exc)))
                continue
            if keep:
                job.into.append(Sample(timing.total, cpu_seconds(server) - server_before,
                                       cpu_seconds(me) - client_before, timing.ttft))
        print(f"… {label} round {r + 1}/{rounds}", file=sys.stderr, flush=True)


def question(scenario: str, who: str, n: int) -> str:
    """A new conversation's message: a new text each time, so none continues another."""
    if scenario == "first":
        return f"Hello! This is new conversation number {n} ({who}). Who are you?"
    return f"Question {n} ({who}): summarise our conversation so far."


async def main(args: argparse.Namespace) -> int:
    cli = args.cli or bundled_cli()
    padding = make_history(args.history_kb * 1024)  # user, assistant, ..., assistant
    history = make_history(args.new_history_kb * 1024)  # what a "200KB" conversation carries
    new_parts = [p for p in NEW_PARTS if p in args.parts]
    # room for every conversation the run opens (the HTTP clients cannot close one) and the
    # spare, as compare.py sizes it: a new conversation finding the pool full would have no
    # spare and pay an eviction and a cold CLI start
    max_live = (2 * len(DIALECTS) * ("followup" in args.parts)
                + len(DIALECTS) * len(new_parts) * (1 + args.new_rounds) + 2)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="cmg-history-") as tmp_name, FakeApiProcess() as fake:
        tmp = Path(tmp_name)
        for sub in ("home", "work-floor"):
            (tmp / sub).mkdir()
        env = cli_env(fake.base_url, str(tmp / "home"), api_timeout_ms=60000)
        gateway = await start_gateway(tmp, cli, env, max_live=max_live, parallel=4,
                                      name="gateway")
        clients: dict[str, Gateway] = {
            "chat": gateway,
            "responses": ResponsesGateway("responses", gateway.base_url, gateway.proc,
                                          gateway.log_path),
            "messages": MessagesGateway("messages", gateway.base_url, gateway.proc,
                                        gateway.log_path),
        }
        floor = Floor(cli, env, tmp / "work-floor")  # pre-started spares, closed after use
        floor_samples: list[Sample] = []
        server = psutil.Process(gateway.proc.pid)
        convs = {d: Conv(d) for d in DIALECTS}  # tiny and client turns; samples
        #: the 1 MB turns: a conversation of their own, so each keeps one consistent history
        bigs = {d: Conv(d) for d in DIALECTS}
        #: (scenario, "floor" or dialect): the new conversations' samples
        new_samples: dict[tuple[str, str], list[Sample]] = {}
        try:
            async with httpx.AsyncClient(timeout=TURN_TIMEOUT) as http:
                if "followup" in args.parts:
                    warm, _ = await floor.new("Hello: let us talk.")
                    for which, conv in [*(("", c) for c in convs.values()),
                                        *(("1 MB ", c) for c in bigs.values())]:
                        for k in range(3):  # three turns, not measured
                            text = (f"Hello from {conv.dialect} {which}turn {k}: let us talk"
                                    " about Lisbon.")
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

                    jobs = [Job(partial(floor.follow, warm, "And what about tomorrow?"),
                                floor_samples)]
                    for conv in convs.values():
                        for variant in VARIANTS:
                            jobs.append(Job(partial(dialect_turn, conv.dialect, variant),
                                            conv.samples.setdefault(variant, [])))
                    await rotate(jobs, args.rounds, server, "follow-up")
                if new_parts:
                    seen = {c.conversation_id for c in [*convs.values(), *bigs.values()]}
                    numbers = itertools.count()

                    async def floor_new(scenario: str) -> Timing:
                        proc, timing = await floor.new(
                            question(scenario, "floor", next(numbers)),
                            history if scenario == "200KB" else None)
                        await floor.close(proc)  # so new conversations do not pile up CPU
                        return timing

                    async def gateway_new(dialect: str, scenario: str) -> Timing:
                        conv = Conv(dialect)
                        body = request_body(dialect, conv.messages(
                            question(scenario, dialect, next(numbers)),
                            history if scenario == "200KB" else []))
                        _, timing = await raw_turn(http, gateway.base_url, conv, body)
                        if conv.conversation_id in seen:
                            raise TurnFailed(f"{dialect}: the gateway continued"
                                             f" {conv.conversation_id} instead of opening a new"
                                             " conversation")
                        seen.add(conv.conversation_id)
                        return timing

                    new_jobs: list[Job] = []
                    for scenario in new_parts:
                        new_jobs.append(Job(partial(floor_new, scenario),
                                            new_samples.setdefault((scenario, "floor"), []),
                                            floor.ready_for_new, independent=True))
                        for dialect in DIALECTS:
                            new_jobs.append(Job(partial(gateway_new, dialect, scenario),
                                                new_samples.setdefault((scenario, dialect), []),
                                                gateway.ready_for_new, independent=True))
                    await rotate(new_jobs, 1, server, "new conversations, warm-up", keep=False)
                    gateway.without_spare = 0  # count the measured turns only
                    await rotate(new_jobs, args.new_rounds, server, "new conversations")
        finally:
            await floor.stop()
            for client in clients.values():
                await client.stop()
    sections = [f"Load average {load_before[0]} before (1 min); parts: {', '.join(args.parts)}."]
    if "followup" in args.parts:
        sections.append(report(floor_samples, convs, args, len(request_body(
            "chat", convs["chat"].messages("x", padding)))))
    if new_parts:
        sections.append(new_report(new_samples, new_parts, args, gateway.without_spare,
                                   len(request_body("chat", Conv("chat").messages("x", history)))))
    print("\n\n".join(sections))
    return 0


def ok(samples: list[Sample]) -> list[Sample]:
    return [t for t in samples if t.error is None]


def med(samples: list[Sample]) -> float:
    return float(summary([t.total for t in ok(samples)])["median"])


def cell(samples: list[Sample], what: str = "total") -> str:
    """Median (p95) ms of the turns' ``what`` (total or ttft)."""
    s = summary([v for t in ok(samples) if (v := getattr(t, what)) is not None])
    return f"{ms(s['median'])} ({ms(s['p95'])})"


def cpu(samples: list[Sample], who: str) -> str:
    values = [t.server_cpu if who == "server" else t.client_cpu for t in ok(samples)]
    return ms(sum(values) / len(values)) if values else "—"


def report(floor: list[Sample], convs: dict[str, Conv], args: argparse.Namespace,
           big_bytes: int) -> str:
    floor_med = med(floor)
    allowed = max(0.10 * floor_med, 0.015)
    lines = [
        f"Follow-ups: {args.rounds} rounds; 1 MB body = {big_bytes / 1e6:.2f} MB"
        f" ({args.history_kb} KB of history text); floor follow-up {cell(floor)} ms;"
        f" overhead allowed {allowed * 1000:.1f} ms (10 % of the floor or 15 ms).",
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


def new_report(samples: dict[tuple[str, str], list[Sample]], parts: list[str],
               args: argparse.Namespace, without_spare: int, history_bytes: int) -> str:
    """The new conversations' table: each dialect against the floor's pre-started CLI."""
    titles = {"first": "first turn", "200KB": f"{args.new_history_kb} KB history"}
    lines = [
        f"New conversations: {args.new_rounds} rounds after an unmeasured warm-up round, the"
        " floor (a pre-started CLI, given the history as a transcript) and every dialect in"
        f" one rotation; the {args.new_history_kb} KB history's body ="
        f" {history_bytes / 1e6:.2f} MB; gateway turns measured with no spare CLI ready:"
        f" {without_spare}.",
        "",
        "| scenario | system | n | errors | total | TTFT | over the floor | goal | met "
        "| gateway CPU ms/turn |",
        "|---|---|--:|--:|--:|--:|--:|---|:-:|--:|",
    ]
    failures: Counter[str] = Counter()
    for scenario in parts:
        floor_med = med(samples[(scenario, "floor")])
        if scenario == "first":
            allowed, goal = FIRST_MARGIN, f"≤ floor + {FIRST_MARGIN * 1000:.0f} ms"
        else:
            allowed = floor_med * (HISTORY_FACTOR - 1)
            goal = f"≤ floor × {HISTORY_FACTOR:.2f} (+{allowed * 1000:.1f} ms)"
        for system in ("floor", *DIALECTS):
            mine = samples[(scenario, system)]
            errors = [t.error for t in mine if t.error is not None]
            failures.update(f"{titles[scenario]}, {system}: {error}" for error in errors)
            row = (f"| {titles[scenario]} | {LABELS.get(system, system)} | {len(mine)}"
                   f" | {len(errors)} | {cell(mine)} | {cell(mine, 'ttft')}")
            over = med(mine) - floor_med
            if system == "floor":
                row += " | | | | |"
            elif math.isnan(over):
                row += f" | — | {goal} | — | {cpu(mine, 'server')} |"
            else:
                row += (f" | {over * 1000:+.1f} ms ({over / floor_med * 100:+.0f} %) | {goal}"
                        f" | {'yes' if over <= allowed and not errors else '**no**'}"
                        f" | {cpu(mine, 'server')} |")
            lines.append(row)
    lines += ["", "Times: median (p95) ms to the end of the reply and to the first answer"
              " token; over the floor: the medians' difference. CPU: the gateway process's"
              " (mean; the kernel counts in 10 ms ticks). A figure with failed turns does not"
              " meet its target."]
    if failures:
        lines += ["", "Failed turns:", *(f"- {n}× {what}" for what, n in failures.items())]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="turns per figure (default 12)")
    parser.add_argument("--history-kb", type=int, default=1000,
                        help="history text between the first message and the reply (1000)")
    parser.add_argument("--new-rounds", type=int, default=8,
                        help="samples per new-conversation figure per dialect (default 8)")
    parser.add_argument("--new-history-kb", type=int, default=200,
                        help="history text a new conversation of the 200KB part carries (200)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default all)")
    parser.add_argument("--cli", default="", help="CLI to measure (default: the bundled one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
