"""One engine turn run by its own task, so the HTTP handler can wait with timeouts.

The engine's event iterator is driven by a single task from start to end (the engine may
hold cancel scopes across ``yield``), and the handler reads a queue. Cancelling the task
closes the iterator, which interrupts the turn; leaving it running lets the turn finish
after the HTTP client went away. After a successful turn the task stores the conversation's
fingerprints, so the next request can be matched to this session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.api.conversation import Plan, meta_after_turn
from gateway.api.convert import fingerprint, render_event
from gateway.api.functions import calls_fingerprint_text
from gateway.api.turn_store import TurnStore
from gateway.engine.api import Preferences, TurnRunner
from gateway.engine.events import (
    Event,
    Prompt,
    StreamMode,
    ToolCallsRequested,
    TurnError,
    TurnMark,
    TurnOptions,
    TurnResult,
    TurnStarted,
)
from gateway.errors import TURN_INTERRUPTED, ErrorKind, GatewayError

log = logging.getLogger(__name__)


def answer_text(rendered: str, result: TurnResult) -> str:
    """What the client receives as the answer: the streamed text, else the result's text."""
    return rendered if rendered else result.text


class TurnPump:
    """Runs ``engine.turn`` in a task and hands its events over through a queue."""

    def __init__(
        self,
        engine: TurnRunner,
        preferences: Preferences,
        plan: Plan,
        prompt: Prompt,
        options: TurnOptions,
        *,
        on_done: Callable[[TurnPump], None],
        shown: Callable[[str], str] | None = None,
        records: TurnStore | None = None,
    ) -> None:
        """``on_done`` is called when the final event is known and again when the task ends.
        ``shown`` maps the answer to what the client is shown of it (e.g. cut at a stop
        sequence): the conversation is remembered by that, in its preferences and in its
        turn record (``records``)."""
        self.plan = plan
        self.mode: StreamMode = options.mode
        self._engine = engine
        self._preferences = preferences
        self._prompt = prompt
        self._options = options
        self._on_done = on_done
        self._shown = shown
        self._records = records
        #: the session's mark at the end of the turn, once it ended
        self.mark: TurnMark | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._rendered: list[str] = []
        self._cancel_error: TurnError | None = None
        #: the engine started the turn (its prompt went to Claude); before that, cancelling
        #: withdraws it and no CLI process is started for it
        self.started = False
        self.task: asyncio.Task[None] = asyncio.create_task(
            self._run(), name=f"api-turn:{plan.key}"
        )

    async def get(self) -> Event:
        """The next event (cancellation-safe; use with ``asyncio.wait_for``)."""
        return await self._queue.get()

    def cancel(self, error: TurnError | None = None) -> None:
        """Interrupt the turn (closes the engine's iterator). A handler still waiting for
        events gets ``error`` (default: interrupted) as the final one."""
        self._cancel_error = error
        self.task.cancel()

    async def _run(self) -> None:
        events: AsyncIterator[Event] | None = None
        final = False
        try:
            events = self._engine.turn(self.plan.key, self._prompt, self._options)
            async for event in events:
                if final:
                    continue  # nothing may follow the final event; drain quietly
                if isinstance(event, TurnResult):
                    await self._remember(self._show(answer_text("".join(self._rendered), event)),
                                         event.mark)
                    final = True
                elif isinstance(event, ToolCallsRequested):
                    calls = [(c.name, c.arguments) for c in event.calls]
                    text = self._show("".join(self._rendered))
                    await self._remember(calls_fingerprint_text(text, calls), None)
                    final = True
                elif isinstance(event, TurnError):
                    final = True
                elif isinstance(event, TurnStarted):
                    self.started = True
                if final:
                    # Before the client can see the answer: its follow-up may arrive at once
                    # and must find the conversation free.
                    self._on_done(self)
                else:
                    piece = render_event(event, self.mode)
                    if piece:
                        self._rendered.append(piece)
                self._queue.put_nowait(event)
            if not final:
                self._queue.put_nowait(
                    TurnError(ErrorKind.CRASHED, "the turn ended without a result")
                )
        except asyncio.CancelledError:
            if not final:  # a handler may still wait for the end (e.g. at shutdown)
                self._queue.put_nowait(self._cancel_error or TurnError(
                    ErrorKind.INTERRUPTED, TURN_INTERRUPTED))
            raise
        except GatewayError as exc:
            if not final:
                self._queue.put_nowait(TurnError.from_exc(exc))
        except Exception as exc:
            log.exception("turn %s failed inside the gateway", self.plan.key)
            if not final:
                self._queue.put_nowait(
                    TurnError(ErrorKind.CRASHED, f"internal gateway error: {type(exc).__name__}")
                )
        finally:
            if events is not None:
                aclose: Any = getattr(events, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            self._on_done(self)

    def _show(self, text: str) -> str:
        return text if self._shown is None else self._shown(text)

    async def _remember(self, reply: str, mark: TurnMark | None) -> None:
        """Store what the client received: the reply's fingerprint on the key, and the turn
        (with the session's ``mark`` at its end; None after a client tool call, whose turn
        goes on) in the record."""
        plan = self.plan
        self.mark = mark
        try:
            await self._preferences.set(plan.key, meta_after_turn(plan, reply))
            if self._records is not None:
                await self._records.commit(plan.key, plan.owner, plan.unchanged,
                                           plan.record_after(fingerprint(reply), mark))
        except Exception:
            # The answer still reaches the client; the next request may start a new session.
            log.exception("could not store conversation metadata for %s", plan.key)
