"""The `claude-max-api` command as a user runs it: a real process, real CLI, fake API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.fake_anthropic import FakeAnthropic, cli_env

pytestmark = pytest.mark.cli

COMMAND = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_env(fake_api: FakeAnthropic, cli_home: Path) -> dict[str, str]:
    env = cli_env(fake_api.base_url, str(cli_home))
    env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def write_config(tmp_path: Path, port: int, claude_extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nport = {port}\n[claude]\nworkspace = "{tmp_path / "ws"}"\n{claude_extra}'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    return config


def get_json(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


@pytest.fixture
def running_gateway(
    tmp_path: Path, gateway_env: dict[str, str]
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*COMMAND, "--config", str(config)], env=gateway_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get_json(f"http://127.0.0.1:{port}/health")
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"gateway exited: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_gateway_serves_a_turn_and_shuts_down_cleanly_on_sigterm(
    running_gateway: tuple[int, subprocess.Popen[str]],
) -> None:
    port, proc = running_gateway
    health = get_json(f"http://127.0.0.1:{port}/health")
    assert health["status"] == "ok" and health["cli_version"]
    reply = get_json(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi gateway"}]},
    )
    choices = reply["choices"]
    assert isinstance(choices, list) and choices[0]["message"]["content"] == "echo: hi gateway"
    cli_children = psutil.Process(proc.pid).children(recursive=True)
    assert cli_children, "a warm CLI process should be running"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 10
    assert not [p for p in cli_children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert "shutting down" in out


def test_a_bad_config_value_stops_start_up_naming_the_key(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, 70000)
    result = subprocess.run([*COMMAND, "--config", str(config)], env=gateway_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server.port" in result.stderr and "70000" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_cli_stops_start_up_with_a_clear_message(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, free_port(), f'cli_path = "{tmp_path}/nope/claude"\n')
    result = subprocess.run([*COMMAND, "--config", str(config)], env=gateway_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "claude.cli_path" in result.stderr and "no executable" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_a_clear_error(tmp_path: Path, gateway_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1])
        result = subprocess.run([*COMMAND, "--config", str(config)], env=gateway_env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot listen" in result.stderr and "server.port" in result.stderr


def test_doctor_reports_cli_login_and_config(tmp_path: Path, gateway_env: dict[str, str]) -> None:
    config = write_config(tmp_path, 3999)
    result = subprocess.run([*COMMAND, "--config", str(config), "doctor", "--json"],
                            env=gateway_env, capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["ok"] and report["cli"]["version"].startswith("2.")
    assert report["auth"]["loggedIn"] is True
    assert report["config"]["server"]["port"] == 3999
    assert report["enabled"]["http_api"] == "http://127.0.0.1:3999/v1"
    # the voice extra is installed for the tests: faster-whisper and Piper are found, unloaded
    voice = report["voice"]
    assert voice["ok"] and voice["problems"] == [], voice
    assert voice["stt"]["engine"] == "faster-whisper" and voice["stt"]["loaded"] is False


def test_doctor_says_when_the_cli_is_not_logged_in(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    env = {k: v for k, v in gateway_env.items() if k != "ANTHROPIC_API_KEY"}
    config = write_config(tmp_path, 3999)
    result = subprocess.run([*COMMAND, "--config", str(config), "doctor"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "NOT logged in" in result.stdout and "/login" in result.stdout
    assert "voice       : ready" in result.stdout


def test_service_install_dry_run_prints_the_unit(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, 3999)
    result = subprocess.run(
        [*COMMAND, "--config", str(config), "service", "install", "--kind", "systemd",
         "--dry-run"], env=gateway_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ExecStart=" in result.stdout and str(config) in result.stdout
    assert "systemctl --user" in result.stdout
