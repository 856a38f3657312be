"""The usage ledger: every turn's usage and every rate-limit report, in SQLite.

What is recorded is what the CLI reports, nothing computed here: per turn its tokens (input,
output, cache reads and writes), its API-equivalent cost (``total_cost_usd``, an estimate at
API list prices, not a bill), the model, the frontend (the turn's origin) and the project;
per rate-limit event each window it names (``five_hour``, ``seven_day``, ...) with status,
utilization and reset time. :meth:`UsageLedger.report` adds them up for ``/usage`` and
``GET /v1/usage``; :meth:`UsageLedger.saw_rate_limit` and :meth:`UsageLedger.refused` send a
:class:`~gateway.engine.api.UsageWarning` once per window, reset and level.

Tables (migration ``m003_usage``): ``usage_turns``, ``rate_limit_reports``, ``usage_warnings``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.engine.api import (
    LimitWindow,
    UsageBucket,
    UsagePeriod,
    UsageReport,
    UsageTotals,
    UsageWarning,
    UsageWarningHandler,
)
from gateway.engine.events import RateLimitStatus, Usage
from gateway.store import Store, _Tables

log = logging.getLogger(__name__)

#: the longest hourly series a report gives (two weeks)
MAX_HOURS = 14 * 24
#: the level of a warning sent because a request was refused
REFUSED = "rejected"
_SUMS = (
    "COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
    " COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_creation_tokens), 0),"
    " COALESCE(SUM(cost_usd), 0)"
)
_GROUPS = {"frontend": "origin", "project": "project", "model": "model"}


def zone_named(name: str) -> tuple[str, tzinfo]:
    """The owner's zone: an IANA name, or "" for the machine's own (``UTC`` if it has none
    with a name). Raises ``ValueError`` for an unknown name."""
    if name.strip():
        try:
            return name.strip(), ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as \"Europe/Berlin\","
                " \"America/New_York\" or \"UTC\""
            ) from None
    try:
        from tzlocal import get_localzone_name

        local = get_localzone_name()
        if local:
            return local, ZoneInfo(local)
    except Exception as exc:  # no zone database entry for this machine's setting
        log.info("the machine's time zone has no IANA name (%s); using UTC", exc)
    return "UTC", ZoneInfo("UTC")


def windows_of(status: RateLimitStatus) -> list[LimitWindow]:
    """The windows one ``rate_limit_event`` reports: each of ``unifiedWindows``, and the
    representative ``rateLimitType`` with the event's own status (``overall`` without one)."""
    raw, seen = status.raw, status.seen_at
    out: dict[str, LimitWindow] = {}
    windows = raw.get("unifiedWindows")
    if isinstance(windows, dict):
        for name, info in windows.items():
            if not isinstance(info, dict):
                continue
            out[str(name)] = LimitWindow(
                window=str(name), status=str(info.get("status") or "allowed"),
                utilization=_number(info.get("utilization")),
                resets_at=_number(info.get("resetsAt")), seen_at=seen,
            )
    main = status.rate_limit_type or "overall"
    top = LimitWindow(main, status.status, status.utilization, status.resets_at, seen)
    known = out.get(main)
    if known is None:
        out[main] = top
    elif status.status == REFUSED:  # the refusal is the news, whatever the window said
        out[main] = LimitWindow(main, REFUSED, known.utilization,
                                known.resets_at or top.resets_at, seen)
    return list(out.values())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def warning_level(window: LimitWindow, thresholds: Sequence[float]) -> float | None:
    """The highest threshold ``window`` has reached, or None."""
    if window.utilization is None:
        return None
    reached = [t for t in thresholds if window.utilization >= t]
    return max(reached) if reached else None


@dataclass(frozen=True)
class TurnUsage:
    """One turn as the ledger records it."""

    key: str
    origin: str
    project: str
    model: str
    session_id: str | None
    usage: Usage
    cost_usd: float
    #: the CLI's running total for the session after this turn (the next process that
    #: resumes it starts counting from there)
    cli_total_usd: float | None
    ok: bool = True


