"""The Telegram bridge: python-telegram-bot's ``Application`` feeding the common chat logic.

This module only adapts: it turns Telegram updates into :class:`~bridges.common.Chat`,
:class:`~bridges.common.User` and prompts, applies Telegram's group rule (answer only when
mentioned or replied to), downloads what the person sent, and runs long polling (or a
webhook). Everything else is :class:`bridges.common.ChatBridge`.
"""

from __future__ import annotations

import contextlib
import datetime as dtm
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import telegram
from aiohttp import web
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

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
from bridges.common.commands import parse_command
from bridges.telegram.platform import (
    CLOUD_UPLOAD_LIMIT,
    LOCAL_UPLOAD_LIMIT,
    TelegramPlatform,
    chat_key,
)
from gateway.config import Settings, TelegramSettings
from gateway.engine import EngineAPI, ImagePart, PermissionMode, Prompt
from gateway.errors import ConfigError, ErrorKind, GatewayError

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query"]
#: How long a reply quote carried into the prompt may be.
QUOTE_CHARS = 600


@dataclass(frozen=True)
class _Attachment:
    file_id: str
    name: str
    mime_type: str | None
    size: int | None


class TelegramBridge:
    """Owns the PTB ``Application``; ``start``/``stop`` are called by ``gateway.app``."""

    def __init__(
        self, engine: EngineAPI, settings: TelegramSettings, *, token: str,
        notify_chat_id: int | None = None, voice: VoiceBackend | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        builder = (
            Application.builder()
            .token(token)
            .rate_limiter(AIORateLimiter(max_retries=3))
            .get_updates_read_timeout(settings.poll_timeout + 10)
        )
        if settings.base_url:
            base_url = settings.base_url.rstrip("/")
            builder = builder.base_url(base_url if base_url.endswith("/bot") else base_url + "/bot")
            file_url = settings.base_file_url or _file_url(base_url)
            builder = builder.base_file_url(file_url)
        elif settings.base_file_url:
            builder = builder.base_file_url(settings.base_file_url)
        if settings.local_mode:
            builder = builder.local_mode(True)
        self.app = builder.build()
        self.platform = TelegramPlatform(
            self.app.bot,
            max_upload_bytes=LOCAL_UPLOAD_LIMIT if settings.base_url else CLOUD_UPLOAD_LIMIT,
        )
        self.core = ChatBridge(
            engine,
            self.platform,
            BridgeSettings(
                allowed_users=frozenset(settings.allowed_users),
                allowed_chats=frozenset(settings.allowed_chats),
                model=settings.default_model or None,
                max_upload_bytes=settings.max_upload_bytes,
                notify_key=chat_key(notify_chat_id) if notify_chat_id else None,
                view=ViewSettings(
                    stream=settings.stream,
                    stream_interval=settings.stream_interval,
                    status_interval=settings.status_interval,
                    status_delay=settings.status_delay,
                    long_answer_chars=settings.long_answer_file_chars,
                ),
            ),
        )
        if voice is not None:
            setup_voice(self.core, voice)
        self.approvals: ChatApprovals = setup_approvals(
            self.core, self.platform,
            default=PermissionMode(settings.permission_mode) if settings.permission_mode
            else None,
        )
        self.app.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        self.app.add_handler(CallbackQueryHandler(self._on_button))
        self.app.add_error_handler(self._on_error)
        self.username: str | None = None
        self.bot_id: int | None = None
        self._webhook: web.AppRunner | None = None
        self._webhook_secret = secrets.token_urlsafe(32)
        self._started = False

    @classmethod
    def from_settings(
        cls, engine: EngineAPI, settings: Settings, *, voice: VoiceBackend | None = None
    ) -> TelegramBridge | None:
        """The bridge, if ``TELEGRAM_BOT_TOKEN`` is set (``voice``: the gateway's voice
        service, for voice messages in and spoken replies out)."""
        token = settings.telegram.token
        if token is None:
            return None
        return cls(engine, settings.telegram, token=token.get_secret_value(),
                   notify_chat_id=settings.notify.telegram_chat_id, voice=voice)

    @property
    def commands(self) -> CommandRegistry:
        """Add commands here before :meth:`start` so they appear in Telegram's menu."""
        return self.core.commands

    # ================================================================== lifecycle

    async def start(self) -> None:
        self.core.check()
        if self.settings.default_model:
            try:
                self.engine.resolve_model(self.settings.default_model)
            except GatewayError as exc:
                raise ConfigError(f"telegram.default_model: {exc.message}") from exc
        try:
            await self.app.initialize()
        except InvalidToken as exc:
            raise ConfigError(
                "TELEGRAM_BOT_TOKEN: Telegram refused the bot token; copy it again from"
                " @BotFather"
            ) from exc
        except NetworkError as exc:  # down, or unreachable: the gateway tries again later
            raise GatewayError(
                ErrorKind.PLATFORM_UNAVAILABLE, f"Telegram's Bot API cannot be reached ({exc})"
            ) from exc
        self.username = self.app.bot.username
        self.bot_id = self.app.bot.id
        await self._publish_commands()
        await self.app.start()
        self._started = True
        await self.core.start()  # the last run's unfinished messages, before new ones
        if self.settings.mode == "webhook":
            await self._start_webhook()
        else:
            assert self.app.updater is not None
            await self.app.updater.start_polling(
                timeout=dtm.timedelta(seconds=self.settings.poll_timeout),
                allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False,
                bootstrap_retries=3,
            )
        log.info("Telegram bot @%s is running (%s)", self.username, self.settings.mode)

    async def stop(self) -> None:
        """Stop taking updates, end the running turns' displays, close the bot."""
        if self.app.updater is not None and self.app.updater.running:
            with contextlib.suppress(Exception):
                await self.app.updater.stop()
        if self._webhook is not None:
            await self._webhook.cleanup()
            self._webhook = None
        await self.core.stop()
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self.app.stop()
        with contextlib.suppress(Exception):
            await self.app.shutdown()

    async def _publish_commands(self) -> None:
        commands = [telegram.BotCommand(c.name, c.description[:256])
                    for c in self.core.commands if not c.hidden]
        try:
            await self.platform.call(self.app.bot.set_my_commands, commands)
        except TelegramError as exc:
            log.warning("could not register the bot's commands with Telegram: %s", exc)

    async def _start_webhook(self) -> None:
        path = urlparse(self.settings.webhook_url).path or "/"
        web_app = web.Application()
        web_app.router.add_post(path, self._on_webhook)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.webhook_listen, self.settings.webhook_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"telegram.webhook_port: cannot listen on {self.settings.webhook_listen}:"
                f"{self.settings.webhook_port}: {exc.strerror or exc}"
            ) from exc
        self._webhook = runner
        await self.platform.call(
            self.app.bot.set_webhook, url=self.settings.webhook_url,
            secret_token=self._webhook_secret, allowed_updates=ALLOWED_UPDATES,
        )

    async def _on_webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not secrets.compare_digest(given, self._webhook_secret):
            return web.Response(status=403)
        try:
            update = telegram.Update.de_json(await request.json(), self.app.bot)
        except Exception:
            return web.Response(status=400)
        await self.app.update_queue.put(update)
        return web.Response(text="ok")

    # ================================================================== updates

    async def _on_message(
        self, update: telegram.Update, context: ContextTypes.DEFAULT_TYPE
    ) -> None:
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        chat = self.chat_of(message)
        user = User(message.from_user.id, message.from_user.full_name)
        text = message.text or message.caption or ""
        if not chat.private:
            if not self._addressed(message, text):
                return
            text = self._strip_mention(text)
        if not await self.core.admit(user, chat):
            return
        command = parse_command(text, self.username) if text.startswith("/") else None
        if command is not None:
            await self.core.run_command(chat, user, *command)
            return
        spoken = _spoken(message)
        if spoken is not None:
            refusal = self.core.upload_refusal(spoken.name, spoken.size)
            if refusal:
                await self.core.say(chat, refusal, markdown=False)
                return
            file_id = spoken.file_id
            await self.core.handle_voice(
                chat, lambda: self.platform.download(file_id),
                spoken.mime_type or spoken.name, caption=text,
                fallback=None if message.voice else self._keeper(chat, spoken, text),
                source=Source(message.message_id, user.id),
            )
            return
        saved: list[str] = []
        prompt = await self._prompt(message, chat, text, saved)
        if prompt is not None:
            await self.core.submit(chat, prompt, Source(message.message_id, user.id,
                                                        attachments=tuple(saved)))

    async def _prompt(self, message: telegram.Message, chat: Chat, text: str,
                      saved: list[str]) -> Prompt | None:
        """The prompt of a message; the paths of the files it saved are added to ``saved``."""
        parts: list[str] = []
        quote = self._quote(message)
        if quote:
            parts.append(quote)
        if text.strip():
            parts.append(text.strip())
        images: list[ImagePart] = []
        try:
            if message.photo:
                photo = message.photo[-1]
                refusal = self.core.upload_refusal("The photo", photo.file_size)
                if refusal:
                    await self.core.say(chat, refusal, markdown=False)
                    return None
                data = await self.platform.download(photo.file_id)
                images.append(ImagePart.from_bytes(_image_type(data), data))
            attachment = _attachment(message)
            if attachment is not None:
                refusal = self.core.upload_refusal(attachment.name, attachment.size)
                if refusal:
                    await self.core.say(chat, refusal, markdown=False)
                    return None
                data = await self.platform.download(attachment.file_id)
                path = await self.core.save_upload(chat, attachment.name, data)
                saved.append(str(path))
                parts.append(self.core.upload_note(path, attachment.name, attachment.mime_type,
                                                   len(data)))
        except TelegramError as exc:
            log.warning("download in %s failed: %s", chat.key, exc)
            await self.core.say(
                chat, f"📎 I could not fetch that file from Telegram ({exc}). Please send it"
                " again.", markdown=False,
            )
            return None
        if not parts and not images:
            return None
        return Prompt(text="\n\n".join(parts), images=tuple(images))

    async def _on_button(
        self, update: telegram.Update, context: ContextTypes.DEFAULT_TYPE
    ) -> None:
        """A press on an approval button; answered with answerCallbackQuery."""
        query = update.callback_query
        if query is None:
            return
        message = query.message
        data = query.data or ""
        if message is None or not isinstance(message, telegram.Message) \
                or not data.startswith(BUTTON_PREFIX):
            answer = "This button no longer works."
        else:
            user = User(query.from_user.id, query.from_user.full_name)
            answer = await self.approvals.press(self.chat_of(message), user, data)
        try:
            await self.platform.call(query.answer, text=answer)
        except TelegramError as exc:
            log.info("answerCallbackQuery failed: %s", exc)

    def _keeper(
        self, chat: Chat, file: _Attachment, caption: str
    ) -> Callable[[bytes], Awaitable[None]]:
        """Keeps an audio file in the inbox, like a document, when it is not transcribed."""

        async def keep(data: bytes) -> None:
            path = await self.core.save_upload(chat, file.name, data)
            note = self.core.upload_note(path, file.name, file.mime_type, len(data))
            text = f"{caption.strip()}\n\n{note}" if caption.strip() else note
            await self.core.submit_now(chat, Prompt(text=text))

        return keep

    def chat_of(self, message: telegram.Message) -> Chat:
        thread = message.message_thread_id if message.is_topic_message else None
        tg_chat = message.chat
        return Chat(
            key=chat_key(tg_chat.id, thread),
            id=tg_chat.id,
            thread_id=thread,
            private=tg_chat.type == telegram.constants.ChatType.PRIVATE,
            title=tg_chat.title or tg_chat.full_name or "",
        )

    def _addressed(self, message: telegram.Message, text: str) -> bool:
        """In a group: a command for this bot, a mention of it, or a reply to it."""
        if text.startswith("/") and parse_command(text, self.username) is not None:
            return True
        if self.username and f"@{self.username}".lower() in text.lower():
            return True
        reply = message.reply_to_message
        return (
            reply is not None
            and reply.from_user is not None
            and reply.from_user.id == self.bot_id
            and reply.forum_topic_created is None
        )

    def _strip_mention(self, text: str) -> str:
        if not self.username or text.startswith("/"):
            return text
        stripped = re.sub(rf"@{re.escape(self.username)}\b", " ", text, flags=re.IGNORECASE)
        return re.sub(r"[ \t]{2,}", " ", stripped).strip()

    def _quote(self, message: telegram.Message) -> str:
        reply = message.reply_to_message
        if reply is None or reply.forum_topic_created is not None:
            return ""
        quoted = (message.quote.text if message.quote else None) or reply.text or reply.caption
        if not quoted:
            return ""
        if len(quoted) > QUOTE_CHARS:
            quoted = quoted[:QUOTE_CHARS] + "…"
        who = "your earlier message" if reply.from_user and reply.from_user.id == self.bot_id \
            else "this message"
        return f"[In reply to {who}: {quoted}]"

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram update failed: %s", context.error, exc_info=context.error)


