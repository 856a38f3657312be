"""Voice in chats, for every platform: voice notes in, spoken replies out, ``/voice``.

The speech work is done by the gateway's voice service (``gateway.voice.VoiceService``);
this module only decides what a person sees of it:

* a voice note (or an audio file) is downloaded, transcribed, shown back briefly
  ("🎤 heard: …", ``voice.show_transcript``) and sent to Claude as the prompt, with the
  caption if there was one. Audio that cannot be decoded, is too long or has no speech in
  it gets a clear reply and no turn; so does a gateway without the voice extra (the reply
  says what to install).
* ``/voice on|off`` (default ``voice.reply_with_voice``, remembered per chat across
  restarts): after the written answer, a voice note of it, code blocks and long tables
  left out.

The service is used through the small :class:`VoiceBackend` protocol (so tests and other
frontends can hand in what they have); importing ``gateway.voice`` itself is light, its
engines load on first use.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from bridges.common.bridge import ChatBridge
from bridges.common.commands import Command, CommandContext
from bridges.common.platform import Chat
from gateway.engine import Pref, Prompt, TurnResult
from gateway.errors import GatewayError
from gateway.voice import VoiceUnavailable, voice_prompt

log = logging.getLogger(__name__)

#: How much of a transcript the "heard: …" line shows.
HEARD_CHARS = 300


class VoiceOptions(Protocol):
    @property
    def show_transcript(self) -> bool: ...

    @property
    def reply_with_voice(self) -> bool: ...


class Heard(Protocol):
    @property
    def text(self) -> str: ...

    def preview(self, max_chars: int = ...) -> str: ...


class Spoken(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def filename(self) -> str: ...


class VoiceBackend(Protocol):
    """What the chats need of ``gateway.voice.VoiceService``."""

    @property
    def settings(self) -> VoiceOptions: ...

    async def transcribe(self, data: bytes, filename_or_mime: str = ...) -> Heard: ...

    async def voice_reply(self, markdown: str) -> Spoken | None: ...

    def available(self) -> dict[str, Any]: ...


def setup_voice(bridge: ChatBridge, backend: VoiceBackend) -> ChatVoice:
    """Give ``bridge`` voice notes in, spoken replies out and ``/voice`` (the way
    ``setup_schedules`` adds the schedule commands)."""
    voice = ChatVoice(bridge, backend)
    bridge.voice = voice
    bridge.after_turn.append(voice.after_turn)
    return voice


class ChatVoice:
    """The voice feature of one :class:`~bridges.common.bridge.ChatBridge`."""

    META = "voice_replies"

    def __init__(self, bridge: ChatBridge, backend: VoiceBackend) -> None:
        self.bridge = bridge
        self.backend = backend
        self._replies: dict[str, bool] = {}  # chat key -> on/off, once known
        bridge.commands.add(Command(
            "voice", "Spoken replies: also answer with a voice note (on/off)", self._cmd_voice,
            "[on|off]",
        ))

    # ------------------------------------------------------------------ voice in

    async def handle(
        self, chat: Chat, fetch: Callable[[], Awaitable[bytes]], mime_type: str,
        caption: str = "", *, fallback: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        """Download, transcribe, show and submit a voice message (see the module doc).

        ``fallback`` takes the bytes instead when no voice engine is installed (an audio
        file is then kept as an ordinary file rather than refused)."""
        platform = self.bridge.platform
        try:
            await platform.typing(chat)
        except Exception as exc:  # only a courtesy
            log.debug("typing in %s: %s", chat.key, exc)
        try:
            data = await fetch()
        except Exception as exc:
            log.warning("voice download in %s failed: %s", chat.key, exc)
            await self.bridge.say(
                chat, f"🎤 I could not fetch that voice message from {self.bridge.title}."
                " Please send it again.", markdown=False,
            )
            return
        try:
            heard = await self.backend.transcribe(data, mime_type)
        except VoiceUnavailable as exc:
            if fallback is not None:
                log.info("no voice engine (%s); keeping the audio as a file", exc.message)
                await fallback(data)
                return
            await self.bridge.say(chat, f"🎤 {exc.message}", markdown=False)
            return
        except GatewayError as exc:  # VoiceError: undecodable, too long, no speech, missing
            log.info("voice message in %s not transcribed: %s", chat.key, exc.message)
            await self.bridge.say(chat, f"🎤 {exc.message}", markdown=False)
            return
        if self.backend.settings.show_transcript:
            await self.bridge.say(chat, f"🎤 heard: {heard.preview(HEARD_CHARS)}",
                                  markdown=False)
        await self.bridge.submit_now(chat, Prompt(text=voice_prompt(heard.text, caption)))

    # ------------------------------------------------------------------ voice out

    async def replies_on(self, chat: Chat) -> bool:
        known = self._replies.get(chat.key)
        if known is None:
            meta: Mapping[Pref, str] = {}
            try:
                meta = await self.bridge.engine.preferences.get(self._meta_key(chat))
            except Exception as exc:
                log.debug("voice setting of %s: %s", chat.key, exc)
            value = meta.get(Pref.VOICE_REPLIES)
            known = self.backend.settings.reply_with_voice if value is None else value == "1"
            self._replies[chat.key] = known
        return known

    async def after_turn(self, chat: Chat, result: TurnResult) -> None:
        """Send the answer as a voice note too, if the chat asked for spoken replies."""
        if not result.text.strip() or not await self.replies_on(chat):
            return
        try:
            await self.bridge.platform.typing(chat)
            spoken = await self.backend.voice_reply(result.text)
        except GatewayError as exc:  # no engine installed, or the engine failed
            log.warning("spoken reply in %s failed: %s", chat.key, exc.message)
            await self._set(chat, False)
            await self.bridge.say(
                chat, f"🔇 {exc.message}\nSpoken replies are off now; /voice on tries again.",
                markdown=False,
            )
            return
        if spoken is None:  # only code or tables: nothing worth saying
            return
        with tempfile.TemporaryDirectory(prefix="cmg-voice-") as folder:
            path = Path(folder) / spoken.filename
            await asyncio.to_thread(path.write_bytes, spoken.data)
            try:
                await self.bridge.platform.send_file(chat, path, "", "voice")
            except Exception as exc:
                log.warning("sending the spoken reply to %s failed: %s", chat.key, exc)

    # ------------------------------------------------------------------ /voice

    async def _cmd_voice(self, ctx: CommandContext) -> None:
        wanted = ctx.args.strip().lower()
        if wanted in ("on", "yes", "1", "true"):
            problem = await asyncio.to_thread(self._tts_problem)
            if problem:
                await ctx.reply(f"🔇 {problem}", markdown=False)
                return
            await self._set(ctx.chat, True)
            await ctx.reply("🔊 Spoken replies are on: each answer also comes as a voice note"
                            " (code and long tables left out). /voice off stops them.",
                            markdown=False)
        elif wanted in ("off", "no", "0", "false"):
            await self._set(ctx.chat, False)
            await ctx.reply("🔇 Spoken replies are off.", markdown=False)
        elif not wanted:
            state = "on" if await self.replies_on(ctx.chat) else "off"
            await ctx.reply(
                f"Spoken replies are {state} in this chat. /voice on or /voice off changes"
                " it. Voice messages you send are always transcribed.", markdown=False,
            )
        else:
            await ctx.reply("Usage: /voice on or /voice off.", markdown=False)

    def _tts_problem(self) -> str | None:
        """Why spoken replies cannot work here (names what to install), or ``None``."""
        try:
            report = self.backend.available()
        except Exception as exc:
            return f"Spoken replies are not available: {exc}"
        tts = report.get("tts")
        if isinstance(tts, dict):
            if tts.get("will_use"):
                return None
            engines = tts.get("engines")
            why = [f"{name}: {e['problem']}" for name, e in (engines or {}).items()
                   if isinstance(e, dict) and e.get("problem")]
            if why:
                return "Spoken replies are not available: " + "; ".join(why)
        problems = list(report.get("problems", []))  # no voice packages at all, and the like
        return problems[0] if problems else "Spoken replies are not available here."

    async def _set(self, chat: Chat, on: bool) -> None:
        self._replies[chat.key] = on
        try:
            await self.bridge.engine.preferences.set(
                self._meta_key(chat), {Pref.VOICE_REPLIES: "1" if on else "0"})
        except Exception as exc:
            log.warning("could not remember the voice setting of %s: %s", chat.key, exc)

    def _meta_key(self, chat: Chat) -> str:
        return f"{self.META}:{chat.key}"
