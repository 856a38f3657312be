"""gateway.service: launchd / systemd files for running the gateway at login."""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.service import (
    LAUNCHD_LABEL,
    detect_kind,
    entry_point,
    install_service,
    launchd_plist,
    linger_enabled,
    plan,
    render_service,
    systemd_unit,
    write_service,
)
from tests.conftest import system_binary

ARGS = ["--config", "/home/me/My Configs/gateway.toml"]


def exec_start_words(unit: str) -> list[str]:
    """ExecStart= split the way systemd does it (double quotes, backslash, %% and $$)."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(line.removeprefix("ExecStart="))
    return [word.replace("%%", "%").replace("$$", "$") for word in words]


def test_plist_parses_back_with_the_args(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    text = launchd_plist("/opt/cmg/bin/claude-max-api", ARGS, log, {"PATH": "/usr/bin:/bin"})
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == LAUNCHD_LABEL == "com.claude-max-gateway"
    assert plist["ProgramArguments"] == ["/opt/cmg/bin/claude-max-api", *ARGS]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(log)
    assert plist["EnvironmentVariables"] == {"PATH": "/usr/bin:/bin"}


def test_systemd_unit_exec_start_and_quoted_environment() -> None:
    exe = "/opt/my tools/claude-max-api"
    args = [*ARGS, "100%", "$HOME", 'say "hi"']
    unit = systemd_unit(exe, args, {"PATH": "/home/me/.local/bin:/usr/bin", "X": 'a "b" %c'})
    assert exec_start_words(unit) == [exe, *args]
    assert 'Environment="PATH=/home/me/.local/bin:/usr/bin"' in unit.splitlines()
    assert 'Environment="X=a \\"b\\" %%c"' in unit.splitlines()
    assert "Restart=on-failure" in unit
    assert "WantedBy=default.target" in unit
    assert "StandardOutput" not in unit  # the journal


def test_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = system_binary("systemd-analyze", "systemd")
    exe = tmp_path / "my tools" / "claude-max-api"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "claude-max-gateway.service"
    unit.write_text(systemd_unit(str(exe), ARGS, {"PATH": "/usr/bin"}))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_installed_unit_of_this_installation_passes_systemd_analyze(tmp_path: Path) -> None:
    # The unit `service install` writes, with this venv's real entry point in ExecStart.
    analyze = system_binary("systemd-analyze", "systemd")
    command = entry_point()
    p = plan("systemd", exe=command[0], args=[*command[1:], *ARGS], home=tmp_path,
             environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    write_service(p)
    assert p.path == tmp_path / "xdg/systemd/user/claude-max-gateway.service"
    result = subprocess.run(
        [analyze, "verify", str(p.path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "EnvironmentFile" not in p.contents and "/bin/sh" not in p.contents
    assert f'Environment="XDG_CONFIG_HOME={tmp_path / "xdg"}"' in p.contents.splitlines()


@pytest.mark.parametrize(
    "name",
    ["GATEWAY_API_KEYS", "TELEGRAM_BOT_TOKEN", "CMG_SERVER__PORT", "CLAUDE_CODE_OAUTH_TOKEN"],
)
def test_secrets_are_never_written(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=name):
        systemd_unit("/bin/x", [], {name: "s3cret"})
    with pytest.raises(ValueError, match=name):
        launchd_plist("/bin/x", [], tmp_path / "log", {name: "s3cret"})


@pytest.mark.parametrize("kind", ["launchd", "systemd"])
def test_install_service_writes_into_home(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_API_KEYS", "must-not-leak")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "must-not-leak-either")
    home = tmp_path / "home"
    exe = "/opt/cmg/bin/claude-max-api"
    result = install_service(kind, exe=exe, args=ARGS, home=home, dry_run=False)  # type: ignore[arg-type]

    assert len(result) == 1
    path, command = result[0]
    text = path.read_text(encoding="utf-8")
    assert "must-not-leak" not in text
    if kind == "launchd":
        assert path == home / "Library/LaunchAgents/com.claude-max-gateway.plist"
        uid = os.getuid()
        assert command == (
            f"launchctl enable gui/{uid}/com.claude-max-gateway"
            f" && launchctl bootstrap gui/{uid} {path}"
        )
        assert "load -w" not in command
        plist = plistlib.loads(text.encode())
        assert plist["ProgramArguments"][-3:] == [exe, *ARGS]
        assert "/opt/cmg/bin" in plist["EnvironmentVariables"]["PATH"].split(":")
        assert set(plist["EnvironmentVariables"]) == {"PATH"}
        assert (home / "Library/Logs/claude-max-gateway").is_dir()
    else:
        assert path == home / ".config/systemd/user/claude-max-gateway.service"
        assert command == (
            "systemctl --user daemon-reload && systemctl --user enable --now claude-max-gateway"
        )
        assert exec_start_words(text) == [exe, *ARGS]
        assert [line for line in text.splitlines() if line.startswith("Environment=")] == [
            line for line in text.splitlines() if line.startswith('Environment="PATH=')
        ]


def test_install_service_dry_run_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = install_service("systemd", exe="/x/claude-max-api", args=[], home=home, dry_run=True)
    assert result[0][0] == home / ".config/systemd/user/claude-max-gateway.service"
    assert not home.exists()
    path, text, command = render_service("systemd", exe="/x/claude-max-api", args=[], home=home)
    assert path == result[0][0] and command == result[0][1]
    assert "ExecStart=/x/claude-max-api" in text


def test_detect_kind() -> None:
    assert detect_kind("darwin") == "launchd"
    assert detect_kind("linux") == "systemd"
    with pytest.raises(ConfigError):
        detect_kind("win32")


def test_entry_point_is_this_installation_not_the_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The npm claude-max-api-proxy installs a `claude-max-api` too; PATH must not matter.
    impostor = tmp_path / "bin" / "claude-max-api"
    impostor.parent.mkdir()
    impostor.write_text("#!/usr/bin/env node\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", f"{impostor.parent}{os.pathsep}{os.environ['PATH']}")
    command = entry_point()
    assert str(impostor) not in command
    script = Path(sys.executable).parent / "claude-max-api"
    assert command == [str(script)]  # this venv's console script (its #! is this python)
    # an interpreter without the script: `python -m gateway.cli`, the symlink kept as is
    lone = tmp_path / "venv" / "bin" / "python"
    lone.parent.mkdir(parents=True)
    lone.symlink_to(sys.executable)
    assert entry_point(str(lone)) == [str(lone), "-m", "gateway.cli"]
    result = subprocess.run([*entry_point(str(lone)), "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "claude-max-api" in result.stdout, result.stderr


def test_launchd_plan_uses_bootstrap_and_bootout(tmp_path: Path) -> None:
    p = plan("launchd", exe="/x/bin/claude-max-api", args=ARGS, home=tmp_path, uid=501)
    assert p.start == [
        ["launchctl", "enable", "gui/501/com.claude-max-gateway"],
        ["launchctl", "bootstrap", "gui/501", str(p.path)],
    ]
    assert p.stop == [["launchctl", "bootout", "gui/501/com.claude-max-gateway"]]
    assert p.status == ["launchctl", "print", "gui/501/com.claude-max-gateway"]
    assert p.logs == tmp_path / "Library/Logs/claude-max-gateway/gateway.log"
    program = plistlib.loads(p.contents.encode())["ProgramArguments"]
    assert program == ["/x/bin/claude-max-api", *ARGS]  # no /bin/sh wrapper: one parser


def test_systemd_plan_commands() -> None:
    p = plan("systemd", exe="/x/bin/claude-max-api", args=[], home=Path("/home/me"),
             environ={})
    assert p.path == Path("/home/me/.config/systemd/user/claude-max-gateway.service")
    assert p.start[-1] == ["systemctl", "--user", "enable", "--now", "claude-max-gateway"]
    assert p.stop == [["systemctl", "--user", "disable", "--now", "claude-max-gateway"]]
    assert p.status[:3] == ["systemctl", "--user", "status"]
    assert p.logs == ["journalctl", "--user", "-u", "claude-max-gateway", "--no-pager",
                      "-n", "200"]


@pytest.mark.parametrize(
    ("stdout", "code", "expected"),
    [("yes\n", 0, True), ("no\n", 0, False), ("", 1, None), ("maybe\n", 0, None)],
)
def test_linger_enabled_reads_loginctl(stdout: str, code: int, expected: bool | None) -> None:
    # systemd-logind does not run in a container: loginctl's answers are given here.
    seen: list[list[str]] = []

    def loginctl(command: list[str]) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        return subprocess.CompletedProcess(command, code, stdout, "")

    assert linger_enabled("me", loginctl) is expected
    assert seen == [["loginctl", "show-user", "me", "--property=Linger", "--value"]]
