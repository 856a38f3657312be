"""The gateway process itself under faults: the real ``claude-max-api`` command in a
subprocess, the real bundled CLI, the fake Anthropic API.

* SIGTERM while turns run (one waiting on the API, one streaming, one queued): a clean exit
  within a bound, every client answered, no process left (counted), no ERROR in the log;
  after a restart every conversation continues with its history. The same signal sent to
  the whole process group (the CLIs get it too) logs no ERROR either.
* SIGKILL of the gateway while turns finish: the SQLite session map is intact (WAL,
  integrity check) and a restart continues every conversation.
* A read-only or full data directory: one clear line at start-up and exit code 2, no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import SHUTDOWN_GRACE
from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.reliability_support import (
    COMMAND,
    GatewayProcess,
    alive,
    cli_processes_of,
    sse_events,
    text_of,
    wait_until,
)

pytestmark = pytest.mark.cli

#: SIGTERM -> exit: the engine's grace for running turns, plus start/stop slack
SHUTDOWN_BOUND = SHUTDOWN_GRACE + 5.0


@pytest.fixture
def gateway_env(fake_api: FakeAnthropic, cli_home: Path) -> dict[str, str]:
    env = cli_env(fake_api.base_url, str(cli_home))
    env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
    for name in list(env):
        if name.startswith("CMG_"):
            del env[name]
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture
def gateways(tmp_path: Path, gateway_env: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    made: list[GatewayProcess] = []
    yield made
    for gateway in made:
        gateway.kill()
    for proc in cli_processes_of(gateway_env["HOME"]):
        proc.kill()


def _messages_seen(fake: FakeAnthropic, text: str) -> str:
    """The whole message list the model got with the request whose last text is ``text``."""
    hits = [r for r in fake.requests() if r["last_user_text"] == text]
    assert hits, f"the model never saw {text!r}"
    return json.dumps(hits[-1]["messages"])


def _first_turns(gateway: GatewayProcess, names: list[str]) -> None:
    for name in names:
        status, headers, body = gateway.chat(f"first message of {name}", name)
        assert status == 200, body
        assert headers["X-Conversation-Id"] == f"h:{name}"


def _continue_all(gateway: GatewayProcess, fake: FakeAnthropic, names: list[str]) -> None:
    """Each conversation answers a new message, and the model sees its earlier history."""
    for name in names:
        text = f"after the restart, {name}"
        status, _, body = gateway.chat(text, name)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"] == f"echo: {text}"
        assert f"first message of {name}" in _messages_seen(fake, text), name


def test_sigterm_with_turns_running_exits_cleanly_and_conversations_continue(
    tmp_path: Path, gateway_env: dict[str, str], fake_api: FakeAnthropic,
    gateways: list[GatewayProcess],
) -> None:
    gateway = GatewayProcess(tmp_path, gateway_env).start()
    gateways.append(gateway)
    names = ["waiting", "streaming", "queued"]
    _first_turns(gateway, names)
    # in flight at SIGTERM: a turn waiting for the API, one streaming slowly, one queued
    fake_api.script({"hang": True}, match="hang on")
    fake_api.script({"text": "a slow answer " * 30, "chunk_delay": 3.0}, match="stream on")
    fake_api.script({"hang": True}, match="block the queue")
    results: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def client(key: str, text: str, name: str, stream: bool) -> None:
        results[key] = gateway.chat(text, name, stream=stream,
                                    headers={"X-Stream-Mode": "verbose"}, timeout=60)

    threads = [
        threading.Thread(target=client, args=("hang", "hang on", "waiting", False)),
        threading.Thread(target=client, args=("stream", "stream on", "streaming", True)),
        threading.Thread(target=client, args=("blocker", "block the queue", "queued", False)),
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: {"hang on", "stream on", "block the queue"}
               <= {r["last_user_text"] for r in fake_api.requests()}, "three turns running")
    queued = threading.Thread(target=client, args=("queued", "waits in line", "queued", True))
    queued.start()
    threads.append(queued)
    wait_until(lambda: gateway.health()["queued_turns"] == 1, "a queued turn")
    processes = gateway.descendants()
    assert len(processes) >= 3, "one CLI per conversation"

    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    code = gateway.wait(timeout=SHUTDOWN_BOUND + 20)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=10)
    assert code == 0, gateway.log()
    assert elapsed < SHUTDOWN_BOUND, f"shutdown took {elapsed:.1f} s"
    wait_until(lambda: not alive(processes), "the CLI processes to end", within=5)
    assert cli_processes_of(gateway_env["HOME"]) == [], "orphaned CLI processes"
    # every client got a real answer, not a reset connection
    for key in ("hang", "blocker", "queued"):
        assert results[key][0] == 503, results[key]
        assert json.loads(results[key][2])["error"]["code"] == "shutting_down"
    status, _, raw = results["stream"]
    events, done = sse_events(raw)
    assert status == 200 and done, raw[-300:]
    assert text_of(events).startswith("a slow answer")
    assert events[-1]["error"]["code"] == "shutting_down"
    assert "Traceback" not in gateway.log()
    assert gateway.error_lines() == [], "a clean SIGTERM logs no ERROR"
    print(f"\nSIGTERM with 3 turns running and 1 queued: exit 0 in {elapsed:.2f} s,"
          f" {len(processes)} CLI processes ended, 0 left; clients got"
          f" {[(k, r[0]) for k, r in sorted(results.items())]},"
          f" stream ended with {events[-1]['error']['code']}")

    gateway.start()
    _continue_all(gateway, fake_api, names)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(timeout=SHUTDOWN_BOUND + 20) == 0


def test_sigterm_to_the_process_group_is_quiet_too(
    tmp_path: Path, gateway_env: dict[str, str], fake_api: FakeAnthropic,
    gateways: list[GatewayProcess],
) -> None:
    """SIGTERM to the gateway's whole process group (Ctrl-C's group, a terminal closing,
    systemd's default KillMode): the CLI processes get it too and exit 143 at once. That is
    the gateway's own shutdown, so no ERROR is logged for it ("Fatal error in message
    reader" of claude-agent-sdk was logged once per process), and every client is answered.

    Whether a CLI dies of the signal before the gateway's own shutdown closes it is a race;
    the run is repeated (at most 3 times) until one shows the CLIs did die of it, and every
    run must be quiet either way."""
    fake_api.script({"hang": True}, match="hang on")
    fake_api.script({"text": "a slow answer " * 30, "chunk_delay": 3.0}, match="stream on")
    for attempt in range(3):
        root = tmp_path / f"run{attempt}"
        root.mkdir()
        gateway = GatewayProcess(root, gateway_env, new_session=True).start()
        gateways.append(gateway)
        asked = len(fake_api.requests())
        results: dict[str, tuple[int, dict[str, str], bytes]] = {}

        def client(text: str, name: str, stream: bool,
                   gateway: GatewayProcess = gateway,
                   results: dict[str, tuple[int, dict[str, str], bytes]] = results,
                   run: int = attempt) -> None:
            results[name] = gateway.chat(text, f"{name}-{run}", stream=stream,
                                         headers={"X-Stream-Mode": "verbose"}, timeout=60)

        threads = [threading.Thread(target=client, args=("hang on", "waiting", False)),
                   threading.Thread(target=client, args=("stream on", "streaming", True))]
        for thread in threads:
            thread.start()
        wait_until(lambda asked=asked: {"hang on", "stream on"}
                   <= {r["last_user_text"] for r in fake_api.requests()[asked:]},
                   "two turns running")
        processes = gateway.descendants()
        assert len(processes) >= 2
        gateway.signal_group(signal.SIGTERM)
        code = gateway.wait(timeout=SHUTDOWN_BOUND + 20)
        for thread in threads:
            thread.join(timeout=10)
        assert code == 0, gateway.log()
        wait_until(lambda processes=processes: not alive(processes),
                   "the CLI processes to end", within=5)
        assert gateway.error_lines() == [], gateway.log()
        assert results["waiting"][0] == 503, results["waiting"]
        assert json.loads(results["waiting"][2])["error"]["code"] == "shutting_down"
        status, _, raw = results["streaming"]
        if status == 200:  # the stream had started: it ends with an in-stream error
            events, done = sse_events(raw)
            assert done and events[-1]["error"]["code"] == "shutting_down", raw[-300:]
        else:
            assert status == 503 and json.loads(raw)["error"]["code"] == "shutting_down", raw
        if "exit code 143" in gateway.log():  # the CLIs did die of the signal (at INFO)
            return
    raise AssertionError("in 3 runs no CLI died of the group's SIGTERM before the gateway"
                         " closed it, so the quiet path for that was never exercised")


def test_sigkill_keeps_the_session_map_and_a_restart_continues(
    tmp_path: Path, gateway_env: dict[str, str], fake_api: FakeAnthropic,
    gateways: list[GatewayProcess],
) -> None:
    gateway = GatewayProcess(tmp_path, gateway_env, claude="max_live_sessions = 6").start()
    gateways.append(gateway)
    names = [f"conv{i}" for i in range(5)]
    _first_turns(gateway, names)
    # second turns finishing (and being written) while the gateway dies
    done: list[int] = []

    def second(name: str) -> None:
        try:
            done.append(gateway.chat(f"second message of {name}", name, timeout=30)[0])
        except OSError:
            done.append(-1)

    for name in names[:2]:  # these two are still waiting for the API when the kill comes
        fake_api.script({"text": "late", "delay": 3.0}, match=f"second message of {name}")
    threads = [threading.Thread(target=second, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(done) >= 3, "the other second turns to finish")
    clis = gateway.descendants()
    finished_first = done.count(200)
    gateway.signal(signal.SIGKILL)
    gateway.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=30)
    # the CLIs lose their stdin and exit by themselves
    wait_until(lambda: not alive(clis), "the orphaned CLIs to exit", within=15)

    assert (gateway.data_dir / "gateway.sqlite3-wal").exists(), "WAL mode"
    with sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(db.execute("SELECT key, session_id FROM sessions").fetchall())
    for name in names:
        assert rows.get(f"openai:h:{name}"), f"{name} lost its session: {rows}"
    print(f"\nSIGKILL with {len(names)} turns in flight ({finished_first} finished first):"
          f" integrity ok, {len(rows)} sessions intact")

    gateway.start()
    _continue_all(gateway, fake_api, names)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(timeout=SHUTDOWN_BOUND + 20) == 0


# --------------------------------------------------------------------------- the data dir


def _can_mount() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs (the only way to make a data dir read-only or full for root)."""
    if not _can_mount():
        pytest.skip("needs root on Linux to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _start_fails(tmp_path: Path, env: dict[str, str], data_dir: Path) -> str:
    gateway = GatewayProcess(tmp_path, env, data_dir=data_dir)
    result = subprocess.run([*COMMAND, "--config", str(gateway.config)], env=env,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("claude-max-api:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_read_only_data_dir_is_a_clear_start_up_error(
    tmp_path: Path, gateway_env: dict[str, str], small_fs: Path
) -> None:
    (small_fs / "data").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    line = _start_fails(tmp_path, gateway_env, small_fs / "data")
    assert "session database" in line and str(small_fs / "data") in line, line
    assert "storage.data_dir" in line and "writable" in line, line


def test_a_full_data_dir_is_a_clear_start_up_error(
    tmp_path: Path, gateway_env: dict[str, str], small_fs: Path
) -> None:
    (small_fs / "data").mkdir()
    fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    line = _start_fails(tmp_path, gateway_env, small_fs / "data")
    assert "session database" in line and "disk is not full" in line, line
    assert "full" in line.split("disk is not full")[0], line


def test_a_data_dir_that_is_a_file_is_a_clear_start_up_error(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    occupied = tmp_path / "not-a-dir"
    occupied.write_text("x")
    line = _start_fails(tmp_path, gateway_env, occupied)
    assert "session database" in line and str(occupied) in line, line
