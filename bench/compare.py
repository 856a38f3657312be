"""This gateway against the Node proxy `claude-max-api-proxy@1.0.0`, side by side in one run.

Every system runs the REAL Claude Code CLI (the one bundled with claude-agent-sdk, or --cli)
against the fake Anthropic API from tests/ (zero first-token latency and no delay between
tokens unless asked), so what is measured is the cost of the CLI and of the code around it:

* floor:   one warm streaming-input CLI process per conversation, driven directly over its
           pipes (no SDK, no HTTP); for a new conversation, a pre-started one;
* spawn:   a fresh `claude -p [--resume <id>]` process for every turn, prompt on stdin;
* node:    claude-max-api-proxy@1.0.0, installed from npm into a temporary folder and run with
           the same CLI first on its PATH; it spawns `claude --print` per request and re-sends
           the whole conversation in one argument;
* gateway: this gateway as its own process (`python -m gateway.cli` with a temporary
           config), over HTTP with the official `openai` client. The HTTP clients send the
           whole history on every turn, as OpenClaw does, and no conversation key: the
           gateway's automatic continuation finds the session;
* responses: the same gateway (a second process) over the OpenAI Responses API
           (`/v1/responses`, the `openai` client's `responses.create`, streamed,
           `store: false`, the whole history every turn as OpenClaw sends it);
* messages: the same gateway (a third process) over the Anthropic Messages API
           (`/v1/messages`, the `anthropic` client's `messages.create`, streamed, the
           whole history every turn, no conversation key).

Scenarios, interleaved (each turn of each system in a rotating order, after the machine's
child processes have gone quiet):

* first:      the first turn of a new conversation;
* followup:   turns 2-10 of 10-turn conversations;
* concurrent: 8 conversations sending a follow-up at the same moment;
* history:    a new conversation whose request carries a 200 KB history.

Figures: time to the first answer token (TTFT) and to the end of the reply, errors, RSS of
the server process and of its CLI processes (psutil), the gateway's idle RSS (no voice
model is loaded unless a voice request arrives). Prints a Markdown report and writes it with
every raw sample to bench/results/compare-<time>.json (and .md); bench/results/ is
git-ignored, the README keeps the table of record. Each gateway gets a ``max_live_sessions``
with room for every conversation the run opens and its spare; a new conversation measured
while a gateway had no spare ready anyway is counted at the top of the report (a full pool
has none: such a turn pays an eviction and a cold CLI start).

The cost of a resent history per dialect (tiny vs ~1 MB, raw bytes vs the official client),
and first turns and 200 KB new conversations with raw bytes (no client library's CPU in the
gateway's figure), are measured apart, by bench/history_cost.py.

    .venv/bin/python bench/compare.py                  # the full run, ~4 minutes
    .venv/bin/python bench/compare.py --quick          # fewer turns, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import psutil
from _common import (  # also puts the repository root on sys.path
    ROOT,
    FakeApiProcess,
    Timing,
    TurnFailed,
    WarmCli,
    cpu_split,
    descendants,
    free_port,
    load_average,
    mb,
    ms,
    quiesce,
    rss,
    spawn_turn,
    summary,
    tree_rss,
)
from openai.types.responses import ResponseTextDeltaEvent

from tests.fake_anthropic import bundled_cli, cli_env

NODE_PROXY = "claude-max-api-proxy@1.0.0"
MODEL_HTTP = "claude-sonnet-4"  # what the HTTP clients ask for
MODEL_CLI = "sonnet"  # what both proxies turn it into on the CLI's command line
SYSTEMS = ("floor", "spawn", "node", "gateway", "responses", "messages")
LABELS = {
    "floor": "floor: warm CLI, direct",
    "spawn": "claude -p --resume per turn",
    "node": "Node claude-max-api-proxy 1.0.0",
    "gateway": "this gateway (HTTP, openai)",
    "responses": "this gateway (/v1/responses)",
    "messages": "this gateway (/v1/messages)",
}
SCENARIOS = {
    "first": "first turn of a new conversation",
    "followup": "follow-up turn (turns 2-10)",
    "concurrent": "8 conversations at once",
    "history": "new conversation with a 200 KB history",
}
TURN_TIMEOUT = 120.0
T = TypeVar("T")


@dataclass
class Sample:
    scenario: str
    system: str
    ttft: float | None
    total: float | None
    error: str | None = None
    #: CPU seconds every process of the run used for this turn (fake API and client included)
    cpu: float | None = None
    #: the same by group: cli, server (gateway or node), fake_api, client (this process)
    cpu_parts: dict[str, float] | None = None


@dataclass
class Peak:
    """Largest RSS seen for one system while a scenario ran."""

    server: int = 0
    cli_total: int = 0
    cli_count: int = 0

    def update(self, server: int, cli: int, count: int) -> None:
        self.server = max(self.server, server)
        if cli > self.cli_total:
            self.cli_total, self.cli_count = cli, count


# =========================================================================== systems


class System:
    """A system under test: conversations it can open and continue."""

    name = ""

    async def new(self, text: str, history: list[dict[str, str]] | None = None
                  ) -> tuple[Any, Timing]:
        raise NotImplementedError

    async def follow(self, conv: Any, text: str) -> Timing:
        raise NotImplementedError

    async def ready_for_new(self) -> None:
        """Wait for whatever a new conversation is meant to find ready (pre-started processes)."""

    async def close(self, conv: Any) -> None:
        """Forget a conversation (free what it holds, where the system allows it)."""

    def server_pid(self) -> int | None:
        return None

    def cli_pids(self) -> list[int]:
        return []

    async def stop(self) -> None:
        pass


def transcript(history: list[dict[str, str]], question: str) -> str:
    """A history as one message, for the systems that have no history of their own."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in history]
    return ("<conversation_history>\n" + "\n\n".join(lines) + "\n</conversation_history>\n\n"
            + question)


