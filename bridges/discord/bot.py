"""The Discord bridge: a discord.py ``Client`` feeding the common chat logic.

This module only adapts. It maps Discord messages and slash commands to
:class:`~bridges.common.Chat`, :class:`~bridges.common.User` and prompts, applies Discord's
rules (DMs always; in a server channel only when mentioned, and then the answer goes into a
new thread that is its own conversation; in the bot's threads every message), fetches what
the person attached, and runs the gateway connection. Everything else is
:class:`bridges.common.ChatBridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bridges.common import (
    BridgeSettings,
    Chat,
    ChatBridge,
    CommandRegistry,
    Source,
    User,
    ViewSettings,
    VoiceBackend,
    setup_voice,
)
from bridges.common.approvals import BUTTON_PREFIX, ChatApprovals, setup_approvals
from bridges.common.commands import Command, parse_command
from bridges.discord.platform import INTERACTION, DiscordPlatform, SlashReply
from gateway.config import DiscordSettings, Settings
from gateway.engine import EngineAPI, ImagePart, PermissionMode, Pref, Prompt
from gateway.errors import ConfigError, ErrorKind, GatewayError

log = logging.getLogger(__name__)

_AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".mp3", ".m4a", ".wav", ".flac", ".aac", ".webm")
#: Store key of the digest of the slash commands last registered with Discord.
COMMANDS_META = "discord-commands"
#: How a thread opened for a question is named: its first words.
THREAD_NAME_CHARS = 80


@dataclass(frozen=True)
class Place:
    """Where a conversation lives: its server and, for a thread, the channel it hangs off."""

    guild_id: int | None
    parent_id: int | None


class DiscordChatBridge(ChatBridge):
    """The common bridge, with Discord's allow-list: users anywhere, plus every member of an
    allowed server or channel (a channel's threads included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.places: dict[str, Place] = {}

    def is_allowed(self, user: User, chat: Chat) -> bool:
        if super().is_allowed(user, chat):
            return True
        place = self.places.get(chat.key)
        if place is None:
            return False
        allowed = self.settings.allowed_chats
        return place.guild_id in allowed or place.parent_id in allowed


class GatewayClient(discord.Client):
    """discord.py's client; its events go to the :class:`DiscordBridge`."""

    def __init__(self, bridge: DiscordBridge, **options: Any) -> None:
        super().__init__(**options)
        self.bridge = bridge
        self.tree = app_commands.CommandTree(self)
        self.ready = asyncio.Event()

    async def on_ready(self) -> None:
        self.ready.set()
        await self.bridge.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.bridge.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.component:
            await self.bridge.on_button(interaction)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        log.exception("Discord event %s failed", event_method)


class DiscordBridge:
    """Owns the discord.py client; ``start``/``stop`` are called by ``gateway.app``."""

    def __init__(
        self, engine: EngineAPI, settings: DiscordSettings, *, token: str,
        voice: VoiceBackend | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self._token = token
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enabled in the Developer Portal
        self.client = GatewayClient(self, intents=intents, allowed_mentions=discord.AllowedMentions
                                    .none(), max_messages=1000)
        self.platform = DiscordPlatform(self.client)
        self.core = DiscordChatBridge(
            engine,
            self.platform,
            BridgeSettings(
                allowed_users=frozenset(settings.allowed_users),
                # guild and channel ids are snowflakes: never equal to each other
                allowed_chats=frozenset(settings.allowed_channels) | frozenset(
                    settings.allowed_guilds),
                model=settings.default_model or None,
                max_upload_bytes=settings.max_upload_bytes,
                view=ViewSettings(
                    stream=settings.stream,
                    stream_interval=settings.stream_interval,
                    status_interval=settings.status_interval,
                    status_delay=settings.status_delay,
                    long_answer_chars=settings.long_answer_file_chars,
                ),
                upload_setting="max_upload_mb",
            ),
        )
        if voice is not None:
            setup_voice(self.core, voice)
        self.approvals: ChatApprovals = setup_approvals(
            self.core, self.platform,
            default=PermissionMode(settings.permission_mode) if settings.permission_mode
            else None,
        )
        self._connection: asyncio.Task[None] | None = None
        self._installed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(
        cls, engine: EngineAPI, settings: Settings, *, voice: VoiceBackend | None = None
    ) -> DiscordBridge | None:
        """The bridge, if ``DISCORD_BOT_TOKEN`` is set (``voice``: the gateway's voice
        service, for voice messages in and spoken replies out)."""
        token = settings.discord.token
        if token is None:
            return None
        return cls(engine, settings.discord, token=token.get_secret_value(), voice=voice)

    @property
    def commands(self) -> CommandRegistry:
        """Add commands here before :meth:`start` so they become slash commands."""
        return self.core.commands

    @property
    def bot_id(self) -> int | None:
        user = self.client.user
        return user.id if user is not None else None

    # ================================================================== lifecycle

    async def start(self, *, connect: bool = True) -> None:
        """Log in and connect to Discord's gateway (``connect=False``: the caller drives the
        client, as the tests do)."""
        self.core.check()
        if self.settings.default_model:
            try:
                self.engine.resolve_model(self.settings.default_model)
            except GatewayError as exc:
                raise ConfigError(f"discord.default_model: {exc.message}") from exc
        self.install_commands()
        if not connect:
            await self.core.start()
            return
        try:
            await self.client.login(self._token)
        except discord.LoginFailure as exc:
            await self.client.close()
            raise ConfigError(
                "DISCORD_BOT_TOKEN: Discord refused the bot token; copy it again from the"
                " Developer Portal (your application → Bot → Reset Token)"
            ) from exc
        except (OSError, aiohttp.ClientError, TimeoutError, discord.DiscordServerError) as exc:
            # down, or unreachable: the gateway tries again later, with a fresh connection
            await self.client.http.close()
            self.client.http.connector = discord.utils.MISSING
            raise GatewayError(
                ErrorKind.PLATFORM_UNAVAILABLE, f"Discord cannot be reached ({exc})"
            ) from exc
        self._connection = asyncio.create_task(self._connect(), name="discord gateway")
        ready = asyncio.create_task(self.client.ready.wait())
        done, _ = await asyncio.wait({self._connection, ready},
                                     timeout=self.settings.connect_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._connection in done:
            failure = self._connection.exception()
            await self.client.close()
            if isinstance(failure, discord.PrivilegedIntentsRequired):
                raise ConfigError(
                    "Discord: the bot needs the Message Content intent to read messages. Turn"
                    " on Developer Portal → your application → Bot → Message Content Intent."
                ) from failure
            raise ConfigError(f"Discord: could not connect: {failure}") from failure
        if not done:
            log.warning("Discord has not answered within %.0f s; the bot keeps connecting",
                        self.settings.connect_timeout)
        await self.core.start()  # the last run's unfinished messages

    async def _connect(self) -> None:
        # discord.py reconnects (and resumes the session) by itself after network trouble
        await self.client.connect(reconnect=True)

    async def stop(self) -> None:
        """Stop taking messages, end the running turns' displays, close the connection."""
        await self.core.stop()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.client.close()
        if self._connection is not None:
            self._connection.cancel()
            with contextlib.suppress(BaseException):
                await self._connection
            self._connection = None

    async def on_ready(self) -> None:
        user = self.client.user
        log.info("Discord bot %s is running (%d servers)", user, len(self.client.guilds))
        if self.settings.sync_commands:
            self._spawn(self.sync_commands())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ================================================================== slash commands

    def install_commands(self) -> None:
        """Every command of the registry as a slash command (once, before connecting)."""
        if self._installed:
            return
        self._installed = True
        tree = self.client.tree
        for command in self.core.commands:
            if command.hidden:
                continue
            tree.add_command(self._slash_command(command))

    def _slash_command(self, command: Command) -> app_commands.Command[Any, Any, Any]:
        name = command.name

        if command.usage:
            argument = _argument_name(command.usage)

            async def with_argument(interaction: discord.Interaction, value: str = "") -> None:
                await self.on_slash(interaction, name, value)

            callback = app_commands.describe(value=command.usage[:100])(
                app_commands.rename(value=argument)(with_argument))
            return app_commands.Command(name=name, description=command.description[:100],
                                        callback=callback)

        async def without_argument(interaction: discord.Interaction) -> None:
            await self.on_slash(interaction, name, "")

        return app_commands.Command(name=name, description=command.description[:100],
                                    callback=without_argument)

    async def on_slash(self, interaction: discord.Interaction, name: str, args: str) -> None:
        channel = interaction.channel
        if channel is None or not isinstance(channel, discord.abc.Messageable):
            return
        chat = self._chat(channel)
        who = interaction.user
        user = User(who.id, who.display_name)
        allowed = self.core.is_allowed(user, chat)
        await self.platform.call(interaction.response.defer, thinking=True,
                                 ephemeral=not allowed)
        if not allowed:
            log.info("Discord: refused user %s (slash /%s) in %s", user.id, name, chat.key)
            await self.platform.call(
                interaction.followup.send,
                f"Sorry, this is a private assistant and you are not on its allow-list. Your"
                f" Discord user id is {user.id}: if this is your bot, add it to"
                " discord.allowed_users in the gateway's config.",
                ephemeral=True,
            )
            return
        reply = SlashReply(interaction, chat.key)
        token = INTERACTION.set(reply)
        try:
            await self.core.run_command(chat, user, name, args)
        finally:
            reply.closed = True
            INTERACTION.reset(token)
        if not reply.used:  # the command's effect shows elsewhere (/stop: "⏹ Stopped.")
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()

    async def on_button(self, interaction: discord.Interaction) -> None:
        """A press on an approval button: answered with an ephemeral reply to the presser."""
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id") or "")
        channel = interaction.channel
        if not custom_id.startswith(BUTTON_PREFIX) or channel is None \
                or not isinstance(channel, discord.abc.Messageable):
            return
        who = interaction.user
        text = await self.approvals.press(self._chat(channel), User(who.id, who.display_name),
                                          custom_id)
        try:
            await self.platform.call(interaction.response.send_message, text, ephemeral=True)
        except discord.HTTPException as exc:
            log.info("answering a button press failed: %s", exc)

    async def sync_commands(self) -> bool:
        """Register the slash commands with Discord if they changed since the last time;
        True if they were sent. Failures are logged: plain ``/command`` messages still work."""
        tree = self.client.tree
        payload = [command.to_dict(tree) for command in tree.get_commands()]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        app = str(self.client.application_id or "")
        try:
            meta = await self.engine.preferences.get(COMMANDS_META)
            if (meta.get(Pref.COMMANDS_DIGEST) == digest
                    and meta.get(Pref.COMMANDS_APPLICATION) == app):
                return False
            await tree.sync()
            await self.engine.preferences.set(COMMANDS_META, {
                Pref.COMMANDS_DIGEST: digest, Pref.COMMANDS_APPLICATION: app})
        except (discord.HTTPException, app_commands.AppCommandError) as exc:
            log.warning("could not register the slash commands with Discord (%s); typing"
                        " /help and the like as a message still works", exc)
            return False
        log.info("registered %d slash commands with Discord", len(payload))
        return True

    # ================================================================== messages

    async def on_message(self, message: discord.Message) -> None:
        author = message.author
        if author.bot or message.type not in (discord.MessageType.default,
                                              discord.MessageType.reply):
            return
        channel = message.channel
        me = self.bot_id
        text = message.content or ""
        in_thread = isinstance(channel, discord.Thread)
        own_thread = in_thread and getattr(channel, "owner_id", None) == me
        private = message.guild is None
        if not (private or own_thread or self._addressed(message)):
            return
        text = self._strip_mention(text)
        chat = self._chat(channel)
        user = User(author.id, author.display_name)
        if not await self.core.admit(user, chat):
            return
        command = parse_command(text) if text.startswith("/") else None
        if command is not None:
            await self.core.run_command(chat, user, *command)
            return
        if not (private or in_thread) and self.settings.threads:
            chat = await self._open_thread(message, text, chat)
        source = Source(message.id, author.id)
        saved: list[str] = []
        try:
            if await self._voice(message, chat, text, source):
                return
            prompt = await self._prompt(message, chat, text, saved)
        except discord.HTTPException as exc:
            log.warning("download in %s failed: %s", chat.key, exc)
            await self.core.say(chat, "📎 I could not fetch that attachment from Discord"
                                f" ({exc.status}). Please send it again.", markdown=False)
            return
        except GatewayError as exc:
            await self.core.say(chat, f"⚠️ {exc.message}", markdown=False)
            return
        if prompt is not None:
            await self.core.submit(chat, prompt, replace(source, attachments=tuple(saved)))

    def _chat(self, channel: Any) -> Chat:
        chat = self.platform.remember(channel)
        guild = getattr(channel, "guild", None)
        parent = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) \
            else None
        self.core.places[chat.key] = Place(guild.id if guild else None, parent)
        return chat

    def _addressed(self, message: discord.Message) -> bool:
        """In a server channel: a mention of the bot, or a reply to one of its messages."""
        me = self.client.user
        if me is None:
            return False
        if any(user.id == me.id for user in message.mentions):
            return True
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        return isinstance(resolved, discord.Message) and resolved.author.id == me.id

    def _strip_mention(self, text: str) -> str:
        me = self.bot_id
        if me is None:
            return text.strip()
        stripped = re.sub(rf"<@!?{me}>", " ", text)
        return re.sub(r"[ \t]{2,}", " ", stripped).strip()

    async def _open_thread(self, message: discord.Message, text: str, chat: Chat) -> Chat:
        """A thread on the person's message for the answer; the channel if that fails."""
        name = _thread_name(text, message)
        try:
            thread = await self.platform.call(
                message.create_thread, name=name,
                auto_archive_duration=self.settings.thread_archive_minutes,
            )
        except discord.HTTPException as exc:
            log.warning("could not open a thread in %s (%s); answering in the channel",
                        chat.key, exc)
            return chat
        return self._chat(thread)

    async def _voice(self, message: discord.Message, chat: Chat, text: str,
                     source: Source) -> bool:
        """A voice message, or (with voice support) an audio file sent alone: transcribed.
        Without voice support an audio file is an ordinary file."""
        audio = next((a for a in message.attachments if _is_voice(message, a)), None)
        if audio is None and self.core.voice is not None and len(message.attachments) == 1:
            only = message.attachments[0]
            audio = only if _is_audio(only) else None
        if audio is None:
            return False
        name = "The voice message" if _is_voice(message, audio) else audio.filename
        refusal = self.core.upload_refusal(name, audio.size)
        if refusal:
            await self.core.say(chat, refusal, markdown=False)
            return True
        await self.core.handle_voice(chat, audio.read, audio.content_type or audio.filename,
                                     caption=text, source=source)
        return True

    async def _prompt(self, message: discord.Message, chat: Chat, text: str,
                      saved: list[str]) -> Prompt | None:
        """The prompt of a message; the paths of the files it saved are added to ``saved``."""
        parts: list[str] = []
        quote = self._quote(message)
        if quote:
            parts.append(quote)
        if text.strip():
            parts.append(text.strip())
        images: list[ImagePart] = []
        for attachment in message.attachments:
            refusal = self.core.upload_refusal(attachment.filename, attachment.size)
            if refusal:
                await self.core.say(chat, refusal, markdown=False)
                return None
            data = await self.platform.call(attachment.read)
            media = _image_type(data)
            if media is not None:
                images.append(ImagePart.from_bytes(media, data))
                continue
            path = await self.core.save_upload(chat, attachment.filename, data)
            saved.append(str(path))
            parts.append(self.core.upload_note(path, attachment.filename,
                                               attachment.content_type, len(data)))
        if not parts and not images:
            return None
        return Prompt(text="\n\n".join(parts), images=tuple(images))

    def _quote(self, message: discord.Message) -> str:
        ref = message.reference
        quoted = ref.resolved if ref is not None else None
        if not isinstance(quoted, discord.Message) or not quoted.content:
            return ""
        body = quoted.content if len(quoted.content) <= 600 else quoted.content[:600] + "…"
        who = "your earlier message" if quoted.author.id == self.bot_id else "this message"
        return f"[In reply to {who}: {body}]"


# --------------------------------------------------------------------------- helpers


def _argument_name(usage: str) -> str:
    """``"[name]"`` → ``"name"``, ``"<number or id>"`` → ``"number_or_id"``."""
    words = re.findall(r"[a-z0-9]+", usage.lower())
    return "_".join(words)[:32] or "value"


def _thread_name(text: str, message: discord.Message) -> str:
    line = " ".join(text.split()) or (message.attachments[0].filename if message.attachments
                                      else "Claude")
    return line if len(line) <= THREAD_NAME_CHARS else line[: THREAD_NAME_CHARS - 1] + "…"


def _is_voice(message: discord.Message, attachment: discord.Attachment) -> bool:
    return attachment.is_voice_message() or (
        message.flags.voice and (attachment.content_type or "").startswith("audio/")
    )


def _is_audio(attachment: discord.Attachment) -> bool:
    kind = attachment.content_type or ""
    return kind.startswith("audio/") or attachment.filename.lower().endswith(_AUDIO_EXTENSIONS)


def _image_type(data: bytes) -> str | None:
    """The media type of an image Claude can read, from its bytes (names can lie); other
    images (SVG, HEIC, ...) go to the inbox like any file."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None

