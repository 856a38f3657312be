"""The one place that knows how a Claude Code process is found, configured and ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

from gateway.engine.config import EngineConfig as EngineConfig  # re-exported (defined there)
from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

#: Variables that mark "we are inside a Claude Code session"; a nested CLI would misbehave.
NESTED_SESSION_VARS = frozenset(
    {
        "CLAUDECODE",
        "CLAUDE_CODE_ENTRYPOINT",
        "CLAUDE_CODE_SESSION",
        "CLAUDE_CODE_SESSION_ID",
        "CLAUDE_CODE_PARENT",
        "CLAUDE_CODE_SSE_PORT",
        "CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP",
    }
)

#: The biggest single JSON line we accept from the CLI (a tool result can be large).
MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CliInfo:
    path: str
    version: str
    source: str  # "config", "PATH" or "bundled"


def bundled_cli_path() -> Path | None:
    import claude_agent_sdk

    candidate = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return candidate if candidate.is_file() else None


def find_cli(configured: str = "") -> tuple[str, str]:
    """(path, source): the configured CLI, else ``claude`` on PATH, else the bundled one."""
    if configured:
        path = Path(configured).expanduser()
        resolved = shutil.which(str(path)) if not path.is_absolute() else str(path)
        if not resolved or not Path(resolved).is_file() or not os.access(resolved, os.X_OK):
            raise GatewayError(
                ErrorKind.CLI_MISSING,
                f"claude.cli_path is {configured!r}, but no executable is there."
                " Fix the path, or leave it empty to use `claude` from PATH.",
            )
        return resolved, "config"
    on_path = shutil.which("claude")
    if on_path:
        return on_path, "PATH"
    bundled = bundled_cli_path()
    if bundled is not None:
        return str(bundled), "bundled"
    raise GatewayError(
        ErrorKind.CLI_MISSING,
        "Claude Code CLI not found: no `claude` on PATH and none bundled with claude-agent-sdk."
        " Install it (npm install -g @anthropic-ai/claude-code) or set claude.cli_path.",
    )


async def cli_version(path: str, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    except (OSError, TimeoutError) as exc:
        raise GatewayError(
            ErrorKind.CLI_MISSING, f"cannot run {path} --version: {exc}"
        ) from exc
    if proc.returncode != 0:
        raise GatewayError(
            ErrorKind.CLI_MISSING,
            f"{path} --version failed (exit {proc.returncode}):"
            f" {err.decode(errors='replace')[:300]}",
        )
    return out.decode(errors="replace").strip().split(" ")[0]


async def cli_auth_status(path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """``claude auth status --json``: whether the CLI can authenticate (costs no quota)."""
    full = {**os.environ, **env}
    try:
        proc = await asyncio.create_subprocess_exec(
            path, "auth", "status", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    except (OSError, TimeoutError) as exc:
        return {"loggedIn": False, "error": f"cannot run {path} auth status: {exc}"}
    try:
        data = json.loads(out)
    except ValueError:
        return {"loggedIn": False, "error": (err or out).decode(errors="replace").strip()[:300]}
    return data if isinstance(data, dict) else {"loggedIn": False, "error": "unexpected output"}


def cli_environment(config: EngineConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Overrides applied over the gateway's environment for every CLI process.

    claude-agent-sdk merges these over ``os.environ``; variables that must not reach the
    CLI are therefore overridden with an empty value (the SDK offers no removal).
    """
    base = os.environ if base is None else base
    env: dict[str, str] = {}
    for name in base:
        if name in config.secret_env_vars or name in NESTED_SESSION_VARS:
            env[name] = ""
    env["BASH_MAX_TIMEOUT_MS"] = str(int(config.bash_max_timeout * 1000))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # The CLI refuses bypassPermissions as root unless told it runs in a sandbox; any
        # chat may switch its process to it (/mode auto), whatever the configured mode.
        env["IS_SANDBOX"] = "1"
    env.update(config.env)
    return env


def appended_system_text(config: EngineConfig, system: str | None) -> str:
    """What follows Claude Code's own prompt: the owner's instructions, then the client's."""
    return "\n\n".join(p for p in (config.append_system_prompt, system or "") if p.strip())