class Floor(System):
    name = "floor"

    def __init__(self, cli: str, env: dict[str, str], cwd: Path) -> None:
        self.cli, self.env, self.cwd = cli, env, cwd
        self.spares: list[WarmCli] = []
        self.live: set[WarmCli] = set()
        self._refill: asyncio.Task[None] | None = None

    def _make(self) -> WarmCli:
        return WarmCli(self.cli, self.env, self.cwd, MODEL_CLI)

    async def _start_spare(self) -> None:
        self.spares.append(await self._make().start())

    async def ready_for_new(self) -> None:
        if self._refill is not None:
            await self._refill
            self._refill = None
        if not self.spares:
            await self._start_spare()

    async def new(self, text: str, history: list[dict[str, str]] | None = None
                  ) -> tuple[WarmCli, Timing]:
        had_spare = bool(self.spares)
        proc = self.spares.pop(0) if had_spare else await self._make().start()
        self.live.add(proc)
        timing = await proc.turn(transcript(history, text) if history else text)
        if had_spare:  # the floor refills after the turn, so the two never share the CPU
            self._refill = asyncio.create_task(self._start_spare())
        return proc, timing

    async def follow(self, conv: WarmCli, text: str) -> Timing:
        return await conv.turn(text)

    async def close(self, conv: WarmCli) -> None:
        self.live.discard(conv)
        await conv.stop()

    def cli_pids(self) -> list[int]:
        return [p.pid for p in self.live if p.pid is not None]

    async def stop(self) -> None:
        if self._refill is not None:
            with contextlib.suppress(BaseException):
                await self._refill
        for proc in [*self.spares, *self.live]:
            await proc.stop()
        self.spares.clear()
        self.live.clear()


class Spawn(System):
    name = "spawn"

    def __init__(self, cli: str, env: dict[str, str], cwd: Path) -> None:
        self.cli, self.env, self.cwd = cli, env, cwd
        self.running: set[int] = set()

    async def new(self, text: str, history: list[dict[str, str]] | None = None
                  ) -> tuple[str, Timing]:
        prompt = transcript(history, text) if history else text
        timing, session = await spawn_turn(self.cli, self.env, self.cwd, prompt,
                                           model=MODEL_CLI, live=self.running)
        return session, timing

    async def follow(self, conv: str, text: str) -> Timing:
        timing, _ = await spawn_turn(self.cli, self.env, self.cwd, text, resume=conv,
                                     model=MODEL_CLI, live=self.running)
        return timing

    def cli_pids(self) -> list[int]:
        return list(self.running)


@dataclass
class HttpConv:
    messages: list[dict[str, str]] = field(default_factory=list)
    conversation_id: str | None = None


