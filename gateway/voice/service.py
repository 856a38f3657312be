"""The one object the frontends use for voice: :class:`VoiceService`.

Built from ``settings.voice`` (or given engines), passed to whoever needs it; it holds no
global state. Nothing heavy happens at construction: engines import their packages and
load their models on first use, in the service's own worker threads, and the results stay
loaded for the life of the process.

Concurrency: transcriptions run in a pool of ``voice.max_parallel`` threads, so at most
that many run at once and the rest wait their turn (a cancelled waiter leaves the queue; a
running transcription finishes in its thread before its slot is reused). Syntheses have a
pool of the same size. Decoding, which is light, runs in the default thread pool so that
too-long or broken audio is refused at once, even while another transcription runs.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import VoiceSettings
from gateway.errors import ErrorKind, GatewayError
from gateway.voice.errors import (
    ESPEAK_INSTALL,
    VOICE_EXTRA,
    NoSpeech,
    SynthesisFailed,
    VoiceError,
    VoiceUnavailable,
)
from gateway.voice.text import speakable_text

if TYPE_CHECKING:
    from gateway.voice.stt import Segment, SpeechToText
    from gateway.voice.tts import Speech, TextToSpeech

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Transcript:
    """What was said in a piece of audio."""

    text: str
    #: the language code Whisper used or detected ("en"), if it says
    language: str | None
    #: seconds of audio
    duration: float
    segments: tuple[Segment, ...]
    engine: str
    model: str
    #: seconds spent decoding the file, and running the model (loading included, first time)
    decode_seconds: float = 0.0
    transcribe_seconds: float = 0.0

    def preview(self, max_chars: int = 300) -> str:
        """The text, cut at a word boundary with "…" when it is longer than ``max_chars``."""
        if len(self.text) <= max_chars:
            return self.text
        cut = self.text[: max_chars - 1]
        space = cut.rfind(" ")
        return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:") + "…"


@dataclass(frozen=True)
class SpokenAudio:
    """Encoded speech, ready to send: ``data`` in ``format`` (``mime_type``)."""

    data: bytes
    format: str
    mime_type: str
    #: seconds of speech (Telegram's sendVoice ``duration``: round it up)
    duration: float
    #: "piper" or "espeak"
    engine: str
    #: the text that was spoken
    text: str

    @property
    def filename(self) -> str:
        from gateway.voice.audio import audio_format

        return "voice" + audio_format(self.format).extension


def voice_prompt(transcript: str, caption: str = "") -> str:
    """The prompt Claude gets for a voice message: the transcript, marked as one (it may
    contain recognition errors), then the caption if the message had one."""
    text = f"[Voice message, transcribed automatically]\n{transcript.strip()}"
    if caption.strip():
        text += f"\n\n[Caption]\n{caption.strip()}"
    return text


def _modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """gateway.voice.audio, .stt, .tts: they need numpy, which only the voice extras bring."""
    try:
        audio, stt, tts = (
            importlib.import_module(f"gateway.voice.{name}") for name in ("audio", "stt", "tts")
        )
    except ImportError as exc:
        raise VoiceUnavailable(
            f"Voice support is not installed ({exc}): {VOICE_EXTRA}", install=VOICE_EXTRA
        ) from None
    return audio, stt, tts


def build_stt(settings: VoiceSettings) -> SpeechToText:
    """The speech-to-text engine ``settings`` ask for (nothing is imported or loaded yet)."""
    _, stt, _ = _modules()
    if settings.stt_engine == "openai-whisper":
        engine: SpeechToText = stt.OpenAIWhisperEngine(
            settings.model,
            model_configured=settings.model_configured,
            beam_size=settings.beam_size,
            vad_filter=settings.vad_filter,
        )
    else:
        engine = stt.FasterWhisperEngine(
            settings.model,
            model_configured=settings.model_configured,
            compute_type=settings.compute_type,
            beam_size=settings.beam_size,
            vad_filter=settings.vad_filter,
            num_workers=settings.max_parallel,
        )
    return engine


def build_tts(settings: VoiceSettings) -> list[TextToSpeech]:
    """The voices to try, in order: Piper then espeak-ng, or espeak-ng alone."""
    _, _, tts = _modules()
    espeak: TextToSpeech = tts.EspeakEngine(settings.espeak_voice)
    if settings.tts_engine == "espeak":
        return [espeak]
    piper: TextToSpeech = tts.PiperEngine(settings.piper_voice)
    return [piper, espeak]


class VoiceService:
    """Speech to text and text to speech for the bridges and the HTTP API.

    ``stt`` and ``tts`` replace the engines built from ``settings`` (a test or a benchmark
    shares loaded engines between services this way).
    """

    def __init__(
        self,
        settings: VoiceSettings | None = None,
        *,
        stt: SpeechToText | None = None,
        tts: Sequence[TextToSpeech] | None = None,
    ) -> None:
        self.settings = settings or VoiceSettings()
        self._stt = stt
        self._tts = list(tts) if tts is not None else None
        workers = self.settings.max_parallel
        self._stt_pool = ThreadPoolExecutor(workers, thread_name_prefix="voice-stt")
        self._tts_pool = ThreadPoolExecutor(workers, thread_name_prefix="voice-tts")
        self._fallback_logged: set[str] = set()
        #: transcriptions waiting or running, for status pages
        self.pending = 0
        self._closed = False

    # ------------------------------------------------------------------ engines

    @property
    def stt(self) -> SpeechToText:
        if self._stt is None:
            self._stt = build_stt(self.settings)
        return self._stt

    @property
    def tts(self) -> list[TextToSpeech]:
        if self._tts is None:
            self._tts = build_tts(self.settings)
        return self._tts

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise GatewayError(ErrorKind.SHUTDOWN, "The voice service is shutting down.")
        return await asyncio.wrap_future(pool.submit(fn))

    # ------------------------------------------------------------------ speech to text

    async def transcribe(
        self,
        data: bytes,
        filename_or_mime: str = "",
        *,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """What is said in ``data`` (any audio file: OGG/Opus voice note, MP3, M4A, WAV…).

        ``filename_or_mime`` only improves error messages; ``language`` overrides
        ``voice.language``; ``prompt`` is Whisper's initial prompt (names, jargon).

        Raises :class:`AudioDecodeError` (not audio, or no sound), :class:`AudioTooLong`
        (over ``voice.max_seconds``), :class:`NoSpeech` (nothing was said) and
        :class:`VoiceUnavailable` (engine or model missing; the message says what to
        install). All are :class:`VoiceError`\\ s with a message fit for a person.
        """
        audio, _, _ = _modules()
        stt = self.stt
        self.pending += 1
        try:
            started = time.perf_counter()
            decoded = await asyncio.to_thread(
                audio.decode_audio, data, filename_or_mime,
                max_seconds=self.settings.max_seconds,
            )
            decoded_at = time.perf_counter()
            lang = language or self.settings.language or None
            if audio.is_silent(decoded.samples):
                raise _no_speech(decoded.duration, lang)
            result = await self._run(
                self._stt_pool,
                functools.partial(stt.transcribe, decoded.samples, language=lang, prompt=prompt),
            )
            finished = time.perf_counter()
        finally:
            self.pending -= 1
        if not result.text:
            raise _no_speech(decoded.duration, result.language or lang)
        transcript = Transcript(
            text=result.text,
            language=result.language or lang,
            duration=decoded.duration,
            segments=result.segments,
            engine=stt.name,
            model=self.settings.model,
            decode_seconds=decoded_at - started,
            transcribe_seconds=finished - decoded_at,
        )
        log.info("transcribed %.1f s of %s in %.2f s (%s)", transcript.duration,
                 decoded.source, finished - started, stt.name)
        return transcript

    # ------------------------------------------------------------------ text to speech

    def speakable(self, markdown: str) -> str:
        """The part of an answer that a spoken reply reads (``voice.max_spoken_chars``)."""
        return speakable_text(markdown, self.settings.max_spoken_chars)

    async def voice_reply(self, markdown: str) -> SpokenAudio | None:
        """A voice note (Ogg/Opus) of an answer, code and long tables left out; ``None``
        when nothing in it is worth saying."""
        text = self.speakable(markdown)
        if not text:
            return None
        return await self.speak(text, "ogg")

    async def synthesize(self, text: str, fmt: str = "ogg", *, speed: float = 1.0) -> bytes:
        """``text`` spoken, encoded as ``fmt``: ogg (Ogg/Opus voice note), opus, mp3, aac,
        flac, wav or pcm."""
        return (await self.speak(text, fmt, speed=speed)).data

    async def speak(self, text: str, fmt: str = "ogg", *, speed: float = 1.0) -> SpokenAudio:
        """Like :meth:`synthesize`, with the duration, MIME type and engine.

        Tries Piper, then espeak-ng (unless ``voice.tts_engine = "espeak"``). Raises
        :class:`VoiceUnavailable` naming what to install when no engine works,
        ``ValueError`` for an unknown format or speed.
        """
        audio, _, _ = _modules()
        spec = audio.audio_format(fmt)
        if not 0.25 <= speed <= 4.0:
            raise ValueError(f"speed {speed} is outside 0.25 to 4.0")
        if not text.strip():
            raise GatewayError(ErrorKind.INVALID_REQUEST, "There is no text to speak.")
        if spec.name != "wav":
            audio.import_av()  # fail before synthesizing when the encoder is missing
        problems: list[str] = []
        failure: VoiceError | None = None
        for engine in self.tts:
            try:
                speech = await self._run(
                    self._tts_pool, functools.partial(_synthesize, engine, text, speed)
                )
            except VoiceUnavailable as exc:
                problems.append(f"{_engine_label(engine.name)}: {exc.message}")
                self._log_fallback(engine.name, exc.message)
                continue
            except SynthesisFailed as exc:
                problems.append(f"{_engine_label(engine.name)}: {exc.message}")
                log.warning("%s failed: %s", engine.name, exc.message)
                failure = failure or exc
                continue
            if speech.pcm.size == 0:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   "That text has nothing that can be spoken.")
            data = await self._run(
                self._tts_pool,
                functools.partial(audio.encode_audio, speech.pcm, speech.rate, spec.name),
            )
            return SpokenAudio(data, spec.name, spec.mime_type, speech.duration, speech.engine,
                               text)
        if failure is not None:
            raise SynthesisFailed("Speaking failed: " + "; ".join(problems))
        install = VOICE_EXTRA if len(self.tts) > 1 else ESPEAK_INSTALL
        raise VoiceUnavailable(
            "Spoken replies are not available: " + "; ".join(problems), install=install
        )

    def _log_fallback(self, name: str, why: str) -> None:
        if name not in self._fallback_logged:
            self._fallback_logged.add(name)
            log.warning("text to speech: %s is not usable (%s)", name, why)

    # ------------------------------------------------------------------ diagnostics

    def available(self) -> dict[str, Any]:
        """What works, without loading any model (for ``claude-max-api doctor``).

        ``problems`` lists what stops speech-to-text or spoken replies, each with the
        install command; ``ok`` is true when there are none.
        """
        settings = self.settings
        report: dict[str, Any] = {"problems": []}
        problems: list[str] = report["problems"]
        try:
            audio, _, _ = _modules()
        except VoiceUnavailable as exc:
            problems.append(exc.message)
            report["ok"] = False
            return report
        av_ok = audio.av_available()
        report["decoder"] = {"pyav": av_ok}
        if not av_ok:
            problems.append(f"PyAV is not installed (audio decoding and encoding): {VOICE_EXTRA}")
        stt = self.stt
        stt_report: dict[str, Any] = {
            "engine": stt.name,
            "installed": stt.installed(),
            "model": settings.model,
            "loaded": stt.loaded,
            "max_parallel": settings.max_parallel,
            "max_seconds": settings.max_seconds,
        }
        if not stt_report["installed"]:
            problems.append(f"speech to text: {stt.name} is not installed: {stt.install}")
        try:
            resolved = stt.resolve()
            stt_report["model_ref"], stt_report["model_source"] = resolved.ref, resolved.source
        except VoiceUnavailable as exc:
            problems.append(f"speech to text: {exc.message}")
        report["stt"] = stt_report
        engines: dict[str, Any] = {}
        usable: str | None = None
        for engine in self.tts:
            why = engine.available()
            engines[engine.name] = {"usable": why is None, "problem": why}
            if why is None and usable is None:
                usable = engine.name
        report["tts"] = {"engine": settings.tts_engine, "will_use": usable, "engines": engines}
        if usable is None:
            problems.append(
                "spoken replies: "
                + "; ".join(f"{_engine_label(n)}: {e['problem']}" for n, e in engines.items())
            )
        report["ok"] = not problems
        return report

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop accepting work; queued jobs are cancelled, running ones finish in their
        threads."""
        self._closed = True
        self._stt_pool.shutdown(wait=False, cancel_futures=True)
        self._tts_pool.shutdown(wait=False, cancel_futures=True)


def _synthesize(engine: TextToSpeech, text: str, speed: float) -> Speech:
    engine.load()
    return engine.synthesize(text, speed=speed)


def _engine_label(name: str) -> str:
    return {"piper": "Piper", "espeak": "espeak-ng"}.get(name, name)


def _no_speech(duration: float, language: str | None) -> NoSpeech:
    from gateway.voice.audio import format_seconds

    return NoSpeech(
        f"No speech was heard in that audio ({format_seconds(duration)}).",
        duration=duration,
        language=language,
    )
