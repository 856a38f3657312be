"""One live Claude Code process — the pool's real :class:`~gateway.engine.pool.Session` —
and the task that hosts it.

The SDK requires that one task connects and disconnects a ``ClaudeSDKClient``; that task is
:func:`host_cli`, so conversations may use the process from their own tasks and a
pre-started spare can be handed to any conversation. The client is built by a
:data:`ClientFactory` (``ClaudeSDKClient`` unless a test injects another).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ClaudeSDKError, CLINotFoundError

from gateway.engine.client_tools import CallBroker
from gateway.engine.pool import SpareKey
from gateway.engine.process import client_pid, kill_tree, kill_tree_of, process_tree
from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
#: the logger on which claude-agent-sdk reports that a CLI process ended under its reader
#: (ERROR "Fatal error in message reader: Command failed with exit code 143")
SDK_QUERY_LOGGER = "claude_agent_sdk._internal.query"

#: builds the SDK client of one process from its options
ClientFactory = Callable[[ClaudeAgentOptions], ClaudeSDKClient]


@dataclass(eq=False)
class ExitWatch:
    """Whether the end of one CLI process is the gateway's own doing: it is being closed or
    killed on purpose, or the gateway is shutting down (a SIGTERM to the gateway's process
    group or service reaches the CLI processes too)."""

    stopping: Callable[[], bool]
    expected: bool = False

    @property
    def deliberate(self) -> bool:
        return self.expected or self.stopping()


#: the watch of the CLI process whose SDK tasks are running (set in its host task; the
#: SDK's reader task inherits it)
_EXIT_WATCH: contextvars.ContextVar[ExitWatch | None] = contextvars.ContextVar(
    "cli_exit_watch", default=None
)


class _ExpectedExitFilter(logging.Filter):
    """Demotes the SDK's ERROR records to INFO for a process the gateway ended itself.

    Matched on the logger (the filter sits on :data:`SDK_QUERY_LOGGER` only) and on the
    engine's state for that process, never on the message text. A CLI that dies on its
    own keeps its ERROR (and the engine adds a WARNING with the stderr tail).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            watch = _EXIT_WATCH.get()
            if watch is not None and watch.deliberate:
                record.levelno, record.levelname = logging.INFO, "INFO"
                record.msg = f"{record.msg} (expected: the gateway stopped this process)"
        return True


EXPECTED_EXIT_FILTER = _ExpectedExitFilter()


@dataclass(eq=False)
class CliSession:
    """One CLI process. Its host task connected it and is the one that disconnects it."""

    client: ClaudeSDKClient
    pid: int | None
    model: str | None
    system_hash: str
    profile: str  # the file-sink prefix its tools were built for ("" = no tools)
    tools_hash: str  # the client tool set it offers ("" = none)
    broker: CallBroker
    stderr: deque[str]
    close_event: asyncio.Event
    host: asyncio.Task[None]
    #: the conversation using it; read by its tools at call time
    owner: dict[str, str] = field(default_factory=dict)
    dead: bool = False
    closed: bool = False
    #: the CLI reports total_cost_usd cumulated over the life of the process
    cost_seen: float = 0.0
    #: where that total started (a resumed session's saved total)
    cost_start: float = 0.0
    exit_watch: ExitWatch | None = None
    #: the CLI's permission mode now (set_permission_mode changes it between turns)
    permission_mode: str = ""

    @property
    def spare_key(self) -> SpareKey:
        return (self.model, self.system_hash, self.profile, self.tools_hash)

    def alive(self) -> bool:
        return alive(self.pid)

    def kill(self, *, deliberate: bool = True) -> None:
        """SIGKILL its process tree; on purpose (``deliberate``), its end is then no error
        in the log."""
        if deliberate and self.exit_watch is not None:
            self.exit_watch.expected = True
        kill_tree_of(self.pid)

    async def close(self, *, kill: bool) -> bool:
        """Let its host task disconnect it; no process of its tree is left."""
        if self.closed:
            return False
        self.closed = True
        if self.exit_watch is not None:
            self.exit_watch.expected = True
        procs = process_tree(self.pid)
        if kill:
            kill_tree(procs)
        self.close_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.host), timeout=15)
        except BaseException as exc:  # cleanup must go on
            log.debug("closing pid %s: %r", self.pid, exc)
        leftovers = [p for p in procs if _running(p)]
        if leftovers:
            kill_tree(leftovers)
        return True


