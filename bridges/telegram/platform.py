"""The Telegram side of :class:`bridges.common.Platform`, on python-telegram-bot's ``Bot``.

Flood control: the bot is built with PTB's ``AIORateLimiter``, which spaces requests within
Telegram's limits and retries a ``429`` after its ``retry_after``. On top of that every call
here is retried on network errors and on a ``RetryAfter`` the limiter gave up on, so a
Telegram hiccup delays a message but does not drop it.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import math
import re
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import telegram
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bridges.common.approvals import Button
from bridges.common.media import ogg_duration
from bridges.common.platform import Chat, MessageId
from bridges.telegram.render import MAX_CAPTION, MAX_MESSAGE, render, telegram_length
from gateway.engine.projects import base_key
from gateway.engine.tools import FileKind

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "telegram:"
#: What the cloud Bot API lets a bot upload; a self-hosted server allows 2000 MB.
CLOUD_UPLOAD_LIMIT = 50 * 1024 * 1024
LOCAL_UPLOAD_LIMIT = 2000 * 1024 * 1024
#: Telegram shows photos up to 10 MB; bigger ones go as documents.
PHOTO_LIMIT = 10 * 1024 * 1024

_KEY = re.compile(r"^telegram:(-?\d+)(?::(\d+))?$")


def chat_key(chat_id: int, thread_id: int | None = None) -> str:
    return f"{KEY_PREFIX}{chat_id}" + (f":{thread_id}" if thread_id else "")


def parse_key(key: str) -> tuple[int, int | None] | None:
    match = _KEY.match(key)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


class TelegramPlatform:
    name = "telegram"
    max_length = MAX_MESSAGE
    typing_interval = 4.0

    def __init__(
        self, bot: telegram.Bot, *, max_upload_bytes: int = CLOUD_UPLOAD_LIMIT,
        retries: int = 6, drafts: bool = True,
    ) -> None:
        self.bot = bot
        self.max_upload_bytes = max_upload_bytes
        self.retries = retries
        self._drafts = drafts

    # ------------------------------------------------------------------ Platform

    def measure(self, text: str) -> int:
        return telegram_length(text)

    def chat_for_key(self, key: str) -> Chat | None:
        key = base_key(key)  # a conversation key names its project after the chat
        parsed = parse_key(key)
        if parsed is None:
            return None
        chat_id, thread_id = parsed
        return Chat(key=key, id=chat_id, thread_id=thread_id, private=chat_id > 0)

    def supports_drafts(self, chat: Chat) -> bool:
        return self._drafts and chat.private

    async def send_text(
        self, chat: Chat, text: str, *, markdown: bool = True, silent: bool = False
    ) -> MessageId:
        body, entities = render(text) if markdown else (text, [])
        base: dict[str, Any] = {
            "chat_id": chat.id, "message_thread_id": chat.thread_id,
            "disable_notification": silent,
            "link_preview_options": telegram.LinkPreviewOptions(is_disabled=True),
        }
        try:
            message = await self.call(self.bot.send_message, text=body,
                                      entities=entities or None, **base)
        except BadRequest as exc:
            if not entities or _too_long(exc):
                raise
            log.info("Telegram refused the formatting (%s); sending plain text", exc.message)
            message = await self.call(self.bot.send_message, text=text, **base)
        return message.message_id

    async def edit_text(
        self, chat: Chat, message: MessageId, text: str, *, markdown: bool = True
    ) -> bool:
        body, entities = render(text) if markdown else (text, [])
        base: dict[str, Any] = {
            "chat_id": chat.id, "message_id": message,
            "link_preview_options": telegram.LinkPreviewOptions(is_disabled=True),
        }
        try:
            try:
                await self.call(self.bot.edit_message_text, text=body,
                                entities=entities or None, **base)
            except BadRequest as exc:
                if not entities or _too_long(exc) or _not_modified(exc) or _gone(exc):
                    raise
                log.info("Telegram refused the formatting (%s); editing as plain text",
                         exc.message)
                await self.call(self.bot.edit_message_text, text=text, **base)
        except BadRequest as exc:
            if _not_modified(exc):
                return True
            if _gone(exc):
                return False
            raise
        return True

    async def delete(self, chat: Chat, message: MessageId) -> None:
        try:
            await self.call(self.bot.delete_message, chat_id=chat.id, message_id=message)
        except BadRequest as exc:
            log.debug("delete of %s in %s: %s", message, chat.key, exc.message)

    async def send_draft(self, chat: Chat, draft_id: int, text: str) -> bool:
        if not self.supports_drafts(chat):
            return False
        body, entities = render(text)
        try:
            try:
                await self.call(self.bot.send_message_draft, chat_id=chat.id,
                                draft_id=draft_id, text=body, entities=entities or None,
                                message_thread_id=chat.thread_id)
            except BadRequest as exc:
                if not entities or _too_long(exc):
                    raise
                await self.call(self.bot.send_message_draft, chat_id=chat.id,
                                draft_id=draft_id, text=text,
                                message_thread_id=chat.thread_id)
        except TelegramError as exc:
            log.info("Telegram draft streaming failed (%s); using message edits instead", exc)
            self._drafts = False
            return False
        return True

    async def typing(self, chat: Chat) -> None:
        await self.call(self.bot.send_chat_action, chat_id=chat.id, action=ChatAction.TYPING,
                        message_thread_id=chat.thread_id)

    async def send_file(self, chat: Chat, path: Path, caption: str, kind: FileKind) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        body, entities = render(caption, MAX_CAPTION) if caption.strip() else ("", [])
        if telegram_length(body) > MAX_CAPTION:
            body, entities = body[: MAX_CAPTION - 1] + "…", []
        common: dict[str, Any] = {
            "chat_id": chat.id, "message_thread_id": chat.thread_id,
            "caption": body or None, "caption_entities": entities or None,
        }
        if kind == "photo" and len(data) <= PHOTO_LIMIT:
            try:
                await self.call(self.bot.send_photo,
                                photo=telegram.InputFile(data, filename=path.name), **common)
                return
            except BadRequest as exc:  # not an image Telegram can show: send it as a file
                log.info("send_photo of %s refused (%s); sending a document", path.name,
                         exc.message)
        elif kind == "voice":
            seconds = ogg_duration(data)  # Telegram shows 0:00 without it
            try:
                await self.call(self.bot.send_voice,
                                voice=telegram.InputFile(data, filename=path.name),
                                duration=math.ceil(seconds) if seconds else None, **common)
                return
            except BadRequest as exc:
                log.info("send_voice of %s refused (%s); sending a document", path.name,
                         exc.message)
        await self.call(self.bot.send_document,
                        document=telegram.InputFile(data, filename=path.name), **common)

    async def send_buttons(self, chat: Chat, text: str, buttons: Sequence[Button]) -> MessageId:
        """A plain message with an inline keyboard, one button per row (long labels)."""
        markup = telegram.InlineKeyboardMarkup(
            [[telegram.InlineKeyboardButton(b.label, callback_data=b.data)] for b in buttons])
        message = await self.call(
            self.bot.send_message, chat_id=chat.id, message_thread_id=chat.thread_id,
            text=text, reply_markup=markup,
            link_preview_options=telegram.LinkPreviewOptions(is_disabled=True))
        return message.message_id

    async def close_buttons(self, chat: Chat, message: MessageId, text: str) -> None:
        """An edit without ``reply_markup`` takes the inline keyboard away."""
        await self.edit_text(chat, message, text, markdown=False)

    def retry_delay(self, exc: Exception) -> float | None:
        if isinstance(exc, RetryAfter):
            return _retry_after(exc)
        if isinstance(exc, BadRequest | Forbidden):  # (BadRequest is a NetworkError in PTB)
            return None
        if isinstance(exc, NetworkError):  # includes TimedOut
            return 0.0
        return None

    # ------------------------------------------------------------------ Telegram only

    async def download(self, file_id: str) -> bytes:
        """The bytes of a file a user sent (through getFile and the file URL)."""
        file = await self.call(self.bot.get_file, file_id)
        return bytes(await self.call(file.download_as_bytearray))

    async def call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call the Bot API; retry on flood control and network errors, not on refusals."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                return await method(*args, **kwargs)
            except RetryAfter as exc:  # the rate limiter already retried; keep trying
                if last:
                    raise
                wait = _retry_after(exc) + 0.1
                log.info("Telegram flood control: waiting %.1f s", wait)
            except (BadRequest, Forbidden):
                raise
            except NetworkError as exc:  # includes TimedOut
                if last:
                    raise
                wait = min(2.0**attempt, 30.0)
                log.info("Telegram network error (%s); retrying in %.0f s", exc, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def _retry_after(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns about the int/timedelta change
        warnings.simplefilter("ignore")
        return _seconds(exc.retry_after)


def _too_long(exc: BadRequest) -> bool:
    return "too long" in exc.message.lower()


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in exc.message.lower()


def _gone(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text
