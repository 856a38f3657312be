"""The engine: the only road from a frontend to Claude Code, and the one implementation
of the port (:class:`gateway.engine.api.EngineAPI`).

This module is the facade and its wiring. The work is done behind it, one room each:

* :mod:`gateway.engine.runner` -- each conversation's queue and worker: turns in order,
  retries, client-tool suspension, how each exchange with a CLI ended (``Outcome``);
* :mod:`gateway.engine.pool` -- live-process slots, pre-started spares, eviction;
* :mod:`gateway.engine.launcher` -- how one CLI process is built, connected and hosted;
* :mod:`gateway.engine.translate` -- the CLI's messages as the engine's events.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from claude_agent_sdk import ClaudeSDKClient, SDKSessionInfo, get_session_messages
from claude_agent_sdk import list_sessions as list_cli_sessions

from gateway.engine.activity import (
    ActivityEntry,
    ProcessReport,
    TranscriptEntry,
    TurnActivity,
    measure,
    transcript_entry,
)
from gateway.engine.api import (
    AlertHandler,
    EngineStatus,
    Pref,
    Preferences,
    UsageReport,
    UsageWarningHandler,
)
from gateway.engine.approvals import ApprovalRequest, Approver, Decision, Settled
from gateway.engine.config import Project
from gateway.engine.conversation import Conversation, ToolSet
from gateway.engine.events import (
    Event,
    Prompt,
    RateLimitStatus,
    SessionInfo,
    TurnError,
    TurnMark,
    TurnOptions,
    Usage,
)
from gateway.engine.launcher import Launcher, RunState
from gateway.engine.models import ModelCatalog
from gateway.engine.permissions import PermissionMode
from gateway.engine.process import CliInfo, EngineConfig
from gateway.engine.projects import Worktree
from gateway.engine.runner import SHUTTING_DOWN, ConversationRunner
from gateway.engine.session import EXPECTED_EXIT_FILTER, SDK_QUERY_LOGGER, ClientFactory
from gateway.engine.tools import FileSink
from gateway.engine.usage import UsageLedger
from gateway.errors import ErrorKind, GatewayError
from gateway.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        *,
        base_env: dict[str, str] | None = None,
        client_factory: ClientFactory = ClaudeSDKClient,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = ModelCatalog(config.model_aliases, config.default_model)
        self._state = RunState()
        self._launcher = Launcher(config, self._state, base_env=base_env,
                                  client_factory=client_factory)
        #: every turn's usage and every rate-limit report, and the warnings about them
        self.ledger = UsageLedger(
            store, timezone=config.usage_timezone, thresholds=config.usage_warn_at,
            max_turn_cost_usd=config.max_turn_cost_usd or None,
            scheduled_daily_cost_cap_usd=config.scheduled_daily_cost_cap_usd or None,
        )
        self._runner = ConversationRunner(config, store, self.catalog, self._launcher,
                                          self._state, self.ledger)
        #: (for tests and status) the runner's conversations and the process pool
        self._conversations = self._runner.conversations
        self._pool = self._runner.pool
        self._prompt_files = self._launcher.prompt_files
        self._activity = self._runner.activity
        self._preferences = StorePreferences(store)
        #: permission modes, always-allow rules and approval requests
        self.gate = self._runner.gate
        #: the configured projects (folders, worktrees)
        self._projects = self._runner.projects
        self._launcher.permissions = self._runner.can_use_tool
        logging.getLogger(SDK_QUERY_LOGGER).addFilter(EXPECTED_EXIT_FILTER)

    # ================================================================== lifecycle

    async def start(self) -> None:
        """Find the CLI, check it runs, open the store and the workspace."""
        self._projects.check_paths()
        cli = await self._launcher.find()
        try:
            self.config.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GatewayError(
                ErrorKind.CONFIG, f"cannot create the workspace {self.config.workspace}: {exc}"
            ) from exc
        self._prompt_files.open()
        await self.store.open()
        log.info("Claude Code %s (%s, %s); workspace %s", cli.version, cli.source, cli.path,
                 self.config.workspace)
        self._runner.schedule_refill(self.catalog.default, "", "", ToolSet())

    @property
    def cli(self) -> CliInfo | None:
        """The CLI found by :meth:`start` (None before)."""
        return self._launcher.cli

    @property
    def rate_limit(self) -> RateLimitStatus | None:
        """The latest rate-limit state the CLI reported."""
        return self._runner.rate_limit

    @property
    def _stopping(self) -> bool:
        return self._state.stopping

    @property
    def stopping(self) -> bool:
        """The engine is stopping, or was told the gateway is (:meth:`expect_shutdown`)."""
        return self._state.winding_down

    def expect_shutdown(self) -> None:
        """The gateway got SIGTERM/SIGINT and will call :meth:`stop`: from now on a CLI
        process that ends (the same signal may have reached it) is no error."""
        self._state.shutdown_expected = True

    async def stop(self, grace: float = 5.0) -> None:
        """Fail queued turns, interrupt running ones, end every CLI process. No orphans."""
        self._state.stopping = True
        await self._runner.stop(grace)
        await self._launcher.close(grace)
        await self.store.close()

    def add_alert_handler(self, handler: AlertHandler) -> None:
        """Called on turns that end by timeout or crash (bridges, TELEGRAM_NOTIFY_ID)."""
        self._runner.alert_handlers.append(handler)

    def add_usage_warning_handler(self, handler: UsageWarningHandler) -> None:
        """Called once per usage-limit window and reset when a warning threshold is reached
        or a request is refused for the limit (the notification chat)."""
        self.ledger.add_handler(handler)

    async def usage(self, hours: int = 48) -> UsageReport:
        return await self.ledger.report(hours)

    def register_file_sink(self, prefix: str, sink: FileSink) -> None:
        """Conversations whose key starts with ``prefix`` get the ``send_file`` tool.

        The sink delivers what Claude sends (the chat bridges register one each). It takes
        effect for processes started after the call.
        """
        self._launcher.file_sinks[prefix] = sink

    # ================================================================== public API

    def register_permissions(self, prefix: str, *, default: PermissionMode | None = None,
                             approver: Approver | None = None) -> None:
        """Conversations whose key starts with ``prefix`` run in ``default`` mode until they
        choose one, and ``approver`` shows their approval requests to a person (None: a
        request is denied at once, Claude is told that nobody can be asked)."""
        self.gate.register(prefix, default=default, approver=approver)

    async def permission_mode(self, key: str) -> PermissionMode:
        return await self.gate.mode(key)

    async def set_permission_mode(self, key: str, mode: PermissionMode | None) -> PermissionMode:
        """Choose the conversation's mode (None: back to its default); its process keeps
        its session and switches at the start of the next turn. Returns the mode now."""
        return await self.gate.set_mode(key, mode)

    def decide_approval(self, request_id: str, decision: Decision) -> Settled:
        """A person's answer to an approval request; the first answer counts."""
        return self.gate.decide(request_id, decision)

    def pending_approvals(self, key: str | None = None) -> list[ApprovalRequest]:
        return self.gate.pending(key)

    def resolve_model(self, name: str | None) -> str | None:
        return self.catalog.resolve(name)

    def model_names(self) -> list[str]:
        return self.catalog.public_names()

    def listed_models(self) -> list[str]:
        """Each model once, for ``/v1/models`` (the short names are accepted, not listed)."""
        return self.catalog.listed_names()

    async def turn(
        self, key: str, prompt: Prompt, options: TurnOptions | None = None
    ) -> AsyncIterator[Event]:
        """Run one turn; yields events, always ending with a TurnResult or TurnError.

        Closing the iterator early (the consumer went away) interrupts the turn if it
        is running and drops it if it is still queued.

        With ``options.coalesce``, a prompt that finds a queued coalescing turn with the
        same options joins it: the prompts go to Claude as one message and every caller
        reads the same events (the joiner's first event is a ``coalesced`` Notice). See
        :class:`TurnOptions`.
        """
        options = options or TurnOptions()
        early = self._refuse(prompt) or refuse_fork(options.fork_at)
        if early is None:
            try:
                model = self.catalog.resolve(options.model) if options.model else None
            except GatewayError as exc:
                early = TurnError.from_exc(exc)
        if early is not None:
            yield early
            return
        async for event in self._runner.submit(key, prompt, options, model):
            yield event

    async def interrupt(self, key: str) -> bool:
        """Stop the running turn of ``key`` (within about a second). False if none runs."""
        return await self._runner.interrupt(key)

    async def reset(self, key: str) -> None:
        """Forget the conversation: the next turn starts a fresh Claude Code session."""
        await self._runner.forget(key)
        await self.store.delete_session(key)

    async def set_model(self, key: str, name: str | None) -> str | None:
        """Choose the model of a conversation for its next turns (history is kept).

        ``None`` or ``""`` goes back to the configured default. Returns the CLI model value.
        """
        model = self.catalog.resolve(name)
        await self.store.ensure_session(key, str(self._projects.of(key).path))
        await self.store.set_session_fields(key, model=model)
        return model

    async def attach_session(self, key: str, session_id: str) -> None:
        """Continue an existing Claude Code session (e.g. one started in a terminal) in ``key``."""
        try:
            session_id = str(uuid.UUID(session_id.strip()))
        except ValueError:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST, f"{session_id!r} is not a Claude Code session id"
            ) from None
        if self._runner.busy(key):
            raise GatewayError(
                ErrorKind.BUSY, "a turn is running in this conversation; stop it first"
            )
        conv = self._conversations.get(key)
        if conv is not None:
            await self._runner.evict(conv)
        # the CLI keeps sessions per folder: the project's own (worktrees have none of theirs)
        cwd = str(self._projects.of(key).path)
        await self.store.ensure_session(key, cwd)
        await self.store.set_session_fields(key, session_id=session_id, cwd=cwd)

    async def cli_sessions(
        self, limit: int = 20, project: str | None = None
    ) -> list[SDKSessionInfo]:
        """Claude Code's own sessions of the project's folder (default: the workspace),
        newest first, terminal ones included.

        Read from the CLI's transcripts under ``~/.claude/projects`` (or
        ``$CLAUDE_CONFIG_DIR``) of the gateway's own environment.
        """
        folder = self._projects.get(project).path
        return await asyncio.to_thread(list_cli_sessions, directory=str(folder), limit=limit)

    # ================================================================== projects

    def projects(self) -> list[Project]:
        return list(self._projects.table.values())

    def project(self, name: str | None) -> Project:
        return self._projects.get(name)

    def project_of(self, key: str) -> Project:
        return self._projects.of(key)

    async def worktrees(self) -> list[Worktree]:
        return await self._projects.worktrees(await self._in_use())

    async def remove_worktree(self, name: str) -> Worktree:
        return await self._projects.remove_worktree(name, await self._in_use())

    async def _in_use(self) -> set[str]:
        return {row.cwd for row in await self.store.list_sessions()}

    async def describe(self, key: str) -> SessionInfo | None:
        row = await self.store.get_session(key)
        conv = self._conversations.get(key)
        if row is None:
            return None
        return self._info(row, conv)

    async def list_sessions(self) -> list[SessionInfo]:
        rows = await self.store.list_sessions()
        return [self._info(r, self._conversations.get(r.key)) for r in rows]

    def status(self) -> EngineStatus:
        convs = self._conversations.values()
        return EngineStatus(
            cli_path=self.cli.path if self.cli else None,
            cli_version=self.cli.version if self.cli else None,
            cli_source=self.cli.source if self.cli else None,
            live_processes=sum(1 for c in convs if c.live),
            sessions=len(self._conversations),
            running_turns=sum(1 for c in convs if c.current),
            queued_turns=sum(len(c.pending) for c in convs),
            spare_processes=len(self._pool.spares),
            rate_limit=self.rate_limit,
        )

    @property
    def workspace(self) -> Path:
        return self.config.workspace

    @property
    def default_model(self) -> str | None:
        return self.config.default_model

    @property
    def preferences(self) -> Preferences:
        return self._preferences

    def tables(self, group: Callable[[Store], T]) -> T:
        return group(self.store)

    def activity(self) -> dict[str, TurnActivity]:
        return self._activity.turns()

    def recent_events(self, limit: int = 50) -> list[ActivityEntry]:
        return self._activity.recent(limit)

    async def processes(self) -> ProcessReport:
        live: list[tuple[int | None, str | None, str | None]] = [
            (c.live.pid, k, c.live.model) for k, c in self._conversations.items() if c.live
        ]
        live += [(s.pid, None, s.model) for s in self._pool.spares]
        return await asyncio.to_thread(
            measure, live, self.config.max_live_sessions, self.config.spare_processes
        )

    async def transcript(self, key: str, limit: int = 20) -> list[TranscriptEntry]:
        row = await self.store.get_session(key)
        if row is None or not row.session_id:
            return []
        messages = await asyncio.to_thread(
            get_session_messages, row.session_id, directory=row.cwd
        )
        entries = [transcript_entry(m.type, m.message) for m in messages]
        return [e for e in entries if e is not None][-max(0, limit):]

    def live_pids(self) -> dict[str, int | None]:
        return {k: c.live.pid for k, c in self._conversations.items() if c.live}

    # ================================================================== internals

    def _refuse(self, prompt: Prompt) -> TurnError | None:
        if self._state.stopping:
            return TurnError(ErrorKind.SHUTDOWN, SHUTTING_DOWN)
        if self.cli is None:
            return TurnError(ErrorKind.CLI_MISSING, "The engine has not been started.")
        if prompt.is_empty():
            return TurnError(ErrorKind.INVALID_REQUEST, "The message is empty.")
        return None

    def _info(self, row: Any, conv: Conversation | None) -> SessionInfo:
        return SessionInfo(
            key=row.key,
            session_id=row.session_id,
            model=(conv.live.model if conv and conv.live and conv.live.model else row.model),
            cwd=row.cwd,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            turns=row.turns,
            usage=Usage(row.input_tokens, row.output_tokens, row.cache_read_tokens,
                        row.cache_creation_tokens),
            cost_usd=row.cost_usd,
            live=bool(conv and conv.live),
            busy=bool(conv and conv.current),
            queued=len(conv.pending) if conv else 0,
            pid=conv.live.pid if conv and conv.live else None,
            default_model=self._projects.of(row.key).default_model or self.config.default_model,
            project=self._projects.of(row.key).name,
            branch=self._projects.branch(row.key, row.cwd),
        )


