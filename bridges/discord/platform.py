"""The Discord side of :class:`bridges.common.Platform`, on a discord.py ``Client``.

A conversation is one Discord channel: a DM channel, a thread, or (when threads are off) a
server channel; its key is ``discord:<channel id>``. The bot's own recent messages are kept
so that streaming edits them without a fetch.

Rate limits: discord.py's HTTP client waits out ``429``\\ s by itself (per route and
globally). On top of that every call here is retried on Discord's server errors and on
network errors, so a hiccup delays a message but does not drop it.

Slash commands: while one runs, :data:`INTERACTION` holds its interaction, and the
command's replies go out as the interaction's follow-ups (the first one replaces Discord's
"thinking…" placeholder) instead of as plain channel messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import discord

from bridges.common.approvals import Button
from bridges.common.media import ogg_duration
from bridges.common.platform import Chat, MessageId
from bridges.discord.render import MAX_MESSAGE, discord_length, plain, render
from gateway.engine.projects import base_key
from gateway.engine.tools import FileKind

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "discord:"
#: What a bot may upload without a boosted server (Discord lowered it to 10 MiB in 2024).
UPLOAD_LIMIT = 10 * 1024 * 1024
#: How many of the bot's own messages are kept for editing.
KEPT_MESSAGES = 512
_KEY = re.compile(r"^discord:(\d+)$")

NO_MENTIONS = discord.AllowedMentions.none()

Channel = discord.abc.Messageable


def chat_key(channel_id: int) -> str:
    return f"{KEY_PREFIX}{channel_id}"


def parse_key(key: str) -> int | None:
    match = _KEY.match(key)
    return int(match.group(1)) if match else None


@dataclass(eq=False)
class SlashReply:
    """The interaction of the slash command being run, while it runs."""

    interaction: discord.Interaction
    chat_key: str
    used: bool = False
    closed: bool = False


#: Set around a slash command's handler (see the module doc).
INTERACTION: contextvars.ContextVar[SlashReply | None] = contextvars.ContextVar(
    "discord_interaction", default=None
)


class DiscordPlatform:
    name = "discord"
    max_length = MAX_MESSAGE
    max_upload_bytes = UPLOAD_LIMIT
    #: Discord shows "typing…" for 10 s after one trigger
    typing_interval = 8.0

    def __init__(self, client: discord.Client, *, retries: int = 5) -> None:
        self.client = client
        self.retries = retries
        self._channels: dict[int, Channel] = {}
        self._messages: OrderedDict[int, discord.Message] = OrderedDict()

    # ------------------------------------------------------------------ channels

    def remember(self, channel: Channel) -> Chat:
        """The chat of ``channel``, kept so that replies reach it without a fetch."""
        channel_id = int(getattr(channel, "id", 0))
        self._channels[channel_id] = channel
        return self.chat_of(channel)

    def chat_of(self, channel: Channel) -> Chat:
        channel_id = int(getattr(channel, "id", 0))
        private = isinstance(channel, discord.DMChannel | discord.GroupChannel)
        thread = channel_id if isinstance(channel, discord.Thread) else None
        title = getattr(channel, "name", None) or ""
        if isinstance(channel, discord.DMChannel) and channel.recipient is not None:
            title = channel.recipient.name
        return Chat(key=chat_key(channel_id), id=channel_id, thread_id=thread, private=private,
                    title=title)

    async def channel(self, chat: Chat) -> Channel:
        known = self._channels.get(chat.id)
        if known is not None:
            return known
        found: Any = self.client.get_channel(chat.id)
        if found is None:
            try:
                found = await self.call(self.client.fetch_channel, chat.id)
            except discord.HTTPException as exc:  # a DM after a restart, say
                log.debug("fetch_channel %s: %s; using a partial channel", chat.id, exc)
                found = self.client.get_partial_messageable(chat.id)
        self._channels[chat.id] = found
        return found  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ Platform

    def measure(self, text: str) -> int:
        return discord_length(text)

    def chat_for_key(self, key: str) -> Chat | None:
        key = base_key(key)  # a conversation key names its project after the chat
        channel_id = parse_key(key)
        if channel_id is None:
            return None
        known = self._channels.get(channel_id) or self.client.get_channel(channel_id)
        if known is not None and isinstance(known, discord.abc.Messageable):
            return self.chat_of(known)
        return Chat(key=key, id=channel_id, private=False)

    def supports_drafts(self, chat: Chat) -> bool:
        return False

    async def send_text(
        self, chat: Chat, text: str, *, markdown: bool = True, silent: bool = False
    ) -> MessageId:
        content = render(text) if markdown else plain(text)
        reply = INTERACTION.get()
        if reply is not None and not reply.closed and reply.chat_key == chat.key:
            message: discord.Message = await self.call(
                reply.interaction.followup.send, content, wait=True, allowed_mentions=NO_MENTIONS,
                suppress_embeds=True,
            )
            reply.used = True
        else:
            channel = await self.channel(chat)
            message = await self.call(channel.send, content, allowed_mentions=NO_MENTIONS,
                                      suppress_embeds=True, silent=silent)
        self._keep(message)
        return message.id

    async def edit_text(
        self, chat: Chat, message: MessageId, text: str, *, markdown: bool = True
    ) -> bool:
        content = render(text) if markdown else plain(text)
        target = self._messages.get(message)
        try:
            if target is None:
                # a partial edit sends no flags, and Discord keeps the message's own
                channel = await self.channel(chat)
                partial = channel.get_partial_message(message)  # type: ignore[attr-defined]
                edited = await self.call(partial.edit, content=content)
            elif isinstance(target, discord.WebhookMessage):  # a slash command's follow-up
                edited = await self.call(target.edit, content=content)
            else:
                # Message.edit sends its flags with suppress_embeds=False unless told, which
                # would bring the link previews back on every streamed edit
                edited = await self.call(target.edit, content=content, suppress=True)
        except discord.NotFound:
            self._messages.pop(message, None)
            return False
        if isinstance(edited, discord.Message):
            self._keep(edited)
        return True

    async def send_buttons(self, chat: Chat, text: str, buttons: Sequence[Button]) -> MessageId:
        """A plain message with one row of buttons (message components); a press arrives as
        a component interaction (``DiscordBridge.on_button``)."""
        view = discord.ui.View(timeout=None)
        styles = {0: discord.ButtonStyle.success, len(buttons) - 1: discord.ButtonStyle.danger}
        for number, button in enumerate(buttons):
            view.add_item(discord.ui.Button(
                label=button.label[:80], custom_id=button.data,
                style=styles.get(number, discord.ButtonStyle.secondary)))
        view.stop()  # no callbacks of its own: the bridge answers every press
        channel = await self.channel(chat)
        message: discord.Message = await self.call(
            channel.send, plain(text), view=view, allowed_mentions=NO_MENTIONS,
            suppress_embeds=True)
        self._keep(message)
        return message.id

    async def close_buttons(self, chat: Chat, message: MessageId, text: str) -> None:
        target: Any = self._messages.get(message)
        if target is None:
            channel = await self.channel(chat)
            target = channel.get_partial_message(message)  # type: ignore[attr-defined]
        edited = await self.call(target.edit, content=plain(text), view=None)
        if isinstance(edited, discord.Message):
            self._keep(edited)

    async def delete(self, chat: Chat, message: MessageId) -> None:
        target: Any = self._messages.pop(message, None)
        if target is None:
            channel = await self.channel(chat)
            target = channel.get_partial_message(message)  # type: ignore[attr-defined]
        try:
            await self.call(target.delete)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.debug("delete of %s in %s: %s", message, chat.key, exc)

    async def send_draft(self, chat: Chat, draft_id: int, text: str) -> bool:
        return False

    async def typing(self, chat: Chat) -> None:
        channel = await self.channel(chat)
        await self.call(_trigger_typing, channel)

    async def send_file(self, chat: Chat, path: Path, caption: str, kind: FileKind) -> None:
        """A file as an attachment (Discord shows images inline and gives audio a player);
        an Ogg/Opus ``voice`` file as a native Discord voice message."""
        channel = await self.channel(chat)
        content = render(caption) if caption.strip() else None
        if content is not None and discord_length(content) > MAX_MESSAGE:
            content = content[: MAX_MESSAGE - 1] + "…"
        data = await asyncio.to_thread(path.read_bytes)
        if kind == "voice":
            seconds = ogg_duration(data)
            if seconds is not None:
                try:
                    self._keep(await self.call(self._send_voice_message, channel, data,
                                               seconds))
                    if content:  # a voice message carries no text: the caption follows it
                        await self.send_text(chat, caption)
                    return
                except discord.HTTPException as exc:
                    log.info("Discord refused %s as a voice message (%s); sending a file",
                             path.name, exc)

        async def send() -> discord.Message:
            file = discord.File(io.BytesIO(data), filename=path.name)
            return await channel.send(content, file=file, allowed_mentions=NO_MENTIONS,
                                      suppress_embeds=True)

        self._keep(await self.call(send))

    async def _send_voice_message(self, channel: Channel, data: bytes,
                                  seconds: float) -> discord.Message:
        """``POST /channels/{id}/messages`` with the voice-message flag and the attachment's
        duration and waveform, which discord.py's ``send`` has no parameters for."""
        target: Any = await channel._get_channel()
        file = _VoiceFile(io.BytesIO(data), seconds)
        state: Any = self.client._connection
        with discord.http.handle_message_parameters(
            file=file, flags=discord.MessageFlags(voice=True),
            allowed_mentions=NO_MENTIONS,
        ) as params:
            payload = await state.http.send_message(target.id, params=params)
        return discord.Message(state=state, channel=target, data=payload)

    def retry_delay(self, exc: Exception) -> float | None:
        if isinstance(exc, discord.RateLimited):
            return exc.retry_after
        if isinstance(exc, discord.DiscordServerError):
            return 0.0
        if isinstance(exc, discord.HTTPException):
            return _retry_after(exc) if exc.status == 429 else None
        if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
            return 0.0
        return None

    # ------------------------------------------------------------------ Discord only

    async def call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call Discord; retry on its server errors, rate limits that outlasted discord.py's
        own waiting (after their ``Retry-After``) and network errors, not on refusals."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            wait = min(0.5 * 2.0**attempt, 30.0)
            try:
                return await method(*args, **kwargs)
            except discord.DiscordServerError as exc:
                if last:
                    raise
                log.info("Discord server error (%s); retrying", exc.status)
            except discord.HTTPException as exc:
                if exc.status != 429 or last:  # discord.py already waited out 429s
                    raise
                wait = max(_retry_after(exc), 0.1)
                log.info("Discord rate limit persisted; retrying in %.1f s", wait)
            except discord.RateLimited as exc:  # longer than discord.py waits by itself
                if last:
                    raise
                wait = exc.retry_after
                log.info("Discord rate limit: waiting %.1f s", wait)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if last:
                    raise
                log.info("network error talking to Discord (%s); retrying", exc)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _keep(self, message: discord.Message) -> None:
        self._messages[message.id] = message
        self._messages.move_to_end(message.id)
        while len(self._messages) > KEPT_MESSAGES:
            self._messages.popitem(last=False)


def _retry_after(exc: discord.HTTPException) -> float:
    """The ``Retry-After`` of a 429 (seconds), 1 if it has none."""
    headers: Any = getattr(exc.response, "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", 1.0)))
    except (TypeError, ValueError):
        return 1.0


async def _trigger_typing(channel: Channel) -> None:
    await channel.typing()


class _VoiceFile(discord.File):
    """An attachment that Discord plays as a voice message: it needs the length in seconds
    and a waveform (256 one-byte amplitudes, base64; a flat line is accepted)."""

    def __init__(self, fp: io.BytesIO, seconds: float) -> None:
        super().__init__(fp, filename="voice-message.ogg")
        self.seconds = seconds

    def to_dict(self, index: int) -> dict[str, Any]:
        payload = super().to_dict(index)
        payload["duration_secs"] = round(self.seconds, 2)
        payload["waveform"] = base64.b64encode(bytes([64] * 256)).decode("ascii")
        return payload
