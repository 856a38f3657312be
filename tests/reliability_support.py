"""Helpers for the reliability, load and security tests: the real ``claude-max-api`` command
as a subprocess (temp config, data dir and workspace; the bundled CLI pointed at the fake
Anthropic API), raw HTTP calls from threads, and process accounting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

COMMAND = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; any status is returned, never raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sse_events(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    events: list[dict[str, Any]] = []
    done = False
    for block in raw.decode().split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block[len("data: "):]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if e.get("choices"))


class GatewayProcess:
    """``claude-max-api --config <tmp>/config.toml`` in a subprocess, its log in a file."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        *,
        port: int | None = None,
        claude: str = "",
        server: str = "",
        data_dir: Path | None = None,
        extra: str = "",
        new_session: bool = False,
    ) -> None:
        """``claude``/``server``: lines added to those sections; ``extra``: more sections
        (``[telegram]`` …) at the end of the config. ``new_session``: the gateway leads its
        own process group, so :meth:`signal_group` can signal it and its CLIs at once."""
        self.root = root
        self.new_session = new_session
        self.env = env
        self.port = port or free_port()
        self.data_dir = data_dir or root / "data"
        self.config = root / "config.toml"
        self.config.write_text(
            f'[server]\nport = {self.port}\n{server}\n'
            f'[claude]\nworkspace = "{root / "ws"}"\nspare_processes = 0\n'
            f"activity_timeout = 30\nbash_max_timeout = 20\n{claude}\n"
            f'[storage]\ndata_dir = "{self.data_dir}"\n{extra}\n'
        )
        self.log_path = root / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"

    def start(self, *, wait: bool = True) -> GatewayProcess:
        self.runs += 1
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([*COMMAND, "--config", str(self.config)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=self.new_session)
        finally:
            log.close()
        if wait:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, _, _ = http("GET", self.url + "/health", timeout=5)
                    if status == 200:
                        break
                except OSError:
                    pass
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited at start-up:\n{self.log()}")
                assert time.monotonic() < deadline, f"gateway did not start:\n{self.log()}"
                time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return alive(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            return []

    def chat(self, text: str, conversation: str | None = None, *, stream: bool = False,
             headers: dict[str, str] | None = None, timeout: float = 60.0,
             ) -> tuple[int, dict[str, str], bytes]:
        extra = dict(headers or {})
        if conversation is not None:
            extra["X-Conversation-Id"] = conversation
        body = {"model": "sonnet", "messages": [{"role": "user", "content": text}],
                "stream": stream}
        return http("POST", self.url + "/v1/chat/completions", body, extra, timeout=timeout)

    def health(self) -> dict[str, Any]:
        status, _, body = http("GET", self.url + "/health", timeout=10)
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the gateway's whole process group (a terminal, systemd's default
        KillMode=control-group): its CLI processes get the signal too."""
        assert self.proc is not None and self.new_session
        os.killpg(self.proc.pid, sig)

    def error_lines(self) -> list[str]:
        """The log's ERROR and CRITICAL records (the gateway's format: time LEVEL name: …)."""
        return [line for line in self.log().splitlines()
                if line.split(" ")[2:3] in (["ERROR"], ["CRITICAL"])]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Cleanup: the gateway and whatever it left behind."""
        if self.proc is None:
            return
        leftovers = self.descendants() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for proc in leftovers:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass


def cli_processes_of(env_marker: str) -> list[psutil.Process]:
    """Live processes whose environment has HOME=``env_marker`` (this test's CLIs, even when
    re-parented to init after the gateway was killed)."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid == os.getpid():
                continue
            if proc.environ().get("HOME") == env_marker and "claude" in " ".join(
                proc.cmdline()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return alive(found)