class HttpSystem(System):
    """A server with an OpenAI-compatible endpoint, driven by the official `openai` client
    with the whole history in every request."""

    def __init__(self, name: str, base_url: str, proc: subprocess.Popen[bytes],
                 log_path: Path) -> None:
        self.name = name
        self.base_url = base_url
        self.proc = proc
        self.log_path = log_path
        self.client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="not-needed",
                                         max_retries=0, timeout=TURN_TIMEOUT)

    def server_pid(self) -> int | None:
        return self.proc.pid

    def cli_pids(self) -> list[int]:
        """The server's direct children: the CLI processes it started."""
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        return []

    async def new(self, text: str, history: list[dict[str, str]] | None = None
                  ) -> tuple[HttpConv, Timing]:
        conv = HttpConv(messages=list(history or []))
        return conv, await self.follow(conv, text)

    async def follow(self, conv: HttpConv, text: str) -> Timing:
        messages = [*conv.messages, {"role": "user", "content": text}]
        reply, timing, conversation_id = await self._race_log(self._request(messages))
        if isinstance(self, Gateway):
            if conversation_id is None:
                raise TurnFailed("no X-Conversation-Id header in the response")
            if conv.conversation_id is not None and conversation_id != conv.conversation_id:
                raise TurnFailed("the gateway did not continue the conversation: it started"
                                 f" {conversation_id} instead of {conv.conversation_id}")
        conv.conversation_id = conversation_id
        conv.messages = [*messages, {"role": "assistant", "content": reply}]
        return timing

    async def _request(self, messages: list[dict[str, str]]
                       ) -> tuple[str, Timing, str | None]:
        started = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        try:
            conversation_id, pieces = await self._open(messages)
            async for piece in pieces:
                if ttft is None:
                    ttft = time.perf_counter() - started
                parts.append(piece)
        except openai.APIError as exc:
            raise TurnFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        total = time.perf_counter() - started
        reply = "".join(parts)
        if not reply.strip():
            raise TurnFailed("empty reply (the stream ended without text)")
        return reply, Timing(ttft, total), conversation_id

    async def _open(self, messages: list[dict[str, str]]
                    ) -> tuple[str | None, AsyncIterator[str]]:
        """Send the request: the X-Conversation-Id header and the answer's text pieces."""
        raw = await self.client.chat.completions.with_raw_response.create(
            model=MODEL_HTTP, messages=messages, stream=True,  # type: ignore[arg-type]
        )
        stream = raw.parse()
        if not isinstance(stream, openai.AsyncStream):
            raise TurnFailed("the server answered a stream request without a stream")

        async def pieces() -> AsyncIterator[str]:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content

        return raw.headers.get("x-conversation-id"), pieces()

    async def _race_log(self, request: Awaitable[T]) -> T:
        """Run the request; fail it as soon as the server logs E2BIG (the Node proxy keeps
        such a stream open forever without sending anything)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        task = asyncio.ensure_future(request)
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=0.2)
                if done:
                    return task.result()
                with self.log_path.open("rb") as log:
                    log.seek(offset)
                    tail = log.read()
                if b"E2BIG" in tail:
                    line = next(ln for ln in tail.splitlines() if b"E2BIG" in ln)
                    raise TurnFailed("the server logged " + line.decode(errors="replace")
                                     .strip()[:160] + "; the stream stayed open without data")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        stop_process(self.proc)


class Gateway(HttpSystem):
    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self.base_url + "/health")
            data: dict[str, Any] = response.json()
            return data

    async def ready_for_new(self) -> None:
        """The gateway refills its spare in the background; the next new conversation is
        measured once it is there (or once it evidently will not be: no free slot, which
        the report counts)."""
        deadline = time.perf_counter() + 15
        while time.perf_counter() < deadline:
            status = await self.health()
            if status.get("spare_processes", 0) >= 1:
                return
            if status.get("live_processes", 0) >= self.max_live:  # no slot for a spare
                break
            await asyncio.sleep(0.1)
        self.without_spare += 1

    max_live = 0
    #: new conversations measured while the gateway had no spare process ready
    without_spare = 0


class ResponsesGateway(Gateway):
    """The gateway driven over ``/v1/responses`` (a text delta event is the first token)."""

    async def _open(self, messages: list[dict[str, str]]
                    ) -> tuple[str | None, AsyncIterator[str]]:
        raw = await self.client.responses.with_raw_response.create(
            model=MODEL_HTTP, input=messages, stream=True, store=False,  # type: ignore[arg-type]
        )
        stream = raw.parse()
        if not isinstance(stream, openai.AsyncStream):
            raise TurnFailed("the server answered a stream request without a stream")

        async def pieces() -> AsyncIterator[str]:
            async for event in stream:
                if isinstance(event, ResponseTextDeltaEvent):
                    yield event.delta

        return raw.headers.get("x-conversation-id"), pieces()


class MessagesGateway(Gateway):
    """The gateway driven over ``/v1/messages`` with the official ``anthropic`` client
    (a ``text_delta`` is the first token)."""

    def __init__(self, name: str, base_url: str, proc: subprocess.Popen[bytes],
                 log_path: Path) -> None:
        super().__init__(name, base_url, proc, log_path)
        self.anthropic = anthropic.AsyncAnthropic(base_url=base_url, api_key="not-needed",
                                                  max_retries=0, timeout=TURN_TIMEOUT)

    async def _open(self, messages: list[dict[str, str]]
                    ) -> tuple[str | None, AsyncIterator[str]]:
        try:
            raw = await self.anthropic.messages.with_raw_response.create(
                model=MODEL_HTTP, max_tokens=1024, messages=messages,  # type: ignore[arg-type]
                stream=True,
            )
        except anthropic.APIError as exc:
            raise TurnFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        stream = await raw.parse()
        if not isinstance(stream, anthropic.AsyncStream):
            raise TurnFailed("the server answered a stream request without a stream")

        async def pieces() -> AsyncIterator[str]:
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    yield event.delta.text

        return raw.headers.get("x-conversation-id"), pieces()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.anthropic.close()
        await super().stop()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        for child in descendants(proc.pid):
            with contextlib.suppress(Exception):
                child.kill()
        proc.kill()
        proc.wait()


def launch(args: list[str], log: Path, env: dict[str, str], cwd: Path
           ) -> subprocess.Popen[bytes]:
    """Start a server process with its output in ``log``."""
    with log.open("wb") as out_file:
        return subprocess.Popen(args, stdout=out_file, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd)


def log_tail(log: Path, size: int = 800) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def version_of(args: list[str], env: dict[str, str] | None = None) -> str:
    if not shutil.which(args[0]):
        return "-"
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    return done.stdout.strip()


async def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str,
                    limit: float = 60) -> None:
    deadline = time.perf_counter() + limit
    async with httpx.AsyncClient(timeout=2) as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {limit:.0f} s")


async def start_node_proxy(tmp: Path, cli: str, env: dict[str, str]) -> HttpSystem:
    """npm-install the proxy into ``tmp`` and start it with ``cli`` as `claude` on its PATH."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise RuntimeError("node and npm are needed to install the Node proxy")
    folder = tmp / "node-proxy"
    folder.mkdir()
    install = await asyncio.create_subprocess_exec(
        npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(folder),
        NODE_PROXY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await install.communicate()
    if install.returncode != 0:
        raise RuntimeError(f"npm install {NODE_PROXY} failed: {out.decode()[-500:]}")
    script = folder / "node_modules" / "claude-max-api-proxy" / "dist" / "server" / "standalone.js"
    bindir = tmp / "node-bin"
    bindir.mkdir()
    (bindir / "claude").symlink_to(cli)
    work = tmp / "node-work"
    work.mkdir()
    port = free_port()
    log = tmp / "node-proxy.log"
    proc_env = {**env, "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"}
    proc = launch([node, str(script), str(port)], log, proc_env, work)
    system = HttpSystem("node", f"http://127.0.0.1:{port}", proc, log)
    try:
        await wait_http(system.base_url + "/health", proc, log, "the Node proxy")
    except BaseException:
        stop_process(proc)
        raise
    return system


async def start_gateway(tmp: Path, cli: str, env: dict[str, str], max_live: int,
                        parallel: int, name: str = "gateway",
                        kind: type[Gateway] = Gateway, *, extra_config: str = "",
                        extra_env: dict[str, str] | None = None,
                        root: Path = ROOT) -> Gateway:
    """This gateway in its own process, from a temporary config file (``extra_config``:
    more TOML sections, ``extra_env``: more environment, e.g. a bot token; ``root``: the
    checkout whose code runs, for a before/after run)."""
    port = free_port()
    config = tmp / f"{name}.toml"
    log = tmp / f"{name}.log"
    config.write_text(
        "[server]\n"
        f"port = {port}\n"
        "max_concurrent_requests = 32\n"
        "[claude]\n"
        f"cli_path = {json.dumps(cli)}\n"
        f"workspace = {json.dumps(str(tmp / f'{name}-work'))}\n"
        f"max_live_sessions = {max_live}\n"
        f"max_parallel_turns = {parallel}\n"
        "spare_processes = 1\n"
        "[storage]\n"
        f"data_dir = {json.dumps(str(tmp / f'{name}-data'))}\n"
        "[logging]\n"
        'level = "WARNING"\n'
        + extra_config
    )
    gw_env = {k: v for k, v in env.items()
              if not k.upper().startswith("CMG_") and k not in {
                  "GATEWAY_API_KEYS", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN",
                  "TELEGRAM_NOTIFY_ID", "CLAUDE_MAX_GATEWAY_CONFIG"}}
    gw_env["PYTHONPATH"] = str(root)
    gw_env.update(extra_env or {})
    proc = launch([sys.executable, "-m", "gateway.cli", "--config", str(config)], log, gw_env,
                  root)
    system = kind(name, f"http://127.0.0.1:{port}", proc, log)
    system.max_live = max_live
    try:
        await wait_http(system.base_url + "/health", proc, log, "the gateway")
        await system.ready_for_new()
    except BaseException:
        stop_process(proc)
        raise
    return system


# =========================================================================== scenarios


class Run:
    def __init__(self, systems: list[System], args: argparse.Namespace,
                 servers: dict[int, str]) -> None:
        self.systems = systems
        self.servers = servers  # pid -> group name for the CPU split
        self.args = args
        self.samples: list[Sample] = []
        self.setup_errors: list[str] = []
        self.peaks: dict[str, dict[str, Peak]] = {}
        self.settle_total = 0.0

    def order(self, i: int) -> list[System]:
        k = i % len(self.systems)
        return self.systems[k:] + self.systems[:k]

    async def settle(self) -> None:
        self.settle_total += await quiesce()

    async def measure(self, scenario: str, system: System,
                      turn: Callable[[], Awaitable[Timing]], *, cpu: bool = True) -> Sample:
        """Run one turn and record it; ``cpu`` also bills it the CPU all processes used
        meanwhile (only meaningful when nothing else runs)."""
        cpu_before = self.cpu_now() if cpu else {}
        try:
            timing = await asyncio.wait_for(turn(), TURN_TIMEOUT)
            sample = Sample(scenario, system.name, timing.ttft, timing.total)
        except Exception as exc:  # every failure is a figure of the run, not a crash
            sample = Sample(scenario, system.name, None, None, failure(exc))
        if cpu:
            sample.cpu_parts = self.cpu_since(cpu_before)
            sample.cpu = sum(sample.cpu_parts.values())
        self.samples.append(sample)
        return sample

    def cpu_now(self) -> dict[str, float]:
        return cpu_split(self.servers)

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.cpu_now()
        return {name: now[name] - before.get(name, 0.0) for name in now}

    async def setup_turn(self, system: System, text: str) -> Any:
        """An unmeasured first turn that opens a conversation for the later scenarios."""
        try:
            conv, _ = await asyncio.wait_for(system.new(text), TURN_TIMEOUT)
        except Exception as exc:
            self.setup_errors.append(f"{system.name}: {text[:40]}: {exc}")
            return None
        return conv

    async def first_turns(self) -> None:
        for i in range(self.args.first_turns):
            for system in self.order(i):
                await system.ready_for_new()
                await self.settle()
                holder: dict[str, Any] = {}

                async def turn(system: System = system, holder: dict[str, Any] = holder,
                               i: int = i) -> Timing:
                    holder["conv"], timing = await system.new(
                        f"Hello! This is new conversation number {i}. Who are you?")
                    return timing

                await self.measure("first", system, turn)
                if "conv" in holder:
                    await system.close(holder["conv"])

    async def histories(self) -> None:
        history = make_history(self.args.history_kb * 1024)
        for i in range(self.args.history_samples):
            for system in self.order(i):
                await system.ready_for_new()
                await self.settle()
                holder: dict[str, Any] = {}

                async def turn(system: System = system, holder: dict[str, Any] = holder,
                               i: int = i) -> Timing:
                    holder["conv"], timing = await system.new(
                        f"Question {i}: summarise our conversation so far.", history)
                    return timing

                await self.measure("history", system, turn)
                if "conv" in holder:
                    await system.close(holder["conv"])

    async def followups(self) -> None:
        turns = 10
        for c in range(self.args.conversations):
            convs: dict[str, Any] = {}
            for system in self.systems:
                await self.settle()
                convs[system.name] = await self.setup_turn(
                    system, f"Conversation {c}: let us talk about the weather in Lisbon.")
            for t in range(1, turns):
                for system in self.order(c + t):
                    conv = convs[system.name]
                    if conv is None:
                        continue
                    await self.settle()
                    text = f"Turn {t + 1} of conversation {c}: and what about tomorrow?"
                    await self.measure("followup", system, partial(system.follow, conv, text))
            for system in self.systems:
                if convs[system.name] is not None:
                    await system.close(convs[system.name])

    async def concurrent(self) -> None:
        n = self.args.concurrency
        convs: dict[str, list[Any]] = {}
        for system in self.systems:
            opened = []
            for k in range(n):
                await self.settle()
                conv = await self.setup_turn(system, f"Parallel conversation {k}: hello.")
                if conv is not None:
                    opened.append(conv)
            convs[system.name] = opened
        peaks = self.peaks.setdefault("concurrent", {})
        for r in range(self.args.rounds):
            for system in self.order(r):
                await self.settle()
                peak = peaks.setdefault(system.name, Peak())
                sampler = asyncio.create_task(sample_rss(system, peak))
                cpu_before = self.cpu_now()
                try:
                    samples = await asyncio.gather(*(
                        self.measure("concurrent", system, partial(
                            system.follow, conv, f"Round {r}, conversation {k}: what now?"),
                            cpu=False)
                        for k, conv in enumerate(convs[system.name])))
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                parts = self.cpu_since(cpu_before)
                share = max(1, len(samples))
                for sample in samples:  # the round's CPU, shared by its turns
                    sample.cpu_parts = {name: value / share for name, value in parts.items()}
                    sample.cpu = sum(sample.cpu_parts.values())
        for system in self.systems:
            for conv in convs[system.name]:
                await system.close(conv)


def failure(exc: Exception) -> str:
    """What a failed measured turn reports."""
    if isinstance(exc, TimeoutError):
        return f"no reply within {TURN_TIMEOUT:.0f} s"
    return str(exc) or type(exc).__name__


async def sample_rss(system: System, peak: Peak, interval: float = 0.05) -> None:
    """Track the largest RSS of the server process and of its CLI process trees."""
    while True:
        cli = system.cli_pids()
        peak.update(rss(system.server_pid()), sum(tree_rss(p) for p in cli), len(cli))
        await asyncio.sleep(interval)


def make_history(size: int) -> list[dict[str, str]]:
    """User/assistant messages of ~2.5 KB each, ``size`` bytes of text in all."""
    words = ("the quick brown fox jumps over the lazy dog while seven wizards quietly"
             " pack boxes of liquor jugs near the old harbour").split()
    messages: list[dict[str, str]] = []
    total, i = 0, 0
    while total < size:
        role = "user" if i % 2 == 0 else "assistant"
        text = f"Message {i}: " + " ".join(words[(i + j) % len(words)] for j in range(420))
        text = text[: min(2560, size - total)] or "."
        messages.append({"role": role, "content": text})
        total += len(text.encode())
        i += 1
    if messages[-1]["role"] == "user":
        messages.append({"role": "assistant", "content": "Understood."})
    return messages


# =========================================================================== report


def scenario_table(samples: list[Sample], systems: list[str]) -> tuple[str, dict[str, Any]]:
    rows = ["| scenario | system | n | errors | TTFT p50 ms | TTFT p95 ms | total p50 ms"
            " | total p95 ms | CPU ms/turn (mean) |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    stats: dict[str, Any] = {}
    for scenario, title in SCENARIOS.items():
        for name in systems:
            mine = [s for s in samples if s.scenario == scenario and s.system == name]
            if not mine:
                continue
            ok = [s for s in mine if s.error is None]
            ttft = summary([s.ttft for s in ok if s.ttft is not None])
            total = summary([s.total for s in ok if s.total is not None])
            cpus = [s.cpu for s in ok if s.cpu is not None]
            cpu = {"mean": sum(cpus) / len(cpus) if cpus else math.nan}
            errors = [s.error for s in mine if s.error is not None]
            stats.setdefault(scenario, {})[name] = {
                "n": len(mine), "errors": len(errors),
                "error_messages": sorted(set(e for e in errors if e)),
                "ttft": ttft, "total": total, "cpu": cpu,
            }
            rows.append(f"| {title} | {LABELS[name]} | {len(mine)} | {len(errors)}"
                        f" | {ms(ttft['median'])} | {ms(ttft['p95'])} | {ms(total['median'])}"
                        f" | {ms(total['p95'])} | {ms(cpu['mean'], 0)} |")
    return "\n".join(rows), stats


CPU_GROUPS = {"cli": "CLI processes", "server": "server process", "fake_api": "fake API",
              "client": "bench client"}


def cpu_table(samples: list[Sample], systems: list[str]) -> tuple[str, dict[str, Any]]:
    """Mean CPU ms per turn by process group: where each system's CPU time goes (a mean,
    because the kernel counts CPU time in 10 ms ticks)."""
    rows = ["| scenario | system | " + " | ".join(CPU_GROUPS.values()) + " |",
            "|---|---|" + "--:|" * len(CPU_GROUPS)]
    stats: dict[str, Any] = {}
    for scenario in ("first", "followup"):
        for name in systems:
            parts = [s.cpu_parts for s in samples
                     if s.scenario == scenario and s.system == name and s.error is None
                     and s.cpu_parts is not None]
            if not parts:
                continue
            means = {g: sum(p.get(g, 0.0) for p in parts) / len(parts) for g in CPU_GROUPS}
            stats.setdefault(scenario, {})[name] = means
            rows.append(f"| {SCENARIOS[scenario]} | {LABELS[name]} | "
                        + " | ".join(ms(means[g], 1) for g in CPU_GROUPS) + " |")
    return "\n".join(rows), stats


def fig(stats: dict[str, Any], scenario: str, system: str, what: str, q: str) -> float:
    try:
        return float(stats[scenario][system][what][q])
    except KeyError:
        return math.nan


def targets(stats: dict[str, Any], memory: dict[str, Any], concurrency: int
            ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, target: str, ok: bool | None, note: str = "") -> None:
        out.append({"target": name, "measured": measured, "goal": target,
                    "met": ok, "note": note})

    gw_f = fig(stats, "followup", "gateway", "total", "median")
    node_f = fig(stats, "followup", "node", "total", "median")
    floor_f = fig(stats, "followup", "floor", "total", "median")
    ratio = gw_f / node_f
    add("follow-up total, gateway / Node proxy", f"{ratio:.3f}", "≤ 0.20",
        None if math.isnan(ratio) else ratio <= 0.20,
        f"floor / Node proxy = {floor_f / node_f:.3f}")
    over = gw_f - floor_f
    allowed = max(0.10 * floor_f, 0.015)
    add("gateway overhead over the floor (follow-up median)",
        f"{over * 1000:+.1f} ms ({over / floor_f * 100:+.0f}%)",
        f"≤ {allowed * 1000:.1f} ms (10% or 15 ms)",
        None if math.isnan(over) else over <= allowed)
    for dialect in ("responses", "messages"):  # the other dialects, on the same warm sessions
        over = fig(stats, "followup", dialect, "total", "median") - floor_f
        if not math.isnan(over):
            add(f"{LABELS[dialect]}: overhead over the floor (follow-up median)",
                f"{over * 1000:+.1f} ms ({over / floor_f * 100:+.0f}%)",
                f"≤ {allowed * 1000:.1f} ms (10% or 15 ms)", over <= allowed)
    first = fig(stats, "first", "gateway", "total", "median") / fig(
        stats, "first", "node", "total", "median")
    add("first turn total, gateway / Node proxy", f"{first:.3f}", "≤ 0.50",
        None if math.isnan(first) else first <= 0.5,
        f"floor (pre-started CLI) / Node = {fig(stats, 'first', 'floor', 'total', 'median') / fig(stats, 'first', 'node', 'total', 'median'):.3f}")  # noqa: E501
    conc = stats.get("concurrent", {}).get("gateway")
    single_p95 = fig(stats, "followup", "gateway", "total", "p95")
    conc_p95 = fig(stats, "concurrent", "gateway", "total", "p95")
    if conc is not None:
        ok = conc["errors"] == 0 and conc_p95 <= 2 * single_p95
        cores = os.cpu_count() or 1
        bound = concurrency * fig(stats, "concurrent", "gateway", "cpu", "mean") / cores
        floor_ratio = fig(stats, "concurrent", "floor", "total", "p95") / fig(
            stats, "followup", "floor", "total", "p95")
        add(f"{concurrency} conversations at once: gateway errors, p95 / single-conversation p95",
            f"{conc['errors']} errors, {conc_p95 / single_p95:.2f}× "
            f"({ms(conc_p95)} / {ms(single_p95)} ms)", "0 errors, ≤ 2×", ok,
            f"floor: {floor_ratio:.2f}×; CPU-bound minimum: {concurrency} turns ×"
            f" {ms(fig(stats, 'concurrent', 'gateway', 'cpu', 'mean'), 0)} ms CPU"
            f" / {cores} cores = {ms(bound, 0)} ms")
    hist = stats.get("history", {})
    if "gateway" in hist:
        node = hist.get("node", {})
        add("200 KB history works", f"gateway {hist['gateway']['n'] - hist['gateway']['errors']}"
            f"/{hist['gateway']['n']} ok; Node proxy {node.get('n', 0) - node.get('errors', 0)}"
            f"/{node.get('n', 0)} ok", "gateway works", hist["gateway"]["errors"] == 0,
            "; ".join(node.get("error_messages", []))[:200])
    idle = memory.get("gateway_idle_rss_start")
    if idle:
        add("gateway idle RSS (no voice model)", f"{mb(idle)} MB", "≤ 100 MB", idle <= 100 * 2**20,
            f"after the run: {mb(memory.get('gateway_idle_rss_end'))} MB")
    return out


def render(meta: dict[str, Any], table: str, cpu: str, memory_rows: list[str],
           target_rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Claude Code CLI {meta['cli_version']} (bundled with claude-agent-sdk),"
        f" Node {meta['node']},"
        f" {NODE_PROXY}; fake Anthropic API, first-token latency {meta['first_token_delay']} s,"
        f" {meta['chunk_delay']} s between deltas; {meta['cpus']} cores,"
        f" load average {meta['load_before'][0]} before / {meta['load_after'][0]} after"
        f" (1 min); {meta['date']}.",
        "",
        *(["New conversations measured with no spare CLI ready (the pool was full, so"
           " each paid an eviction and a cold start): " + ", ".join(
               f"{name} {count}" for name, count in meta["without_spare"].items()), ""]
          if meta["without_spare"] else []),
        table,
        "",
        "CPU ms per turn by process (means; all processes of the run):",
        "",
        cpu,
        "",
        "| memory (RSS) | MB |",
        "|---|--:|",
        *memory_rows,
        "",
        "| target | measured | goal | met |",
        "|---|---|---|:-:|",
    ]
    for t in target_rows:
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']} | {t['measured']}{note} | {t['goal']} | {met} |")
    return "\n".join(lines)


# =========================================================================== main


async def main(args: argparse.Namespace) -> int:
    cli = args.cli or bundled_cli()
    load_before = load_average()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cmg-bench-") as tmp_name, FakeApiProcess(
        first_token_delay=args.first_token_latency, chunk_delay=args.chunk_delay
    ) as fake:
        tmp = Path(tmp_name)
        homes = {}
        for name in SYSTEMS:
            homes[name] = tmp / f"home-{name}"
            homes[name].mkdir()
            (tmp / f"work-{name}").mkdir()
        envs = {name: cli_env(fake.base_url, str(homes[name]), api_timeout_ms=60000)
                for name in SYSTEMS}
        version = version_of([cli, "--version"], envs["floor"])
        node_version = version_of(["node", "--version"])
        wanted = [s for s in SYSTEMS if s in args.systems]
        systems: list[System] = []
        memory: dict[str, Any] = {}
        gateway: Gateway | None = None
        node: HttpSystem | None = None
        try:
            for name in wanted:
                if name == "floor":
                    systems.append(Floor(cli, envs[name], tmp / "work-floor"))
                elif name == "spawn":
                    systems.append(Spawn(cli, envs[name], tmp / "work-spawn"))
                elif name == "node":
                    node = await start_node_proxy(tmp, cli, envs[name])
                    systems.append(node)
                elif name in ("gateway", "responses", "messages"):
                    # room for every conversation the run opens (the warm-up, the
                    # first turns, the follow-up and concurrent conversations, the
                    # histories; the HTTP clients cannot close one) and the spare, so no
                    # new conversation finds the pool full: there would be no spare then,
                    # and it would pay an eviction and a cold CLI start (that was the
                    # 785 ms 200 KB row of 2026-12-01 after 14 live CLIs)
                    max_live = (1 + args.first_turns * ("first" in args.scenarios)
                                + args.conversations * ("followup" in args.scenarios)
                                + args.concurrency * ("concurrent" in args.scenarios)
                                + args.history_samples * ("history" in args.scenarios) + 2)
                    kind = {"gateway": Gateway, "responses": ResponsesGateway,
                            "messages": MessagesGateway}[name]
                    started_gateway = await start_gateway(tmp, cli, envs[name], max_live,
                                                          args.concurrency, name, kind)
                    systems.append(started_gateway)
                    if name == "gateway":
                        gateway = started_gateway
            await quiesce(limit=10)
            if gateway is not None:
                memory["gateway_idle_rss_start"] = rss(gateway.server_pid())
                memory["gateway_idle_cli_start"] = sum(rss(p) for p in gateway.cli_pids())
                memory["gateway_idle_cli_count_start"] = len(gateway.cli_pids())
            if node is not None:
                memory["node_idle_rss"] = rss(node.server_pid())
            servers = {pid: "server" for pid in (s.server_pid() for s in systems) if pid}
            if fake.proc is not None:
                servers[fake.proc.pid] = "fake_api"
            run = Run(systems, args, servers)
            # warm every system once (page cache, first-run files in each HOME): not measured
            for system in systems:
                conv = await run.setup_turn(system, "warm up")
                if conv is not None:
                    await system.close(conv)
            for scenario in args.scenarios:
                print(f"… {SCENARIOS[scenario]}", file=sys.stderr, flush=True)
                await getattr(run, {"first": "first_turns", "followup": "followups",
                                    "concurrent": "concurrent", "history": "histories"}[scenario])()
            await quiesce(limit=10)
            if gateway is not None:
                memory["gateway_idle_rss_end"] = rss(gateway.server_pid())
                memory["gateway_live_cli_end"] = len(gateway.cli_pids())
        finally:
            for system in systems:
                await system.stop()
    load_after = load_average()

    table, stats = scenario_table(run.samples, wanted)
    peaks = {name: asdict(p) for name, p in run.peaks.get("concurrent", {}).items()}
    memory["concurrent_peaks"] = peaks
    memory_rows = []
    if "gateway_idle_rss_start" in memory:
        memory_rows.append(f"| gateway process, idle after start (1 spare CLI, no voice model)"
                           f" | {mb(memory['gateway_idle_rss_start'])} |")
        memory_rows.append(f"| gateway process, idle after the run"
                           f" ({memory['gateway_live_cli_end']} CLI processes alive)"
                           f" | {mb(memory['gateway_idle_rss_end'])} |")
    if "node_idle_rss" in memory:
        memory_rows.append(f"| Node proxy process, idle | {mb(memory['node_idle_rss'])} |")
    for name in wanted:
        peak = peaks.get(name)
        if not peak:
            continue
        if peak["server"]:
            memory_rows.append(f"| {LABELS[name]}: server process, peak during 8 at once"
                               f" | {mb(peak['server'])} |")
        if peak["cli_count"]:
            memory_rows.append(
                f"| {LABELS[name]}: CLI processes, peak during 8 at once"
                f" ({peak['cli_count']} processes, {mb(peak['cli_total'] / peak['cli_count'])}"
                f" MB each) | {mb(peak['cli_total'])} |")
    target_rows = targets(stats, memory, args.concurrency)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cli": cli, "cli_version": version, "node": node_version, "node_proxy": NODE_PROXY,
        "first_token_delay": args.first_token_latency, "chunk_delay": args.chunk_delay,
        "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
        "wall_seconds": round(time.time() - started, 1),
        "settle_seconds": round(run.settle_total, 1),
        "setup_errors": run.setup_errors, "args": vars(args),
        "without_spare": {s.name: s.without_spare for s in systems
                          if isinstance(s, Gateway) and s.without_spare},
    }
    cpu, cpu_stats = cpu_table(run.samples, wanted)
    report = render(meta, table, cpu, memory_rows, target_rows)
    print(report)
    if run.setup_errors:
        print("\nsetup errors:\n" + "\n".join(run.setup_errors))
    result = {"meta": meta, "stats": stats, "cpu_by_process": cpu_stats, "memory": memory,
              "targets": target_rows,
              "samples": [asdict(s) for s in run.samples]}
    path = save(Path(args.out), result, report)
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


