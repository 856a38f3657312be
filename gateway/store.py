"""The durable session map: SQLite in WAL mode, every write one transaction.

One connection, used from one worker thread, so the event loop never blocks on disk
and writes are naturally serialized. A gateway restart (or SIGKILL) loses nothing
that was committed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
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
            conn.executescript(SCHEMA)
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


class ScheduleStore:
    """The scheduler's tables, on the :class:`Store`'s connection and thread."""

    #: runs kept per job; older ones are deleted as new ones are recorded
    keep_runs = 200

    def __init__(self, store: Store) -> None:
        self.store = store

    def _db(self) -> sqlite3.Connection:
        return self.store._db()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.store._run(fn, *args)

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

