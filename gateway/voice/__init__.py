"""Voice: speech to text (Whisper) and text to speech (Piper, espeak-ng) for the frontends.

The frontends use one object, :class:`VoiceService`::

    voice = VoiceService(settings.voice)
    transcript = await voice.transcribe(ogg_bytes, "voice.ogg")   # Transcript(text, ...)
    note = await voice.voice_reply(answer_markdown)               # SpokenAudio | None
    ogg = await voice.synthesize("Hello", "ogg")                  # bytes

Failures are :class:`VoiceError`\\ s (:class:`~gateway.errors.GatewayError`) whose message a
person can read: :class:`VoiceUnavailable` (names what to install), :class:`AudioDecodeError`,
:class:`AudioTooLong`, :class:`NoSpeech`, :class:`SynthesisFailed`.

Importing this package needs no voice extra; the engines import numpy, PyAV, faster-whisper,
openai-whisper and Piper on first use.
"""

from gateway.voice.errors import (
    ESPEAK_INSTALL,
    VOICE_EXTRA,
    WHISPER_EXTRA,
    AudioDecodeError,
    AudioTooLong,
    NoSpeech,
    SynthesisFailed,
    VoiceError,
    VoiceUnavailable,
)
from gateway.voice.service import (
    SpokenAudio,
    Transcript,
    VoiceService,
    build_stt,
    build_tts,
    voice_prompt,
)
from gateway.voice.text import speakable_text

__all__ = [
    "ESPEAK_INSTALL",
    "VOICE_EXTRA",
    "WHISPER_EXTRA",
    "AudioDecodeError",
    "AudioTooLong",
    "NoSpeech",
    "SpokenAudio",
    "SynthesisFailed",
    "Transcript",
    "VoiceError",
    "VoiceService",
    "VoiceUnavailable",
    "build_stt",
    "build_tts",
    "speakable_text",
    "voice_prompt",
]