class UsageStore(_Tables):
    """The ledger's tables on the engine's database."""

    async def add_turn(self, turn: TurnUsage, at: float | None = None) -> None:
        u = turn.usage

        def run() -> None:
            self._db().execute(
                "INSERT INTO usage_turns (at, key, origin, project, model, session_id,"
                " input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,"
                " cost_usd, cli_total_usd, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time() if at is None else at, turn.key, turn.origin, turn.project,
                 turn.model, turn.session_id, u.input_tokens, u.output_tokens,
                 u.cache_read_tokens, u.cache_creation_tokens, turn.cost_usd,
                 turn.cli_total_usd, int(turn.ok)),
            )

        await self._run(run)

    async def cli_total(self, session_id: str) -> float | None:
        """The CLI's running total after the last recorded turn of ``session_id``."""

        def run() -> float | None:
            row = self._db().execute(
                "SELECT cli_total_usd FROM usage_turns WHERE session_id = ?"
                " AND cli_total_usd IS NOT NULL ORDER BY id DESC LIMIT 1", (session_id,),
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._run(run)

    async def add_reports(self, windows: Iterable[LimitWindow], raw: dict[str, Any]) -> None:
        rows = [(w.seen_at, w.window, w.status, w.utilization, w.resets_at, json.dumps(raw))
                for w in windows]

        def run() -> None:
            db = self._db()
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO rate_limit_reports (at, window_type, status, utilization,"
                " resets_at, raw) VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")

        await self._run(run)

    async def latest_windows(self, now: float) -> list[LimitWindow]:
        def run() -> list[LimitWindow]:
            rows = self._db().execute(
                "SELECT window_type, status, utilization, resets_at, at FROM rate_limit_reports"
                " WHERE id IN (SELECT MAX(id) FROM rate_limit_reports GROUP BY window_type)"
                " ORDER BY window_type"
            ).fetchall()
            return [LimitWindow(w, s, u, r, at, expired=r is not None and r <= now)
                    for w, s, u, r, at in rows]

        return await self._run(run)

    async def mark_warned(self, window: str, resets_at: float | None,
                          levels: Sequence[str]) -> bool:
        """Remember that ``levels`` were told for this window and reset; True if the first
        of them (the one being sent) had not been told before."""
        reset = round(resets_at or 0.0)

        def run() -> bool:
            db = self._db()
            db.execute("BEGIN")
            cursor = db.execute(
                "INSERT OR IGNORE INTO usage_warnings (window_type, resets_at, level, sent_at)"
                " VALUES (?, ?, ?, ?)", (window, reset, levels[0], time.time()))
            new = cursor.rowcount == 1
            db.executemany(
                "INSERT OR IGNORE INTO usage_warnings (window_type, resets_at, level, sent_at)"
                " VALUES (?, ?, ?, ?)", [(window, reset, lv, time.time()) for lv in levels[1:]])
            db.execute("COMMIT")
            return new

        return await self._run(run)

    async def period(self, start: float) -> UsagePeriod:
        def run() -> UsagePeriod:
            db = self._db()
            total = db.execute(f"SELECT {_SUMS} FROM usage_turns WHERE at >= ?",
                               (start,)).fetchone()
            groups: dict[str, dict[str, UsageTotals]] = {}
            for name, column in _GROUPS.items():
                rows = db.execute(
                    f"SELECT {column}, {_SUMS} FROM usage_turns WHERE at >= ?"
                    f" GROUP BY {column} ORDER BY {column}", (start,)).fetchall()
                groups[name] = {(r[0] or "other"): _totals(r[1:]) for r in rows}
            return UsagePeriod(start, _totals(total), groups["frontend"], groups["project"],
                               groups["model"])

        return await self._run(run)

    async def hourly(self, start: float, hours: int) -> list[UsageBucket]:
        """``hours`` buckets of 3600 s from ``start`` (a local hour's start)."""

        def run() -> list[UsageBucket]:
            rows = self._db().execute(
                f"SELECT CAST((at - ?) / 3600 AS INTEGER) AS b, {_SUMS} FROM usage_turns"
                " WHERE at >= ? GROUP BY b", (start, start)).fetchall()
            found = {int(r[0]): _totals(r[1:]) for r in rows}
            return [UsageBucket(start + 3600 * i, found.get(i, UsageTotals()))
                    for i in range(hours)]

        return await self._run(run)


def _totals(row: Sequence[Any]) -> UsageTotals:
    return UsageTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]),
                       float(row[5]))


