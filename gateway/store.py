"""The durable session map: SQLite in WAL mode, every write one transaction.

The schema is built and upgraded by numbered migrations (:mod:`gateway.migrations`) when
the database opens.

One connection, used from one worker thread, so the event loop never blocks on disk
and writes are naturally serialized. A gateway restart (or SIGKILL) loses nothing
that was committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError
from gateway.migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SessionRow:
    key: str
    session_id: str | None
    model: str | None
    cwd: str
    system_hash: str | None
    created_at: float
    last_used_at: float
    turns: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float


class Store:
    """Async facade over one SQLite connection living in a dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn)
            # Prove we can write now rather than failing on the first finished turn.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the session database {self.path}: {exc}. "
                "Check that storage.data_dir exists, is writable and the disk is not full."
            ) from exc
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    # ------------------------------------------------------------------ sessions

    async def get_session(self, key: str) -> SessionRow | None:
        return await self._run(self._get_session_sync, key)

    def _get_session_sync(self, key: str) -> SessionRow | None:
        row = self._db().execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE key = ?", (key,)
        ).fetchone()
        return SessionRow(*row) if row else None

    async def list_sessions(self, limit: int = 1000) -> list[SessionRow]:
        def run() -> list[SessionRow]:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM sessions ORDER BY last_used_at DESC LIMIT ?", (limit,)
            ).fetchall()
            return [SessionRow(*r) for r in rows]

        return await self._run(run)

    async def ensure_session(self, key: str, cwd: str) -> SessionRow:
        """The row for ``key``, created empty if it does not exist."""

        def run() -> SessionRow:
            now = time.time()
            self._db().execute(
                "INSERT OR IGNORE INTO sessions (key, cwd, created_at, last_used_at) "
                "VALUES (?, ?, ?, ?)",
                (key, cwd, now, now),
            )
            row = self._get_session_sync(key)
            assert row is not None
            return row

        return await self._run(run)

    async def record_turn(
        self,
        key: str,
        *,
        session_id: str,
        model: str | None,
        system_hash: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_creation_tokens: int,
        cost_usd: float,
    ) -> None:
        """After a finished turn: the latest session id and the running totals, atomically."""

        def run() -> None:
            self._db().execute(
                "UPDATE sessions SET session_id = ?, model = COALESCE(?, model), system_hash = ?,"
                " last_used_at = ?, turns = turns + 1, input_tokens = input_tokens + ?,"
                " output_tokens = output_tokens + ?, cache_read_tokens = cache_read_tokens + ?,"
                " cache_creation_tokens = cache_creation_tokens + ?, cost_usd = cost_usd + ?"
                " WHERE key = ?",
                (
                    session_id,
                    model,
                    system_hash,
                    time.time(),
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_creation_tokens,
                    cost_usd,
                    key,
                ),
            )

        await self._run(run)

    async def set_session_fields(self, key: str, **fields: Any) -> None:
        """Update some columns of a session (model, session_id, cwd, system_hash)."""
        allowed = {"session_id", "model", "cwd", "system_hash"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot set {sorted(bad)}")

        def run() -> None:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            self._db().execute(
                f"UPDATE sessions SET {assignments}, last_used_at = ? WHERE key = ?",
                (*fields.values(), time.time(), key),
            )

        if fields:
            await self._run(run)

    async def delete_session(self, key: str) -> None:
        def run() -> None:
            db = self._db()
            db.execute("BEGIN")
            db.execute("DELETE FROM sessions WHERE key = ?", (key,))
            db.execute("DELETE FROM conversation_meta WHERE key = ?", (key,))
            db.execute("COMMIT")

        await self._run(run)

    # ------------------------------------------------------------------ frontend metadata

    async def set_meta(self, key: str, **values: str) -> None:
        def run() -> None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO conversation_meta (key, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                [(key, name, value, now) for name, value in values.items()],
            )
            db.execute("COMMIT")

        await self._run(run)

    async def get_meta(self, key: str) -> dict[str, str]:
        def run() -> dict[str, str]:
            rows = self._db().execute(
                "SELECT name, value FROM conversation_meta WHERE key = ?", (key,)
            ).fetchall()
            return {name: value for name, value in rows}

        return await self._run(run)

    async def find_keys(self, name: str, value: str) -> list[str]:
        def run() -> list[str]:
            rows = self._db().execute(
                "SELECT key FROM conversation_meta WHERE name = ? AND value = ?"
                " ORDER BY updated_at DESC",
                (name, value),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(run)


_COLUMNS = (
    "key, session_id, model, cwd, system_hash, created_at, last_used_at, turns, input_tokens,"
    " output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd"
)


# --------------------------------------------------------------------------- scheduled prompts


@dataclass(frozen=True)
class ScheduleJobRow:
    """A job made in a chat (``/schedule add``); config jobs are not stored."""

    id: int
    name: str
    cron: str
    timezone: str
    prompt: str
    model: str | None
    target: str
    session: str
    jitter: float | None
    enabled: bool
    created_by: str
    created_in: str
    created_at: float


@dataclass(frozen=True)
class ScheduleRunRow:
    """One run of a job: ``status`` is running, ok, error, undelivered, skipped, missed or
    interrupted (the gateway stopped during it)."""

    id: int
    job: str
    trigger: str
    scheduled_at: float | None
    started_at: float
    finished_at: float | None
    status: str
    duration_ms: int | None
    cost_usd: float | None
    error: str | None
    answer: str | None


_JOB_COLUMNS = (
    "id, name, cron, timezone, prompt, model, target, session, jitter, enabled, created_by,"
    " created_in, created_at"
)
_RUN_COLUMNS = (
    "id, job, trigger, scheduled_at, started_at, finished_at, status, duration_ms, cost_usd,"
    " error, answer"
)


class _Tables:
    """A group of tables that lives on the :class:`Store`'s connection and worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _db(self) -> sqlite3.Connection:
        return self.store._db()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.store._run(fn, *args)


#: the base class of a frontend's own table group defined outside this module
Tables = _Tables


class ScheduleStore(_Tables):
    """The scheduler's tables."""

    #: runs kept per job; older ones are deleted as new ones are recorded
    keep_runs = 200

    # ------------------------------------------------------------------ jobs

    async def jobs(self) -> list[ScheduleJobRow]:
        def run() -> list[ScheduleJobRow]:
            rows = self._db().execute(
                f"SELECT {_JOB_COLUMNS} FROM schedule_jobs ORDER BY id"
            ).fetchall()
            return [_job_row(r) for r in rows]

        return await self._run(run)

    async def add_job(
        self, *, name: str, cron: str, timezone: str, prompt: str, model: str | None,
        target: str, session: str, jitter: float | None, created_by: str, created_in: str,
    ) -> ScheduleJobRow:
        """Insert a job; ``sqlite3.IntegrityError`` if the name is taken."""

        def run() -> ScheduleJobRow:
            db = self._db()
            cursor = db.execute(
                "INSERT INTO schedule_jobs (name, cron, timezone, prompt, model, target, session,"
                " jitter, enabled, created_by, created_in, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                (name, cron, timezone, prompt, model, target, session, jitter, created_by,
                 created_in, time.time()),
            )
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM schedule_jobs WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            return _job_row(row)

        return await self._run(run)

    async def delete_job(self, job_id: int) -> None:
        def run() -> None:
            db = self._db()
            db.execute("BEGIN")
            name = db.execute("SELECT name FROM schedule_jobs WHERE id = ?", (job_id,)).fetchone()
            db.execute("DELETE FROM schedule_jobs WHERE id = ?", (job_id,))
            if name is not None:
                db.execute("DELETE FROM schedule_state WHERE job = ?", (name[0],))
            db.execute("COMMIT")

        await self._run(run)

    async def set_enabled(self, job_id: int, enabled: bool) -> None:
        def run() -> None:
            self._db().execute(
                "UPDATE schedule_jobs SET enabled = ? WHERE id = ?", (int(enabled), job_id)
            )

        await self._run(run)

    # ------------------------------------------------------------------ last slot per job

    async def last_slots(self) -> dict[str, float]:
        def run() -> dict[str, float]:
            rows = self._db().execute("SELECT job, last_slot FROM schedule_state").fetchall()
            return {job: slot for job, slot in rows}

        return await self._run(run)

    async def set_last_slot(self, job: str, slot: float) -> None:
        def run() -> None:
            self._db().execute(
                "INSERT INTO schedule_state (job, last_slot) VALUES (?, ?)"
                " ON CONFLICT (job) DO UPDATE SET last_slot = excluded.last_slot",
                (job, slot),
            )

        await self._run(run)

    # ------------------------------------------------------------------ runs

    async def start_run(self, job: str, trigger: str, scheduled_at: float | None) -> int:
        def run() -> int:
            cursor = self._db().execute(
                "INSERT INTO schedule_runs (job, trigger, scheduled_at, started_at, status)"
                " VALUES (?, ?, ?, ?, 'running')",
                (job, trigger, scheduled_at, time.time()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self._run(run)

    async def finish_run(
        self, run_id: int, *, status: str, duration_ms: int | None = None,
        cost_usd: float | None = None, error: str | None = None, answer: str | None = None,
    ) -> None:
        def run() -> None:
            db = self._db()
            db.execute("BEGIN")
            db.execute(
                "UPDATE schedule_runs SET finished_at = ?, status = ?, duration_ms = ?,"
                " cost_usd = ?, error = ?, answer = ? WHERE id = ?",
                (time.time(), status, duration_ms, cost_usd, error, answer, run_id),
            )
            self._prune(db, run_id)
            db.execute("COMMIT")

        await self._run(run)

    async def record_run(
        self, job: str, *, trigger: str, status: str, scheduled_at: float | None,
        error: str | None = None,
    ) -> None:
        """A run that did not happen (skipped, missed): recorded at once as finished."""

        def run() -> None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            cursor = db.execute(
                "INSERT INTO schedule_runs (job, trigger, scheduled_at, started_at, finished_at,"
                " status, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job, trigger, scheduled_at, now, now, status, error),
            )
            assert cursor.lastrowid is not None
            self._prune(db, cursor.lastrowid)
            db.execute("COMMIT")

        await self._run(run)

    def _prune(self, db: sqlite3.Connection, run_id: int) -> None:
        db.execute(
            "DELETE FROM schedule_runs WHERE job = (SELECT job FROM schedule_runs WHERE id = ?)"
            " AND id <= (SELECT id FROM schedule_runs WHERE job ="
            " (SELECT job FROM schedule_runs WHERE id = ?) ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (run_id, run_id, self.keep_runs),
        )

    async def runs(self, job: str | None = None, limit: int = 20) -> list[ScheduleRunRow]:
        """The latest runs, newest first (of one job, or of all)."""

        def run() -> list[ScheduleRunRow]:
            if job is None:
                rows = self._db().execute(
                    f"SELECT {_RUN_COLUMNS} FROM schedule_runs ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = self._db().execute(
                    f"SELECT {_RUN_COLUMNS} FROM schedule_runs WHERE job = ?"
                    " ORDER BY id DESC LIMIT ?",
                    (job, limit),
                ).fetchall()
            return [ScheduleRunRow(*r) for r in rows]

        return await self._run(run)

    async def close_unfinished_runs(self) -> int:
        """Runs left 'running' by a gateway that died: marked 'interrupted'."""

        def run() -> int:
            cursor = self._db().execute(
                "UPDATE schedule_runs SET status = 'interrupted', finished_at = ?,"
                " error = 'the gateway stopped during this run' WHERE status = 'running'",
                (time.time(),),
            )
            return cursor.rowcount

        return await self._run(run)


def _job_row(row: tuple[Any, ...]) -> ScheduleJobRow:
    values = list(row)
    values[9] = bool(values[9])
    return ScheduleJobRow(*values)



# --------------------------------------------------------------------------- chat inbox/outbox


#: inbox states: ``transcribing`` (a voice note being prepared: not runnable from the inbox),
#: ``received`` (written, its turn not started), ``sent_to_claude`` (handed to
#: the CLI), ``answered`` (the turn ended; its answer is being shown), ``outboxed`` (what
#: could not be shown waits in the outbox), and the final ones: ``delivered``, ``notified``
#: (the chat was told the gateway restarted during its turn), ``dropped`` (/stop, /new),
#: ``retried`` (sent again with /retry, as a new entry), ``unheard`` (a voice note that gave
#: no prompt, or whose transcription a restart cut off: the chat was told)
OPEN_STATES = ("transcribing", "received", "sent_to_claude", "answered")
#: states of messages that never got their answer; /retry picks the newest of them
UNANSWERED_STATES = ("notified", "dropped")


@dataclass(frozen=True)
class InboxRow:
    """A chat message the gateway accepted, with what it takes to run it again."""

    id: int
    platform: str
    chat_key: str
    chat_id: int
    thread_id: int | None
    message_id: int | None
    sender_id: int
    text: str
    #: images of the prompt, as ``[{"media_type": ..., "data": <base64>}]``
    images: list[dict[str, str]]
    #: files the person sent, saved in the chat's inbox folder (their notes are in ``text``)
    attachments: list[str]
    transcription: str | None
    state: str
    #: how the turn ended: ``answer`` or ``error`` (``None`` while open)
    outcome: str | None
    answer: str | None
    received_at: float
    updated_at: float


@dataclass(frozen=True)
class OutboxRow:
    """One platform message (already split to fit) that is still to be delivered."""

    id: int
    platform: str
    chat_key: str
    inbox_id: int | None
    text: str
    markdown: bool
    attempts: int
    created_at: float


_INBOX_COLUMNS = (
    "id, platform, chat_key, chat_id, thread_id, message_id, sender_id, text, images,"
    " attachments, transcription, state, outcome, answer, received_at, updated_at"
)
_OUTBOX_COLUMNS = "id, platform, chat_key, inbox_id, text, markdown, attempts, created_at"


def _inbox_row(row: tuple[Any, ...]) -> InboxRow:
    values = list(row)
    values[8] = json.loads(values[8] or "[]")
    values[9] = json.loads(values[9] or "[]")
    return InboxRow(*values)


def _outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    values = list(row)
    values[5] = bool(values[5])
    return OutboxRow(*values)


class ChatStore(_Tables):
    """The chat bridges' inbox and outbox."""

    #: finished inbox entries and sent outbox entries are deleted after this many seconds
    keep_seconds = 7 * 24 * 3600

    # ------------------------------------------------------------------ inbox

    async def accept(
        self, *, platform: str, chat_key: str, chat_id: int, thread_id: int | None,
        message_id: int | None, sender_id: int, text: str, images: list[dict[str, str]],
        attachments: list[str], transcription: str | None, state: str = "received",
    ) -> int | None:
        """Write a message before its turn starts; its entry id, or ``None`` if this
        platform message is already in the inbox (Telegram can hand an update out again
        after a crash). The entry of a voice note written as ``transcribing`` is completed
        by the ``received`` one of its transcription."""

        def run() -> int | None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            cursor = db.execute(
                "INSERT OR IGNORE INTO chat_inbox (platform, chat_key, chat_id, thread_id,"
                " message_id, sender_id, text, images, attachments, transcription, state,"
                " received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (platform, chat_key, chat_id, thread_id, message_id, sender_id, text,
                 json.dumps(images), json.dumps(attachments), transcription, state, now, now),
            )
            entry = cursor.lastrowid if cursor.rowcount == 1 else None
            if entry is None and state == "received":
                row = db.execute(
                    "SELECT id FROM chat_inbox WHERE platform = ? AND chat_key = ? AND"
                    " message_id = ? AND state = 'transcribing'",
                    (platform, chat_key, message_id),
                ).fetchone()
                if row is not None:
                    entry = int(row[0])
                    db.execute(
                        "UPDATE chat_inbox SET text = ?, images = ?, attachments = ?,"
                        " transcription = ?, state = 'received', updated_at = ? WHERE id = ?",
                        (text, json.dumps(images), json.dumps(attachments), transcription,
                         now, entry),
                    )
            db.execute("COMMIT")
            return entry

        return await self._run(run)

    async def set_state(
        self, ids: list[int], state: str, *, outcome: str | None = None,
        answer: str | None = None,
    ) -> None:
        if not ids:
            return

        def run() -> None:
            db = self._db()
            db.execute("BEGIN")
            db.executemany(
                "UPDATE chat_inbox SET state = ?, outcome = COALESCE(?, outcome),"
                " answer = COALESCE(?, answer), updated_at = ? WHERE id = ?",
                [(state, outcome, answer, time.time(), i) for i in ids],
            )
            db.execute("COMMIT")

        await self._run(run)

    async def release(self, entry_id: int) -> None:
        """A voice note's preparation ended without a prompt (nothing was heard, or it
        failed and the chat was told): its ``transcribing`` entry is closed."""

        def run() -> None:
            self._db().execute(
                "UPDATE chat_inbox SET state = 'unheard', updated_at = ? WHERE id = ?"
                " AND state = 'transcribing'", (time.time(), entry_id))

        await self._run(run)

    async def get(self, entry_id: int) -> InboxRow | None:
        def run() -> InboxRow | None:
            row = self._db().execute(
                f"SELECT {_INBOX_COLUMNS} FROM chat_inbox WHERE id = ?", (entry_id,)
            ).fetchone()
            return _inbox_row(row) if row else None

        return await self._run(run)

    async def unfinished(self, platform: str) -> list[InboxRow]:
        """Entries of ``platform`` whose turn or display never finished, oldest first."""

        def run() -> list[InboxRow]:
            marks = ", ".join("?" * len(OPEN_STATES))
            rows = self._db().execute(
                f"SELECT {_INBOX_COLUMNS} FROM chat_inbox WHERE platform = ?"
                f" AND state IN ({marks}) ORDER BY id",
                (platform, *OPEN_STATES),
            ).fetchall()
            return [_inbox_row(r) for r in rows]

        return await self._run(run)

    async def last_unanswered(self, chat_key: str) -> InboxRow | None:
        """The newest message of a chat that never got its answer (for /retry): the
        gateway restarted during its turn, it was dropped, or its turn failed."""

        def run() -> InboxRow | None:
            marks = ", ".join("?" * len(UNANSWERED_STATES))
            row = self._db().execute(
                f"SELECT {_INBOX_COLUMNS} FROM chat_inbox WHERE chat_key = ?"
                f" AND (state IN ({marks}) OR (state = 'delivered' AND outcome = 'error'))"
                " ORDER BY id DESC LIMIT 1",
                (chat_key, *UNANSWERED_STATES),
            ).fetchone()
            return _inbox_row(row) if row else None

        return await self._run(run)

    async def finish(
        self, ids: list[int], *, outcome: str, platform: str, chat_key: str,
        undelivered: list[tuple[str, bool]],
    ) -> None:
        """A turn's display is over: its entries are ``delivered``, or ``outboxed`` with
        the ``(text, markdown)`` messages that could not be shown, in one transaction."""

        def run() -> None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            first = ids[0] if ids else None
            db.executemany(
                "INSERT INTO chat_outbox (platform, chat_key, inbox_id, text, markdown,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(platform, chat_key, first, text, int(md), now) for text, md in undelivered],
            )
            state = "outboxed" if undelivered else "delivered"
            db.executemany(
                "UPDATE chat_inbox SET state = ?, outcome = ?, updated_at = ? WHERE id = ?",
                [(state, outcome, now, i) for i in ids],
            )
            db.execute("COMMIT")

        await self._run(run)

    async def prune(self) -> None:
        """Forget finished entries and sent messages older than :attr:`keep_seconds`."""

        def run() -> None:
            db = self._db()
            cutoff = time.time() - self.keep_seconds
            marks = ", ".join("?" * len(OPEN_STATES))
            db.execute("BEGIN")
            db.execute(
                f"DELETE FROM chat_inbox WHERE updated_at < ? AND state NOT IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM chat_outbox o WHERE o.inbox_id = chat_inbox.id"
                " AND o.state = 'pending')",
                (cutoff, *OPEN_STATES),
            )
            db.execute("DELETE FROM chat_outbox WHERE state != 'pending' AND created_at < ?",
                       (cutoff,))
            db.execute("COMMIT")

        await self._run(run)

    # ------------------------------------------------------------------ outbox

    async def enqueue(
        self, *, platform: str, chat_key: str, inbox_id: int | None,
        messages: list[tuple[str, bool]], inbox_state: str | None = None,
    ) -> None:
        """Queue messages for a chat; ``inbox_state`` (with ``inbox_id``): the entry's new
        state, set in the same transaction (``notified`` for a restart notice)."""

        def run() -> None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO chat_outbox (platform, chat_key, inbox_id, text, markdown,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(platform, chat_key, inbox_id, text, int(md), now) for text, md in messages],
            )
            if inbox_id is not None and inbox_state is not None:
                db.execute("UPDATE chat_inbox SET state = ?, updated_at = ? WHERE id = ?",
                           (inbox_state, now, inbox_id))
            db.execute("COMMIT")

        await self._run(run)

    async def pending(self, platform: str) -> list[OutboxRow]:
        """Messages still to deliver, in the order they were queued."""

        def run() -> list[OutboxRow]:
            rows = self._db().execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM chat_outbox WHERE platform = ?"
                " AND state = 'pending' ORDER BY id",
                (platform,),
            ).fetchall()
            return [_outbox_row(r) for r in rows]

        return await self._run(run)

    async def pending_count(self, platform: str) -> int:
        def run() -> int:
            row = self._db().execute(
                "SELECT COUNT(*) FROM chat_outbox WHERE platform = ? AND state = 'pending'",
                (platform,),
            ).fetchone()
            return int(row[0])

        return await self._run(run)

    async def sent(self, outbox_id: int) -> None:
        """Delivered; its inbox entry is ``delivered`` once nothing of it waits any more."""

        def run() -> None:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            db.execute("UPDATE chat_outbox SET state = 'sent', sent_at = ?,"
                       " attempts = attempts + 1 WHERE id = ?", (now, outbox_id))
            db.execute(
                "UPDATE chat_inbox SET state = 'delivered', updated_at = ?"
                " WHERE state = 'outboxed' AND id = (SELECT inbox_id FROM chat_outbox"
                " WHERE id = ?) AND NOT EXISTS (SELECT 1 FROM chat_outbox o WHERE"
                " o.inbox_id = chat_inbox.id AND o.state = 'pending')",
                (now, outbox_id),
            )
            db.execute("COMMIT")

        await self._run(run)

    async def failed(self, outbox_id: int, error: str, *, give_up: bool = False) -> None:
        def run() -> None:
            self._db().execute(
                "UPDATE chat_outbox SET attempts = attempts + 1, last_error = ?,"
                " state = CASE WHEN ? THEN 'expired' ELSE state END WHERE id = ?",
                (error, int(give_up), outbox_id),
            )

        await self._run(run)
