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


# --------------------------------------------------------------------------- name clashes


def fake_program(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_a_port_held_by_the_node_proxy_is_one_line_naming_it(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    port = free_port()
    # what `claude-max-api-proxy` looks like in the process table: node .../claude-max-api-proxy/
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\n"
         "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
         "print('ready', flush=True); time.sleep(120)",
         str(port), "/usr/lib/node_modules/claude-max-api-proxy/dist/server/standalone.js"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        config = write_config(tmp_path, port)
        result = subprocess.run([*COMMAND, "--config", str(config)], env=gateway_env,
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert f"the npm claude-max-api-proxy (pid {holder.pid}" in lines[0]
    assert "CMG_SERVER__PORT" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "ws").exists()  # refused before the engine (and any CLI) started


def test_service_commands_drive_systemctl_with_this_installations_entry_point(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    # No systemd user manager or logind runs in a container: systemctl, journalctl and
    # loginctl are stand-ins that record their arguments. The npm proxy's command comes
    # first on PATH and must not end up in the unit.
    home = tmp_path / "svc-home"
    bin_dir = tmp_path / "bin"
    record = tmp_path / "calls"
    for name in ("systemctl", "journalctl"):
        fake_program(bin_dir, name, f'echo "{name} $*" >> "{record}"')
    fake_program(bin_dir, "loginctl", 'echo no')
    fake_program(bin_dir, "claude-max-api", "echo I am the node proxy; exit 1")
    env = {**gateway_env, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{gateway_env['PATH']}"}
    env.pop("XDG_CONFIG_HOME", None)
    config = write_config(tmp_path, 3999)

    def service(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, "--config", str(config), "service", *args,
                               "--kind", "systemd"], env=env, capture_output=True, text=True,
                              timeout=60)

    installed = service("install")
    assert installed.returncode == 0, installed.stderr
    unit = home / ".config/systemd/user/claude-max-gateway.service"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    ours = Path(sys.executable).parent / "claude-max-api"
    assert exec_start == f"ExecStart={ours} --config {config}"
    assert str(bin_dir) not in exec_start
    assert "EnvironmentFile" not in text
    assert "sudo loginctl enable-linger" in installed.stdout  # linger is off: the hint
    assert record.read_text().splitlines() == [
        "systemctl --user daemon-reload", "systemctl --user enable --now claude-max-gateway"]

    assert service("status").returncode == 0
    assert service("logs").returncode == 0
    removed = service("uninstall")
    assert removed.returncode == 0 and not unit.exists(), removed.stderr
    assert record.read_text().splitlines()[2:] == [
        "systemctl --user status --no-pager claude-max-gateway",
        "journalctl --user -u claude-max-gateway --no-pager -n 200",
        "systemctl --user disable --now claude-max-gateway",
        "systemctl --user daemon-reload",
    ]
    missing = service("status")
    assert missing.returncode == 1 and "not installed" in missing.stderr


def test_service_install_for_launchd_bootstraps_the_agent(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    home = tmp_path / "mac-home"
    bin_dir = tmp_path / "bin"
    record = tmp_path / "calls"
    fake_program(bin_dir, "launchctl", f'echo "launchctl $*" >> "{record}"')
    env = {**gateway_env, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{gateway_env['PATH']}"}
    result = subprocess.run([*COMMAND, "service", "install", "--kind", "launchd"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plist = home / "Library/LaunchAgents/com.claude-max-gateway.plist"
    uid = os.getuid()
    assert record.read_text().splitlines() == [
        f"launchctl bootout gui/{uid}/com.claude-max-gateway",  # a loaded old one goes first
        f"launchctl enable gui/{uid}/com.claude-max-gateway",
        f"launchctl bootstrap gui/{uid} {plist}",
    ]
    assert "load -w" not in result.stdout


# --------------------------------------------------------------------------- doctor, env file


async def test_doctor_checks_tokens_port_path_and_reads_the_env_file(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    import asyncio

    from tests.fake_discord import FakeDiscordRest
    from tests.fake_telegram import FakeTelegram

    xdg = tmp_path / "xdg"
    conf_dir = xdg / "claude-max-gateway"
    conf_dir.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir / "node_modules" / "claude-max-api-proxy", "claude-max-api", "exit 1")
    (bin_dir / "claude-max-api").symlink_to(
        bin_dir / "node_modules" / "claude-max-api-proxy" / "claude-max-api")
    async with FakeTelegram() as tg, FakeDiscordRest("discord-good-token") as dc:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            # found through XDG_CONFIG_HOME: the config file and the env file beside it
            (conf_dir / "config.toml").write_text(
                f'[server]\nport = {port}\n[claude]\nworkspace = "{tmp_path / "ws"}"\n'
                f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                f'[telegram]\nbase_url = "{tg.base_url}"\n'
                f'[discord]\napi_base_url = "{dc.base_url}"\n')
            env_file = conf_dir / "env"
            env_file.write_text("TELEGRAM_BOT_TOKEN=999:wrong-token\n"
                                "DISCORD_BOT_TOKEN='discord-good-token'\n")
            env_file.chmod(0o600)
            env = {**gateway_env, "XDG_CONFIG_HOME": str(xdg),
                   "PATH": f"{bin_dir}{os.pathsep}{gateway_env['PATH']}"}
            proc = await asyncio.create_subprocess_exec(
                *COMMAND, "doctor", "--json", env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert b"wrong-token" not in out and b"discord-good-token" not in out
    report = json.loads(out)
    assert proc.returncode == 1, err
    assert report["config_file"] == str(conf_dir / "config.toml")
    assert report["env_file"] == {"path": str(env_file), "exists": True,
                                  "variables": ["DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN"]}
    problems = report["problems"]
    assert any(p.startswith("TELEGRAM_BOT_TOKEN was refused by Telegram (HTTP 401)")
               and "@BotFather" in p for p in problems), problems
    assert report["bots"]["discord"] == {"ok": True, "username": "claude_test_bot"}
    assert dc.calls == ["/api/v10/users/@me"]  # (the fake Telegram records no refused call)
    assert any(f"cannot listen on 127.0.0.1:{port}" in p and f"pid {os.getpid()}" in p
               for p in problems), problems
    assert report["port"]["free"] is False
    assert any("claude-max-api-proxy" in w and "not this gateway" in w
               for w in report["warnings"]), report["warnings"]
    assert len(problems) == 2, problems  # nothing else: CLI, login, workspace are fine


def test_health_is_degraded_with_the_fix_when_the_cli_is_not_logged_in(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    env = {k: v for k, v in gateway_env.items() if k != "ANTHROPIC_API_KEY"}
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*COMMAND, "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and health.get("status") != "degraded":
            try:
                health = get_json(f"http://127.0.0.1:{port}/health")
            except OSError:
                if proc.poll() is not None:
                    break
            time.sleep(0.2)
        assert health.get("status") == "degraded", health
        problems = health["problems"]
        assert isinstance(problems, list) and len(problems) == 1
        assert "not logged in" in problems[0] and "/login" in problems[0]
        assert "CLAUDE_CODE_OAUTH_TOKEN" in problems[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    warning = [line for line in out.splitlines() if "WARNING" in line and "not logged in" in line]
    assert warning and "claude" in warning[0] and "/login" in warning[0], out


def test_the_env_file_reaches_the_cli_without_a_second_parser(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    # The API key the fake Anthropic API accepts only in the env file, not the environment:
    # the gateway reads the file and hands the CLI's variables on, so doctor sees a login.
    env = {k: v for k, v in gateway_env.items() if k != "ANTHROPIC_API_KEY"}
    xdg = tmp_path / "xdg"
    (xdg / "claude-max-gateway").mkdir(parents=True)
    (xdg / "claude-max-gateway" / "env").write_text(
        "# read by the gateway itself\nexport ANTHROPIC_API_KEY='sk-test'\n")
    env["XDG_CONFIG_HOME"] = str(xdg)
    config = write_config(tmp_path, free_port())
    result = subprocess.run([*COMMAND, "--config", str(config), "doctor", "--json"],
                            env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    assert report["auth"]["loggedIn"] is True, report["problems"]
    assert report["auth"].get("apiKeySource") == "ANTHROPIC_API_KEY"
    assert report["env_file"]["variables"] == ["ANTHROPIC_API_KEY"]
    assert "sk-test" not in result.stdout
