"""How one turn looks in a chat: typing, one status message, the streamed answer.

A :class:`TurnView` is fed the engine's events for one turn and owns everything the person
sees of it:

* the typing indicator, renewed until the turn ends;
* one **status message** ("⚙️ Running npm test · ⏱ 12 s") that appears when Claude works
  with tools (or takes longer than ``status_delay``), is edited at most every
  ``status_interval`` seconds and is removed once the answer arrives;
* the **answer**, streamed by editing one message (or as a draft preview where the platform
  has drafts) at most every ``stream_interval`` seconds, never with the same text twice.
  When it outgrows the platform's limit the message is finished and the answer continues
  in a new one, split by :func:`~bridges.common.split.split_markdown` (code blocks closed
  and reopened). An answer longer than ``long_answer_chars`` stops streaming and also
  arrives as a Markdown file.

All sending happens in one background task (the *pump*), so edits never race each other;
``on_event`` only appends to the answer and updates state. Only the typing action runs in a
task of its own beside it (it shows nothing that could race, and its round trip must not
sit in front of the first answer text).

Nothing of the answer is lost, whatever the timing (``tests/test_view_properties.py``
checks it on thousands of random timings, failures and chunkings):

* the answer is an append-only buffer; the pump lays it out into **parts** (one per chat
  message), each sealed part fixed once cut, and records per part which message carries it
  and up to which offset of the answer the chat shows it. Layout never awaits, and no
  cursor is written from a value read before an await, so text that arrives while a
  message is being sent is simply laid out next time;
* parts go out strictly in order; a send or edit that fails is retried with backoff,
  honouring the platform's ``retry_after`` (:meth:`Platform.retry_delay`), and a part
  that still did not go out stays pending, so the next ones wait for it;
* at the end the answer is reconciled with the turn's final text (messages that show
  something else are edited, extra ones deleted, the missing rest sent) within
  ``delivery_budget`` seconds, and :meth:`TurnView.finish` returns what did not reach the
  chat, for the bridge's outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridges.common.platform import Chat, MessageId, Platform
from bridges.common.split import reopen_fence, split_markdown
from bridges.common.text import error_text, notice_text, status_text
from gateway.engine import (
    Commentary,
    Event,
    Notice,
    RateLimitStatus,
    TextDelta,
    ToolStarted,
    TurnError,
    TurnResult,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

StreamStyle = Literal["draft", "edit", "off"]

#: Longest wait between two tries of a failed send or edit (without a ``retry_after``).
MAX_BACKOFF = 8.0
#: Seconds a streaming update may spend retrying before the pump moves on (it tries again
#: at the next update; the end of the turn has its own budget).
STREAM_RETRY = 10.0
#: Seconds the status message and notices may still take after the answer's budget.
CLEANUP_BUDGET = 4.0


@dataclass(frozen=True)
class ViewSettings:
    #: "draft": stream as a draft preview where the platform supports it, else by editing;
    #: "edit": always by editing a message; "off": send the answer once, at the end
    stream: StreamStyle = "draft"
    stream_interval: float = 1.0
    status_interval: float = 3.0
    status_delay: float = 2.0
    #: answers longer than this (characters) also come as a file; 0 = never
    long_answer_chars: int = 12000
    #: seconds the end of a turn may spend delivering (and retrying) the rest of the answer
    #: before :meth:`TurnView.finish` gives up and returns what is missing
    delivery_budget: float = 20.0
    #: first wait after a failed send or edit that came without a ``retry_after``; doubles
    #: with each failure up to :data:`MAX_BACKOFF`
    retry_backoff: float = 0.5


@dataclass(eq=False)
class _Part:
    """One message of the answer.

    ``start``/``end`` are offsets into the answer; ``text`` is what the message must show
    (``opener`` + the answer's slice + a closing fence if a code block is cut). The open part
    (the message being written) has no ``text``/``end`` yet."""

    start: int
    opener: str = ""
    text: str = ""
    end: int = -1
    #: the chat message that carries it (None: not sent yet)
    message: MessageId | None = None
    #: what that message shows now
    shown: str = ""
    #: the answer offset up to which ``shown`` carries the answer
    shown_end: int = -1

    def __post_init__(self) -> None:
        if self.shown_end < 0:
            self.shown_end = self.start

    @property
    def delivered(self) -> bool:
        return self.shown == self.text or not self.text.strip()


@dataclass
class _Budget:
    """How long retries may go on: ``hard`` budgets also cut a call that is still running."""

    deadline: float
    hard: bool = False

    @classmethod
    def of(cls, seconds: float, *, hard: bool = False) -> _Budget:
        return cls(asyncio.get_running_loop().time() + seconds, hard)

    def left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


class _Failed:
    """The marker of a call that did not succeed within its budget."""


FAILED = _Failed()


@dataclass
class _Spare:
    """A message left over when the final text replaced what was streamed: reused for the
    next part, deleted at the end if none needs it."""

    message: MessageId
    shown: str = field(default="")


class TurnView:
    def __init__(
        self,
        platform: Platform,
        chat: Chat,
        settings: ViewSettings,
        *,
        rate_limit: Callable[[], RateLimitStatus | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.chat = chat
        self.settings = settings
        self._rate_limit = rate_limit
        self._clock = clock
        self._started = clock()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._typing_task: asyncio.Task[Any] | None = None
        self._closing = False
        #: the chat's project, shown in the status message (set by the bridge)
        self.project = ""
        # status
        self._activity: str | None = None
        self._tools = 0
        self._answering = False
        self._status_id: MessageId | None = None
        self._status_shown = ""
        self._stale: list[MessageId] = []  # status messages still to delete
        self._next_status = 0.0
        self._next_typing = 0.0
        self.queued = 0
        #: notices to send (a session reset), in order, by the pump
        self._notes: list[str] = []
        # answer
        self._answer = ""  # the whole answer so far (Markdown); only ever appended to
        self._parts: list[_Part] = []  # sealed parts, in chat order
        self._open = _Part(0)  # the message being written
        self._spares: list[_Spare] = []
        self._dirty = False
        self._next_answer = 0.0
        self._use_drafts = settings.stream == "draft" and platform.supports_drafts(chat)
        self._draft_id = _draft_id()
        self._draft_shown = ""
        self.messages: list[MessageId] = []  # every answer message sent
        self._overflow = False

    # ------------------------------------------------------------------ feeding

    async def start(self) -> None:
        self._pump_task = asyncio.create_task(self._pump(), name=f"view {self.chat.key}")

    async def on_event(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._answer += event.text
            if self._too_long(self._answer):
                self._overflow = True
            if self._dirty and self._answering:
                return  # the pump already waits for the next update; no need to wake it
            self._answering = True
            self._dirty = True
        elif isinstance(event, ToolStarted):
            self._tools += 1
            self._activity = event.summary or f"Using {event.name}"
            self._answering = False
        elif isinstance(event, Commentary):
            line = event.text.strip().splitlines()[0] if event.text.strip() else ""
            if line:
                self._activity = "💭 " + (line if len(line) <= 160 else line[:157] + "…")
        elif isinstance(event, Notice):
            if event.kind == "session_reset":
                self._notes.append(f"⚠️ {event.message}")
            else:
                text = notice_text(event)
                if text:
                    self._activity = text
        self._wake.set()

    def touch(self) -> None:
        """Something outside changed (``queued``): refresh the status soon."""
        self._wake.set()

    async def finish(self, final: TurnResult | TurnError | None) -> str:
        """The turn is over: deliver the rest of the answer, then remove the status.

        With a :class:`TurnResult` its text is the answer: what the chat shows is compared
        with it and repaired (a message edited, the missing rest sent, messages that show
        text the final answer does not have deleted). Failed sends and edits are retried,
        honouring flood control, for up to ``settings.delivery_budget`` seconds in all.

        Returns the part of the answer that could **not** be delivered: ``""`` when every
        character reached the chat (or the whole answer went out as a file), otherwise the
        answer from the first character the chat does not show, as Markdown that stands on
        its own (a code block it starts inside is reopened). The bridge keeps that in its
        outbox. A send whose outcome is unknown when the budget runs out (it was cut off)
        counts as not delivered, so that text may later appear twice, never not at all.
        Returns within ``delivery_budget`` + 4 seconds (:data:`CLEANUP_BUDGET`).
        """
        self._closing = True
        self._wake.set()
        budget = _Budget.of(self.settings.delivery_budget, hard=True)
        if self._pump_task is not None:
            await self._stop_pump(budget)
        await self._stop_typing()  # the answer is here: no typing after it
        rest = ""
        try:
            if isinstance(final, TurnResult):
                self._reconcile(final.text)
            await self._send_notes(budget)
            if self._answer.strip():
                rest = await self._finish_answer(budget)
            elif isinstance(final, TurnResult):
                await self._send_note("✅ Done.", budget)
        except Exception:
            log.exception("%s: the end of the answer could not be shown", self.chat.key)
            rest = self._undelivered()
        # the error and the clean-up get what is left, and a few seconds more
        extra = _Budget.of(max(0.0, budget.left()) + CLEANUP_BUDGET, hard=True)
        try:
            if isinstance(final, TurnError):
                await self._send_note(error_text(final, rate_limit=self._rate_limit()), extra)
        finally:
            await self._cleanup(extra)
        if rest:
            log.warning("%s: %d characters of the answer could not be delivered",
                        self.chat.key, len(rest))
        return rest

    async def _stop_pump(self, budget: _Budget) -> None:
        task = self._pump_task
        assert task is not None
        done, _ = await asyncio.wait({task}, timeout=max(0.0, budget.left() / 2))
        if not done:  # stuck in a platform call: cut it off (its outcome counts as unknown)
            log.info("%s: the answer's display was still busy; stopping it", self.chat.key)
            task.cancel()
            await asyncio.wait({task})
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s: the answer's display failed: %s", self.chat.key,
                        task.exception())

    # ------------------------------------------------------------------ the pump

    def _send_typing(self) -> None:
        """Renew the typing indicator in a task of its own: its round trip (~100 ms to
        Telegram) never sits in front of the first answer text. One at a time."""
        if self._typing_task is None or self._typing_task.done():
            self._typing_task = asyncio.create_task(self._safe(self.platform.typing(self.chat)),
                                                    name=f"typing {self.chat.key}")

    async def _stop_typing(self) -> None:
        task, self._typing_task = self._typing_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pump(self) -> None:
        self._send_typing()
        self._next_typing = self._clock() + self.platform.typing_interval
        while not self._closing:
            now = self._clock()
            if self._notes:
                await self._send_notes(_Budget.of(STREAM_RETRY))
                continue
            if self._dirty and not self._overflow and now >= self._next_answer:
                self._dirty = False
                if not await self._stream_answer():
                    self._dirty = True  # try again at the next update
                self._next_answer = self._clock() + self.settings.stream_interval
                continue
            wanted = self._status_wanted(now)
            if wanted is None and self._status_id is not None:
                await self._hide_status()
                continue
            if wanted is not None and wanted != self._status_shown and (
                self._status_id is None or now >= self._next_status
            ):
                await self._show_status(wanted)
                self._next_status = self._clock() + self.settings.status_interval
                continue
            if now >= self._next_typing:
                self._send_typing()
                self._next_typing = now + self.platform.typing_interval
            dues = [self._next_typing]
            if self._dirty and not self._overflow:
                dues.append(self._next_answer)
            if not self._answering:
                dues.append(self._next_status if self._status_id is not None
                            else self._started + self.settings.status_delay)
            delay = max(0.05, min(dues) - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _status_wanted(self, now: float) -> str | None:
        if self._answering:
            return None
        activity = self._activity
        if activity is None:
            if now - self._started < self.settings.status_delay:
                return None
            activity = "Thinking…"
        return status_text(activity, now - self._started, tools=self._tools, queued=self.queued,
                           project=self.project)

    async def _show_status(self, text: str) -> None:
        if self._status_id is None:
            sent = await self._safe(self.platform.send_text(self.chat, text, markdown=False,
                                                            silent=True))
            if sent is not None:
                self._status_id = sent
        else:
            ok = await self._safe(self.platform.edit_text(self.chat, self._status_id, text,
                                                          markdown=False))
            if ok is False:
                self._status_id = None
        self._status_shown = text

    async def _hide_status(self, budget: _Budget | None = None) -> None:
        """Delete the status message; one that cannot go now is tried again at the end."""
        if self._status_id is not None:
            self._stale.append(self._status_id)
            self._status_id, self._status_shown = None, ""
        while self._stale:
            status = self._stale[0]
            gone = await self._attempt("delete the status",
                                       functools.partial(self.platform.delete, self.chat,
                                                         status),
                                       budget or _Budget.of(STREAM_RETRY))
            if isinstance(gone, _Failed) and budget is None:
                return  # (the end of the turn tries again)
            self._stale.pop(0)

    async def _send_notes(self, budget: _Budget) -> None:
        while self._notes:
            await self._send_note(self._notes[0], budget)
            self._notes.pop(0)

    async def _send_note(self, text: str, budget: _Budget) -> None:
        """A plain message outside the answer (a notice, an error, "Done")."""
        await self._attempt("send a notice",
                            lambda: self.platform.send_text(self.chat, text, markdown=False),
                            budget)

    async def _cleanup(self, budget: _Budget) -> None:
        """The answer is final: leftover messages and the status message go."""
        for spare in self._spares:
            await self._attempt("delete a leftover message",
                                functools.partial(self.platform.delete, self.chat,
                                                  spare.message), budget)
            with contextlib.suppress(ValueError):
                self.messages.remove(spare.message)
        self._spares = []
        await self._hide_status(budget)

    # ------------------------------------------------------------------ the answer: layout

    def _layout(self, *, final: bool) -> None:
        """Seal every message's worth of the answer that no longer fits in the open message
        (with ``final``, all of it). Synchronous: the answer cannot change meanwhile."""
        opened = self._open
        tail = opened.opener + self._answer[opened.start:]
        limit, measure = self.platform.max_length, self.platform.measure
        if not final and measure(tail) <= limit:
            return
        chunks = split_markdown(tail, limit, measure=measure)
        sealed = chunks if final else chunks[:-1]
        at = 0  # offset in ``tail``
        start, opener = opened.start, opened.opener
        heir: _Part | None = opened  # its message goes to the first part with text
        for index, chunk in enumerate(sealed):
            at += len(chunk.source)
            end = opened.start + max(0, at - len(opened.opener))
            part = _Part(start, opener, chunk.text, end)
            if heir is not None and chunk.text.strip():
                part.message, part.shown, part.shown_end = heir.message, heir.shown, \
                    heir.shown_end
                heir = None
            self._parts.append(part)
            start = end
            opener = chunks[index + 1].opener if index + 1 < len(chunks) else ""
        if sealed:
            self._open = _Part(start, opener)
            if heir is not None:  # only blank parts were cut: the message writes on
                self._open.message, self._open.shown = heir.message, heir.shown
                self._open.shown_end = heir.shown_end
            self._draft_id, self._draft_shown = _draft_id(), ""

    def _reconcile(self, final_text: str) -> None:
        """Make the turn's final text the answer. Parts that carry only text it shares with
        what was streamed stay; the messages of the others are reused for the rest."""
        if final_text == self._answer or not final_text.strip():
            return
        if final_text.startswith(self._answer):  # more than was streamed: lay out the rest
            self._answer = final_text
            self._overflow = self._overflow or self._too_long(final_text)
            return
        same = _common_prefix(self._answer, final_text)
        log.info("%s: the final answer differs from the streamed one from character %d;"
                 " repairing the chat", self.chat.key, same)
        keep = 0
        while keep < len(self._parts) and self._parts[keep].end <= same:
            keep += 1
        dropped = self._parts[keep:]
        if dropped:
            start, opener = dropped[0].start, dropped[0].opener
        else:
            start, opener = self._open.start, self._open.opener
        for part in [*dropped, self._open]:
            if part.message is not None:
                self._spares.append(_Spare(part.message, part.shown))
        self._parts = self._parts[:keep]
        self._open = _Part(start, opener)
        self._answer = final_text
        self._overflow = self._too_long(final_text)

    def _too_long(self, answer: str) -> bool:
        """True if ``answer`` is to come as a file (``long_answer_chars``)."""
        limit = self.settings.long_answer_chars
        return bool(limit) and len(answer) > limit

    # ------------------------------------------------------------------ the answer: delivery

    async def _stream_answer(self) -> bool:
        """One streaming update: sealed parts out, then the open message; False if a call
        failed (the next update tries again)."""
        if self.settings.stream == "off":
            return True
        budget = _Budget.of(STREAM_RETRY)
        while True:
            self._layout(final=False)
            if not await self._deliver(self._parts, budget):
                return False
            opened = self._open
            end = len(self._answer)
            text = opened.opener + self._answer[opened.start:end]
            if self.platform.measure(text) <= self.platform.max_length:
                break  # (text that arrived during the deliveries may need another seal)
        if not text.strip():
            return True
        if self._use_drafts:
            if text == self._draft_shown:
                return True
            draft_id = self._draft_id
            ok = await self._attempt(
                "stream a draft",
                lambda: self.platform.send_draft(self.chat, draft_id, text), budget)
            if ok is True:
                self._draft_shown = text
                return True
            if isinstance(ok, _Failed):
                return False
            log.info("drafts do not work in %s; streaming by editing", self.chat.key)
            self._use_drafts = False
        return await self._put(opened, text, end, budget)

    async def _finish_answer(self, budget: _Budget) -> str:
        before = len(self._parts)
        self._layout(final=True)
        if not self._overflow:
            await self._deliver(self._parts, budget)
            return self._undelivered()
        # too long for messages: what was shown and one message more, and the whole as a file
        await self._deliver(self._parts[: before + 1], budget)
        answer = self._answer
        sent = await self._attempt("send the answer as a file",
                                   lambda: self._send_as_file(answer), budget)
        if not isinstance(sent, _Failed):
            return ""
        log.warning("%s: the answer could not go as a file; sending it as messages",
                    self.chat.key)
        await self._deliver(self._parts, budget)
        return self._undelivered()

    async def _deliver(self, parts: list[_Part], budget: _Budget) -> bool:
        """Bring ``parts`` into the chat in order; False at the first that did not go out."""
        for part in parts:
            if part.delivered:
                continue
            if not await self._put(part, part.text, part.end, budget):
                return False
        return True

    async def _put(self, part: _Part, text: str, end: int, budget: _Budget) -> bool:
        """Make ``part``'s message show ``text`` (the answer up to ``end``)."""
        if part.message is None and self._spares:
            spare = self._spares.pop(0)
            part.message, part.shown, part.shown_end = spare.message, spare.shown, part.start
        if part.message is not None:
            if part.shown == text:
                part.shown_end = end
                return True
            message = part.message
            edited = await self._attempt(
                "edit the answer",
                lambda: self.platform.edit_text(self.chat, message, text), budget)
            if isinstance(edited, _Failed):
                return False
            if edited:
                part.shown, part.shown_end = text, end
                return True
            log.info("%s: message %s of the answer is gone; sending it again", self.chat.key,
                     message)
            part.message, part.shown, part.shown_end = None, "", part.start
        sent = await self._attempt("send the answer",
                                   lambda: self.platform.send_text(self.chat, text), budget)
        if isinstance(sent, _Failed):
            return False
        part.message, part.shown, part.shown_end = sent, text, end
        self.messages.append(sent)
        return True

    def _undelivered(self) -> str:
        """The answer from the first character the chat does not show ("" if none)."""
        first = next((p for p in self._parts if not p.delivered), None)
        if first is None:
            first = self._open
            if not self._answer[first.start:].strip():
                return ""
        # the message may show less than its part, or (streamed before the part was cut)
        # a little more: the rest starts where the chat stops
        shown = first.shown_end if first.message is not None else first.start
        shown = max(shown, first.start)
        if not self._answer[shown:].strip():
            return ""
        context = first.opener + self._answer[first.start:]
        fence = reopen_fence(context, len(first.opener) + shown - first.start)
        return fence + self._answer[shown:]

    async def _send_as_file(self, answer: str) -> None:
        name = time.strftime("answer-%Y%m%d-%H%M%S.md")
        with tempfile.TemporaryDirectory(prefix="cmg-answer-") as folder:
            path = Path(folder) / name
            await asyncio.to_thread(path.write_text, answer, "utf-8")
            caption = f"The whole answer ({len(answer):,} characters) as a file."
            await self.platform.send_file(self.chat, path, caption, "file")

    # ------------------------------------------------------------------ helpers

    async def _attempt(self, what: str, call: Callable[[], Awaitable[T]],
                       budget: _Budget) -> T | _Failed:
        """``call()``, tried again while the platform says a retry can help (flood control,
        network errors) and ``budget`` lasts; :data:`FAILED` if it did not succeed."""
        backoff = self.settings.retry_backoff
        while True:
            try:
                if not budget.hard:
                    return await call()
                left = budget.left()
                if left <= 0:
                    log.warning("%s: no time left to %s", self.chat.key, what)
                    return FAILED
                async with asyncio.timeout(left) as scope:
                    return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if budget.hard and isinstance(exc, TimeoutError) and scope.expired():
                    log.warning("%s: could not %s in time", self.chat.key, what)
                    return FAILED
                hint = self.platform.retry_delay(exc)
                if hint is None:
                    log.warning("%s: could not %s: %s", self.chat.key, what, exc)
                    return FAILED
                wait = max(hint, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                if self._closing and not budget.hard:
                    return FAILED  # the pump is stopping: finish() takes over, with its budget
                if wait > budget.left():
                    log.warning("%s: could not %s: %s (out of retries)", self.chat.key, what,
                                exc)
                    return FAILED
                log.info("%s: %s failed (%s); trying again in %.1f s", self.chat.key, what,
                         exc, wait)
                await asyncio.sleep(wait)

    async def _safe(self, call: Any) -> Any:
        """Await a platform call whose failure costs nothing lasting (typing, the status);
        log a failure instead of ending the turn's display."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: %s failed: %s", self.chat.key, getattr(call, "__name__", "call"),
                        exc)
            return None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


def _draft_id() -> int:
    return random.randint(1, 2**31 - 1)
