"""Run the gateway as a per-user daemon that starts at login (launchd on macOS, systemd on Linux).

The file contents come from pure functions; :func:`install_service` writes one file and
tells the user which command activates it. Nothing here runs ``launchctl``/``systemctl``.

Service files never hold secrets: only ``PATH`` and the command line (with ``--config``).
Secrets go in an optional environment file that the service reads at start
(:data:`ENV_FILE_NAME` next to the config, mode 600), one ``NAME=value`` per line.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from gateway.config import APP_NAME, SECRET_ENV_VARS, is_secret_env_var
from gateway.errors import ConfigError

ServiceKind = Literal["launchd", "systemd"]

LAUNCHD_LABEL = "com.claude-max-gateway"
SYSTEMD_UNIT_NAME = f"{APP_NAME}.service"
#: Read by the service at start, if it exists: secrets as ``NAME=value`` lines.
ENV_FILE_NAME = "env"

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

# Sources the env file (if any) with every assignment exported, then becomes the gateway.
# Values arrive as arguments ($1 = env file, the rest = command), so nothing is spliced in.
_LAUNCHD_WRAPPER = 'if [ -f "$1" ]; then set -a; . "$1"; set +a; fi; shift; exec "$@"'


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
    exe: str,
    args: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    *,
    env_file: Path | None = None,
) -> str:
    """A macOS LaunchAgent that starts ``exe args`` at login and restarts it if it exits.

    ``env`` must include ``PATH`` so that ``claude`` is found (launchd's own PATH is
    minimal). With ``env_file``, that file is sourced by ``/bin/sh`` before the gateway starts.
    """
    _check_env(env)
    program = [exe, *args]
    if env_file is not None:
        program = ["/bin/sh", "-c", _LAUNCHD_WRAPPER, APP_NAME, str(env_file), *program]
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": program,
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


def systemd_unit(
    exe: str,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    env_file: Path | None = None,
) -> str:
    """A systemd user unit for ``exe args``; its output goes to the journal.

    ``env_file``, if given, is read when present (``EnvironmentFile=-``).
    """
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
    if env_file is not None:
        lines.append(f"EnvironmentFile=-{_systemd_escape(str(env_file))}")
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


def service_path(kind: ServiceKind, home: Path) -> Path:
    """Where the service file of ``kind`` goes for the user whose home is ``home``."""
    if kind == "launchd":
        return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    return home / ".config" / "systemd" / "user" / SYSTEMD_UNIT_NAME


def env_file_path(home: Path) -> Path:
    """The optional secrets file the service reads: ``~/.config/claude-max-gateway/env``."""
    return home / ".config" / APP_NAME / ENV_FILE_NAME


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


def render_service(
    kind: ServiceKind, *, exe: str, args: Sequence[str], home: Path
) -> tuple[Path, str, str]:
    """(file path, file contents, command the user runs next) for ``kind``."""
    target = service_path(kind, home)
    env = {"PATH": service_path_env(exe, home)}
    env_file = env_file_path(home)
    if kind == "launchd":
        text = launchd_plist(exe, args, launchd_log_path(home), env, env_file=env_file)
        command = f"launchctl load -w {shlex.quote(str(target))}"
    else:
        text = systemd_unit(exe, args, env, env_file=env_file)
        command = f"systemctl --user daemon-reload && systemctl --user enable --now {APP_NAME}"
    return target, text, command


def install_service(
    kind: ServiceKind | None,
    *,
    exe: str,
    args: Sequence[str],
    home: Path,
    dry_run: bool,
) -> list[tuple[Path, str]]:
    """Write the service file for ``kind`` (None = this platform's) under ``home``.

    Returns ``(path written, command the user must run next)`` pairs; with ``dry_run``
    nothing is written (use :func:`render_service` to show the contents). The commands
    are never run here.
    """
    kind = kind or detect_kind()
    exe = str(Path(exe).expanduser().absolute())
    target, text, command = render_service(kind, exe=exe, args=args, home=home)
    if not dry_run:
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "launchd":
            launchd_log_path(home).parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
    return [(target, command)]
