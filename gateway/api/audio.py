"""OpenAI-compatible audio endpoints over :class:`gateway.voice.VoiceService`.

* ``POST /v1/audio/transcriptions``: multipart ``file`` (any audio FFmpeg decodes),
  ``model`` (any name; the gateway's configured Whisper model answers), ``language``,
  ``prompt``, ``response_format`` = json | text | verbose_json | srt | vtt. Audio without
  speech gives an empty text, as OpenAI's does.
* ``POST /v1/audio/speech``: JSON ``input`` (up to 4096 characters), ``model`` and ``voice``
  (any names; the configured voice speaks), ``response_format`` = mp3 (default) | opus |
  aac | flac | wav | pcm (24 kHz 16-bit mono), ``speed`` 0.25-4.

Both sit behind the same request guard (Host, Origin; :mod:`gateway.api.guard`), auth
middleware, body-size limit (``server.max_body_mb``) and request cap
(``server.max_concurrent_requests``, counted apart from chat) as the chat endpoint; a body
of another Content-Type than the endpoint's is 415. Errors are OpenAI error JSON: 400 for
a bad request or audio that cannot be decoded or is too long, 503 ``voice_unavailable``
(naming the extra to install) when no engine is installed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, Field, RootModel

from gateway.api.convert import http_error_from_exc, request_error
from gateway.api.guard import MULTIPART
from gateway.api.http import CONFIG, ApiError, drain, mb, read_body, refuse_when_full
from gateway.api.openapi import (
    JSON,
    RETRY_AFTER,
    Operation,
    Param,
    Reply,
    error_reply,
)
from gateway.errors import GatewayError
from gateway.voice import (
    NoSpeech,
    Transcript,
    VoiceError,
    VoiceService,
)
from gateway.voice.languages import language_name

log = logging.getLogger(__name__)

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
#: OpenAI's limit on the text of one speech request.
MAX_SPEECH_INPUT = 4096
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}")


@dataclass
class AudioState:
    voice: VoiceService | None
    active_requests: int = 0


AUDIO: web.AppKey[AudioState] = web.AppKey("audio_state", AudioState)


def setup_audio(app: web.Application, voice: VoiceService | None) -> None:
    """The voice the audio routes (:data:`OPERATIONS`, served by :func:`create_app`) use on
    ``app``; None: they answer 503 voice_unavailable."""
    app[AUDIO] = AudioState(voice)


def _invalid(message: str) -> ApiError:
    return ApiError(request_error(400, "invalid_request", message))


class _Slot:
    """One of ``max_concurrent_requests`` audio requests, or a 503 ``server_busy``."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.state = request.app[AUDIO]

    async def __aenter__(self) -> VoiceService:
        limit = self.request.app[CONFIG].max_concurrent_requests
        await refuse_when_full(self.request, self.state.active_requests, limit,
                               "audio requests")
        if self.state.voice is None:
            await drain(self.request, 0)
            raise ApiError(
                request_error(503, "voice_unavailable", "Voice is not enabled on this gateway.")
            )
        self.state.active_requests += 1
        return self.state.voice

    async def __aexit__(self, *exc: object) -> None:
        self.state.active_requests -= 1


# --------------------------------------------------------------------------- transcriptions


@dataclass
class _Upload:
    fields: dict[str, str]
    data: bytes | None = None
    filename: str = ""
    content_type: str = ""


async def _read_multipart(request: web.Request, limit: int) -> _Upload:
    """The form's text fields and its ``file``, with the body-size limit applied as it is
    read (a 413 once the body passes ``limit``, after reading the rest away)."""
    too_large = ApiError(
        request_error(
            413,
            "request_too_large",
            f"The request body is larger than the limit of {mb(limit)} (server.max_body_mb)",
        )
    )
    if request.content_length is not None and request.content_length > limit:
        await drain(request, 0)
        raise too_large
    upload = _Upload({})  # the Content-Type is multipart/form-data: see setup_audio
    total = 0
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):  # a nested multipart: not ours
                raise _invalid("body: nested multipart parts are not supported")
            buf = bytearray()
            while True:
                chunk = await part.read_chunk(64 * 1024)
                if not chunk:
                    break
                buf += chunk
                total += len(chunk)
                if total > limit:
                    await drain(request, total)
                    raise too_large
            name = part.name or ""
            if name == "file":
                upload.data = bytes(buf)
                upload.filename = part.filename or ""
                upload.content_type = part.headers.get("Content-Type", "")
            elif name:
                try:
                    text = buf.decode("utf-8")
                except UnicodeDecodeError:
                    raise _invalid(f"{name}: is not UTF-8 text") from None
                upload.fields[name] = text
    except (ValueError, AssertionError) as exc:  # aiohttp's multipart parser on bad input
        raise _invalid(f"body: malformed multipart/form-data ({exc})") from None
    return upload


