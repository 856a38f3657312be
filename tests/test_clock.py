"""When a test runs must not change what it sees: cron slots across daylight-saving changes
on fixed times, and the noon zone that keeps the other tests clear of local midnight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.scheduler.cron import cron_trigger, next_fire, passed_slots
from tests.clock import noon_zone

BERLIN = ZoneInfo("Europe/Berlin")


def test_the_hour_autumn_repeats_has_each_slot_once_and_the_next_comes_after_it() -> None:
    hourly = cron_trigger("0 * * * *", BERLIN)
    first = datetime(2026, 10, 25, 2, 0, tzinfo=BERLIN)  # 02:00 CEST, 00:00 UTC
    second = next_fire(hourly, first)
    assert second is not None and second.timestamp() - first.timestamp() == 3600
    assert second.strftime("%H:%M %Z") == "02:00 CET"
    after = next_fire(hourly, second)  # was 02:00 CET again: the scheduler's loop never ended
    assert after is not None and after.strftime("%H:%M %Z") == "03:00 CET"
    # fired at 02:00 CEST: that is the slot, the one at 02:00 CET an hour later is not due
    assert passed_slots(hourly, first, first + timedelta(milliseconds=10), 100) is None
    # the 25-hour day has 25 hourly slots and 75 of "*/20"; the 23-hour one 23 and 69
    for expr, per_hour in (("0 * * * *", 1), ("*/20 * * * *", 3)):
        trigger = cron_trigger(expr, BERLIN)
        for day, hours in (((2026, 10, 25), 25), ((2027, 3, 28), 23)):
            start = datetime(*day, tzinfo=BERLIN) - timedelta(seconds=1)
            end = datetime(*day, 23, 59, 59, tzinfo=BERLIN)
            passed = passed_slots(trigger, start, end, 1000)
            assert passed is not None and passed.count == hours * per_hour, (expr, day)


def test_how_late_a_missed_slot_is_counts_real_time_across_a_dst_change() -> None:
    # down over the night the clocks go forward: 01:30 CET to 03:20 CEST is 50 min, not
    # 1 h 50 min (wall clocks), which misfire_grace = 1 h refused to make up
    daily = cron_trigger("30 1 * * *", BERLIN)
    spring = passed_slots(daily, datetime(2027, 3, 27, 1, 30, tzinfo=BERLIN),
                          datetime(2027, 3, 28, 3, 20, tzinfo=BERLIN), 100)
    assert spring is not None and (spring.count, spring.late) == (1, 50 * 60)
    # back in the repeated hour of autumn: 02:30 CEST came 45 min before 02:15 CET, though
    # its wall clock reads later; it was not counted at all
    night = cron_trigger("30 2 * * *", BERLIN)
    autumn = passed_slots(night, datetime(2026, 10, 24, 2, 30, tzinfo=BERLIN),
                          datetime(2026, 10, 25, 2, 15, fold=1, tzinfo=BERLIN), 100)
    assert autumn is not None and (autumn.count, autumn.late) == (1, 45 * 60)
    assert autumn.latest.strftime("%H:%M %Z") == "02:30 CEST"


def test_the_noon_zone_is_about_noon_whenever_it_is_asked() -> None:
    day = datetime(2026, 12, 31, tzinfo=UTC).timestamp()
    for minute in range(0, 24 * 60, 7):
        now = day + 60 * minute
        local = datetime.fromtimestamp(now, ZoneInfo(noon_zone(now)))
        assert 11 * 60 + 30 <= local.hour * 60 + local.minute <= 12 * 60 + 30, (minute, local)
