"""Answers that could not reach the chat wait here until the platform is back.

:class:`Outbox` keeps them in SQLite (:class:`gateway.store.ChatStore`), one row per
platform message (already split to fit), and a background loop delivers them in the order
they were queued, per chat: a chat whose oldest message fails waits, so nothing overtakes
it. The loop retries with a doubling delay (``first_delay`` … ``max_delay``); a message
still undelivered after ``max_age`` seconds is given up with a WARNING. Rows survive a
restart: the loop of the next run delivers them.

Idempotency: a row is marked sent only after the platform confirmed the message. The
Telegram Bot API has no idempotency key and a bot cannot read a chat's history, so a send
whose reply was lost (a timeout after the request went out, or a crash between the send and
the mark) cannot be checked: it is sent again, and only then can a message appear twice.
A refused or failed connection is known not to have arrived and is simply retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bridges.common.platform import Platform
from bridges.common.split import split_markdown
from gateway.store import ChatStore

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self, platform: Platform, store: ChatStore, *,
        first_delay: float = 2.0, max_delay: float = 60.0, max_age: float = 24 * 3600.0,
    ) -> None:
        self.platform = platform
        self.store = store
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_age = max_age
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"outbox {self.platform.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def kick(self) -> None:
        """Try again now (a message was queued, or the platform answered again)."""
        self._wake.set()

    # ------------------------------------------------------------------ queueing

    def split(self, text: str, *, markdown: bool = True) -> list[tuple[str, bool]]:
        """``text`` as the platform messages it takes."""
        if not text.strip():
            return []
        chunks = split_markdown(text, self.platform.max_length, measure=self.platform.measure)
        return [(c.text, markdown) for c in chunks if c.text.strip()]

    async def put(self, chat_key: str, text: str, *, markdown: bool = True,
                  inbox_id: int | None = None, inbox_state: str | None = None) -> None:
        """Queue ``text`` for a chat (``inbox_state``: see :meth:`ChatStore.enqueue`)."""
        await self.store.enqueue(platform=self.platform.name, chat_key=chat_key,
                                 inbox_id=inbox_id, messages=self.split(text, markdown=markdown),
                                 inbox_state=inbox_state)
        self.kick()

    async def put_messages(self, chat_key: str, messages: list[tuple[str, bool]]) -> None:
        """Queue ``(text, markdown)`` messages already split to fit."""
        await self.store.enqueue(platform=self.platform.name, chat_key=chat_key,
                                 inbox_id=None, messages=messages)
        self.kick()

    # ------------------------------------------------------------------ delivery

    async def deliver(self) -> bool:
        """One pass over the queue; True if nothing is left to deliver."""
        store = self.store
        rows = await store.pending(self.platform.name)
        failed: set[str] = set()
        now = time.time()
        for row in rows:
            if row.chat_key in failed:
                continue
            chat = self.platform.chat_for_key(row.chat_key)
            if chat is None:
                log.warning("outbox: %s is not a chat of %s; message %d dropped",
                            row.chat_key, self.platform.name, row.id)
                await store.failed(row.id, "not a chat of this platform", give_up=True)
                continue
            if now - row.created_at > self.max_age:
                log.warning("outbox: gave up on message %d for %s after %.0f h and %d"
                            " attempts", row.id, row.chat_key, self.max_age / 3600,
                            row.attempts)
                await store.failed(row.id, "too old", give_up=True)
                continue
            try:
                await self.platform.send_text(chat, row.text, markdown=row.markdown)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _hopeless(self.platform, exc):
                    log.warning("outbox: %s refused message %d for %s (%s: %s); given up",
                                self.platform.name, row.id, row.chat_key,
                                type(exc).__name__, exc)
                    await store.failed(row.id, f"{type(exc).__name__}: {exc}", give_up=True)
                    continue
                failed.add(row.chat_key)
                level = logging.WARNING if row.attempts == 0 else logging.INFO
                log.log(level, "outbox: message %d for %s not delivered yet (%s: %s)",
                        row.id, row.chat_key, type(exc).__name__, exc)
                await store.failed(row.id, f"{type(exc).__name__}: {exc}")
                continue
            await store.sent(row.id)
            log.info("outbox: delivered message %d (inbox entry %s) to %s", row.id,
                     row.inbox_id, row.chat_key)
        return not failed

    async def _loop(self) -> None:
        delay = self.first_delay
        while True:
            self._wake.clear()
            try:
                clear = await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox delivery of %s failed", self.platform.name)
                clear = False
            if clear:
                delay = self.first_delay
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            delay = min(delay * 2, self.max_delay)


def _hopeless(platform: Platform, exc: Exception) -> bool:
    """True if trying again cannot help (the platform refused: the bot was blocked, the
    chat is gone), as the platform's ``retry_delay`` tells."""
    retry_delay = getattr(platform, "retry_delay", None)
    return callable(retry_delay) and retry_delay(exc) is None
