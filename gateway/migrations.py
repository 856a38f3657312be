"""Numbered schema migrations for the gateway's SQLite database (the way simonw/llm does it).

Each migration is a function ``m<NNN>_<what>(db)`` registered with :func:`migration`, in
order. :func:`migrate` runs, in one transaction each, those not yet listed in the
``_migrations`` table, and records them there. A migration never changes once released: a
new table or column is a new function at the end.

Migration 1 is the schema of the releases before migrations existed, written with
``CREATE ... IF NOT EXISTS`` exactly as they wrote it, so a database they made opens
unchanged: its tables are kept and only the later migrations run.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]

#: every migration, in the order they run
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def applied(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to ``db``, in the order they ran."""
    _ensure_table(db)
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the pending migrations; returns the names of those that ran now.

    ``db`` must be in autocommit mode (``isolation_level=None``): each migration runs in
    its own ``BEGIN IMMEDIATE`` … ``COMMIT`` and is rolled back whole if it fails."""
    done = set(applied(db))
    ran: list[str] = []
    for fn in MIGRATIONS:
        name = fn.__name__
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                       (name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        ran.append(name)
    if ran:
        log.info("database schema: applied %s", ", ".join(ran))
    return ran


def _ensure_table(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        " name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the current transaction (``executescript`` would
    commit it first)."""
    statement = ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {statement!r}")


# --------------------------------------------------------------------------- the migrations


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    """The schema before migrations: sessions, frontend metadata, scheduled prompts."""
    _script(db, """
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
""")


@migration
def m002_chat_inbox_outbox(db: sqlite3.Connection) -> None:
    """The chat bridges' durable inbox (every accepted message, written before its turn)
    and outbox (answers that could not be delivered yet)."""
    _script(db, """
CREATE TABLE chat_inbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    platform      TEXT NOT NULL,
    chat_key      TEXT NOT NULL,
    chat_id       INTEGER NOT NULL,
    thread_id     INTEGER,
    message_id    INTEGER,
    sender_id     INTEGER NOT NULL DEFAULT 0,
    text          TEXT NOT NULL,
    images        TEXT NOT NULL DEFAULT '[]',
    attachments   TEXT NOT NULL DEFAULT '[]',
    transcription TEXT,
    state         TEXT NOT NULL,
    outcome       TEXT,
    answer        TEXT,
    received_at   REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE UNIQUE INDEX chat_inbox_message ON chat_inbox (platform, chat_key, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX chat_inbox_state ON chat_inbox (platform, state);
CREATE INDEX chat_inbox_chat ON chat_inbox (chat_key, id);
CREATE TABLE chat_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    platform        TEXT NOT NULL,
    chat_key        TEXT NOT NULL,
    inbox_id        INTEGER,
    text            TEXT NOT NULL,
    markdown        INTEGER NOT NULL DEFAULT 1,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    sent_at         REAL
);
CREATE INDEX chat_outbox_pending ON chat_outbox (platform, state, id);
""")


@migration
def m003_api_responses(db: sqlite3.Connection) -> None:
    """The Responses API's stored responses (``store: true``): each names its conversation
    and turn, so ``previous_response_id`` continues that CLI session, and ``body`` is the
    response object for ``GET /v1/responses/{id}``; ``reply`` is the conversation's reply
    fingerprint when it ended (a later turn changes the conversation's own)."""
    _script(db, """
CREATE TABLE api_responses (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    conversation_key TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    turn             INTEGER NOT NULL,
    reply            TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       REAL NOT NULL
);
CREATE INDEX api_responses_conversation ON api_responses (conversation_key, turn);
""")


@migration
def m004_permissions(db: sqlite3.Connection) -> None:
    """Each chat's permission mode (/mode) and its "always allow" rules (tool, or Bash
    command prefix), kept across restarts and /new."""
    _script(db, """
CREATE TABLE permission_modes (
    key        TEXT PRIMARY KEY,
    mode       TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE permission_rules (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT NOT NULL,
    tool       TEXT NOT NULL,
    prefix     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX permission_rules_unique ON permission_rules (key, tool, prefix);
""")


@migration
def m005_usage(db: sqlite3.Connection) -> None:
    """The usage ledger (gateway/engine/usage.py): every turn's tokens and cost as the CLI
    reported them, every rate-limit report per window, and the usage warnings already sent
    (once per window, reset and level)."""
    _script(db, """
CREATE TABLE usage_turns (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    at                    REAL NOT NULL,
    key                   TEXT NOT NULL,
    origin                TEXT NOT NULL DEFAULT '',
    project               TEXT NOT NULL DEFAULT '',
    model                 TEXT NOT NULL DEFAULT '',
    session_id            TEXT,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd              REAL NOT NULL DEFAULT 0,
    cli_total_usd         REAL,
    ok                    INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX usage_turns_at ON usage_turns (at);
CREATE INDEX usage_turns_session ON usage_turns (session_id, id);
CREATE TABLE rate_limit_reports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    window_type TEXT NOT NULL,
    status      TEXT NOT NULL,
    utilization REAL,
    resets_at   REAL,
    raw         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX rate_limit_reports_window ON rate_limit_reports (window_type, id);
CREATE TABLE usage_warnings (
    window_type TEXT NOT NULL,
    resets_at   REAL NOT NULL,
    level       TEXT NOT NULL,
    sent_at     REAL NOT NULL,
    PRIMARY KEY (window_type, resets_at, level)
);
""")


@migration
def m006_api_turns(db: sqlite3.Connection) -> None:
    """The API's turn record (gateway/api/turn_store.py): per conversation key and turn, the
    fingerprints of the turn's input and reply as the client saw them, the chained
    fingerprint of everything up to it, and the CLI session's mark at its end (session and
    message id), so a regenerated or edited history forks the session there. Fingerprints
    only, never text; ``owner`` is the hash of the API key that made it."""
    _script(db, """
CREATE TABLE api_turns (
    key        TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    users      TEXT NOT NULL,
    reply      TEXT NOT NULL,
    chain      TEXT NOT NULL,
    session_id TEXT,
    message_id TEXT,
    at         REAL NOT NULL,
    PRIMARY KEY (key, idx)
);
CREATE INDEX api_turns_reply ON api_turns (reply);
CREATE INDEX api_turns_chain ON api_turns (chain);
""")


@migration
def m007_api_responses_mark(db: sqlite3.Connection) -> None:
    """A stored response's mark in its CLI session (session and message id at the end of its
    turn), so ``previous_response_id`` naming an older response forks the session there."""
    _script(db, """
ALTER TABLE api_responses ADD COLUMN session_id TEXT;
ALTER TABLE api_responses ADD COLUMN message_id TEXT;
""")
