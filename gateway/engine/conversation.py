"""A conversation's state in the engine: its queue of requests, the callers listening to
each (several when prompts were coalesced), the process it owns, and how an exchange ended.

Pure data and helpers; :class:`gateway.engine.engine.Engine` runs the turns.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from gateway.engine.client_tools import ClientTool, ToolMode, ToolResult, tools_fingerprint
from gateway.engine.events import FINAL_EVENTS, Event, Prompt, TurnOptions, TurnResult
from gateway.engine.session import CliSession
from gateway.errors import ErrorKind, GatewayError


@dataclass(eq=False)
class Listener:
    """One caller of :meth:`Engine.turn` whose prompt rides in a request (several callers
    share one request when their prompts were coalesced)."""

    prompt: Prompt
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    gone: bool = False


@dataclass(eq=False)
class Request:
    prompt: Prompt
    options: TurnOptions
    model: str | None  # resolved --model value, None = keep the conversation's
    #: who reads its events; the first is the caller that queued it
    listeners: list[Listener] = field(default_factory=list)
    #: every listener went away
    abandoned: bool = False
    interrupted: bool = False
    done: bool = False
    #: its prompt is about to go to Claude (TurnStarted was emitted)
    started: bool = False
    #: set when the consumer goes away; a turn that has not started is then withdrawn
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    #: set once the worker is finished with this request (its turn fully wound down)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: sees every event, listened to or not (the engine's activity log)
    watch: Callable[[Event], None] | None = None

    def emit(self, event: Event) -> None:
        if not self.done:
            if self.watch is not None:
                self.watch(event)
            for listener in self.listeners:
                listener.events.put_nowait(event)
            if isinstance(event, FINAL_EVENTS):
                self.done = True

    def listen(self, prompt: Prompt) -> Listener:
        listener = Listener(prompt)
        self.listeners.append(listener)
        self.prompt = Prompt.joined([li.prompt for li in self.listeners])
        return listener

    def can_take(self, options: TurnOptions, model: str | None, prompt: Prompt) -> bool:
        """Whether a coalescing prompt may join this queued request (same choices)."""
        return (self.options.coalesce and options == self.options and model == self.model
                and options.fork_at is None  # each fork is a turn of its own
                and not self.started and not self.abandoned and not self.done
                and not prompt.tool_results and not self.prompt.tool_results)

    def leave(self, listener: Listener) -> bool:
        """``listener`` went away; True if nobody is left. Before the turn starts, its
        prompt is taken out of the turn."""
        listener.gone = True
        left = [li for li in self.listeners if not li.gone]
        if left and not self.started:
            self.listeners = left
            self.prompt = Prompt.joined([li.prompt for li in left])
        return not left


@dataclass(eq=False)
class Conversation:
    key: str
    pending: deque[Request] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    live: CliSession | None = None
    current: Request | None = None
    evict: bool = False
    last_used: float = field(default_factory=time.monotonic)
    #: a spare to start once the running turn ends (model, system, profile, tool set)
    refill: tuple[str | None, str, str, ToolSet] | None = None

    def idle_with_process(self) -> bool:
        return self.current is None and not self.pending and self.live is not None

    def check_withdrawn(self) -> None:
        """Raise if the conversation's current turn lost its client before it started."""
        req = self.current
        if req is not None and req.abandoned and not req.started:
            raise GatewayError(ErrorKind.INTERRUPTED, "The turn was withdrawn: its client left.")


@dataclass(frozen=True)
class ToolSet:
    tools: tuple[ClientTool, ...] = ()
    mode: ToolMode = ToolMode.AGENT

    @property
    def fingerprint(self) -> str:
        return tools_fingerprint(self.tools, self.mode)


class Outcome(Enum):
    """How one exchange with a CLI process ended (what :meth:`Engine._run_turn` decides on)."""

    DONE = "done"
    #: the process had died before it saw the turn: nothing was lost, go again
    STALE = "stale"
    #: ``--resume`` named a session whose transcript is gone: start a fresh one
    RESUME_FAILED = "resume_failed"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    INTERRUPTED = "interrupted"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def per_turn_cost(result: TurnResult, live: CliSession) -> TurnResult:
    return replace(result, cost_usd=turn_cost(result.cost_usd, live))


def turn_cost(total: float, live: CliSession) -> float:
    """This turn's cost from the CLI's running total of the process (``total_cost_usd``)."""
    cost = total - live.cost_seen if total >= live.cost_seen else total
    live.cost_seen = total
    return round(cost, 6)


def with_note(prompt: Prompt) -> tuple[ToolResult, ...]:
    """Tool results for a suspended turn; text sent along with them rides on the last one
    (a running turn can take no new user message)."""
    results = prompt.tool_results
    if not prompt.text.strip() or not results:
        return results
    last = results[-1]
    note = f"{last.content}\n\n[The user added, with these results:]\n{prompt.text}"
    return (*results[:-1], replace(last, content=note))


def user_content(req: Request) -> list[dict[str, Any]]:
    """The user message for a new turn: the prompt, plus what only text can carry."""
    prompt, opts = req.prompt, req.options
    blocks = prompt.content_blocks()
    if prompt.tool_results:  # results of calls no suspended turn waits for (e.g. a restart)
        lines = [f"[result of tool call {r.call_id}{' (error)' if r.is_error else ''}]\n"
                 f"{r.content}" for r in prompt.tool_results]
        blocks.append({"type": "text", "text": "\n\n".join(lines)})
    if opts.tools and opts.tool_mode is not ToolMode.AGENT and opts.tool_choice != "auto":
        names = ", ".join(t.name for t in opts.tools)
        rule = {
            "none": "do not call any of the client tools",
            "required": f"you must call at least one of the client tools ({names})",
        }.get(opts.tool_choice, f"you must call the client tool {opts.tool_choice}")
        blocks.append({"type": "text", "text": f"(For this request, {rule}.)"})
    return blocks


async def one_message(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message