async def host_cli(
    options: ClaudeAgentOptions,
    client_factory: ClientFactory,
    stderr_tail: tuple[deque[str], asyncio.Event],
    ready: asyncio.Future[tuple[ClaudeSDKClient, int | None]],
    close_event: asyncio.Event,
    *,
    watch: ExitWatch,
    unwanted: Callable[[], bool],
    on_end: Callable[[], None],
) -> None:
    """Connects one CLI process, waits until it is to be closed, disconnects it, then calls
    ``on_end`` (which removes its system prompt file). A process that connects when
    ``unwanted()`` (the engine stops) is closed at once."""
    _EXIT_WATCH.set(watch)  # this task's context; the SDK's reader task inherits it
    try:
        await _host(options, client_factory, stderr_tail, ready, close_event, unwanted)
    finally:
        on_end()


async def _host(
    options: ClaudeAgentOptions,
    client_factory: ClientFactory,
    stderr_tail: tuple[deque[str], asyncio.Event],
    ready: asyncio.Future[tuple[ClaudeSDKClient, int | None]],
    close_event: asyncio.Event,
    unwanted: Callable[[], bool],
) -> None:
    stderr, said = stderr_tail
    client = client_factory(options)
    try:
        await client.connect()
    except BaseException as exc:
        pid = client_pid(client)
        if isinstance(exc, Exception) and pid is not None:
            # it says why on stderr, read by the SDK in its own task: give that a moment
            # before the process is killed and the pipe closed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(said.wait(), timeout=1.0)
        kill_tree_of(pid)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(client.disconnect(), timeout=10)
        if isinstance(exc, Exception):
            # the reason is what the CLI printed, else what the SDK saw
            reason = stderr_text(stderr) or str(exc) or type(exc).__name__
            log.warning("Claude Code (%s) failed to start: %s | %s",
                        options.cli_path, exc, reason[-1000:])
        if not ready.done():
            if isinstance(exc, CLINotFoundError):
                error = GatewayError(ErrorKind.CLI_MISSING, f"Claude Code CLI not found: {exc}")
            elif isinstance(exc, ClaudeSDKError | OSError):
                error = GatewayError(
                    ErrorKind.CRASHED, f"Claude Code failed to start: {first_line(reason)}"
                )
            else:
                error = GatewayError(ErrorKind.SHUTDOWN, "start of Claude Code cancelled")
            ready.set_exception(error)
        if not isinstance(exc, Exception):
            raise
        return
    if ready.done() or unwanted():  # nobody waits for it any more
        if not ready.done():
            ready.set_exception(GatewayError(ErrorKind.SHUTDOWN, "shutting down"))
        close_event.set()
    else:
        ready.set_result((client, client_pid(client)))
    try:
        await close_event.wait()
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout=10)
        except BaseException as exc:  # cleanup must go on
            log.debug("disconnect: %r", exc)


def alive(pid: int | None) -> bool:
    """The process runs (a zombie does not)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: What the CLI says when ``--resume`` names a session it has no transcript of. Measured
#: (/work/shared/reference/claude-cli.md, "--resume"): a ``result`` of subtype
#: ``error_during_execution`` with ``errors: ["No conversation found with session ID: …"]``,
#: exit 1; the same text is on stderr when the process ends before a result. Neither the
#: CLI nor claude-agent-sdk gives this case a code or a subtype of its own, so this text is
#: the only signal; it is matched here and nowhere else.
_NO_CONVERSATION = "No conversation found"
#: What it says when ``--resume-session-at`` names a message its transcript lacks (measured
#: with 2.1.332: a ``result`` with ``is_error``, "No message found with message.uuid of:
#: <uuid>", exit 1): the fork point is gone, like a missing session.
_NO_MESSAGE = "No message found with message.uuid"


def names_missing_session(text: str) -> bool:
    """Whether CLI output (a result's error, stderr, a start failure) says the session to
    resume (or the message of it to resume at) does not exist."""
    return _NO_CONVERSATION in text or _NO_MESSAGE in text


def stderr_text(lines: deque[str]) -> str:
    """The stderr tail on one line."""
    return " | ".join(line.strip() for line in lines if line.strip())


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"
