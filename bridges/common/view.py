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
``on_event`` only updates state. Platform failures are logged and never end the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bridges.common.platform import Chat, MessageId, Platform
from bridges.common.split import split_markdown
from bridges.common.text import error_text, notice_text, status_text
from gateway.engine import (
    Commentary,
    Event,
    Notice,
    TextDelta,
    ToolStarted,
    TurnError,
    TurnResult,
)

log = logging.getLogger(__name__)

StreamStyle = Literal["draft", "edit", "off"]


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


class TurnView:
    def __init__(
        self,
        platform: Platform,
        chat: Chat,
        settings: ViewSettings,
        *,
        rate_limit: Callable[[], Mapping[str, Any] | None] = lambda: None,
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
        self._closing = False
        # status
        self._activity: str | None = None
        self._tools = 0
        self._answering = False
        self._status_id: MessageId | None = None
        self._status_shown = ""
        self._next_status = 0.0
        self._next_typing = 0.0
        self.queued = 0
        # answer
        self._answer = ""  # the whole answer so far (Markdown)
        self._tail = ""  # the Markdown of the message being written (may reopen a fence)
        self._dirty = False
        self._next_answer = 0.0
        self._message: MessageId | None = None
        self._shown = ""
        self._use_drafts = settings.stream == "draft" and platform.supports_drafts(chat)
        self._draft_id = _draft_id()
        self.messages: list[MessageId] = []  # every answer message sent
        self._overflow = False

    # ------------------------------------------------------------------ feeding

    async def start(self) -> None:
        self._pump_task = asyncio.create_task(self._pump(), name=f"view {self.chat.key}")

    async def on_event(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._answer += event.text
            self._tail += event.text
            self._answering = True
            limit = self.settings.long_answer_chars
            if limit and len(self._answer) > limit:
                self._overflow = True
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
                await self._safe(self.platform.send_text(self.chat, f"⚠️ {event.message}",
                                                         markdown=False))
            else:
                text = notice_text(event)
                if text:
                    self._activity = text
        self._wake.set()

    def touch(self) -> None:
        """Something outside changed (``queued``): refresh the status soon."""
        self._wake.set()

    async def finish(self, final: TurnResult | TurnError | None) -> None:
        """The turn is over: deliver the rest of the answer, then remove the status."""
        self._closing = True
        self._wake.set()
        if self._pump_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._pump_task
        try:
            if isinstance(final, TurnResult):
                if not self._answer.strip() and final.text.strip():
                    self._answer = self._tail = final.text
                if self._answer.strip():
                    await self._safe(self._finish_answer())
                else:
                    await self._safe(self.platform.send_text(self.chat, "✅ Done.",
                                                             markdown=False))
            elif isinstance(final, TurnError):
                if self._answer.strip():
                    await self._safe(self._finish_answer())
                text = error_text(final, rate_limit=self._rate_limit())
                await self._safe(self.platform.send_text(self.chat, text, markdown=False))
            elif self._answer.strip():
                await self._safe(self._finish_answer())
        finally:
            await self._hide_status()

    # ------------------------------------------------------------------ the pump

    async def _pump(self) -> None:
        await self._safe(self.platform.typing(self.chat))
        self._next_typing = self._clock() + self.platform.typing_interval
        while not self._closing:
            now = self._clock()
            if self._dirty and not self._overflow and now >= self._next_answer:
                self._dirty = False
                await self._safe(self._stream_answer())
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
                await self._safe(self.platform.typing(self.chat))
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
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _status_wanted(self, now: float) -> str | None:
        if self._answering:
            return None
        activity = self._activity
        if activity is None:
            if now - self._started < self.settings.status_delay:
                return None
            activity = "Thinking…"
        return status_text(activity, now - self._started, tools=self._tools, queued=self.queued)

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

    async def _hide_status(self) -> None:
        if self._status_id is not None:
            status, self._status_id = self._status_id, None
            self._status_shown = ""
            await self._safe(self.platform.delete(self.chat, status))

    # ------------------------------------------------------------------ the answer

    async def _stream_answer(self) -> None:
        if self.settings.stream == "off" or not self._tail.strip():
            return
        limit, measure = self.platform.max_length, self.platform.measure
        if measure(self._tail) > limit:
            chunks = split_markdown(self._tail, limit, measure=measure)
            for chunk in chunks[:-1]:
                await self._seal(chunk.text)
            self._tail = chunks[-1].text
        await self._show(self._tail)

    async def _finish_answer(self) -> None:
        limit, measure = self.platform.max_length, self.platform.measure
        chunks = split_markdown(self._tail, limit, measure=measure) if self._tail.strip() else []
        if self._overflow:
            chunks = chunks[:1]
        for chunk in chunks:
            await self._seal(chunk.text)
        self._tail = ""
        if self._overflow:
            await self._send_as_file(self._answer)

    async def _show(self, text: str) -> None:
        if text == self._shown or not text.strip():
            return
        if self._use_drafts:
            if await self._safe(self.platform.send_draft(self.chat, self._draft_id, text)):
                self._shown = text
                return
            log.info("drafts do not work in %s; streaming by editing", self.chat.key)
            self._use_drafts = False
        if self._message is None:
            self._message = await self.platform.send_text(self.chat, text)
            self.messages.append(self._message)
        elif not await self.platform.edit_text(self.chat, self._message, text):
            self._message = await self.platform.send_text(self.chat, text)
            self.messages.append(self._message)
        self._shown = text

    async def _seal(self, text: str) -> None:
        """Finish the message being written with ``text``; the next text starts a new one."""
        if not text.strip():
            return
        if self._message is None:
            self.messages.append(await self.platform.send_text(self.chat, text))
        elif text != self._shown and not await self.platform.edit_text(
            self.chat, self._message, text
        ):
            self.messages.append(await self.platform.send_text(self.chat, text))
        self._message, self._shown = None, ""
        self._draft_id = _draft_id()

    async def _send_as_file(self, answer: str) -> None:
        name = time.strftime("answer-%Y%m%d-%H%M%S.md")
        with tempfile.TemporaryDirectory(prefix="cmg-answer-") as folder:
            path = Path(folder) / name
            await asyncio.to_thread(path.write_text, answer, "utf-8")
            caption = f"The whole answer ({len(answer):,} characters) as a file."
            await self.platform.send_file(self.chat, path, caption, "file")

    # ------------------------------------------------------------------ helpers

    async def _safe(self, call: Any) -> Any:
        """Await a platform call; log a failure instead of ending the turn's display."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: %s failed: %s", self.chat.key, getattr(call, "__name__", "call"),
                        exc)
            return None


def _draft_id() -> int:
    return random.randint(1, 2**31 - 1)
