"""The conversation runner: one worker task per conversation, running its turns in order.

Each conversation (``key``) has a queue of requests (:class:`Request`; coalesced prompts share
one) and a worker task that owns the conversation's CLI process. A conversation is in
:attr:`ConversationRunner.conversations` while its worker runs: from its first queued request
until its process is closed (idle, evicted, reset) with nothing queued. Turns of one conversation
run one after the other; turns of different conversations run in parallel up to
``max_parallel_turns``. The worker decides, from each exchange's :class:`Outcome`, whether to
retry (a process that had died while idle, a ``--resume`` whose transcript is gone), and it
suspends a turn inside client tool calls until the client brings the results.

Processes come from the :class:`~gateway.engine.pool.ProcessPool` (slots, spares, eviction),
which starts them with the :class:`~gateway.engine.launcher.Launcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    ClaudeSDKError,
    PermissionResult,
    PermissionResultDeny,
    ToolPermissionContext,
)

from gateway.engine.activity import ActivityLog
from gateway.engine.api import Alert, AlertHandler
from gateway.engine.approvals import ActivityClock
from gateway.engine.conversation import (
    Conversation,
    Outcome,
    Request,
    ToolSet,
    one_message,
    per_turn_cost,
    text_hash,
    turn_cost,
    user_content,
    with_note,
)
from gateway.engine.events import (
    FINAL_EVENTS,
    Event,
    Notice,
    Prompt,
    RateLimitStatus,
    ToolCallsRequested,
    TurnError,
    TurnMark,
    TurnOptions,
    TurnResult,
    TurnStarted,
)
from gateway.engine.gate import PermissionGate, TurnGate
from gateway.engine.launcher import Launcher, RunState
from gateway.engine.models import ModelCatalog
from gateway.engine.permissions import PermissionMode
from gateway.engine.pool import ProcessPool, SpareKey
from gateway.engine.process import EngineConfig
from gateway.engine.projects import Projects
from gateway.engine.session import (
    CliSession,
    alive,
    first_line,
    names_missing_session,
    stderr_text,
)
from gateway.engine.translate import TurnTranslator
from gateway.engine.usage import TurnUsage, UsageLedger
from gateway.errors import TURN_INTERRUPTED, ErrorKind, GatewayError
from gateway.store import Store

log = logging.getLogger(__name__)

SHUTTING_DOWN = "The gateway is shutting down."
#: Seconds between the end of a turn that took the spare and the start of the next one: a
#: CLI starting (~300 ms of a core) next to the turn's last events and its answer's way to
#: the client slowed that end (measured on 2 cores: from the CLI's result to the client's
#: end of stream 12.0 -> 6.8 ms); a new conversation arriving meanwhile starts it at once.
REFILL_AFTER = 0.25


class ConversationRunner:
    """The conversations' queues and workers, and how each turn goes."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        catalog: ModelCatalog,
        launcher: Launcher,
        state: RunState,
        ledger: UsageLedger,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.launcher = launcher
        self._state = state
        self.ledger = ledger
        self.conversations: dict[str, Conversation] = {}
        self.turn_slots = asyncio.Semaphore(config.max_parallel_turns)
        self.pool: ProcessPool[CliSession, Conversation] = ProcessPool(
            max_live=config.max_live_sessions, spares=config.spare_processes,
            turn_slots=self.turn_slots, tenants=self.conversations.values, evict=self.evict,
        )
        self.alert_handlers: list[AlertHandler] = []
        self.rate_limit: RateLimitStatus | None = None
        #: what the status page shows: running turns, recent errors and notices
        self.activity = ActivityLog()
        self._background: set[asyncio.Task[Any]] = set()
        #: permission modes, always-allow rules and approval requests (gateway/engine/gate.py)
        self.gate = PermissionGate(
            store, default=PermissionMode.from_cli(config.permission_mode),
            timeout=config.approval_timeout, workspace=config.workspace,
        )
        self._turn_gates: dict[str, TurnGate] = {}
        #: which folder, model and prompt each conversation's project means
        self.projects = Projects(config)
        self.gate.project_default = self._project_mode

    # ================================================================== requests

    async def submit(
        self, key: str, prompt: Prompt, options: TurnOptions, model: str | None
    ) -> AsyncIterator[Event]:
        """Queue (or coalesce) one prompt and yield its turn's events; see ``Engine.turn``."""
        conv = self.conversations.setdefault(key, Conversation(key))
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
                          watch=self.activity.watcher(key, options.origin))
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
                    self.spawn(self.interrupt_request(conv, req))
                else:  # waiting for a turn or process slot: withdrawn, it never starts
                    log.info("turn of %s withdrawn before it started: its client left", key)
                    self.spawn(self.pool.notify())

    async def interrupt(self, key: str) -> bool:
        """Stop the running turn of ``key``. False if none runs."""
        conv = self.conversations.get(key)
        if conv is None or conv.current is None:
            return False
        self.gate.cancel(key)  # a request waiting for approval is denied
        await self.interrupt_request(conv, conv.current)
        return True

    async def forget(self, key: str) -> None:
        """End the queued and running turns of ``key`` and close its process."""
        conv = self.conversations.get(key)
        if conv is None:
            return
        fail_pending(conv, TurnError(ErrorKind.INTERRUPTED, "The conversation was reset."))
        if conv.current is not None:
            self.gate.cancel(key, "The conversation was reset.")
            await self.interrupt_request(conv, conv.current)
        await self.evict(conv)
        self._leave(conv)

    def _leave(self, conv: Conversation) -> None:
        """Take ``conv`` out of the table, unless a newer entry of its key took its place
        (a message that came meanwhile); the store keeps its session."""
        if self.conversations.get(conv.key) is conv:
            del self.conversations[conv.key]

    def busy(self, key: str) -> bool:
        conv = self.conversations.get(key)
        return conv is not None and (conv.current is not None or bool(conv.pending))

    async def stop(self, grace: float) -> None:
        """Fail queued turns, interrupt running ones, end the workers and the pool."""
        self.pool.stopping = True
        convs = list(self.conversations.values())
        for conv in convs:
            self.gate.cancel(conv.key, SHUTTING_DOWN)
            fail_pending(conv, TurnError(ErrorKind.SHUTDOWN, SHUTTING_DOWN))
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
        await self.pool.stop()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ================================================================== the worker

    def _ensure_worker(self, conv: Conversation) -> None:
        if conv.worker is None or conv.worker.done():
            conv.evict = False
            conv.worker = asyncio.create_task(self._work(conv), name=f"conversation {conv.key}")

    async def _work(self, conv: Conversation) -> None:
        try:
            while not self._state.stopping:
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
            await self.close_live(conv, kill=False)
            if conv.pending and not self._state.stopping:
                conv.worker = asyncio.create_task(self._work(conv))
            elif conv.current is None:
                # Its process is closed and nothing waits: nothing of it is left to keep,
                # so it leaves the table until its next message; kept, every conversation
                # since the start stayed in memory.
                self._leave(conv)

    async def _run(self, conv: Conversation, req: Request) -> None:
        if not await self._acquire_turn_slot(req):
            req.ended.set()  # its client left while it waited: withdrawn, never started
            return
        try:
            await self._run_holding_slot(conv, req)
        finally:
            self.turn_slots.release()

    async def _acquire_turn_slot(self, req: Request) -> bool:
        """A parallel-turn slot for ``req``; False (holding none) if its client left first."""
        if req.abandoned:
            return False
        acquire = asyncio.ensure_future(self.turn_slots.acquire())
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
            self.turn_slots.release()

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
                    r.emit(TurnError(ErrorKind.INTERRUPTED, TURN_INTERRUPTED))
            conv.current = None
            self._turn_gates.pop(conv.key, None)
            self.gate.cancel(conv.key, "The turn ended.")
            conv.last_used = time.monotonic()
            for r in served:
                r.ended.set()
            if conv.refill is not None:
                self.schedule_refill(*conv.refill, after=REFILL_AFTER)
                conv.refill = None
            await self.pool.notify()

    # ================================================================== one turn

    async def _run_turn(self, conv: Conversation, req: Request) -> None:
        """Run ``req`` to its end, retrying what may be retried (see :class:`Outcome`)."""
        project = self.projects.of(conv.key)
        try:
            workdir = await self.workdir(conv.key)
        except GatewayError as exc:  # a worktree could not be made
            req.emit(TurnError.from_exc(exc))
            return
        cwd = str(workdir)
        row = await self.store.ensure_session(conv.key, cwd)
        if row.cwd != cwd:
            await self.store.set_session_fields(conv.key, cwd=cwd)
        pconf = self.projects.process_config(project, workdir)
        model = req.model or row.model or (
            self.catalog.resolve(project.default_model) if project.default_model
            else self.catalog.default)
        system = req.options.system or ""
        system_hash = text_hash(system)
        toolset = ToolSet(req.options.tools, req.options.tool_mode)
        #: a fork starts from its mark's session, whichever conversation that was
        fork = req.options.fork_at
        resume = fork.session_id if fork is not None else row.session_id
        fresh_retry_allowed = True
        stale_retry_allowed = True

        async def start_fresh(lost: str) -> None:
            nonlocal resume, fresh_retry_allowed, fork
            fresh_retry_allowed = False
            req.emit(session_reset_notice(lost, fork))
            await self.store.set_session_fields(conv.key, session_id=None)
            resume = fork = None

        if fork is not None:  # the process holds the session as it is now, not the mark's
            await self.close_live(conv, kill=False)
        while True:
            live = conv.live
            if live is not None and (live.dead or self._spent_budget(live)
                                     or live.system_hash != system_hash
                                     or live.tools_hash != toolset.fingerprint
                                     or not alive(live.pid)):
                await self.close_live(conv, kill=live.dead)
                live = None
            started_now = live is None
            if live is None:
                try:
                    live = await self.open_live(
                        conv, model, system, toolset, resume, pconf,
                        fork_at=None if fork is None else fork.message_id)
                except GatewayError as exc:
                    if resume and fresh_retry_allowed and names_missing_session(exc.message):
                        await start_fresh(resume)
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
            mode = await self.gate.turn_mode(conv.key, req.options)
            if live.permission_mode != mode.cli:
                try:  # the same process and session, another mode
                    await live.client.set_permission_mode(mode.cli)  # type: ignore[arg-type]
                except ClaudeSDKError as exc:
                    log.info("set_permission_mode on %s failed (%s); restarting", conv.key, exc)
                    live.dead = True
                    continue
                live.permission_mode = mode.cli
            self._turn_gates[conv.key] = TurnGate(mode, lambda n: (conv.current or req).emit(n))
            if req.interrupted or req.abandoned:
                req.emit(TurnError(ErrorKind.INTERRUPTED, TURN_INTERRUPTED))
                return
            if model and model != row.model:
                await self.store.set_session_fields(conv.key, model=model)

            req.started = True
            req.emit(TurnStarted(conv.key, resume, model, resumed=started_now and bool(resume)))
            outcome = await self._exchange(conv, live, req, cwd)
            if outcome is Outcome.STALE and stale_retry_allowed:
                stale_retry_allowed = False
                continue
            if outcome is Outcome.RESUME_FAILED and fresh_retry_allowed and resume:
                await start_fresh(resume)
                await self.close_live(conv, kill=False)
                continue
            return

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
        gate = self._turn_gates.get(conv.key)
        try:
            async with asyncio.timeout(timeout) as deadline:
                clock = ActivityClock(timeout, deadline, loop.time)
                if gate is not None:  # held while a person decides on a permission request
                    gate.clock = clock
                await live.client.query(one_message(message))
                async for msg in live.client.receive_response():
                    received = True
                    clock.touch()
                    events = translator.feed(msg)
                    for call in translator.new_client_calls:
                        live.broker.announce(call.call_id, call.name, json.loads(call.arguments))
                    translator.new_client_calls.clear()
                    for event in events:
                        if isinstance(event, ToolCallsRequested):
                            req.emit(event)
                            clock.pause()  # the CLI waits for the client
                            req = await self._suspend(conv, live, req)
                            clock.resume()
                            continue
                        if isinstance(event, TurnResult):
                            event = per_turn_cost(event, live)
                            await self._record(conv, event, live, req)
                        elif isinstance(event, TurnError):
                            await self._record_failed(conv, event, live, req, translator)
                            if translator.resume_failed:
                                return Outcome.RESUME_FAILED
                            if translator.session_id:
                                await self.store.set_session_fields(
                                    conv.key, session_id=translator.session_id
                                )
                            if not alive(live.pid):
                                live.dead = True
                            if req.interrupted and event.kind is not ErrorKind.INTERRUPTED:
                                event = TurnError(ErrorKind.INTERRUPTED, TURN_INTERRUPTED)
                        req.emit(event)
                    if translator.rate_limit not in (None, self.rate_limit):
                        self.rate_limit = translator.rate_limit
                        self.spawn(self.ledger.saw_rate_limit(translator.rate_limit))
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
                req.emit(TurnError(ErrorKind.INTERRUPTED, TURN_INTERRUPTED))
                return Outcome.INTERRUPTED
            if self._state.winding_down:  # a signal to the whole gateway reached it too
                log.info("CLI of %s ended during shutdown (%s)", conv.key, exc)
                req.emit(TurnError(ErrorKind.SHUTDOWN, SHUTTING_DOWN))
                return Outcome.INTERRUPTED
            if not received and not alive(live.pid):
                log.info("CLI of %s had exited before the turn (%s)", conv.key, exc)
                return Outcome.STALE
            detail = stderr_text(live.stderr) or str(exc)
            if names_missing_session(detail):
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

    # ================================================================== client tools

    async def can_use_tool(
        self, owner: dict[str, str], tool: str, tool_input: dict[str, Any],
        context: ToolPermissionContext,
    ) -> PermissionResult:
        """A CLI process asks whether a tool may run: the gate decides, for the
        conversation that uses the process at the time of the call."""
        key = owner.get("key", "")
        conv = self.conversations.get(key)
        req = conv.current if conv is not None else None
        if req is None:
            return PermissionResultDeny(message="No turn is running in this conversation.")
        return await self.gate.check(key, req.options.origin, self._turn_gates.get(key),
                                     tool, tool_input, context)

    async def _suspend(self, conv: Conversation, live: CliSession, req: Request) -> Request:
        """Wait for the client's tool results; returns the request the turn continues in.

        The wait frees this turn's parallel-turn slot. If the client sends a new message
        instead, goes away, or takes longer than ``client_tool_timeout``, the calls fail,
        the turn is interrupted and its end goes to the finished request (nobody): the
        conversation stays usable and a waiting message runs next.
        """
        self.turn_slots.release()
        try:
            nxt = await self._next_tool_results(conv)
        finally:
            await self.turn_slots.acquire()
        if nxt is None:
            live.broker.fail_all("The client did not return a result for this tool call.")
            self.spawn(self._interrupt_live(conv.key, live))
            return req
        unknown = live.broker.resolve(with_note(nxt.prompt))
        if unknown:
            log.info("tool results for unknown calls in %s: %s", conv.key, unknown)
        nxt.started = True  # it carries on a turn that is already running
        conv.current = nxt
        return nxt

    async def _next_tool_results(self, conv: Conversation) -> Request | None:
        deadline = time.monotonic() + self.config.client_tool_timeout
        while not self._state.stopping and not conv.evict:
            while conv.pending and conv.pending[0].abandoned:
                conv.pending.popleft()
            if conv.pending:
                nxt = conv.pending[0]
                if nxt.prompt.tool_results and nxt.options.fork_at is None:
                    return conv.pending.popleft()
                # a new message instead of results (or results for another branch: a
                # fork's go to its new session as text): it runs after this turn
                return None
            conv.wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("client tool results for %s did not come in time", conv.key)
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conv.wake.wait(), timeout=remaining)
        return None

    # ================================================================== interrupts, records

    async def _interrupt_live(self, key: str, live: CliSession) -> None:
        try:
            await asyncio.wait_for(live.client.interrupt(), timeout=self.config.interrupt_grace)
        except Exception as exc:
            log.info("interrupt of %s's abandoned turn failed (%s); killing it", key, exc)
            live.dead = True
            live.kill()

    async def interrupt_request(self, conv: Conversation, req: Request) -> None:
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

    def _spent_budget(self, live: CliSession) -> bool:
        """The CLI counts claude.max_turn_cost_usd per process (measured with 2.1.332: the
        third turn of one process stopped at a $0.25 budget): a process that has spent
        anything is replaced (resuming the conversation) so each turn gets the whole budget."""
        return bool(self.config.max_turn_cost_usd) and live.cost_seen > live.cost_start

    def _project(self, conv: Conversation) -> str:
        """The project a conversation's usage counts for (its name)."""
        return self.projects.of(conv.key).name

    def _project_mode(self, key: str) -> PermissionMode | None:
        mode = self.projects.of(key).permission_mode
        return PermissionMode.from_cli(mode) if mode else None

    async def workdir(self, key: str) -> Path:
        """The folder a conversation's processes run in: its project's (see
        :class:`gateway.engine.projects.Projects`)."""
        return await self.projects.workdir(key, self.store)

    async def _record_failed(self, conv: Conversation, error: TurnError, live: CliSession,
                             req: Request, translator: TurnTranslator) -> None:
        """A failed turn still spent what the CLI counted; a refusal for the usage limit
        warns the owner."""
        if error.kind is ErrorKind.RATE_LIMITED:
            self.spawn(self.ledger.refused(translator.rate_limit or self.rate_limit,
                                           error.retry_after))
        total, usage = translator.result_total_cost, translator.result_usage
        if total is None or usage is None:
            return
        cost = turn_cost(total, live)
        if cost <= 0 and usage.prompt_tokens == 0:
            return
        await self.ledger.turn(TurnUsage(
            conv.key, req.options.origin, self._project(conv),
            translator.model or live.model or "", translator.session_id, usage, cost, total,
            ok=False))

    async def _record(self, conv: Conversation, result: TurnResult, live: CliSession,
                      req: Request) -> None:
        await self.ledger.turn(TurnUsage(
            conv.key, req.options.origin, self._project(conv),
            result.model or live.model or "", result.session_id, result.usage,
            result.cost_usd, live.cost_seen))
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
        for handler in self.alert_handlers:
            try:
                await handler(alert)
            except Exception:
                log.exception("alert handler failed")

    # ================================================================== processes

    async def open_live(
        self, conv: Conversation, model: str | None, system: str, toolset: ToolSet,
        resume: str | None, config: EngineConfig | None = None, *,
        fork_at: str | None = None,
    ) -> CliSession:
        """A process for ``conv``: a pre-started spare for a new session, else a new one.
        ``config``: its project's (spares are started for the default project only).
        ``fork_at``: a message of ``resume``; the process forks that session there instead
        of continuing it (never a spare: a spare is a new session)."""
        config = config or self.config
        profile = self.launcher.profile(conv.key)
        key: SpareKey = (model, text_hash(system), profile, toolset.fingerprint)
        live = None
        default = config is self.config
        if not resume and default:
            starting = self.pool.hurry_refill(key)
            if starting is not None:  # a matching spare is on its way: cheaper to wait for it
                await asyncio.wait([starting])
                conv.check_withdrawn()
            live = self.pool.take_spare(key)
        if live is None:
            live = await self.pool.start(
                lambda: self.launcher.launch(model, system, toolset, resume, profile,
                                             config, fork_at=fork_at),
                for_tenant=conv,
            )
        else:
            log.info("using a pre-started Claude Code (pid %s) for %s", live.pid, conv.key)
        if not resume and default:
            # Not now: a process starting next to this first turn doubles its time (measured:
            # 389 -> 194 ms median; 700 -> 216 ms with a 200 KB prompt).
            conv.refill = (model, system, profile, toolset)
        live.owner["key"] = conv.key
        if resume and not fork_at:
            # the CLI's running cost total goes on from what its transcript saved; a fork's
            # starts at 0 (measured with 2.1.332: its first result's total_cost_usd was that
            # turn's cost alone, after three turns of the source session)
            live.cost_seen = live.cost_start = await self.ledger.baseline(resume)
        conv.live = live
        if fork_at:
            log.info("Claude Code for %s: pid %s, fork of %s at %s", conv.key, live.pid,
                     resume, fork_at)
        else:
            log.info("Claude Code for %s: pid %s, resume %s", conv.key, live.pid, resume)
        return live

    async def close_live(self, conv: Conversation, *, kill: bool) -> None:
        live = conv.live
        if live is None:
            return
        conv.live = None
        await self.pool.close(live, kill=kill)
        log.info("closed Claude Code of %s (pid %s)", conv.key, live.pid)

    def schedule_refill(
        self, model: str | None, system: str, profile: str, toolset: ToolSet, *,
        after: float = 0.0,
    ) -> None:
        """Keep a pre-started process ready for the next new conversation of this kind
        (started ``after`` seconds from now, or as soon as a new conversation needs it)."""
        want: SpareKey = (model, text_hash(system), profile, toolset.fingerprint)
        self.pool.schedule_refill(
            want, lambda: self.launcher.launch(model, system, toolset, None, profile),
            after=after,
        )

    async def evict(self, conv: Conversation) -> None:
        """Close the conversation's process once its worker is idle (the worker ends)."""
        conv.evict = True
        conv.wake.set()
        worker = conv.worker
        if worker is not None and worker is not asyncio.current_task():
            await asyncio.shield(worker)


def fail_pending(conv: Conversation, error: TurnError) -> None:
    """End every queued (not started) request of ``conv`` with ``error``."""
    while conv.pending:
        conv.pending.popleft().emit(error)


def session_reset_notice(session_id: str, fork: TurnMark | None = None) -> Notice:
    if fork is not None:
        return Notice(
            "session_reset",
            f"Claude Code could not go back to message {fork.message_id} of session"
            f" {session_id} (its transcript is gone or no longer holds it); this"
            " conversation continues in a new session without the earlier history.",
            {"lost_session_id": session_id, "fork_at": fork.message_id},
        )
    return Notice(
        "session_reset",
        f"Claude Code could not find session {session_id} (its transcript is gone);"
        " this conversation continues in a new session without the earlier history.",
        {"lost_session_id": session_id},
    )

