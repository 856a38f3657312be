"""Audio in and out, through PyAV (the FFmpeg libraries bundled in the ``av`` wheel).

* :func:`decode_audio`: any container/codec FFmpeg reads (OGG/Opus voice notes, MP3, M4A/AAC,
  WAV, FLAC, WebM, ...) → 16 kHz mono float32, the input Whisper expects. Decoding stops as
  soon as the audio passes the length limit, so a long or lying file costs little.
* :func:`encode_audio`: 16-bit mono PCM → Ogg/Opus (a Telegram/Discord voice note), MP3,
  AAC, FLAC, WAV or raw PCM.

No ``ffmpeg`` program is needed; PyAV comes with faster-whisper (and is in both voice
extras). Only WAV works without PyAV.
"""

from __future__ import annotations

import io
import logging
import wave
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.voice.errors import VOICE_EXTRA, AudioDecodeError, AudioTooLong, VoiceUnavailable

log = logging.getLogger(__name__)

#: What Whisper models take.
WHISPER_RATE = 16000

Float32Array = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


def import_av() -> ModuleType:
    """The ``av`` module, or :class:`VoiceUnavailable` naming the extra that brings it."""
    try:
        import av
    except ImportError as exc:
        raise VoiceUnavailable(
            f"Audio decoding and encoding need PyAV, which is not installed ({exc}): {VOICE_EXTRA}",
            install=VOICE_EXTRA,
        ) from None
    return av


