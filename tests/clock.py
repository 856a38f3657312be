"""Wall-clock helpers for tests that must pass whenever they run.

A test whose engine adds up "today" in the machine's zone, or whose scheduler holds a job
at ``@daily`` / ``0 9 * * 1-5`` in UTC, fails when it runs across that local midnight or
09:00: the turn lands in yesterday, the job fires a second time next to the test's own
``run_now``. :func:`noon_zone` gives such a test a zone in which it is about noon, so the
next local midnight is 11.5 h or more away and a daily slot at 00:00, 07:00 or 09:00 at
least 2.5 h away.
"""

from __future__ import annotations

import time


def noon_zone(now: float | None = None) -> str:
    """An IANA zone without daylight saving time (``Etc/GMT±N``) in which ``now`` (default:
    this moment) is between 11:30 and 12:30 local time.

    ``Etc/GMT`` names carry POSIX's inverted sign: ``Etc/GMT-5`` is UTC+5.
    """
    moment = time.time() if now is None else now
    utc_hours = (moment % 86400) / 3600
    offset = round(12 - utc_hours)  # -12 ... +12, all of which Etc/GMT names
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
