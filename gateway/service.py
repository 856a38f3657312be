"""Run the gateway as a per-user daemon that starts at login (launchd on macOS, systemd on Linux).

The file contents and the commands that activate them come from pure functions
(:func:`render_service`, :func:`plan`); :mod:`gateway.cli` writes the file and runs the
commands (``systemctl --user`` / ``launchctl bootstrap gui/<uid>``).

The command in the file is *this* installation's entry point (:func:`entry_point`, found from
``sys.executable``), never whatever ``claude-max-api`` comes first on ``PATH``: the npm
``claude-max-api-proxy`` installs a command of the same name.

Service files never hold secrets: only ``PATH`` (and ``XDG_CONFIG_HOME`` when it is set) and
the command line (with ``--config``). Secrets go in the env file
(:func:`gateway.config.default_env_file`), which the gateway reads itself at start, as it
does under ``make run`` and ``doctor``: one parser, so all three see the same variables.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config import APP_NAME, SECRET_ENV_VARS, default_env_file, is_secret_env_var
from gateway.errors import ConfigError

ServiceKind = Literal["launchd", "systemd"]

LAUNCHD_LABEL = "com.claude-max-gateway"
SYSTEMD_UNIT = APP_NAME
SYSTEMD_UNIT_NAME = f"{SYSTEMD_UNIT}.service"
#: The console script this package installs.
COMMAND_NAME = "claude-max-api"

#: Variables that must never be written into a service file.
_FORBIDDEN_ENV = SECRET_ENV_VARS | {"CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Where ``claude`` and friends usually live, after the directories found at install time.
_COMMON_BIN_DIRS = (
    "/opt/homebrew/bin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
)

#: A command the user's service manager runs: argv.
Command = list[str]


def entry_point(executable: str | None = None) -> list[str]:
    """The argv prefix that starts *this* installation of the gateway.

    The ``claude-max-api`` script next to ``executable`` (default ``sys.executable``) when
    it is this interpreter's (its ``#!`` line names it), else ``<executable> -m gateway.cli``.
    The interpreter's path is made absolute but not resolved: a venv's ``bin/python`` is
    a symlink whose target would lose the venv.
    """
    python = os.path.abspath(executable or sys.executable)
    script = Path(python).parent / COMMAND_NAME
    try:
        with script.open("rb") as handle:
            first = handle.readline().decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    if first.startswith("#!") and first[2:].strip() == python:
        return [str(script)]
    return [python, "-m", "gateway.cli"]


def _check_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if name in _FORBIDDEN_ENV or is_secret_env_var(name):
            raise ValueError(
                f"{name} must not be written into a service file; put it in the env file"
            )
        if "\n" in value or "\0" in value:
            raise ValueError(f"the value of {name} contains a newline or NUL")


def launchd_plist(
    exe: str, args: Sequence[str], log_path: Path, env: Mapping[str, str]
) -> str:
    """A macOS LaunchAgent that starts ``exe args`` at login and restarts it if it exits.

    ``env`` must include ``PATH`` so that ``claude`` is found (launchd's own PATH is minimal).
    """
    _check_env(env)
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [exe, *args],
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": str(log_path),
        "StandardErrorPath": str(log_path),
        "EnvironmentVariables": dict(env),
    }
    return plistlib.dumps(plist, sort_keys=False).decode("utf-8")


def _systemd_escape(text: str) -> str:
    """``%`` specifiers are expanded in every unit setting; a literal one is ``%%``."""
    return text.replace("%", "%%")


def _systemd_quote(word: str) -> str:
    """One ExecStart= word: quoted when needed; ``$`` escaped against variable expansion."""
    if "\n" in word or "\0" in word:
        raise ValueError(f"a command-line argument contains a newline or NUL: {word!r}")
    word = _systemd_escape(word).replace("$", "$$")
    if word and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(exe: str, args: Sequence[str], env: Mapping[str, str]) -> str:
    """A systemd user unit for ``exe args``; its output goes to the journal."""
    _check_env(env)
    if not Path(exe).is_absolute():
        raise ValueError(f"systemd needs an absolute path for the executable, got {exe!r}")
    lines = [
        "[Unit]",
        "Description=Claude Max Gateway (OpenAI-compatible API, chat bots, scheduled prompts)",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_systemd_quote(word) for word in (exe, *args)),
    ]
    for name, value in env.items():
        assignment = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'Environment="{_systemd_escape(assignment)}"')
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM to the gateway only: it ends its Claude processes itself, then the rest.
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def detect_kind(platform: str = sys.platform) -> ServiceKind:
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise ConfigError(
        f"running as a service is supported on macOS (launchd) and Linux (systemd), not {platform}"
    )


def _xdg_config_home(environ: Mapping[str, str]) -> str:
    xdg = environ.get("XDG_CONFIG_HOME", "")
    return xdg if xdg and Path(xdg).is_absolute() else ""


def service_path(
    kind: ServiceKind, home: Path, environ: Mapping[str, str] | None = None
) -> Path:
    """Where the service file of ``kind`` goes for the user whose home is ``home``
    (systemd's user units honour ``XDG_CONFIG_HOME``, as systemd does)."""
    if kind == "launchd":
        return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    xdg = _xdg_config_home(environ or {})
    return (Path(xdg) if xdg else home / ".config") / "systemd" / "user" / SYSTEMD_UNIT_NAME


def launchd_log_path(home: Path) -> Path:
    return home / "Library" / "Logs" / APP_NAME / "gateway.log"


def service_path_env(exe: str, home: Path) -> str:
    """A PATH for the service: the gateway's directory, where ``claude`` is now, the usual."""
    dirs: list[str] = [str(Path(exe).parent)]
    claude = shutil.which("claude")
    if claude:
        dirs.append(str(Path(claude).parent))
    dirs += [str(home / ".local" / "bin"), *_COMMON_BIN_DIRS]
    unique = list(dict.fromkeys(d for d in dirs if d and d != "."))
    return os.pathsep.join(unique)


def service_env(exe: str, home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """What the service file sets: PATH, and XDG_CONFIG_HOME when the installing shell has one
    (so the service reads the same config and env file as ``make run`` did)."""
    env = {"PATH": service_path_env(exe, home)}
    xdg = _xdg_config_home(environ)
    if xdg:
        env["XDG_CONFIG_HOME"] = xdg
    return env


@dataclass(frozen=True)
class ServicePlan:
    """A service file and the commands that manage it; nothing is done by building one."""

    kind: ServiceKind
    path: Path
    contents: str
    #: activate (and start) the written file
    start: list[Command]
    #: stop and deactivate it (run before the file is removed); failures are expected when
    #: it was never started
    stop: list[Command]
    #: after the file is removed
    after_remove: list[Command]
    status: Command
    #: the log: a command (journalctl) or, for launchd, the file to read
    logs: Command | Path


def plan(
    kind: ServiceKind,
    *,
    exe: str,
    args: Sequence[str],
    home: Path,
    environ: Mapping[str, str] | None = None,
    uid: int | None = None,
) -> ServicePlan:
    """Everything ``service install|uninstall|status|logs`` writes and runs for ``kind``."""
    environ = os.environ if environ is None else environ
    target = service_path(kind, home, environ)
    env = service_env(exe, home, environ)
    if kind == "launchd":
        user = uid if uid is not None else os.getuid()
        domain, service = f"gui/{user}", f"gui/{user}/{LAUNCHD_LABEL}"
        return ServicePlan(
            kind, target, launchd_plist(exe, args, launchd_log_path(home), env),
            start=[["launchctl", "enable", service], ["launchctl", "bootstrap", domain,
                                                      str(target)]],
            stop=[["launchctl", "bootout", service]],
            after_remove=[],
            status=["launchctl", "print", service],
            logs=launchd_log_path(home),
        )
    return ServicePlan(
        kind, target, systemd_unit(exe, args, env),
        start=[["systemctl", "--user", "daemon-reload"],
               ["systemctl", "--user", "enable", "--now", SYSTEMD_UNIT]],
        stop=[["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT]],
        after_remove=[["systemctl", "--user", "daemon-reload"]],
        status=["systemctl", "--user", "status", "--no-pager", SYSTEMD_UNIT],
        logs=["journalctl", "--user", "-u", SYSTEMD_UNIT, "--no-pager", "-n", "200"],
    )


def render_service(
    kind: ServiceKind, *, exe: str, args: Sequence[str], home: Path,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, str, str]:
    """(file path, file contents, commands that activate it, as one shell line) for ``kind``."""
    p = plan(kind, exe=exe, args=args, home=home, environ=environ)
    return p.path, p.contents, " && ".join(shlex.join(c) for c in p.start)


def write_service(p: ServicePlan) -> None:
    """Write the file (mode 644: it holds no secret), and the launchd log's folder."""
    p.path.parent.mkdir(parents=True, exist_ok=True)
    if p.kind == "launchd" and isinstance(p.logs, Path):
        p.logs.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.path.with_name(p.path.name + ".tmp")
    tmp.write_text(p.contents, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(p.path)


def install_service(
    kind: ServiceKind | None,
    *,
    exe: str,
    args: Sequence[str],
    home: Path,
    dry_run: bool,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[Path, str]]:
    """Write the service file for ``kind`` (None = this platform's) under ``home``.

    Returns ``(path written, commands that activate it)``; with ``dry_run`` nothing is
    written. The commands are not run here (see :func:`run_commands`).
    """
    kind = kind or detect_kind()
    exe = str(Path(exe).expanduser().absolute())
    p = plan(kind, exe=exe, args=args, home=home, environ=environ)
    if not dry_run:
        write_service(p)
    return [(p.path, " && ".join(shlex.join(c) for c in p.start))]


Runner = Callable[[Command], int]


def run_command(command: Command) -> int:
    """Run one service-manager command, its output to ours; 127 when it is not installed."""
    try:
        return subprocess.run(command, check=False).returncode
    except FileNotFoundError:
        return 127


def run_commands(commands: Sequence[Command], runner: Runner = run_command) -> tuple[int, str]:
    """Run ``commands`` in order until one fails: (its exit code or 0, that command)."""
    for command in commands:
        code = runner(command)
        if code != 0:
            return code, shlex.join(command)
    return 0, ""


def linger_enabled(
    user: str, runner: Callable[[Command], subprocess.CompletedProcess[str]] | None = None
) -> bool | None:
    """Whether systemd keeps ``user``'s services running without a login session
    (``loginctl show-user --property=Linger``); None when that cannot be found out."""
    command = ["loginctl", "show-user", user, "--property=Linger", "--value"]
    try:
        result = (runner or _capture)(command)
    except (OSError, subprocess.SubprocessError):
        return None
    value = result.stdout.strip().lower()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None
    return value == "yes"


def _capture(command: Command) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)


def linger_hint(user: str) -> str:
    return (
        f"linger is off for {user}: the service starts at your login and stops when you log out."
        f" On a headless machine run `sudo loginctl enable-linger {user}` so it starts at boot"
        " and keeps running."
    )


def env_file_note(environ: Mapping[str, str] | None = None) -> str:
    path = default_env_file(environ)
    return (
        f"secrets (GATEWAY_API_KEYS=..., TELEGRAM_BOT_TOKEN=...) go in {path} (chmod 600);"
        " the gateway reads it at start"
    )