class UsageLedger:
    """What the engine keeps of usage and limits, and the warnings it sends."""

    def __init__(
        self, store: Store, *, timezone: str = "", thresholds: Sequence[float] = (0.8, 0.95),
        max_turn_cost_usd: float | None = None,
        scheduled_daily_cost_cap_usd: float | None = None,
    ) -> None:
        self.tables = UsageStore(store)
        self.timezone, self.zone = zone_named(timezone)
        self.thresholds = tuple(sorted(set(thresholds)))
        self.max_turn_cost_usd = max_turn_cost_usd
        self.scheduled_daily_cost_cap_usd = scheduled_daily_cost_cap_usd
        self._handlers: list[UsageWarningHandler] = []

    def add_handler(self, handler: UsageWarningHandler) -> None:
        self._handlers.append(handler)

    # ------------------------------------------------------------------ recording

    async def turn(self, turn: TurnUsage) -> None:
        try:
            await self.tables.add_turn(turn)
        except Exception:  # the turn's answer matters more than its bookkeeping
            log.exception("recording the usage of a turn of %s failed", turn.key)

    async def baseline(self, session_id: str | None) -> float:
        """Where a process resuming ``session_id`` starts its running cost total."""
        if not session_id:
            return 0.0
        try:
            return await self.tables.cli_total(session_id) or 0.0
        except Exception:
            log.exception("reading the cost baseline of %s failed", session_id)
            return 0.0

    async def saw_rate_limit(self, status: RateLimitStatus) -> None:
        """Record one rate-limit event and warn about what it shows."""
        windows = windows_of(status)
        try:
            await self.tables.add_reports(windows, status.raw)
        except Exception:
            log.exception("recording a rate-limit report failed")
        for window in windows:
            if window.status == REFUSED:
                await self._warn(window, None)
                continue
            level = warning_level(window, self.thresholds)
            if level is not None:
                await self._warn(window, level)

    async def refused(self, latest: RateLimitStatus | None, retry_after: float | None) -> None:
        """A request was refused for the usage limit (HTTP 429 from Anthropic)."""
        now = time.time()
        if latest is not None and latest.status == REFUSED:
            return  # its rate-limit event said so: warned there
        resets_at = (latest.resets_at if latest is not None and latest.resets_at else None)
        if resets_at is None and retry_after:
            resets_at = now + retry_after
        name = latest.rate_limit_type if latest is not None and latest.rate_limit_type else None
        # without a reset time, at most one warning an hour
        key_reset = resets_at if resets_at is not None else now - now % 3600
        window = LimitWindow(name or "overall", REFUSED, None, resets_at, now)
        await self._warn(window, None, key_reset=key_reset)

    async def _warn(self, window: LimitWindow, threshold: float | None, *,
                    key_reset: float | None = None) -> None:
        if threshold is None:
            levels = [REFUSED, *(f"{t:g}" for t in self.thresholds)]
        else:
            levels = [f"{t:g}" for t in self.thresholds if t <= threshold][::-1]
        try:
            new = await self.tables.mark_warned(
                window.window, key_reset if key_reset is not None else window.resets_at, levels)
        except Exception:
            log.exception("recording a usage warning failed")
            return
        if not new:
            return
        warning = UsageWarning(window.window, window.status, window.utilization, threshold,
                               window.resets_at, self.timezone)
        log.warning("usage limit %s: %s%s", window.window,
                    "request refused" if threshold is None else f"{threshold:.0%} reached",
                    "" if window.resets_at is None else f", resets at {window.resets_at:.0f}")
        for handler in self._handlers:
            try:
                await handler(warning)
            except Exception:
                log.exception("a usage warning handler failed")

    # ------------------------------------------------------------------ the report

    async def report(self, hours: int = 48, now: float | None = None) -> UsageReport:
        now = time.time() if now is None else now
        hours = max(1, min(MAX_HOURS, int(hours)))
        local = datetime.fromtimestamp(now, self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        monday = midnight - timedelta(days=midnight.weekday())
        hour = local.replace(minute=0, second=0, microsecond=0)
        first = hour.timestamp() - 3600 * (hours - 1)
        return UsageReport(
            now=now, timezone=self.timezone,
            windows=tuple(await self.tables.latest_windows(now)),
            today=await self.tables.period(_start(midnight)),
            week=await self.tables.period(_start(monday)),
            hours=hours, hourly=tuple(await self.tables.hourly(first, hours)),
            max_turn_cost_usd=self.max_turn_cost_usd,
            scheduled_daily_cost_cap_usd=self.scheduled_daily_cost_cap_usd,
        )


def _start(moment: datetime) -> float:
    """Epoch of a local wall-clock start (a midnight a DST change skipped: its first hour)."""
    zone = moment.tzinfo
    assert zone is not None
    return datetime(moment.year, moment.month, moment.day, moment.hour,
                    tzinfo=zone).timestamp()