def _image_type(data: bytes) -> str:
    """The media type of a photo's bytes (Telegram sends JPEG; be sure anyway)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def _file_url(base_url: str) -> str:
    """``https://host/bot`` → ``https://host/file/bot``."""
    root = base_url[: -len("/bot")] if base_url.endswith("/bot") else base_url
    return root + "/file/bot"


def _spoken(message: telegram.Message) -> _Attachment | None:
    """A voice note or an audio file (a recording, music): both are transcribed. An audio
    file is kept as an ordinary file where voice support is off or not installed."""
    if message.voice is not None:
        v = message.voice
        return _Attachment(v.file_id, "The voice message", v.mime_type, v.file_size)
    if message.audio is not None:
        a = message.audio
        return _Attachment(a.file_id, a.file_name or f"audio-{a.file_unique_id}",
                           a.mime_type, a.file_size)
    return None


def _attachment(message: telegram.Message) -> _Attachment | None:
    """A file the person sent that goes to the inbox (photos, voice notes and audio files
    are handled apart)."""
    if message.document is not None:
        d = message.document
        return _Attachment(d.file_id, d.file_name or f"document-{d.file_unique_id}",
                           d.mime_type, d.file_size)
    if message.video is not None:
        v = message.video
        return _Attachment(v.file_id, v.file_name or f"video-{v.file_unique_id}.mp4",
                           v.mime_type, v.file_size)
    if message.animation is not None:
        n = message.animation
        return _Attachment(n.file_id, n.file_name or f"animation-{n.file_unique_id}.mp4",
                           n.mime_type, n.file_size)
    if message.video_note is not None:
        vn = message.video_note
        return _Attachment(vn.file_id, f"video-note-{vn.file_unique_id}.mp4", "video/mp4",
                           vn.file_size)
    return None
