"""gateway.service: launchd / systemd files for running the gateway at login."""

from __future__ import annotations

import plistlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.service import (
    LAUNCHD_LABEL,
    detect_kind,
    install_service,
    launchd_plist,
    render_service,
    systemd_unit,
)

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


def test_plist_with_env_file_wraps_the_command(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    text = launchd_plist(
        "/x/claude-max-api", ARGS, tmp_path / "log", {"PATH": "/bin"}, env_file=env_file
    )
    program = plistlib.loads(text.encode())["ProgramArguments"]
    assert program[:2] == ["/bin/sh", "-c"]
    assert program[-3:] == ["/x/claude-max-api", *ARGS]
    assert str(env_file) in program


def test_the_launchd_wrapper_sources_the_env_file_and_runs_the_command(tmp_path: Path) -> None:
    # Run the wrapper exactly as launchd would, with a stand-in for the gateway.
    env_file = tmp_path / "env"
    env_file.write_text("GATEWAY_API_KEYS=from-env-file\n")
    out = tmp_path / "out"
    text = launchd_plist(
        "/bin/sh",
        ["-c", 'printf "%s|%s" "$GATEWAY_API_KEYS" "$1" > "$0"', str(out), "arg with space"],
        tmp_path / "log",
        {"PATH": "/usr/bin:/bin"},
        env_file=env_file,
    )
    program = plistlib.loads(text.encode())["ProgramArguments"]
    subprocess.run(program, check=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.read_text() == "from-env-file|arg with space"


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
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = tmp_path / "my tools" / "claude-max-api"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "claude-max-gateway.service"
    unit.write_text(systemd_unit(str(exe), ARGS, {"PATH": "/usr/bin"}, env_file=tmp_path / "e"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    if "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr


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
        assert command == f"launchctl load -w {path}"
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