def av_available() -> bool:
    try:
        import_av()
    except VoiceUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] at :data:`WHISPER_RATE`, and where they came from."""

    samples: Float32Array
    #: "<container>/<codec>", e.g. "ogg/opus"
    source: str

    @property
    def duration(self) -> float:
        return len(self.samples) / WHISPER_RATE


def format_seconds(seconds: float) -> str:
    """``75.2`` → ``"1 min 15 s"``, ``300`` → ``"5 min"``, ``4.5`` → ``"4.5 s"``."""
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{round(seconds)} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min" + (f" {rest} s" if rest else "")


def _too_long(max_seconds: float, duration: float | None) -> AudioTooLong:
    said = f"is {format_seconds(duration)} long" if duration is not None else "is too long"
    return AudioTooLong(
        f"That audio {said}; the limit is {format_seconds(max_seconds)} (voice.max_seconds).",
        limit=max_seconds,
        duration=duration,
    )


def _undecodable(what: str, why: str) -> AudioDecodeError:
    return AudioDecodeError(
        f"{what} could not be decoded as audio ({why}). Send a voice message or an audio file"
        " such as OGG/Opus, MP3, M4A, WAV or FLAC."
    )


def _short(exc: BaseException) -> str:
    # FFmpeg errors read "[Errno 1094995529] Invalid data found ...: '<none>'"; keep the words.
    strerror = getattr(exc, "strerror", None)
    text = strerror if isinstance(strerror, str) and strerror else str(exc)
    text = text.strip() or type(exc).__name__
    text = text[:1].lower() + text[1:]
    return text if len(text) <= 120 else text[:117] + "..."


def decode_audio(data: bytes, hint: str = "", *, max_seconds: float) -> DecodedAudio:
    """Decode ``data`` to 16 kHz mono float32 (blocking; run it in a thread).

    ``hint`` (a file name or MIME type) is only used in messages. Raises
    :class:`AudioDecodeError` for data that is not audio or holds no samples,
    :class:`AudioTooLong` once the audio passes ``max_seconds`` (declared or decoded), and
    :class:`VoiceUnavailable` without PyAV.
    """
    av = import_av()
    what = f"The file {hint!r}" if hint else "The audio"
    if not data:
        raise AudioDecodeError(f"{what} is empty.")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise _undecodable(what, _short(exc)) from None
    with container:
        if not container.streams.audio:
            raise _undecodable(what, "it has no audio track")
        stream = container.streams.audio[0]
        declared = container.duration / 1_000_000 if container.duration else None
        if declared is not None and declared > max_seconds + 1.0:
            raise _too_long(max_seconds, declared)
        source = f"{container.format.name.split(',')[0]}/{stream.codec_context.name}"
        samples = _decode_stream(av, container, stream, what, max_seconds)
    if samples.size == 0:
        raise _undecodable(what, "it contains no sound")
    return DecodedAudio(samples, source)


def _decode_stream(
    av: Any, container: Any, stream: Any, what: str, max_seconds: float
) -> Float32Array:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=WHISPER_RATE)
    limit = int(max_seconds * WHISPER_RATE)
    chunks: list[Int16Array] = []
    total = 0

    def take(frames: list[Any]) -> None:
        nonlocal total
        for frame in frames:
            array: Int16Array = frame.to_ndarray().reshape(-1)
            chunks.append(array)
            total += len(array)
            if total > limit:
                raise _too_long(max_seconds, None)

    try:
        for frame in container.decode(stream):
            take(resampler.resample(frame))
    except (av.FFmpegError, ValueError) as exc:
        # A damaged or truncated file: keep what decoded before the damage, if anything.
        if total == 0:
            raise _undecodable(what, _short(exc)) from None
        log.info("audio damaged after %.1f s; using the part before: %s",
                 total / WHISPER_RATE, _short(exc))
    take(resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    pcm = np.concatenate(chunks)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def is_silent(samples: Float32Array, *, threshold: float = 0.003) -> bool:
    """True when no 30 ms window is louder than ``threshold`` RMS (about -50 dBFS):
    digital silence or a muted microphone. Cheap, so it runs before any model."""
    window = WHISPER_RATE * 30 // 1000
    usable = len(samples) - len(samples) % window
    if usable == 0:
        return bool(len(samples) == 0 or float(np.sqrt(np.mean(samples**2))) < threshold)
    frames = samples[:usable].reshape(-1, window).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    tail = samples[usable:]
    loudest = float(rms.max())
    if tail.size:
        loudest = max(loudest, float(np.sqrt(np.mean(tail.astype(np.float64) ** 2))))
    return loudest < threshold


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class AudioFormat:
    """An output format: container, codec, MIME type, sample rate (0 = the source's)."""

    name: str
    container: str
    codec: str
    mime_type: str
    extension: str
    rate: int = 0
    bit_rate: int = 0
    options: tuple[tuple[str, str], ...] = ()


#: The settings of a Telegram voice note: Ogg/Opus, 48 kHz mono, 32 kbit/s, speech mode.
_VOIP = (("application", "voip"),)

#: Every output format, by the names the API and the bridges use.
FORMATS: dict[str, AudioFormat] = {
    "ogg": AudioFormat("ogg", "ogg", "libopus", "audio/ogg", ".ogg", 48000, 32000, _VOIP),
    "opus": AudioFormat("opus", "ogg", "libopus", "audio/opus", ".opus", 48000, 32000, _VOIP),
    "mp3": AudioFormat("mp3", "mp3", "libmp3lame", "audio/mpeg", ".mp3", 24000, 64000),
    "aac": AudioFormat("aac", "adts", "aac", "audio/aac", ".aac", 24000, 64000),
    "flac": AudioFormat("flac", "flac", "flac", "audio/flac", ".flac"),
    "wav": AudioFormat("wav", "wav", "pcm_s16le", "audio/wav", ".wav"),
    # OpenAI's "pcm": raw signed 16-bit little-endian, 24 kHz mono, no header.
    "pcm": AudioFormat("pcm", "", "pcm_s16le", "audio/pcm", ".pcm", 24000),
}


def audio_format(name: str) -> AudioFormat:
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown audio format {name!r}; use one of {', '.join(FORMATS)}"
        ) from None


def encode_audio(pcm: Int16Array, rate: int, fmt: str = "ogg") -> bytes:
    """Encode mono 16-bit ``pcm`` at ``rate`` Hz as ``fmt`` (blocking; run it in a thread)."""
    spec = audio_format(fmt)
    pcm = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
    if spec.name == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm.tobytes())
        return buf.getvalue()
    av = import_av()
    if spec.name == "pcm":
        return resample(pcm, rate, spec.rate).astype("<i2").tobytes()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = None
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=spec.container) as out:
        stream: Any = out.add_stream(spec.codec, rate=spec.rate or rate, layout="mono")
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        if spec.options:
            stream.codec_context.options = dict(spec.options)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def resample(pcm: Int16Array, rate: int, target: int) -> Int16Array:
    """Mono 16-bit PCM from ``rate`` to ``target`` Hz (FFmpeg's resampler)."""
    if rate == target:
        return pcm
    av = import_av()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
    parts = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame),
                                                  *resampler.resample(None)]]
    if not parts:
        return np.zeros(0, dtype=np.int16)
    out: Int16Array = np.concatenate(parts).astype(np.int16)
    return out


def float_to_int16(samples: Float32Array) -> Int16Array:
    clipped = np.clip(samples, -1.0, 1.0)
    out: Int16Array = (clipped * 32767.0).astype(np.int16)
    return out
