"""Cron expressions as a person writes them, turned into APScheduler 3 triggers.

Standard crontab semantics, not APScheduler's own dialect:

* five fields ``minute hour day-of-month month day-of-week`` (or ``@hourly``, ``@daily``,
  ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``);
* day-of-week numbers 0–7 with 0 and 7 = Sunday (APScheduler 3 counts 0 = Monday, a
  documented historical mistake), names ``sun``…``sat``, ranges and steps;
* when both day-of-month and day-of-week are restricted, a day matching *either* fires
  (APScheduler alone would require both).

A sixth, leading seconds field is accepted only when the caller allows it (the tests use it
to see the real scheduler fire within seconds; the configuration never allows it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_FIELD_WORDS = {
    "second": "second",
    "minute": "minute",
    "hour": "hour",
    "day": "day of month",
    "month": "month",
    "day_of_week": "day of week",
}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"^(\*|[0-7a-z]+)(?:-([0-7a-z]+))?(?:/(\d+))?$")
_FIELD_CHARS = re.compile(r"^[0-9A-Za-z*,/\-]+$")


class CronError(ValueError):
    """An invalid cron expression or time zone; the message says what is wrong."""


def parse_timezone(name: str) -> tzinfo:
    """The zone for an IANA name (``Europe/Berlin``, ``UTC``); empty = this machine's zone."""
    if not name.strip():
        return local_timezone()
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"unknown time zone {name!r}: use an IANA name such as \"Europe/Berlin\","
            " \"America/New_York\" or \"UTC\""
        ) from None


def local_timezone() -> tzinfo:
    from tzlocal import get_localzone

    return get_localzone()


def cron_trigger(
    expr: str, timezone: tzinfo, *, jitter: float = 0, allow_seconds: bool = False
) -> BaseTrigger:
    """An APScheduler trigger for the crontab expression ``expr``; :class:`CronError` if bad."""
    text = " ".join(expr.split())
    if not text:
        raise CronError("the cron expression is empty; e.g. \"0 9 * * 1-5\" = 09:00 on weekdays")
    text = MACROS.get(text.lower(), text)
    if text.startswith("@"):
        raise CronError(
            f"unknown shortcut {expr!r}; use one of {', '.join(MACROS)} or five fields"
        )
    fields = text.split(" ")
    second = "0"
    if allow_seconds and len(fields) == 6:
        second, fields = fields[0], fields[1:]
    if len(fields) != 5:
        raise CronError(
            f"{expr!r} has {len(fields)} field(s); a cron expression has 5: minute hour"
            " day-of-month month day-of-week, e.g. \"30 7 * * *\" = 07:30 every day"
        )
    values = dict(zip(_FIELDS, fields, strict=True))
    for name, value in (("second", second), *values.items()):
        if not _FIELD_CHARS.match(value):
            raise CronError(f"{expr!r}: {_FIELD_WORDS[name]} field {value!r} is not valid")
    values["day_of_week"] = _crontab_weekdays(values["day_of_week"], expr)
    jitter_arg = int(jitter) if jitter and jitter > 0 else None

    def make(**overrides: str) -> CronTrigger:
        args = {**values, **overrides}
        try:
            return CronTrigger(
                second=second, timezone=timezone, jitter=jitter_arg, **args
            )
        except ValueError as exc:
            raise CronError(f"{expr!r}: {_which_field(args, second, exc)}") from None

    dom_restricted = values["day"] != "*"
    dow_restricted = values["day_of_week"] != "*"
    trigger: BaseTrigger
    if dom_restricted and dow_restricted:
        # crontab: either day matches. Both halves are validated by building them.
        trigger = OrTrigger([make(day_of_week="*"), make(day="*")], jitter=jitter_arg)
    else:
        trigger = make()
    if next_fire(trigger, datetime.now(timezone)) is None:
        raise CronError(f"{expr!r} never fires (no such date, e.g. 30 February)")
    return trigger