async def transcriptions(request: web.Request) -> web.StreamResponse:
    async with _Slot(request) as voice:
        upload = await _read_multipart(request, request.app[CONFIG].max_body_bytes)
        fields = upload.fields
        if upload.data is None:
            raise _invalid("file: is required (the audio, as a multipart file field)")
        response_format = (fields.get("response_format") or "json").strip()
        if response_format not in TRANSCRIPTION_FORMATS:
            raise _invalid(
                f"response_format: {response_format!r} is not one of "
                + ", ".join(TRANSCRIPTION_FORMATS)
            )
        language = (fields.get("language") or "").strip().lower() or None
        if language is not None and not _LANGUAGE.fullmatch(language):
            raise _invalid(f"language: {language!r} is not an ISO-639-1 code such as 'en'")
        prompt = fields.get("prompt") or None
        hint = upload.filename or upload.content_type
        try:
            transcript = await voice.transcribe(
                upload.data, hint, language=language, prompt=prompt
            )
        except NoSpeech as exc:
            transcript = Transcript(
                "", exc.language, exc.duration, (), voice.settings.stt_engine,
                voice.settings.model,
            )
        except VoiceError as exc:
            raise ApiError(http_error_from_exc(exc)) from None
        except GatewayError:
            raise
        return _render_transcript(transcript, response_format)


def _render_transcript(transcript: Transcript, fmt: str) -> web.Response:
    usage = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    if fmt == "text":
        return web.Response(text=transcript.text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=_subtitles(transcript, srt=True), content_type="text/plain")
    if fmt == "vtt":
        return web.Response(text=_subtitles(transcript, srt=False), content_type="text/vtt")
    if fmt == "verbose_json":
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": language_name(transcript.language),
            "duration": round(transcript.duration, 3),
            "text": transcript.text,
            "segments": [
                {
                    "id": i,
                    "seek": 0,
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": s.text,
                    "tokens": list(s.tokens),
                    "temperature": s.temperature,
                    "avg_logprob": s.avg_logprob,
                    "compression_ratio": s.compression_ratio,
                    "no_speech_prob": s.no_speech_prob,
                }
                for i, s in enumerate(transcript.segments)
            ],
            "usage": usage,
        }
        return web.json_response(body)
    return web.json_response({"text": transcript.text, "usage": usage})