def refuse_fork(mark: TurnMark | None) -> TurnError | None:
    """Why a turn cannot fork at ``mark`` (None: it can, or it does not fork)."""
    if mark is None:
        return None
    for what, value in (("session", mark.session_id), ("message", mark.message_id)):
        try:
            uuid.UUID(value)
        except (ValueError, TypeError, AttributeError):
            return TurnError(ErrorKind.INVALID_REQUEST,
                             f"fork_at must name the {what} by its UUID (a TurnResult's"
                             f" mark); {str(value)[:80]!r} is not one.")
    return None


class StorePreferences:
    """:class:`~gateway.engine.api.Preferences` on the engine's database (``conversation_meta``):
    only the names of :class:`~gateway.engine.api.Pref` go in and come out."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, key: str) -> dict[Pref, str]:
        stored = await self._store.get_meta(key)
        return {Pref(name): value for name, value in stored.items() if name in _PREF_NAMES}

    async def set(self, key: str, values: Mapping[Pref, str]) -> None:
        await self._store.set_meta(key, **{Pref(name).value: v for name, v in values.items()})

    async def find_keys(self, name: Pref, value: str) -> list[str]:
        return await self._store.find_keys(Pref(name).value, value)


_PREF_NAMES = frozenset(p.value for p in Pref)