def save(out_dir: Path, result: dict[str, Any], report: str) -> Path:
    """Write the results JSON and the Markdown report; returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"compare-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    path.with_suffix(".md").write_text(report + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--first-turns", type=int, default=8,
                        help="new conversations per system (default 8)")
    parser.add_argument("--conversations", type=int, default=4,
                        help="10-turn conversations per system; 9 follow-ups each (default 4)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="conversations at once (default 8)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of simultaneous follow-ups (default 4)")
    parser.add_argument("--history-samples", type=int, default=3)
    parser.add_argument("--history-kb", type=int, default=200)
    parser.add_argument("--first-token-latency", type=float, default=0.0,
                        help="seconds the fake API waits before a reply (default 0)")
    parser.add_argument("--chunk-delay", type=float, default=0.0,
                        help="seconds between the fake API's text deltas, up to 5 per reply"
                        " (default 0)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS),
                        default=["first", "history", "followup", "concurrent"])
    parser.add_argument("--cli", default="", help="CLI to measure (default: the bundled one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--quick", action="store_true",
                        help="2 first turns, 1 conversation, 1 round, 1 history sample")
    args = parser.parse_args(argv)
    if args.quick:
        args.first_turns, args.conversations, args.rounds, args.history_samples = 2, 1, 1, 1
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
