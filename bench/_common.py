"""Helpers the benchmarks share: the raw warm CLI (the floor), one-process-per-turn runs,
the fake API as a child process, statistics, quiescence and memory readings.

Nothing here mocks a component: every turn runs the real Claude Code CLI against the fake
Anthropic API from ``tests/fake_anthropic.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Largest stdout line the drivers accept (a 200 KB history comes back in the CLI's events).
LINE_LIMIT = 64 << 20


class TurnFailed(RuntimeError):
    """A turn that did not produce its reply (the message says what happened)."""


@dataclass
class Timing:
    """One measured turn: seconds to the first answer token and to the end of the reply."""

    ttft: float | None
    total: float


def stream_flags(model: str | None) -> list[str]:
    """The flags a streaming, tool-capable Claude Code turn runs with (as the SDK builds
    them, minus ``--system-prompt``: the CLI's own default prompt is what the gateway uses)."""
    flags = ["--output-format", "stream-json", "--verbose", "--include-partial-messages",
             "--permission-mode", "bypassPermissions"]
    if model:
        flags += ["--model", model]
    return flags


def _is_text_delta(event: dict[str, Any]) -> bool:
    if event.get("type") != "stream_event":
        return False
    inner = event.get("event") or {}
    delta = inner.get("delta") or {}
    return (inner.get("type") == "content_block_delta" and delta.get("type") == "text_delta"
            and bool(delta.get("text")))


def _check_result(event: dict[str, Any]) -> str:
    if event.get("is_error"):
        raise TurnFailed(f"CLI result is an error: {str(event.get('result'))[:200]}")
    return str(event.get("session_id") or "")


async def _read_turn(
    stdout: asyncio.StreamReader, started: float,
    on_first: Callable[[str], None] | None = None,
) -> tuple[float | None, float, dict[str, Any]]:
    """Read stream-json lines until ``result``; returns (ttft, total, result event).
    ``on_first`` gets the first answer text the moment it is read."""
    ttft: float | None = None
    while True:
        raw = await stdout.readline()
        if not raw:
            raise TurnFailed("the CLI exited before its result")
        if ttft is None and b'"text_delta"' in raw:
            event = json.loads(raw)
            if _is_text_delta(event):
                ttft = time.perf_counter() - started
                if on_first is not None:
                    on_first(event["event"]["delta"]["text"])
        elif b'"result"' in raw:
            event = json.loads(raw)
            if event.get("type") == "result":
                return ttft, time.perf_counter() - started, event


class WarmCli:
    """The floor: one streaming-input CLI process driven directly over its pipes.

    No SDK, no engine, no HTTP. :meth:`start` spawns it and, like the SDK, completes the
    ``initialize`` handshake, so a started instance is what a pre-started spare can be at best.
    """

    def __init__(self, cli: str, env: dict[str, str], cwd: Path, model: str | None = None) -> None:
        self.cli, self.env, self.cwd, self.model = cli, env, cwd, model
        self.proc: asyncio.subprocess.Process | None = None
        self.session_id = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, *, initialize: bool = True) -> WarmCli:
        self.proc = await asyncio.create_subprocess_exec(
            self.cli, "-p", "--input-format", "stream-json", *stream_flags(self.model),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=self.env, cwd=self.cwd, limit=LINE_LIMIT,
        )
        if initialize:
            await self._send({"type": "control_request", "request_id": "req_init",
                              "request": {"subtype": "initialize", "hooks": None}})
            assert self.proc.stdout
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise TurnFailed("the CLI exited during initialize")
                if b'"control_response"' in raw:
                    break
        return self

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def turn(self, text: str, on_first: Callable[[str], None] | None = None) -> Timing:
        """One turn; ``on_first`` gets its first answer text as soon as it is read."""
        return (await self.answer(text, on_first))[0]

    async def answer(self, text: str, on_first: Callable[[str], None] | None = None
                     ) -> tuple[Timing, str]:
        """:meth:`turn`, and the answer's text (the ``result``)."""
        assert self.proc and self.proc.stdout
        started = time.perf_counter()
        await self._send({"type": "user", "message": {"role": "user", "content": text},
                          "parent_tool_use_id": None, "session_id": "default"})
        ttft, total, result = await _read_turn(self.proc.stdout, started, on_first)
        self.session_id = _check_result(result)
        return Timing(ttft, total), str(result.get("result") or "")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def spawn_turn(
    cli: str, env: dict[str, str], cwd: Path, text: str, *,
    resume: str | None = None, model: str | None = None, live: set[int] | None = None,
) -> tuple[Timing, str]:
    """One turn in a fresh ``claude -p [--resume <id>]`` process; returns (timing, session id).

    The prompt goes in on stdin: as an argument, a prompt over 128 KiB fails with E2BIG.
    The total is taken at the ``result`` line (what a client waits for); the process exit is
    awaited but not counted. ``live`` holds the pid while the process runs (for RSS readings).
    """
    args = [cli, "-p", *stream_flags(model)]
    if resume:
        args += ["--resume", resume]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env, cwd=cwd, limit=LINE_LIMIT,
    )
    assert proc.stdin and proc.stdout
    if live is not None:
        live.add(proc.pid)
    try:
        proc.stdin.write(text.encode())
        await proc.stdin.drain()
        proc.stdin.close()
        ttft, total, result = await _read_turn(proc.stdout, started)
        session = _check_result(result)
        while await proc.stdout.read(1 << 16):
            pass
        await proc.wait()
    finally:
        if live is not None:
            live.discard(proc.pid)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return Timing(ttft, total), session