def validate_cron(expr: str, *, allow_seconds: bool = False) -> str:
    """``expr`` normalised (single spaces) if it is valid, else :class:`CronError`."""
    cron_trigger(expr, ZoneInfo("UTC"), allow_seconds=allow_seconds)
    return " ".join(expr.split())


def next_fire(trigger: BaseTrigger, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (build ``trigger`` without jitter).

    One microsecond on is added in UTC: on a zone's clock it drops ``fold``, so after 02:00
    CET in the hour autumn repeats it named 02:00 CEST, an hour earlier, and the next fire
    was 02:00 CET again, for ever.
    """
    later = (after.astimezone(UTC) + timedelta(microseconds=1)).astimezone(after.tzinfo)
    return trigger.get_next_fire_time(after, later)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Passed:
    """The slots of a trigger that passed in a stretch of time (see :func:`passed_slots`)."""

    #: the latest of them
    latest: datetime
    #: how many (counted up to the caller's limit)
    count: int
    #: seconds from ``latest`` to the end of the stretch
    late: float


def passed_slots(trigger: BaseTrigger, after: datetime, now: datetime,
                 limit: int) -> Passed | None:
    """The slots of ``trigger`` strictly after ``after`` and up to ``now``, or None.

    Compared and subtracted as instants (epoch seconds): Python compares and subtracts two
    datetimes of the same zone by their wall clocks, an hour off across a DST change (a
    slot at 01:30 CET and a start at 03:20 CEST the night the clocks go forward are 50 min
    apart, not 1 h 50 min; in the repeated hour of autumn 02:30 CEST is before 02:15 CET).
    """
    end = now.timestamp()
    latest: datetime | None = None
    count = 0
    slot = next_fire(trigger, after)
    while slot is not None and slot.timestamp() <= end and count < limit:
        latest, count = slot, count + 1
        slot = next_fire(trigger, slot)
    if latest is None:
        return None
    return Passed(latest, count, end - latest.timestamp())


def _crontab_weekdays(field: str, expr: str) -> str:
    """A crontab day-of-week field as APScheduler day names (0 and 7 = Sunday)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DOW_ITEM.match(item)
        if match is None:
            raise CronError(f"{expr!r}: day of week {item!r} is not valid (0-7 or sun-sat)")
        start, end, step = match.groups()
        if start == "*":
            if end is not None:
                raise CronError(f"{expr!r}: day of week {item!r} is not valid")
            first, last = 0, 6
        else:
            first = _weekday(start, expr)
            last = _weekday(end, expr) if end is not None else (6 if step else first)
        stride = int(step) if step else 1
        if stride < 1:
            raise CronError(f"{expr!r}: day of week step must be at least 1")
        if last < first:
            raise CronError(
                f"{expr!r}: day of week range {item!r} runs backwards; write it as two"
                " parts, e.g. \"5-6,0\""
            )
        days.update(day % 7 for day in range(first, last + 1, stride))
    if len(days) == 7:
        return "*"
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _weekday(token: str, expr: str) -> int:
    if token.isdigit():
        number = int(token)
        if 0 <= number <= 7:
            return number
    elif token[:3] in _DAY_NAMES and len(token) == 3:
        return _DAY_NAMES.index(token)
    raise CronError(f"{expr!r}: {token!r} is not a day of week (0-7 or sun-sat)")


def _which_field(args: dict[str, str], second: str, error: ValueError) -> str:
    """APScheduler's message, with the field it is about named in crontab words."""
    for name, value in (("second", second), *args.items()):
        try:
            CronTrigger(**{name: value})
        except ValueError as exc:
            return f"{_FIELD_WORDS[name]} {_explain(str(exc))}"
    return _explain(str(error))


def _explain(message: str) -> str:
    match = re.match(r"Error validating expression '([^']*)': (.*)", message)
    if match:
        return f"{match.group(1)!r}: {match.group(2)}"
    match = re.match(r"Unrecognized expression \"([^\"]*)\" for field \"(\w+)\"", message)
    if match:
        word = _FIELD_WORDS.get(match.group(2), match.group(2))
        return f"{word} field {match.group(1)!r} is not valid"
    return message