def _timestamp(seconds: float, sep: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _subtitles(transcript: Transcript, *, srt: bool) -> str:
    sep = "," if srt else "."
    blocks = [] if srt else ["WEBVTT\n"]
    for i, s in enumerate(transcript.segments, start=1):
        times = f"{_timestamp(s.start, sep)} --> {_timestamp(s.end, sep)}"
        blocks.append(f"{i}\n{times}\n{s.text}\n" if srt else f"{times}\n{s.text}\n")
    return "\n".join(blocks)


# --------------------------------------------------------------------------- speech


def _parse_speech(raw: bytes) -> tuple[str, str, float]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("body: is not valid UTF-8 JSON") from None
    except (RecursionError, ValueError):  # Python's limits on nesting and integer digits
        raise _invalid("body: JSON nested too deeply or with a number too long") from None
    if not isinstance(body, dict):
        raise _invalid("body: must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _invalid("input: is required: the text to speak, as a non-empty string")
    if len(text) > MAX_SPEECH_INPUT:
        raise _invalid(
            f"input: is {len(text)} characters long; the limit is {MAX_SPEECH_INPUT}"
        )
    fmt = body.get("response_format")
    fmt = "mp3" if fmt is None else fmt
    if fmt not in SPEECH_FORMATS:
        raise _invalid(f"response_format: {fmt!r} is not one of {', '.join(SPEECH_FORMATS)}")
    speed = body.get("speed")
    speed = 1.0 if speed is None else speed
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not (
        0.25 <= speed <= 4.0
    ):
        raise _invalid(f"speed: {speed!r} is not a number from 0.25 to 4.0")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio"):
        raise _invalid(f"stream_format: {stream_format!r} is not supported; use 'audio'")
    return text, fmt, float(speed)


async def speech(request: web.Request) -> web.StreamResponse:
    async with _Slot(request) as voice:
        raw = await read_body(request, request.app[CONFIG].max_body_bytes)
        text, fmt, speed = _parse_speech(raw)
        try:
            spoken = await voice.speak(text, fmt, speed=speed)
        except VoiceError as exc:
            raise ApiError(http_error_from_exc(exc)) from None
        return web.Response(
            body=spoken.data,
            content_type=spoken.mime_type,
            headers={"X-Voice-Engine": spoken.engine},
        )


# --------------------------------------------------------------------------- documentation


class TranscriptionRequest(BaseModel):
    """Other OpenAI fields (temperature, timestamp_granularities, ...) are accepted and
    ignored."""

    file: str = Field(json_schema_extra={"format": "binary"}, description="Audio in any "
                      "format FFmpeg reads: OGG/Opus, MP3, M4A, WAV, FLAC, WebM, ...")
    model: str | None = Field(
        default=None, description="Accepted for compatibility; the configured voice.model "
        "answers.")
    language: str | None = Field(default=None, description="ISO-639-1 code, e.g. en.")
    prompt: str | None = Field(default=None, description="Text to guide the model (names).")
    response_format: Literal[TRANSCRIPTION_FORMATS] = "json"  # type: ignore[valid-type]


class AudioUsage(BaseModel):
    type: Literal["duration"]
    seconds: int = Field(ge=0)


class Transcription(BaseModel):
    text: str
    usage: AudioUsage | None = None


class TranscriptionSegment(BaseModel):
    id: int = Field(ge=0)
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe"]
    language: str = Field(description="e.g. english")
    duration: float = Field(ge=0)
    text: str
    segments: list[TranscriptionSegment]
    usage: AudioUsage | None = None


class TranscriptionReply(RootModel[TranscriptionVerbose | Transcription]):
    pass


class SpeechRequest(BaseModel):
    """instructions is accepted and ignored."""

    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT)
    model: str | None = Field(
        default=None, description="Accepted for compatibility; the configured voice speaks.")
    voice: Any = Field(
        default=None, description="Accepted for compatibility; the configured voice speaks.")
    response_format: Literal[SPEECH_FORMATS] = Field(  # type: ignore[valid-type]
        default="mp3", description="opus is Ogg/Opus; pcm is raw 24 kHz 16-bit mono.")
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio"] | None = None


_UNAVAILABLE = error_reply(
    "No speech engine is installed (code voice_unavailable; the message names the extra to "
    "install), or the gateway is at max_concurrent_requests (code server_busy).",
    headers=(RETRY_AFTER,),
)
_TEXT = {"type": "string"}
_BINARY = {"type": "string", "format": "binary"}
_AUDIO_TYPES = ("audio/mpeg", "audio/opus", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/v1/audio/transcriptions", transcriptions, "createTranscription",
        "Transcribe audio with the gateway's Whisper model.",
        body={MULTIPART: TranscriptionRequest},
        responses={
            200: Reply("The transcript: JSON for json and verbose_json, plain text for text "
                       "and srt, WebVTT for vtt. Audio without speech gives an empty text.",
                       {JSON: TranscriptionReply, "text/plain": _TEXT, "text/vtt": _TEXT}),
            400: error_reply("Invalid request (the message names the field), audio that "
                             "cannot be decoded (audio_undecodable) or is longer than "
                             "voice.max_seconds (audio_too_long)."),
            503: _UNAVAILABLE,
        },
    ),
    Operation(
        "POST", "/v1/audio/speech", speech, "createSpeech",
        "Speak text with the gateway's voice (Piper, else espeak-ng).",
        body={JSON: SpeechRequest},
        responses={
            200: Reply("The audio, in the requested format.",
                       dict.fromkeys(_AUDIO_TYPES, _BINARY),
                       headers=(Param("X-Voice-Engine", "The engine that spoke: piper or "
                                      "espeak.", {"enum": ["piper", "espeak"]}),)),
            400: error_reply("Invalid request; the message names the field."),
            500: error_reply("The speech engine failed on this text (synthesis_failed)."),
            503: _UNAVAILABLE,
        },
    ),
)