def build_options(
    config: EngineConfig,
    *,
    cli_path: str,
    model: str | None,
    system_file: str | None,
    resume: str | None,
    env: Mapping[str, str],
    stderr: Callable[[str], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    fork_at: str | None = None,
) -> ClaudeAgentOptions:
    """Options for one CLI process: full Claude Code prompt plus appended instructions.

    The appended text is never put on the command line (Linux caps one argument at
    128 KiB; a bigger ``system`` message failed with "Argument list too long"): it is in
    ``system_file``, written by :class:`PromptFiles`, and passed as
    ``--append-system-prompt-file``. The preset without ``append`` adds no argument, so
    the CLI uses its full Claude Code prompt.

    ``snapshot: False`` (sent in the ``initialize`` request; older CLIs ignore it): by
    default the CLI records a session's system prompt on its first request and sends that
    record on every resume, so a process started for a *changed* system text (a client's
    new ``system`` message, the owner's edited ``append_system_prompt``) would still send
    the old one (measured with 2.1.332).

    ``fork_at`` (a message uuid of the session ``resume``, see
    :class:`~gateway.engine.events.TurnMark`): the process loads that session only up to
    and including the message and continues it in a new session id (``--fork-session
    --resume-session-at``); the resumed session's transcript is left as it was.
    """
    extra_args: dict[str, str | None] = {}
    if system_file:
        extra_args["append-system-prompt-file"] = system_file
    return ClaudeAgentOptions(
        system_prompt={"type": "preset", "preset": "claude_code", "snapshot": False},
        permission_mode=config.permission_mode,  # type: ignore[arg-type]
        model=model,
        cwd=str(config.workspace),
        cli_path=cli_path,
        resume=resume,
        fork_session=bool(resume and fork_at),
        resume_session_at=fork_at if resume else None,
        include_partial_messages=True,
        env=dict(env),
        max_buffer_size=MAX_LINE_BYTES,
        stderr=stderr,
        extra_args=extra_args,
        # counted by the CLI per process, not per turn: see Engine._spent_budget
        max_budget_usd=config.max_turn_cost_usd or None,
        **dict(extra or {}),
    )


class PromptFiles:
    """Private files that carry text to CLI processes instead of their command line.

    Layout: ``<root>/<pid>-<random>/<random>.txt``. The root (default
    ``$TMPDIR/claude-max-gateway-<uid>``) must be a real folder owned by this user; it and
    the engine's own folder are mode 0700, every file 0600, written under a temporary name
    and renamed, so a CLI never reads half a file. The CLI reads the file once, while it
    starts (measured with 2.1.332: deleting it after ``connect`` changed nothing, on later
    turns or on ``--resume``); it is still kept until its process is closed. :meth:`open`
    removes the folders of gateway processes that are no longer running (a crash or a
    SIGKILL leaves them); :meth:`close` removes this engine's folder.
    """

    def __init__(self, root: Path | None = None) -> None:
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self.root = root or Path(tempfile.gettempdir()) / f"claude-max-gateway-{uid}"
        self.folder: Path | None = None

    def open(self) -> None:
        """Check or create the root, clean what dead gateways left, make our folder."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.root)
            if not stat.S_ISDIR(info.st_mode):
                raise GatewayError(
                    ErrorKind.CONFIG, f"{self.root} must be a folder, not a link or a file."
                )
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                raise GatewayError(
                    ErrorKind.CONFIG,
                    f"{self.root} belongs to another user (uid {info.st_uid}); the gateway"
                    " keeps system prompts there, so it refuses to use it. Remove it.",
                )
            if info.st_mode & 0o077:
                os.chmod(self.root, 0o700)
            removed = self._clean()
            if removed:
                log.info("removed %d folder(s) of prompt files left by stopped gateways",
                         removed)
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root))
        except OSError as exc:
            raise GatewayError(
                ErrorKind.CONFIG, f"cannot prepare the private folder {self.root}: {exc}"
            ) from exc

    def _clean(self) -> int:
        removed = 0
        for entry in self.root.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue  # not ours, or another engine of this very process
            if psutil.pid_exists(int(pid_text)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def write(self, text: str) -> Path:
        """A new private file holding ``text``, complete once its path is returned."""
        if self.folder is None:
            raise GatewayError(ErrorKind.CONFIG, "prompt files are not open")
        name = secrets.token_hex(8)
        final = self.folder / f"{name}.txt"
        partial = self.folder / f".{name}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
                out.write(text)
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return final

    def remove(self, path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


# ---------------------------------------------------------------------------- processes


def client_pid(client: ClaudeSDKClient) -> int | None:
    """The CLI's pid. The SDK does not expose it publicly; read it defensively."""
    transport = getattr(client, "_transport", None)
    process = getattr(transport, "_process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


def process_tree(pid: int | None) -> list[psutil.Process]:
    """The process and all its descendants (the CLI's Bash commands, their children…)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(procs: Iterable[psutil.Process]) -> int:
    """SIGKILL every process given; returns how many were signalled."""
    count = 0
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
            count += 1
        except psutil.Error:
            pass
    return count


def kill_tree_of(pid: int | None) -> int:
    """SIGKILL the process ``pid`` and all its descendants; returns how many were signalled."""
    return kill_tree(process_tree(pid))


def tree_rss(pid: int | None) -> int:
    total = 0
    for proc in process_tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total
