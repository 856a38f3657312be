"""The chat bridges' durable inbox and outbox, with real components: the REAL Telegram bridge
(python-telegram-bot against ``tests/fake_telegram.py``, ~100 ms a call), the REAL engine and
CLI against the fake Anthropic API, and the gateway's SQLite database with its migrations.

A "restart" here is what ``gateway.app`` does at a stop and a start: the bridge and the
engine stop, and new ones open the same database (the SIGKILL of the gateway process is in
``tests/test_reliability_chat.py``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bridges.telegram import TelegramBridge
from gateway.migrations import MIGRATIONS
from gateway.store import ChatStore, Store
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import FakeTelegram
from tests.telegram_support import OWNER, BridgeFactory, answer, idle, texts

pytest_plugins = ["tests.telegram_support"]

#: The schema of the release before migrations existed (gateway/store.py's SCHEMA then),
#: kept here verbatim: a database it wrote must open with its data.
PREVIOUS_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key             TEXT PRIMARY KEY,
    session_id      TEXT,
    model           TEXT,
    cwd             TEXT NOT NULL,
    system_hash     TEXT,
    created_at      REAL NOT NULL,
    last_used_at    REAL NOT NULL,
    turns           INTEGER NOT NULL DEFAULT 0,
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd        REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conversation_meta (
    key        TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE INDEX IF NOT EXISTS conversation_meta_lookup ON conversation_meta (name, value);
-- scheduled prompts (gateway.scheduler): jobs made in chats, every run, each job's last slot
CREATE TABLE IF NOT EXISTS schedule_jobs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    cron       TEXT NOT NULL,
    timezone   TEXT NOT NULL DEFAULT '',
    prompt     TEXT NOT NULL,
    model      TEXT,
    target     TEXT NOT NULL,
    session    TEXT NOT NULL DEFAULT 'fresh',
    jitter     REAL,
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_by TEXT NOT NULL DEFAULT '',
    created_in TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job          TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    scheduled_at REAL,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    status       TEXT NOT NULL,
    duration_ms  INTEGER,
    cost_usd     REAL,
    error        TEXT,
    answer       TEXT
);
CREATE INDEX IF NOT EXISTS schedule_runs_job ON schedule_runs (job, id);
CREATE TABLE IF NOT EXISTS schedule_state (
    job       TEXT PRIMARY KEY,
    last_slot REAL NOT NULL
);
"""


def _schema(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                           " AND name != '_migrations'"))


# ----------------------------------------------------------------------------- migrations


async def test_a_database_of_the_previous_release_is_migrated_with_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(PREVIOUS_RELEASE_SCHEMA)
        db.execute("INSERT INTO sessions (key, session_id, model, cwd, created_at,"
                   " last_used_at, turns, cost_usd) VALUES ('telegram:1', 'sid-1', 'opus',"
                   " '/ws', 1.0, 2.0, 7, 0.5)")
        db.execute("INSERT INTO conversation_meta VALUES ('telegram:1', 'voice', 'on', 3.0)")
        db.execute("INSERT INTO schedule_jobs (name, cron, prompt, target, created_at)"
                   " VALUES ('daily', '0 9 * * *', 'news', 'telegram:1', 4.0)")
        old_schema = _schema(db)
    db.close()

    store = Store(path)
    await store.open()
    try:
        row = await store.get_session("telegram:1")
        assert row is not None and (row.session_id, row.model, row.turns, row.cost_usd) == (
            "sid-1", "opus", 7, 0.5)
        assert await store.get_meta("telegram:1") == {"voice": "on"}
        # the new tables work on the old database
        chats = ChatStore(store)
        entry = await chats.accept(platform="telegram", chat_key="telegram:1", chat_id=1,
                                   thread_id=None, message_id=10, sender_id=1, text="hi",
                                   images=[], attachments=[], transcription=None)
        assert entry is not None
        assert await chats.accept(platform="telegram", chat_key="telegram:1", chat_id=1,
                                  thread_id=None, message_id=10, sender_id=1, text="hi",
                                  images=[], attachments=[], transcription=None) is None, \
            "one platform message is one inbox entry"
    finally:
        await store.close()

    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
        schema = _schema(db)
        jobs = db.execute("SELECT name, cron, prompt FROM schedule_jobs").fetchall()
    db.close()
    assert names == [m.__name__ for m in MIGRATIONS]
    assert names[:2] == ["m001_initial", "m002_chat_inbox_outbox"]
    for name, sql in old_schema.items():  # the old tables are exactly as they were
        assert schema[name] == sql, name
    assert {"chat_inbox", "chat_outbox"} <= set(schema)
    assert jobs == [("daily", "0 9 * * *", "news")]

    # a fresh database gets the same schema, and opening it again runs nothing
    fresh = Store(tmp_path / "fresh.sqlite3")
    await fresh.open()
    await fresh.close()
    again = Store(tmp_path / "fresh.sqlite3")
    await again.open()
    await again.close()
    with sqlite3.connect(tmp_path / "fresh.sqlite3") as db:
        assert _schema(db) == schema
        assert db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
    db.close()


