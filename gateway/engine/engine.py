"""The engine: the only road from a frontend to Claude Code.

Each conversation (``key``) has a worker task that owns its CLI process (a
``ClaudeSDKClient`` in streaming-input mode: the SDK requires that one task connects
and disconnects it). Turns of one conversation run one after the other; turns of
different conversations run in parallel up to ``max_parallel_turns``. At most
``max_live_sessions`` processes live at once; the least recently used idle one is
closed to make room, and comes back later with ``--resume`` of its latest session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from claude_agent_sdk import ClaudeSDKClient, ClaudeSDKError, SDKSessionInfo, get_session_messages
from claude_agent_sdk import list_sessions as list_cli_sessions

from gateway.engine.activity import (
    ActivityEntry,
    ActivityLog,
    ProcessReport,
    TranscriptEntry,
    TurnActivity,
    measure,
    transcript_entry,
)
from gateway.engine.api import Alert, AlertHandler, EngineStatus, Preferences
from gateway.engine.client_tools import (
    CallBroker,
    ToolMode,
    client_tools_server,
)
from gateway.engine.conversation import (
    Conversation,
    Outcome,
    Request,
    ToolSet,
    one_message,
    per_turn_cost,
    text_hash,
    user_content,
    with_note,
)
from gateway.engine.events import (
    FINAL_EVENTS,
    Event,
    Notice,
    Prompt,
    RateLimitStatus,
    SessionInfo,
    ToolCallsRequested,
    TurnError,
    TurnOptions,
    TurnResult,
    TurnStarted,
    Usage,
)
from gateway.engine.models import ModelCatalog
from gateway.engine.pool import ProcessPool, SpareKey
from gateway.engine.process import (
    CliInfo,
    EngineConfig,
    PromptFiles,
    appended_system_text,
    build_options,
    cli_environment,
    cli_version,
    find_cli,
)
from gateway.engine.session import (
    EXPECTED_EXIT_FILTER,
    SDK_QUERY_LOGGER,
    STDERR_TAIL_LINES,
    ClientFactory,
    CliSession,
    ExitWatch,
    alive,
    first_line,
    host_cli,
    stderr_text,
)
from gateway.engine.tools import SEND_FILE, SERVER_NAME, FileSink, send_file_server
from gateway.engine.translate import NO_CONVERSATION, TurnTranslator
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
        self._base_env = base_env
        self._client_factory = client_factory
        self._env: dict[str, str] = {}
        self._conversations: dict[str, Conversation] = {}
        self._turn_slots = asyncio.Semaphore(config.max_parallel_turns)
        self._alert_handlers: list[AlertHandler] = []
        self._file_sinks: dict[str, FileSink] = {}
        self._pool: ProcessPool[CliSession, Conversation] = ProcessPool(
            max_live=config.max_live_sessions, spares=config.spare_processes,
            turn_slots=self._turn_slots, tenants=self._conversations.values, evict=self._evict,
        )
        self._hosts: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._shutdown_expected = False
        self._prompt_files = PromptFiles(config.runtime_dir)
        logging.getLogger(SDK_QUERY_LOGGER).addFilter(EXPECTED_EXIT_FILTER)
        self.cli: CliInfo | None = None
        self.rate_limit: RateLimitStatus | None = None
        self._activity = ActivityLog()

    # ================================================================== lifecycle

    async def start(self) -> None:
        """Find the CLI, check it runs, open the store and the workspace."""
        path, source = find_cli(self.config.cli_path)
        self._env = cli_environment(self.config, self._base_env)
        version = await cli_version(path)
        self.cli = CliInfo(path=path, version=version, source=source)
        try:
            self.config.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GatewayError(
                ErrorKind.CONFIG, f"cannot create the workspace {self.config.workspace}: {exc}"
            ) from exc
        self._prompt_files.open()
        await self.store.open()
        log.info("Claude Code %s (%s, %s); workspace %s", version, source, path,
                 self.config.workspace)
        self._schedule_refill(self.catalog.default, "", "", ToolSet())

    @property
    def stopping(self) -> bool:
        """The engine is stopping, or was told the gateway is (:meth:`expect_shutdown`)."""
        return self._stopping or self._shutdown_expected

    def expect_shutdown(self) -> None:
        """The gateway got SIGTERM/SIGINT and will call :meth:`stop`: from now on a CLI
        process that ends (the same signal may have reached it) is no error."""
        self._shutdown_expected = True

    async def stop(self, grace: float = 5.0) -> None:
        """Fail queued turns, interrupt running ones, end every CLI process. No orphans."""
        self._stopping = True
        self._pool.stopping = True
        convs = list(self._conversations.values())
        for conv in convs:
            while conv.pending:
                conv.pending.popleft().emit(
                    TurnError(ErrorKind.SHUTDOWN, "The gateway is shutting down.")
                )
            if conv.current is not None and conv.live is not None:
                conv.current.interrupted = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conv.live.client.interrupt(), timeout=1.0)
            conv.evict = True
            conv.wake.set()
        workers = [c.worker for c in convs if c.worker is not None]
        if workers:
            _, still = await asyncio.wait(workers, timeout=grace)
            for conv in convs:  # a worker stuck in a turn: kill its tree, then it ends
                if conv.live is not None:
                    conv.live.kill()
            if still:
                await asyncio.wait(still, timeout=grace)
                for task in still:
                    task.cancel()
        for task in list(self._background):
            task.cancel()
        await self._pool.stop()
        if self._hosts:  # processes still starting close themselves once connected
            await asyncio.wait(list(self._hosts), timeout=grace + 10)
        self._prompt_files.close()
        await self.store.close()

    def add_alert_handler(self, handler: AlertHandler) -> None:
        """Called on turns that end by timeout or crash (bridges, TELEGRAM_NOTIFY_ID)."""
        self._alert_handlers.append(handler)

    def register_file_sink(self, prefix: str, sink: FileSink) -> None:
        """Conversations whose key starts with ``prefix`` get the ``send_file`` tool.

        The sink delivers what Claude sends (the chat bridges register one each). It takes
        effect for processes started after the call.
        """
        self._file_sinks[prefix] = sink

    def _profile(self, key: str) -> str:
        """Which tool set a conversation gets: the prefix of its file sink, or ""."""
        return next((p for p in self._file_sinks if key.startswith(p)), "")

    def _tools(
        self, profile: str, owner: dict[str, str], toolset: ToolSet, broker: CallBroker
    ) -> dict[str, Any]:
        """Extra process options: the send_file tool for chat frontends, the client's tools."""
        extra: dict[str, Any] = {}
        servers: dict[str, Any] = {}
        sink = self._file_sinks.get(profile) if profile else None
        if sink is not None:
            roots = (self.config.workspace, *self.config.send_file_dirs)
            servers[SERVER_NAME] = {**send_file_server(
                lambda: owner.get("key", ""), sink, cwd=self.config.workspace, roots=roots
            ), "alwaysLoad": True}
            extra["allowed_tools"] = [SEND_FILE]
        if toolset.fingerprint:
            servers["client"] = client_tools_server(toolset.tools, broker)
            if toolset.mode is ToolMode.CLIENT:
                extra["tools"] = []  # Claude Code's built-in tools off
            elif self.config.hybrid_hidden_tools:
                extra["disallowed_tools"] = list(self.config.hybrid_hidden_tools)
        if servers:
            extra["mcp_servers"] = servers
        return extra

    # ================================================================== public API

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
        early = self._refuse(prompt)
        if early is None:
            try:
                model = self.catalog.resolve(options.model) if options.model else None
            except GatewayError as exc:
                early = TurnError.from_exc(exc)
        if early is not None:
            yield early
            return
        conv = self._conversations.setdefault(key, Conversation(key))
        waiting = sum(len(r.listeners) for r in conv.pending)
        if waiting >= self.config.max_queued_per_conversation:
            yield TurnError(
                ErrorKind.BUSY,
                f"{waiting} messages are already waiting in this conversation;"
                " wait for them or stop the running turn.",
                retry_after=5.0,
            )
            return
        notice: Notice | None
        last = conv.pending[-1] if conv.pending else None
        if last is not None and last.can_take(options, model, prompt):
            req = last
            listener = req.listen(prompt)
            ahead = len(conv.pending) - 1 + (conv.current is not None)
            notice = Notice(
                "coalesced",
                f"merged with {len(req.listeners) - 1} waiting message(s) into the next turn",
                {"ahead": ahead, "prompts": len(req.listeners)},
            )
        else:
            req = Request(prompt, options, model,
                          watch=self._activity.watcher(key, options.origin))
            listener = req.listen(prompt)
            conv.pending.append(req)
            ahead = len(conv.pending) - 1 + (conv.current is not None)
            notice = (Notice("queued", f"queued behind {ahead} turn(s) of this conversation",
                             {"ahead": ahead})
                      if ahead and not prompt.tool_results else None)
        self._ensure_worker(conv)
        conv.wake.set()
        try:
            if notice is not None:
                yield notice
            while True:
                event = await listener.events.get()
                yield event
                if isinstance(event, FINAL_EVENTS):
                    return
        finally:
            if not req.done and req.leave(listener):
                req.abandoned = True
                req.gone.set()
                if req in conv.pending:
                    conv.pending.remove(req)
                elif conv.current is req and req.started:
                    self._spawn(self._interrupt_request(conv, req))
                else:  # waiting for a turn or process slot: withdrawn, it never starts
                    log.info("turn of %s withdrawn before it started: its client left", key)
                    self._spawn(self._pool.notify())

    async def interrupt(self, key: str) -> bool:
        """Stop the running turn of ``key`` (within about a second). False if none runs."""
        conv = self._conversations.get(key)
        if conv is None or conv.current is None:
            return False
        await self._interrupt_request(conv, conv.current)
        return True

    async def reset(self, key: str) -> None:
        """Forget the conversation: the next turn starts a fresh Claude Code session."""
        conv = self._conversations.get(key)
        if conv is not None:
            while conv.pending:
                conv.pending.popleft().emit(
                    TurnError(ErrorKind.INTERRUPTED, "The conversation was reset.")
                )
            if conv.current is not None:
                await self._interrupt_request(conv, conv.current)
            await self._evict(conv)
            self._conversations.pop(key, None)
        await self.store.delete_session(key)

    async def set_model(self, key: str, name: str | None) -> str | None:
        """Choose the model of a conversation for its next turns (history is kept).

        ``None`` or ``""`` goes back to the configured default. Returns the CLI model value.
        """
        model = self.catalog.resolve(name)
        await self.store.ensure_session(key, str(self.config.workspace))
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
        conv = self._conversations.get(key)
        if conv is not None and (conv.current is not None or conv.pending):
            raise GatewayError(
                ErrorKind.BUSY, "a turn is running in this conversation; stop it first"
            )
        if conv is not None:
            await self._evict(conv)
        await self.store.ensure_session(key, str(self.config.workspace))
        await self.store.set_session_fields(key, session_id=session_id)

    async def cli_sessions(self, limit: int = 20) -> list[SDKSessionInfo]:
        """Claude Code's own sessions of the workspace, newest first, terminal ones included.

        Read from the CLI's transcripts under ``~/.claude/projects`` (or
        ``$CLAUDE_CONFIG_DIR``) of the gateway's own environment.
        """
        return await asyncio.to_thread(
            list_cli_sessions, directory=str(self.config.workspace), limit=limit
        )

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
        return self.store

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
        if self._stopping:
            return TurnError(ErrorKind.SHUTDOWN, "The gateway is shutting down.")
        if self.cli is None:
            return TurnError(ErrorKind.CLI_MISSING, "The engine has not been started.")
        if prompt.is_empty():
            return TurnError(ErrorKind.INVALID_REQUEST, "The message is empty.")
        return None

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
            default_model=self.config.default_model,
        )

    def _ensure_worker(self, conv: Conversation) -> None:
        if conv.worker is None or conv.worker.done():
            conv.evict = False
            conv.worker = asyncio.create_task(self._work(conv), name=f"conversation {conv.key}")

    async def _work(self, conv: Conversation) -> None:
        try:
            while not self._stopping:
                if conv.pending:
                    req = conv.pending.popleft()
                    if not req.abandoned:
                        await self._run(conv, req)
                    continue
                if conv.evict or conv.live is None:
                    break
                conv.wake.clear()
                try:
                    await asyncio.wait_for(conv.wake.wait(), timeout=self.config.idle_timeout)
                except TimeoutError:
                    log.info("closing idle Claude Code process of %s", conv.key)
                    break
        except Exception:
            log.exception("conversation worker %s failed", conv.key)
        finally:
            await self._close_live(conv, kill=False)
            if conv.pending and not self._stopping:
                conv.worker = asyncio.create_task(self._work(conv))

    async def _run(self, conv: Conversation, req: Request) -> None:
        if not await self._acquire_turn_slot(req):
            req.ended.set()  # its client left while it waited: withdrawn, never started
            return
        try:
            await self._run_holding_slot(conv, req)
        finally:
            self._turn_slots.release()

    async def _acquire_turn_slot(self, req: Request) -> bool:
        """A parallel-turn slot for ``req``; False (holding none) if its client left first."""
        if req.abandoned:
            return False
        acquire = asyncio.ensure_future(self._turn_slots.acquire())
        gone = asyncio.ensure_future(req.gone.wait())
        try:
            await asyncio.wait([acquire, gone], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gone.cancel()
            await self._give_back_turn_slot(acquire)
            raise
        gone.cancel()
        if acquire.done() and not req.abandoned:
            return True
        await self._give_back_turn_slot(acquire)
        return False

    async def _give_back_turn_slot(self, acquire: asyncio.Future[Any]) -> None:
        if not acquire.done():
            acquire.cancel()  # not granted yet: the semaphore forgets this waiter
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
        elif not acquire.cancelled() and acquire.exception() is None:
            self._turn_slots.release()

    async def _run_holding_slot(self, conv: Conversation, req: Request) -> None:
        conv.current = req
        try:
            await self._run_turn(conv, req)
        except Exception as exc:  # a bug of ours must still end the turn
            log.exception("turn of %s failed", conv.key)
            (conv.current or req).emit(TurnError(ErrorKind.CRASHED, f"internal error: {exc}"))
        finally:
            # a turn suspended in client tool calls continues in a later request
            served = {req, conv.current or req}
            for r in served:
                if not r.done:
                    r.emit(TurnError(ErrorKind.INTERRUPTED, "The turn was interrupted."))
            conv.current = None
            conv.last_used = time.monotonic()
            for r in served:
                r.ended.set()
            if conv.refill is not None:
                self._schedule_refill(*conv.refill)
                conv.refill = None
            await self._pool.notify()

    async def _run_turn(self, conv: Conversation, req: Request) -> None:
        cwd = str(self.config.workspace)
        row = await self.store.ensure_session(conv.key, cwd)
        model = req.model or row.model or self.catalog.default
        system = req.options.system or ""
        system_hash = text_hash(system)
        toolset = ToolSet(req.options.tools, req.options.tool_mode)
        resume = row.session_id
        fresh_retry_allowed = True
        stale_retry_allowed = True

        while True:
            live = conv.live
            if live is not None and (live.dead or live.system_hash != system_hash
                                     or live.tools_hash != toolset.fingerprint
                                     or not alive(live.pid)):
                await self._close_live(conv, kill=live.dead)
                live = None
            started_now = live is None
            if live is None:
                try:
                    live = await self._open_live(conv, model, system, toolset, resume)
                except GatewayError as exc:
                    if resume and fresh_retry_allowed and NO_CONVERSATION in exc.message:
                        fresh_retry_allowed = False
                        req.emit(self._session_reset_notice(resume))
                        await self.store.set_session_fields(conv.key, session_id=None)
                        resume = None
                        continue
                    req.emit(TurnError.from_exc(exc))
                    return
            elif model and model != live.model:
                try:
                    await live.client.set_model(model)
                except ClaudeSDKError as exc:  # the process died while idle: start another
                    log.info("set_model on %s failed (%s); restarting", conv.key, exc)
                    live.dead = True
                    continue
                live.model = model
                req.emit(Notice("model_changed", f"model changed to {model}", {"model": model}))
            if req.interrupted or req.abandoned:
                req.emit(TurnError(ErrorKind.INTERRUPTED, "The turn was interrupted."))
                return
            if model and model != row.model:
                await self.store.set_session_fields(conv.key, model=model)

            req.started = True
            req.emit(TurnStarted(conv.key, resume, model, resumed=started_now and bool(resume)))
            outcome = await self._exchange(conv, live, req, cwd)
            if outcome is Outcome.STALE and stale_retry_allowed:
                # the process had died before it saw this turn: nothing was lost, go again
                stale_retry_allowed = False
                continue
            if outcome is Outcome.RESUME_FAILED and fresh_retry_allowed and resume:
                fresh_retry_allowed = False
                req.emit(self._session_reset_notice(resume))
                await self.store.set_session_fields(conv.key, session_id=None)
                resume = None
                await self._close_live(conv, kill=False)
                continue
            return

    def _session_reset_notice(self, session_id: str) -> Notice:
        return Notice(
            "session_reset",
            f"Claude Code could not find session {session_id} (its transcript is gone);"
            " this conversation continues in a new session without the earlier history.",
            {"lost_session_id": session_id},
        )

    async def _exchange(
        self, conv: Conversation, live: CliSession, req: Request, cwd: str
    ) -> Outcome:
        """Send the prompt and relay the CLI's messages until the turn ends.

        A turn that calls client tools is suspended inside the calls: this request ends with
        ToolCallsRequested, and the turn goes on in the conversation's next request, which
        brings the results (``req`` changes hands).
        """
        translator = TurnTranslator(mode=req.options.mode, cwd=cwd)
        live.broker.reset()
        message = {
            "type": "user",
            "message": {"role": "user", "content": user_content(req)},
            "parent_tool_use_id": None,
        }
        loop = asyncio.get_running_loop()
        timeout = self.config.activity_timeout
        received = False
        try:
            async with asyncio.timeout(timeout) as deadline:
                await live.client.query(one_message(message))
                async for msg in live.client.receive_response():
                    received = True
                    deadline.reschedule(loop.time() + timeout)
                    events = translator.feed(msg)
                    for call in translator.new_client_calls:
                        live.broker.announce(call.call_id, call.name, json.loads(call.arguments))
                    translator.new_client_calls.clear()
                    for event in events:
                        if isinstance(event, ToolCallsRequested):
                            req.emit(event)
                            deadline.reschedule(None)  # the CLI waits for the client
                            req = await self._suspend(conv, live, req)
                            deadline.reschedule(loop.time() + timeout)
                            continue
                        if isinstance(event, TurnResult):
                            event = per_turn_cost(event, live)
                            await self._record(conv, event, live)
                        elif isinstance(event, TurnError):
                            if translator.resume_failed:
                                return Outcome.RESUME_FAILED
                            if translator.session_id:
                                await self.store.set_session_fields(
                                    conv.key, session_id=translator.session_id
                                )
                            if not alive(live.pid):
                                live.dead = True
                            if req.interrupted and event.kind is not ErrorKind.INTERRUPTED:
                                event = TurnError(ErrorKind.INTERRUPTED,
                                                  "The turn was interrupted.")
                        req.emit(event)
                    if translator.rate_limit is not None:
                        self.rate_limit = translator.rate_limit
        except TimeoutError:
            live.dead = True
            live.kill()
            error = TurnError(
                ErrorKind.TIMEOUT,
                f"Claude Code showed no activity for {timeout:.0f} s, so the turn was stopped."
                " The conversation is kept: send the next message to continue.",
            )
            req.emit(error)
            await self._alert(conv, req, error)
            return Outcome.TIMEOUT
        except (ClaudeSDKError, OSError, ValueError) as exc:
            live.dead = True
            live.kill(deliberate=False)  # it failed on its own: its errors stay errors
            if req.interrupted:
                req.emit(TurnError(ErrorKind.INTERRUPTED, "The turn was interrupted."))
                return Outcome.INTERRUPTED
            if self.stopping:  # a signal to the whole gateway reached this process too
                log.info("CLI of %s ended during shutdown (%s)", conv.key, exc)
                req.emit(TurnError(ErrorKind.SHUTDOWN, "The gateway is shutting down."))
                return Outcome.INTERRUPTED
            if not received and not alive(live.pid):
                log.info("CLI of %s had exited before the turn (%s)", conv.key, exc)
                return Outcome.STALE
            detail = stderr_text(live.stderr) or str(exc)
            if NO_CONVERSATION in detail:
                return Outcome.RESUME_FAILED
            error = TurnError(
                ErrorKind.CRASHED,
                f"Claude Code stopped unexpectedly: {first_line(str(exc))}."
                " The conversation is kept: send the next message to continue.",
            )
            log.warning("CLI of %s crashed: %s | stderr: %s", conv.key, exc, detail[-500:])
            req.emit(error)
            await self._alert(conv, req, error)
            return Outcome.CRASHED
        if not req.done:
            live.dead = True
            error = TurnError(ErrorKind.CRASHED, "Claude Code ended the turn without a result.")
            req.emit(error)
            await self._alert(conv, req, error)
            return Outcome.CRASHED
        return Outcome.DONE

    async def _suspend(self, conv: Conversation, live: CliSession, req: Request) -> Request:
        """Wait for the client's tool results; returns the request the turn continues in.

        The wait frees this turn's parallel-turn slot. If the client sends a new message
        instead, goes away, or takes longer than ``client_tool_timeout``, the calls fail,
        the turn is interrupted and its end goes to the finished request (nobody): the
        conversation stays usable and a waiting message runs next.
        """
        self._turn_slots.release()
        try:
            nxt = await self._next_tool_results(conv)
        finally:
            await self._turn_slots.acquire()
        if nxt is None:
            live.broker.fail_all("The client did not return a result for this tool call.")
            self._spawn(self._interrupt_live(conv.key, live))
            return req
        unknown = live.broker.resolve(with_note(nxt.prompt))
        if unknown:
            log.info("tool results for unknown calls in %s: %s", conv.key, unknown)
        nxt.started = True  # it carries on a turn that is already running
        conv.current = nxt
        return nxt

    async def _next_tool_results(self, conv: Conversation) -> Request | None:
        deadline = time.monotonic() + self.config.client_tool_timeout
        while not self._stopping and not conv.evict:
            while conv.pending and conv.pending[0].abandoned:
                conv.pending.popleft()
            if conv.pending:
                if conv.pending[0].prompt.tool_results:
                    return conv.pending.popleft()
                return None  # a new message instead of results: it runs after this turn
            conv.wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("client tool results for %s did not come in time", conv.key)
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conv.wake.wait(), timeout=remaining)
        return None

    async def _interrupt_live(self, key: str, live: CliSession) -> None:
        try:
            await asyncio.wait_for(live.client.interrupt(), timeout=self.config.interrupt_grace)
        except Exception as exc:
            log.info("interrupt of %s's abandoned turn failed (%s); killing it", key, exc)
            live.dead = True
            live.kill()

    async def _record(self, conv: Conversation, result: TurnResult, live: CliSession) -> None:
        u = result.usage
        await self.store.record_turn(
            conv.key,
            session_id=result.session_id,
            model=live.model,
            system_hash=live.system_hash,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_creation_tokens=u.cache_creation_tokens,
            cost_usd=result.cost_usd,
        )

    async def _alert(self, conv: Conversation, req: Request, error: TurnError) -> None:
        alert = Alert(conv.key, req.options.origin, error)
        for handler in self._alert_handlers:
            try:
                await handler(alert)
            except Exception:
                log.exception("alert handler failed")

    async def _interrupt_request(self, conv: Conversation, req: Request) -> None:
        req.interrupted = True
        live = conv.live
        if live is None or conv.current is not req:
            return
        try:
            await asyncio.wait_for(live.client.interrupt(), timeout=self.config.interrupt_grace)
        except Exception as exc:
            log.info("interrupt of %s did not answer (%s); killing its process", conv.key, exc)
        try:
            await asyncio.wait_for(req.ended.wait(), timeout=self.config.interrupt_grace)
        except TimeoutError:
            pass
        if conv.current is req:
            live.dead = True
            live.kill()

    # ------------------------------------------------------------------ processes

    async def _open_live(
        self, conv: Conversation, model: str | None, system: str, toolset: ToolSet,
        resume: str | None,
    ) -> CliSession:
        """A process for ``conv``: a pre-started spare for a new session, else a new one."""
        profile = self._profile(conv.key)
        key: SpareKey = (model, text_hash(system), profile, toolset.fingerprint)
        live = None
        if not resume:
            starting = self._pool.refilling(key)
            if starting is not None:  # a matching spare is on its way: cheaper to wait for it
                await asyncio.wait([starting])
                conv.check_withdrawn()
            live = self._pool.take_spare(key)
        if live is None:
            live = await self._start_process(model, system, toolset, resume, profile,
                                             for_conversation=conv)
        else:
            log.info("using a pre-started Claude Code (pid %s) for %s", live.pid, conv.key)
        if not resume:
            # Not now: a process starting next to this first turn doubles its time (measured:
            # 389 -> 194 ms median; 700 -> 216 ms with a 200 KB prompt).
            conv.refill = (model, system, profile, toolset)
        live.owner["key"] = conv.key
        conv.live = live
        log.info("Claude Code for %s: pid %s, resume %s", conv.key, live.pid, resume)
        return live

    async def _start_process(
        self, model: str | None, system: str, toolset: ToolSet, resume: str | None,
        profile: str, *, for_conversation: Conversation | None,
    ) -> CliSession:
        """Start and connect a CLI process; it takes one of the live-process slots."""
        return await self._pool.start(
            lambda: self._launch(model, system, toolset, resume, profile),
            for_tenant=for_conversation,
        )

    async def _launch(
        self, model: str | None, system: str, toolset: ToolSet, resume: str | None,
        profile: str,
    ) -> CliSession:
        """Start and connect a CLI process in a slot already taken (given back on failure)."""
        assert self.cli is not None
        stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        said = asyncio.Event()  # the CLI wrote to stderr

        def on_stderr(line: str) -> None:
            stderr.append(line)
            said.set()

        owner: dict[str, str] = {}
        broker = CallBroker()
        prompt_file = await self._write_prompt_file(appended_system_text(self.config, system))
        options = build_options(
            self.config, cli_path=self.cli.path, model=model,
            system_file=str(prompt_file) if prompt_file else None, resume=resume,
            env=self._env, stderr=on_stderr,
            extra=self._tools(profile, owner, toolset, broker),
        )
        ready: asyncio.Future[tuple[ClaudeSDKClient, int | None]] = (
            asyncio.get_running_loop().create_future()
        )
        close_event = asyncio.Event()
        watch = ExitWatch(lambda: self.stopping)
        host = asyncio.create_task(host_cli(
            options, self._client_factory, (stderr, said), ready, close_event, watch=watch,
            unwanted=lambda: self._stopping, on_end=lambda: self._prompt_files.remove(prompt_file),
        ))
        self._hosts.add(host)
        host.add_done_callback(self._hosts.discard)
        client, pid = await ready
        return CliSession(client, pid, model, text_hash(system), profile, toolset.fingerprint,
                          broker, stderr, close_event, host, owner, exit_watch=watch)

    async def _write_prompt_file(self, text: str) -> Path | None:
        """The private file that carries the appended system text to a new process."""
        if not text:
            return None
        try:
            return await asyncio.to_thread(self._prompt_files.write, text)
        except (OSError, GatewayError) as exc:
            log.warning("cannot write the system prompt file for Claude Code: %s", exc)
            raise GatewayError(
                ErrorKind.CRASHED,
                f"Claude Code could not be started: the system prompt file could not be"
                f" written ({exc}).",
            ) from exc

    async def _close_live(self, conv: Conversation, *, kill: bool) -> None:
        live = conv.live
        if live is None:
            return
        conv.live = None
        await self._pool.close(live, kill=kill)
        log.info("closed Claude Code of %s (pid %s)", conv.key, live.pid)

    def _schedule_refill(
        self, model: str | None, system: str, profile: str, toolset: ToolSet
    ) -> None:
        """Keep a pre-started process ready for the next new conversation of this kind."""
        want: SpareKey = (model, text_hash(system), profile, toolset.fingerprint)
        self._pool.schedule_refill(
            want, lambda: self._launch(model, system, toolset, None, profile)
        )

    async def _evict(self, conv: Conversation) -> None:
        conv.evict = True
        conv.wake.set()
        worker = conv.worker
        if worker is not None and worker is not asyncio.current_task():
            await asyncio.shield(worker)