# --------------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, p95, min, max (seconds); NaN figures when there are no values."""
    if not values:
        return {"n": 0, "median": math.nan, "p95": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(values), "median": statistics.median(values),
            "p95": quantile(values, 0.95), "min": min(values), "max": max(values)}


def ms(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 1000:.{digits}f}"


def mb(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value / 2**20:.0f}"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeApiProcess:
    """``tests/fake_anthropic.py`` in a child process, so serving it never competes with the
    benchmark's own event loop for the GIL."""

    def __init__(self, *, first_token_delay: float = 0.0, chunk_delay: float = 0.0) -> None:
        self.args = ["--first-token-delay", str(first_token_delay),
                     "--chunk-delay", str(chunk_delay)]
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FakeApiProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_anthropic.py"), "--port", "0",
             *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.__exit__()
            raise RuntimeError(f"fake Anthropic API did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss(pid: int | None) -> int:
    """RSS of one process (0 when it is gone)."""
    if pid is None:
        return 0
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def descendants(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def tree_rss(pid: int | None, *, include_root: bool = True) -> int:
    """RSS of a process and all its descendants (or of the descendants only)."""
    procs = descendants(pid)
    total = rss(pid) if include_root else 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_info().rss)
    return total


def _cpu_seconds(procs: Iterator[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


async def quiesce(window: float = 0.1, threshold: float = 0.1, limit: float = 5.0) -> float:
    """Wait until this process's descendants (CLIs, servers) use less than ``threshold`` of
    a core over ``window`` seconds, so background work of one system (a spare process
    starting, a CLI exiting) is not billed to the next measurement. Returns the seconds
    waited; gives up after ``limit``."""
    started = time.perf_counter()
    me = psutil.Process()
    while time.perf_counter() - started < limit:
        procs = me.children(recursive=True)
        before = _cpu_seconds(iter(procs))
        await asyncio.sleep(window)
        after = _cpu_seconds(iter(procs))
        if after - before < threshold * window:
            break
    return time.perf_counter() - started


def cpu_split(servers: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds used so far by this process and all its descendants, by group.

    ``client``: this process itself; each pid in ``servers``: that process itself, under
    the given name; ``cli``: every other descendant, plus every child already reaped by this
    process or a server (an exited process's time is added to its parent's ``children_*``
    times when the parent waits for it), i.e. the CLI processes.
    """
    me = psutil.Process()
    out: dict[str, float] = {"client": 0.0, "cli": 0.0, **{name: 0.0 for name in servers.values()}}
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            own, reaped = times.user + times.system, times.children_user + times.children_system
            name = "client" if proc.pid == me.pid else servers.get(proc.pid)
            if name is None:
                out["cli"] += own + reaped
            else:
                out[name] += own
                out["cli"] += reaped
    return out


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)