async def test_old_finished_entries_are_pruned_and_open_or_waiting_ones_kept(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "gateway.sqlite3")
    await store.open()
    try:
        chats = ChatStore(store)
        ids = []
        for number in range(4):
            entry = await chats.accept(
                platform="telegram", chat_key="telegram:1", chat_id=1, thread_id=None,
                message_id=number, sender_id=1, text=f"message {number}", images=[],
                attachments=[], transcription=None)
            assert entry is not None
            ids.append(entry)
        await chats.set_state([ids[0]], "delivered", outcome="answer")
        await chats.set_state([ids[1]], "sent_to_claude")
        await chats.finish([ids[2]], outcome="answer", platform="telegram",
                           chat_key="telegram:1", undelivered=[("still waiting", True)])
        await chats.set_state([ids[3]], "notified")
        chats.keep_seconds = -1  # everything is "old"
        await chats.prune()
        left = [await chats.get(i) for i in ids]
        assert [r.state if r else None for r in left] == [
            None, "sent_to_claude", "outboxed", None], "open and waiting entries are kept"
        assert [r.text for r in await chats.pending("telegram")] == ["still waiting"]
    finally:
        await store.close()


# ----------------------------------------------------------------------------- Telegram down


def _entry_of(bridge: TelegramBridge, message_id: int) -> bool:
    with sqlite3.connect(f"file:{bridge.engine.store.path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT 1 FROM chat_inbox WHERE message_id = ?",
                         (message_id,)).fetchone()
    db.close()
    return row is not None


def _quick_retries(bridge: TelegramBridge) -> None:
    """Retry loops of test length: the view's delivery budget, the platform's own retries and
    the outbox's backoff (the outage below lasts longer than all of them)."""
    core = bridge.core
    core.settings = replace(core.settings,
                            view=replace(core.settings.view, delivery_budget=1.5))
    bridge.platform.retries = 1
    core.outbox.first_delay, core.outbox.max_delay = 0.3, 1.0


async def _outbox_tried(bridge: TelegramBridge, attempts: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        rows = await bridge.core.ledger.pending("telegram")
        if rows and rows[0].attempts >= attempts:  # the later ones wait behind the first
            return
        assert time.monotonic() < deadline, f"the outbox did not try: {rows}"
        await asyncio.sleep(0.1)


async def _during_an_outage(bridge: TelegramBridge, tg: FakeTelegram, fake_api: FakeAnthropic,
                            ask: str, reply: str, *, then: tuple[str, str] | None = None,
                            ) -> float:
    """Ask (and ``then`` ask more while Claude works), and let Telegram go down while Claude
    answers, for longer than every retry loop; the answers wait in the outbox. Returns when
    the outage began."""
    fake_api.script({"text": reply, "delay": 0.5}, match=ask)
    tg.user_text(OWNER, ask)
    await tg.wait_for(lambda: any(r["last_user_text"] == ask for r in fake_api.requests()),
                      what="the turn to reach Claude")
    if then is not None:
        fake_api.script({"text": then[1]}, match=then[0])
        behind = tg.user_text(OWNER, then[0])["message_id"]
        await tg.wait_for(lambda: _entry_of(bridge, behind), what="the next one in the inbox")
    tg.down = True
    began = time.monotonic()
    await idle(bridge, OWNER)  # the turn ended; its display gave up on the answer
    await _outbox_tried(bridge, 1)  # and the outbox failed too
    assert not any(reply in t for t in texts(tg, OWNER))
    return began


@pytest.mark.cli
async def test_an_answer_due_while_telegram_is_down_arrives_once_when_back_or_after_a_restart(
    make_bridge: BridgeFactory, make_engine: EngineFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic,
) -> None:
    tg.slow(latency=0.1, jitter=0.05)
    first = await make_bridge(status_delay=30)
    _quick_retries(first)
    # 1. Telegram comes back while the gateway runs: the outbox delivers both answers that
    #    fell due meanwhile, in order
    reply = "The answer that waited for Telegram: " + " ".join(f"w{i}" for i in range(60))
    second_reply = "And the answer to the question sent after it."
    began = await _during_an_outage(first, tg, fake_api, "answer while it is down", reply,
                                    then=("and one more question", second_reply))
    assert len(await first.core.ledger.pending("telegram")) == 2
    refused = tg.refused
    tg.down = False
    outage = time.monotonic() - began
    assert outage > first.core.settings.view.delivery_budget + 1.0, "longer than the retries"
    await answer(tg, OWNER, second_reply)
    await asyncio.sleep(1.0)  # more outbox rounds (1 s apart at most): nothing comes twice
    shown = [m.text for m in tg.sent(OWNER)]
    assert shown.count(reply) == 1 and shown.count(second_reply) == 1
    assert shown.index(reply) < shown.index(second_reply), "in the order they fell due"
    assert not any(reply in t for t in texts(tg, OWNER) if t != reply)
    assert await first.core.ledger.pending("telegram") == []

    # 2. the gateway stops during the outage and starts again once Telegram is back
    kept = "Kept across the restart: " + " ".join(f"r{i}" for i in range(40))
    await _during_an_outage(first, tg, fake_api, "answer across a restart", kept)
    await first.stop()
    await first.engine.stop()
    tg.down = False
    second = await make_bridge(engine=await make_engine(), status_delay=30)
    await answer(tg, OWNER, kept)
    await asyncio.sleep(1.0)
    assert [m.text for m in tg.sent(OWNER)].count(kept) == 1
    assert [m.text for m in tg.sent(OWNER)].count(reply) == 1, "the first one not again"
    asked = [r["last_user_text"] for r in fake_api.requests()]
    assert asked.count("answer across a restart") == 1, "delivered from the outbox, not re-run"
    assert await second.core.ledger.pending("telegram") == []
    print(f"\nTelegram down {outage:.1f} s ({refused} calls refused): both answers arrived"
          " once, in order, when it was back; another, due when the gateway stopped, once"
          " after the restart")
