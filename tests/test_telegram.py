"""The Telegram bridge end to end: the REAL python-telegram-bot against a fake Bot API
(``tests/fake_telegram.py``) and the REAL engine running the REAL Claude Code CLI against the
fake Anthropic API. Only Telegram's servers are faked."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest

from gateway.engine import TurnError, TurnOptions
from gateway.engine.tools import SEND_FILE
from gateway.errors import ErrorKind
from tests.conftest import EngineFactory, collect
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import FakeTelegram, utf16_len
from tests.telegram_support import (
    BOT,
    FORUM,
    GROUP,
    OWNER,
    STRANGER,
    BridgeFactory,
    answer,
    free_port,
    idle,
    png_bytes,
    status_messages,
    texts,
)

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.cli

# ----------------------------------------------------------------------------- who may talk


async def test_a_stranger_is_refused_once_and_nothing_reaches_claude(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    assert [c["command"] for c in tg.commands] == [
        "new", "stop", "retry", "model", "status", "usage", "sessions", "resume", "help",
        "project", "worktrees", "mode", "allowed"]
    tg.user_text(STRANGER, "run rm -rf / please", first_name="Mallory")
    tg.user_text(STRANGER, "/new")
    tg.user_text(STRANGER, "hello?", photo=png_bytes())
    tg.user_text(OWNER, "owner here")  # handled after the stranger's three (in order)
    await answer(tg, OWNER, "echo: owner here")
    refusals = tg.sent(STRANGER)
    assert len(refusals) == 1, [m.text for m in refusals]
    assert "999" in refusals[0].text and "allowed_users" in refusals[0].text
    sent_to_claude = [r["last_user_text"] for r in fake_api.requests()]
    assert sent_to_claude == ["owner here"]
    assert await bridge.engine.describe(f"telegram:{STRANGER}") is None
    assert not (bridge.engine.config.workspace / "inbox" / f"telegram-{STRANGER}").exists()


# ----------------------------------------------------------------------------- a turn


async def test_a_tool_turn_shows_a_status_message_then_only_the_answer(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    fake_api.script(
        {"text": "Let me run it.",
         "tool_use": {"name": "Bash", "input": {"command": "sleep 1.5 && echo done",
                                                "description": "wait"}}},
        match="run the slow command",
    )
    tg.user_text(OWNER, "please run the slow command")
    await answer(tg, OWNER, "Tool said: done")
    await idle(bridge, OWNER)
    statuses = status_messages(tg, OWNER)
    assert len(statuses) == 1 and statuses[0].deleted and statuses[0].silent
    shown = "\n".join(statuses[0].history)
    assert "Running sleep 1.5 && echo done" in shown and "⏱" in shown
    assert texts(tg, OWNER) == ["Tool said: done"], "only the answer stays"
    assert tg.calls_of("sendChatAction"), "typing indicator"
    assert all(c.params["action"] == "typing" for c in tg.calls_of("sendChatAction"))


async def test_the_answer_streams_as_drafts_in_a_private_chat(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(status_delay=30)
    long = " ".join(f"word{i}" for i in range(120)) + " end."
    fake_api.script({"text": long, "chunk_delay": 0.4}, match="stream to me")
    tg.user_text(OWNER, "stream to me")
    await answer(tg, OWNER, long)
    await idle(bridge, OWNER)
    drafts = [text for chat, _, text in tg.drafts if chat == OWNER]
    sent_drafts = [c.params["text"] for c in tg.calls_of("sendMessageDraft")]
    assert len(sent_drafts) >= 2, "the answer was previewed as it was written"
    assert all(a != b for a, b in pairwise(sent_drafts))
    assert all(long.startswith(d.rstrip()) for d in sent_drafts)
    assert not drafts, "the final message replaces the draft"
    assert not tg.calls_of("editMessageText")
    assert texts(tg, OWNER) == [long]


async def test_a_long_answer_with_code_blocks_is_split_correctly(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(stream="edit", long_answer_file_chars=0, status_delay=30)
    code = [f"    result_{i} = compute(value_{i}, factor={i})  # step {i}" for i in range(150)]
    long = (
        "Here is the **whole** module you asked for.\n\n```python\ndef main():\n"
        + "\n".join(code)
        + "\n```\n\nAnd a shell session:\n\n```bash\n"
        + "\n".join(f"echo line {i}" for i in range(40))
        + "\n```\n\nThe end."
    )
    fake_api.script({"text": long, "chunk_delay": 0.3}, match="the long answer")
    tg.user_text(OWNER, "write the long answer")
    await tg.wait_for(lambda: any("The end." in t for t in texts(tg, OWNER)), what="the end")
    await idle(bridge, OWNER)
    messages = [m for m in tg.visible(OWNER) if m.kind == "text"]
    assert len(messages) >= 3
    assert all(utf16_len(m.text) <= 4096 for m in messages)
    joined = "\n".join(m.text for m in messages)
    for line in code:  # every line arrived, inside a code (pre) entity of its message
        assert line.strip() in joined
    for m in messages:
        for line in code:
            at = m.text.find(line.strip())
            if at >= 0:
                offset = utf16_len(m.text[:at])
                assert any(e["type"] == "pre" and e["offset"] <= offset < e["offset"]
                           + e["length"] for e in m.entities), (line, m.text[:80])
    assert "```" not in joined, "fences are rendered as code entities, never shown"
    assert "**" not in joined
    python_parts = [m for m in messages if "result_1 " in m.text or "result_149 " in m.text]
    assert len(python_parts) == 2, "the code block spans two messages, each rendered as code"
    assert any(len(m.history) > 1 for m in messages), "streamed by editing"
    for m in messages:
        assert all(a != b for a, b in pairwise(m.history))


async def test_a_very_long_answer_also_comes_as_a_file(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(long_answer_file_chars=3000, status_delay=30)
    long = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor " * 12 for i in range(30))
    fake_api.script({"text": long}, match="essay")
    tg.user_text(OWNER, "write an essay")
    document = await tg.wait_for(
        lambda: next((m for m in tg.visible(OWNER) if m.kind == "document"), None),
        what="the answer as a file")
    await idle(bridge, OWNER)
    assert document.filename.startswith("answer-") and document.filename.endswith(".md")
    assert document.data.decode().strip() == long.strip()
    assert "as a file" in document.caption
    shown = [m for m in tg.visible(OWNER) if m.kind == "text"]
    assert shown and long.startswith(shown[0].text[:100])
    assert sum(len(m.text) for m in shown) < len(long)


async def test_messages_sent_during_a_turn_go_in_together_as_the_next_turn(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_text(OWNER, "SLOW first")
    await tg.wait_for(lambda: fake_api.requests(), what="the first turn to start")
    tg.user_text(OWNER, "second")
    tg.user_text(OWNER, "third")
    await answer(tg, OWNER, "echo: SLOW first")
    await tg.wait_for(lambda: len(fake_api.requests()) >= 2, what="the second turn")
    await idle(bridge, OWNER)
    assert [r["last_user_text"] for r in fake_api.requests()] == ["SLOW first",
                                                                  "second\n\nthird"]


async def test_a_flood_past_the_engines_queue_limit_is_told_and_kept_for_retry(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic,
) -> None:
    """The chat's waiting messages are the engine's queue: ``max_queued_per_conversation``
    applies. Messages past it are refused with a clear message, and stay in the inbox for
    /retry: nothing accepted is lost."""
    bridge = await make_bridge(engine=await make_engine(max_queued_per_conversation=2))
    fake_api.script({"text": "done with the first", "delay": 3.0, "chunk_delay": 0.6},
                    match="first")
    tg.user_text(OWNER, "first")
    await tg.wait_for(lambda: fake_api.requests(), what="the first turn to start")
    for text in ("m2", "m3", "m4", "m5"):
        tg.user_text(OWNER, text)
    refusals = await tg.wait_for(
        lambda: (lambda r: r if len(r) == 2 else None)(
            [t for t in texts(tg, OWNER) if t.startswith("⏳")]),
        what="two refusals")
    assert all("2 messages are already waiting" in t and "/retry" in t for t in refusals)
    # the running turn's status line counts what waits in the engine's queue
    await tg.wait_for(lambda: any("2 messages waiting" in h for m in status_messages(tg, OWNER)
                                  for h in m.history), what="the status to count the waiting")
    await answer(tg, OWNER, "done with the first")
    await answer(tg, OWNER, "echo: m2\n\nm3")
    await idle(bridge, OWNER)
    assert [r["last_user_text"] for r in fake_api.requests()] == ["first", "m2\n\nm3"]
    # the refused ones wait in the inbox, newest first for /retry
    for text in ("m5", "m4"):
        row = await bridge.core.ledger.last_unanswered(f"telegram:{OWNER}")
        assert row is not None and row.text == text and row.state == "dropped"
        tg.user_text(OWNER, "/retry")
        await answer(tg, OWNER, f"echo: {text}")
        await idle(bridge, OWNER)
    tg.user_text(OWNER, "/retry")
    await answer(tg, OWNER, "Nothing to retry: every message here got its answer.")


# ----------------------------------------------------------------------------- media


async def test_a_photo_reaches_claude_as_an_image(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_message(OWNER, OWNER, photo=png_bytes(), caption="what is in this picture?")
    await tg.wait_for(lambda: fake_api.requests(), what="the turn")
    await idle(bridge, OWNER)
    request = fake_api.requests()[-1]
    assert request["images"] == ["image/png"]
    assert "what is in this picture?" in str(request["messages"])
    assert texts(tg, OWNER), "an answer came back"


async def test_a_document_is_saved_in_the_inbox_and_claude_told_where(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_message(OWNER, OWNER, document=("../../quarterly report?.csv", b"a,b\n1,2\n",
                                            "text/csv"), caption="summarize it")
    await tg.wait_for(lambda: fake_api.requests(), what="the turn")
    await idle(bridge, OWNER)
    inbox = bridge.engine.config.workspace / "inbox" / f"telegram-{OWNER}"
    saved = list(inbox.iterdir())
    assert len(saved) == 1 and saved[0].read_bytes() == b"a,b\n1,2\n"
    assert saved[0].name.endswith("-quarterly_report_.csv")
    told = fake_api.requests()[-1]["last_user_text"]
    assert told.startswith("summarize it") and str(saved[0]) in told and "text/csv" in told


async def test_without_voice_support_voice_notes_get_a_reply_and_audio_files_are_kept(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(max_upload_mb=0.0001)  # ~100 bytes
    tg.user_message(OWNER, OWNER, voice=b"OggS tiny")
    tg.user_message(OWNER, OWNER, document=("big.bin", b"x" * 500, "application/octet-stream"))
    await tg.wait_for(lambda: len(texts(tg, OWNER)) >= 2, what="two replies")
    voice, big = texts(tg, OWNER)[:2]
    assert "voice" in voice.lower() and "type" in voice
    assert "big.bin" in big and "max_upload_mb" in big
    assert fake_api.requests() == []
    tg.user_message(OWNER, OWNER, audio=("memo.mp3", b"ID3 a recording", "audio/mpeg"),
                    caption="file this")
    await tg.wait_for(lambda: fake_api.requests(), what="the audio file's turn")
    await idle(bridge, OWNER)
    saved, = (bridge.engine.config.workspace / "inbox" / f"telegram-{OWNER}").iterdir()
    assert saved.name.endswith("-memo.mp3") and saved.read_bytes() == b"ID3 a recording"
    told = fake_api.requests()[-1]["last_user_text"]
    assert told.startswith("file this") and str(saved) in told and "audio/mpeg" in told


async def test_claude_sends_a_photo_a_voice_note_and_a_file(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    ws = bridge.engine.config.workspace
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "chart.png").write_bytes(png_bytes())
    (ws / "note.ogg").write_bytes(b"OggS voice bytes")
    (ws / "report.txt").write_text("the numbers")
    fake_api.script(
        {"tool_use": {"name": SEND_FILE, "input": {"path": "chart.png", "kind": "photo",
                                                   "caption": "your **chart**"}}},
        {"tool_use": {"name": SEND_FILE, "input": {"path": "note.ogg", "kind": "voice"}}},
        {"tool_use": {"name": SEND_FILE, "input": {"path": str(ws / "report.txt")}}},
        {"text": "Sent all three."},
        match="send me everything",
    )
    tg.user_text(OWNER, "send me everything")
    await answer(tg, OWNER, "Sent all three.")
    photo, = tg.calls_of("sendPhoto")
    voice, = tg.calls_of("sendVoice")
    document, = tg.calls_of("sendDocument")
    assert photo.files["photo"] == ("chart.png", png_bytes())
    assert photo.params["caption"] == "your chart"
    assert photo.params["caption_entities"][0]["type"] == "bold"
    assert voice.files["voice"] == ("note.ogg", b"OggS voice bytes")
    assert document.files["document"] == ("report.txt", b"the numbers")
    results = [r for req in fake_api.requests() for r in req["tool_results"]]
    assert [r["is_error"] for r in results] == [False, False, False]


# ----------------------------------------------------------------------------- commands


async def test_stop_interrupts_the_running_turn_at_once(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_text(OWNER, "HANG until stopped")
    await tg.wait_for(lambda: fake_api.requests(), what="the turn to reach the API")
    started = time.monotonic()
    tg.user_text(OWNER, "/stop")
    await answer(tg, OWNER, "⏹ Stopped.")
    assert time.monotonic() - started < 5
    await idle(bridge, OWNER)
    assert all(m.deleted for m in status_messages(tg, OWNER))
    tg.user_text(OWNER, "/stop")
    await answer(tg, OWNER, "Nothing is running.")
    tg.user_text(OWNER, "still there?")
    await answer(tg, OWNER, "echo: still there?")


async def test_new_starts_a_fresh_session(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    key = f"telegram:{OWNER}"
    tg.user_text(OWNER, "remember the word pineapple")
    await answer(tg, OWNER, "echo: remember the word pineapple")
    await idle(bridge, OWNER)
    first = await bridge.engine.describe(key)
    assert first is not None and first.session_id
    tg.user_text(OWNER, "/new")
    await tg.wait_for(lambda: any(t.startswith("🆕") for t in texts(tg, OWNER)), what="/new")
    tg.user_text(OWNER, "what was the word?")
    await answer(tg, OWNER, "echo: what was the word?")
    await idle(bridge, OWNER)
    assert "pineapple" not in str(fake_api.requests()[-1]["messages"])
    second = await bridge.engine.describe(key)
    assert second is not None and second.session_id != first.session_id


async def test_a_restart_keeps_the_conversation(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic
) -> None:
    engine = await make_engine()
    bridge = await make_bridge(engine)
    tg.user_text(OWNER, "my cat is called Miso")
    await answer(tg, OWNER, "echo: my cat is called Miso")
    await idle(bridge, OWNER)
    before = await engine.describe(f"telegram:{OWNER}")
    await bridge.stop()
    await engine.stop()

    engine2 = await make_engine()  # the same database: a gateway restart
    await make_bridge(engine2)
    tg.user_text(OWNER, "what is my cat called?")
    await answer(tg, OWNER, "echo: what is my cat called?")
    assert "my cat is called Miso" in str(fake_api.requests()[-1]["messages"])
    after = await engine2.describe(f"telegram:{OWNER}")
    assert before is not None and after is not None and after.turns == before.turns + 1


async def test_model_and_status_commands(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_text(OWNER, "/model")
    shown = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if t.startswith("Model:")])
    assert "opus" in shown[0] and "sonnet" in shown[0]
    tg.user_text(OWNER, "/model opus")
    await answer(tg, OWNER, "Model: opus. The conversation keeps its history.")
    tg.user_text(OWNER, "/model gpt-5")
    refused = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if "gpt-5" in t])
    assert "opus" in refused[0]
    tg.user_text(OWNER, "hi")
    await answer(tg, OWNER, "echo: hi")
    assert fake_api.requests()[-1]["model"].startswith("claude-opus")
    await idle(bridge, OWNER)

    tg.user_text(OWNER, "/status")
    status = await tg.wait_for(
        lambda: next((m for m in tg.visible(OWNER) if m.text.startswith("Session:")), None))
    info = await bridge.engine.describe(f"telegram:{OWNER}")
    assert info is not None and info.session_id
    for part in (info.session_id, "Model: opus", "Tokens:", "Cost so far:", "Usage limit:",
                 "1 turn"):
        assert part in status.text, (part, status.text)
    assert any(e["type"] == "bold" for e in status.entities), "rendered from Markdown"


async def test_sessions_lists_terminal_sessions_and_resume_continues_one(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic, cli_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bridge = await make_bridge()
    desk = await collect(bridge.engine, "terminal:desk", "desk work: the bug is in parser.py")
    desk_id = getattr(desk[-1], "session_id", None)
    assert desk_id
    monkeypatch.setenv("HOME", str(cli_home))  # where the CLI keeps its transcripts here
    tg.user_text(OWNER, "/sessions")
    listing = await tg.wait_for(
        lambda: next((m for m in tg.visible(OWNER) if "Recent Claude Code" in m.text), None))
    assert desk_id in listing.text and "1. " in listing.text
    tg.user_text(OWNER, "/resume 1")
    await tg.wait_for(lambda: any(desk_id in t and "continues" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "where was the bug?")
    await answer(tg, OWNER, "echo: where was the bug?")
    assert "the bug is in parser.py" in str(fake_api.requests()[-1]["messages"])
    await idle(bridge, OWNER)  # the answer shows before its turn has wound down; /resume
    tg.user_text(OWNER, "/resume nonsense")  # during it would be "A turn is running here"
    await tg.wait_for(lambda: any("not a Claude Code session id" in t
                                  for t in texts(tg, OWNER)))


# ----------------------------------------------------------------------------- Telegram's ways


@pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")  # raised inside PTB
async def test_flood_control_and_network_errors_delay_but_never_drop_the_answer(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(stream="edit", status_delay=30)
    tg.fail_next("sendMessage", code=429, retry_after=1)
    tg.fail_next("sendMessage", code=502)
    tg.user_text(OWNER, "hello through the flood")
    message = await answer(tg, OWNER, "echo: hello through the flood")
    await idle(bridge, OWNER)
    calls = tg.calls_of("sendMessage")
    assert len(calls) >= 3
    assert calls[1].at - calls[0].at >= 1.0, "waited retry_after before trying again"
    assert texts(tg, OWNER) == [message.text], "exactly one answer, not lost, not doubled"


async def test_markdown_is_rendered_and_falls_back_to_plain_text_if_refused(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge(status_delay=30)
    fake_api.script({"text": "Use **bold** and `code` with Vec<T>."}, match="format this")
    tg.user_text(OWNER, "format this")
    rendered = await answer(tg, OWNER, "Use bold and code with Vec<T>.")
    assert {e["type"] for e in rendered.entities} == {"bold", "code"}
    await idle(bridge, OWNER)

    tg.reject_entities = True
    fake_api.script({"text": "Again **bold** and `code`."}, match="once more")
    tg.user_text(OWNER, "once more")
    plain = await answer(tg, OWNER, "Again **bold** and `code`.")
    assert plain.entities == []


async def test_in_groups_it_answers_only_when_mentioned_or_replied_to(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_text(GROUP, "hello everyone", user_id=OWNER)
    tg.user_text(GROUP, "hi all, who is this bot?", user_id=STRANGER)
    tg.user_text(GROUP, f"{BOT} what is up", user_id=OWNER)
    first = await answer(tg, GROUP, "echo: what is up")
    await idle(bridge, GROUP)
    tg.user_text(GROUP, "and then?", user_id=OWNER, reply_to=first.message_id)
    await tg.wait_for(lambda: len(fake_api.requests()) >= 2, what="the reply turn")
    await idle(bridge, GROUP)
    tg.user_text(GROUP, f"{BOT} let me in", user_id=STRANGER)
    await tg.wait_for(lambda: any("999" in t for t in texts(tg, GROUP)), what="refusal")
    asked = [r["last_user_text"] for r in fake_api.requests()]
    assert asked[0] == "what is up"
    assert asked[1].startswith("[In reply to your earlier message: echo: what is up]")
    assert asked[1].endswith("and then?")
    assert len(asked) == 2
    assert not tg.calls_of("sendMessageDraft"), "drafts are for private chats only"


async def test_each_forum_topic_is_its_own_conversation(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    bridge = await make_bridge()
    tg.user_text(FORUM, f"{BOT} topic one here", user_id=OWNER, thread_id=11)
    tg.user_text(FORUM, f"{BOT} topic two here", user_id=OWNER, thread_id=22)
    await answer(tg, FORUM, "echo: topic one here", thread=11)
    await answer(tg, FORUM, "echo: topic two here", thread=22)
    await idle(bridge, FORUM, 11)
    await idle(bridge, FORUM, 22)
    one = await bridge.engine.describe(f"telegram:{FORUM}:11")
    two = await bridge.engine.describe(f"telegram:{FORUM}:22")
    assert one is not None and two is not None and one.session_id != two.session_id
    assert texts(tg, FORUM, 11) == ["echo: topic one here"]
    assert texts(tg, FORUM, 22) == ["echo: topic two here"]
    assert all(c.params.get("message_thread_id") in (11, 22)
               for c in tg.calls_of("sendMessage", "editMessageText", "sendChatAction")
               if c.params.get("chat_id") == FORUM and c.method != "editMessageText")


# ----------------------------------------------------------------------------- notifications


async def test_timeouts_reach_the_chat_and_api_turns_reach_the_notify_chat(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(activity_timeout=2.0)
    bridge = await make_bridge(engine, notify=OWNER)
    # a turn of the HTTP API, and one of a Telegram chat nobody watches (e.g. a scheduled job)
    api, cron = await asyncio.gather(
        collect(engine, "openai:abc", "HANG forever", TurnOptions(origin="api")),
        collect(engine, "telegram:5555", "HANG as well", TurnOptions(origin="cron")),
    )
    for events in (api, cron):
        assert isinstance(events[-1], TurnError) and events[-1].kind is ErrorKind.TIMEOUT
    notified = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if "openai:abc" in t])
    assert "(api)" in notified[0] and "no activity" in notified[0]
    in_chat = await tg.wait_for(lambda: texts(tg, 5555))
    assert in_chat[0].startswith("⏱") and "no activity" in in_chat[0]
    # a Telegram turn on screen: its own view says it, exactly once
    tg.user_text(OWNER, "HANG in the chat")
    await tg.wait_for(lambda: len([t for t in texts(tg, OWNER) if t.startswith("⏱")]) >= 1,
                      what="the timeout message")
    await idle(bridge, OWNER)
    await asyncio.sleep(0.3)
    assert len([t for t in texts(tg, OWNER) if t.startswith("⏱")]) == 1


# ----------------------------------------------------------------------------- webhook


async def test_webhook_mode_receives_updates_with_the_secret_only(
    make_bridge: BridgeFactory, tg: FakeTelegram
) -> None:
    port = free_port()
    await make_bridge(mode="webhook", webhook_url="https://bot.example.org/tg/hook",
                      webhook_listen="127.0.0.1", webhook_port=port)
    assert tg.webhook_url == "https://bot.example.org/tg/hook" and tg.webhook_secret
    assert not tg.calls_of("getUpdates")
    update = {"update_id": 1, "message": {
        "message_id": 1, "date": int(time.time()), "text": "/help",
        "chat": {"id": OWNER, "type": "private", "first_name": "Owner"},
        "from": {"id": OWNER, "is_bot": False, "first_name": "Owner"},
        "entities": [{"type": "bot_command", "offset": 0, "length": 5}]}}
    url = f"http://127.0.0.1:{port}/tg/hook"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as refused:
            assert refused.status == 403
        headers = {"X-Telegram-Bot-Api-Secret-Token": tg.webhook_secret}
        async with http.post(url, json=update, headers=headers) as accepted:
            assert accepted.status == 200
    help_text = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if "/resume" in t])
    assert "/new" in help_text[0] and "/start" not in help_text[0]


# ----------------------------------------------------------------------------- the gateway


async def test_the_gateway_starts_the_bridge_when_a_token_is_set(
    tg: FakeTelegram, fake_api: FakeAnthropic, cli_home: Path, tmp_path: Path
) -> None:
    import json

    from gateway.app import Gateway
    from gateway.config import load_settings
    from tests.fake_anthropic import bundled_cli, cli_env

    env = cli_env(fake_api.base_url, str(cli_home), inherit=False)
    env.pop("PATH", None)
    config = tmp_path / "config.toml"
    config.write_text("\n".join([
        "[server]", f"port = {free_port()}",
        "[claude]", f"workspace = {json.dumps(str(tmp_path / 'ws'))}",
        f"cli_path = {json.dumps(bundled_cli())}",
        "[claude.env]", *[f"{json.dumps(k)} = {json.dumps(v)}" for k, v in env.items()],
        "[storage]", f"data_dir = {json.dumps(str(tmp_path / 'data'))}",
        "[telegram]", f"base_url = {json.dumps(tg.base_url)}",
        f"allowed_users = [{OWNER}]", "status_delay = 30",
    ]) + "\n")
    settings = load_settings(config, env={"HOME": str(tmp_path), "TELEGRAM_BOT_TOKEN": tg.token,
                                          "TELEGRAM_NOTIFY_ID": str(OWNER)})
    gateway = Gateway.build(settings)
    await gateway.start()
    try:
        assert len(gateway.bridges) == 1 and tg.commands
        tg.user_text(OWNER, "hello gateway")
        await answer(tg, OWNER, "echo: hello gateway")
    finally:
        await gateway.stop()
    assert gateway.bridges == []
    polls = len(tg.calls_of("getUpdates"))
    await asyncio.sleep(0.3)
    assert len(tg.calls_of("getUpdates")) == polls, "polling stopped"


# ----------------------------------------------------------------------------- nothing lost


def story(words: int) -> str:
    """A long plain answer of numbered words (so a missing or cut word is visible), in
    paragraphs of 12 to 40 words."""
    vocabulary = ("quiet", "harbours", "hills", "and", "the", "boats", "lantern", "evening")
    out: list[str] = []
    for i in range(words):
        out.append(f"{vocabulary[i % len(vocabulary)]}{i}")
        out.append("\n\n" if i % 29 == 28 else " ")
    return "".join(out).strip()


@pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")  # raised inside PTB
async def test_a_long_streamed_answer_arrives_complete_under_latency_and_flood_control(
    make_bridge: BridgeFactory, tg: FakeTelegram, fake_api: FakeAnthropic
) -> None:
    """~9,000 characters streamed in 500 pieces while every Bot API call takes 100-150 ms
    and 15% of the sends and edits get flood control (429, retry_after 1): every word
    arrives, once, in order (the shared view used to overwrite text that arrived during a
    send, and lost ~5% of the words)."""
    bridge = await make_bridge(stream="edit", long_answer_file_chars=0, status_delay=30)
    long = story(1000)
    assert 8500 < len(long) < 10000
    fake_api.script({"text": long, "pieces": 500, "chunk_delay": 0.01}, match="long story")
    tg.slow(latency=0.1, jitter=0.05, flood_rate=0.15, seed=15)
    tg.user_text(OWNER, "tell me the long story")
    last = long.split()[-1]
    await tg.wait_for(lambda: any(last in t for t in texts(tg, OWNER)), within=60,
                      what="the last word")
    await idle(bridge, OWNER)
    messages = texts(tg, OWNER)
    assert " ".join(messages).split() == long.split(), "every word, once, in order"
    assert len(messages) == 3 and all(utf16_len(t) <= 4096 for t in messages)
    assert tg.floods >= 1, "flood control was injected"
    assert len(tg.calls_of("editMessageText")) >= 5, "the answer streamed by editing"
