"""Scheduled prompts end to end: the REAL APScheduler 3 firing within seconds, the REAL engine
running the REAL Claude Code CLI against the fake Anthropic API, SQLite for jobs and history.

The ``log`` target is the gateway's own delivery to its log (read with ``caplog``); delivery
through a chat bridge is in ``test_scheduler_telegram.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.engine import Engine
from gateway.errors import ErrorKind
from gateway.scheduler import (
    Delivery,
    JobError,
    JobSpec,
    Scheduler,
    SchedulerConfig,
    SessionMode,
)
from gateway.store import ScheduleRunRow
from tests.clock import noon_zone
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.cli

SchedulerFactory = Callable[..., Awaitable[Scheduler]]
FAST = SchedulerConfig(jitter=0, allow_seconds=True, timezone="UTC")


@pytest.fixture
async def make_scheduler(make_engine: EngineFactory) -> AsyncIterator[SchedulerFactory]:
    """``await make_scheduler(jobs=(), engine=None, start=True, **config)``; all stopped at
    teardown. A second one on a new engine is a gateway restart (same database). Its zone is
    one where it is about noon: no ``@daily`` or ``0 9 * * 1-5`` slot comes while a test
    runs (in UTC they fired next to the test's own runs at 00:00 and on weekdays at 09:00)."""
    made: list[Scheduler] = []

    async def factory(jobs: tuple[JobSpec, ...] = (), engine: Engine | None = None,
                      start: bool = True, **config: Any) -> Scheduler:
        engine = engine or await make_engine()
        values = {"jitter": 0, "allow_seconds": True, "timezone": noon_zone(), **config}
        scheduler = Scheduler(engine, SchedulerConfig(**values), jobs)
        made.append(scheduler)
        if start:
            await scheduler.start()
        return scheduler

    yield factory
    for scheduler in made:
        await scheduler.stop()


def soon(seconds: int = 2) -> str:
    """A seconds-level cron expression that fires once, ``seconds`` from now."""
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"{at.second} * * * * *"


def daily_at(moment: datetime) -> str:
    return f"{moment.minute} {moment.hour} * * *"


async def runs_until(scheduler: Scheduler, job: str, predicate: Callable[
        [list[ScheduleRunRow]], bool], within: float = 40.0) -> list[ScheduleRunRow]:
    deadline = time.monotonic() + within
    while True:
        runs = await scheduler.store.runs(job, limit=50)
        if predicate(runs):
            return runs
        assert time.monotonic() < deadline, f"runs of {job}: {runs}"
        await asyncio.sleep(0.05)


def finished(status: str = "ok") -> Callable[[list[ScheduleRunRow]], bool]:
    return lambda runs: any(r.status == status for r in runs)


def prompts_seen(fake_api: FakeAnthropic, marker: str) -> list[dict[str, Any]]:
    return [r for r in fake_api.requests() if marker in (r["last_user_text"] or "")]


# ----------------------------------------------------------------------------- firing


async def test_cron_job_fires_runs_a_light_model_and_logs_the_answer(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.scheduler")
    engine = await make_engine()  # started first: the slot is 2 s after the scheduler starts
    job = JobSpec("brief", soon(2), "weather report please", "log")
    scheduler = await make_scheduler(jobs=(job,), engine=engine)
    view = scheduler.jobs()[0]
    assert view.next_run is not None and view.problem is None

    runs = await runs_until(scheduler, "brief", finished(), within=75)
    await scheduler.wait_idle("brief")
    run = runs[0]
    assert run.trigger == "cron" and run.error is None
    # fired on its slot (no jitter configured), to the second
    assert run.scheduled_at is not None and view.next_run.timestamp() == run.scheduled_at
    assert run.duration_ms is not None and run.duration_ms > 0
    assert run.cost_usd is not None and run.cost_usd > 0
    # the answer went to the log target, and the turn used the light default model
    assert "schedule brief answered:\necho: weather report please" in caplog.text
    request = prompts_seen(fake_api, "weather report please")[0]
    assert "haiku" in request["model"]
    status = scheduler.status()
    assert status["jobs"][0]["last_run"]["status"] == "ok"
    assert status["jobs"][0]["next_run"] is not None


async def test_overlapping_run_is_skipped_and_recorded(
    make_scheduler: SchedulerFactory, fake_api: FakeAnthropic
) -> None:
    fake_api.script({"text": "slow answer", "delay": 3.5}, match="slow job")
    job = JobSpec("every-second", "* * * * * *", "slow job", "log")
    scheduler = await make_scheduler(jobs=(job,))
    runs = await runs_until(scheduler, "every-second",
                            lambda rs: finished("skipped")(rs) and finished()(rs))
    await scheduler.stop()
    skipped = [r for r in runs if r.status == "skipped"]
    assert skipped[0].error == "the previous run was still going, so this one was skipped"
    ok = [r for r in runs if r.status == "ok"]
    # every skip happened while the one slow run was going: it reached Claude once
    assert len(ok) == 1 and len(prompts_seen(fake_api, "slow job")) == 1
    assert all(ok[0].started_at <= r.started_at for r in skipped)


# ----------------------------------------------------------------------------- misfires


async def _set_last_slot(db: Path, job: str, when: datetime) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT OR REPLACE INTO schedule_state (job, last_slot) VALUES (?, ?)",
                     (job, when.timestamp()))


async def test_missed_run_inside_grace_runs_once_at_start(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    # down for three days: three daily slots passed, the latest 10 minutes ago
    job = JobSpec("daily", daily_at(now - timedelta(minutes=10)), "catch up on news", "log")
    engine = await make_engine()
    await _set_last_slot(tmp_path / "gateway.sqlite3", "daily", now - timedelta(days=3, hours=1))
    scheduler = await make_scheduler(jobs=(job,), timezone="UTC", engine=engine)
    runs = await runs_until(scheduler, "daily", finished())
    assert [r.trigger for r in runs] == ["catch-up"]  # coalesced: one run, not three
    assert runs[0].scheduled_at is not None
    assert abs(runs[0].scheduled_at - (now - timedelta(minutes=10)).replace(
        second=0, microsecond=0).timestamp()) < 1
    assert len(prompts_seen(fake_api, "catch up on news")) == 1


async def test_missed_run_outside_grace_is_recorded_not_run(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    job = JobSpec("daily", daily_at(now - timedelta(hours=2)), "stale news", "log")
    engine = await make_engine()
    await _set_last_slot(tmp_path / "gateway.sqlite3", "daily", now - timedelta(hours=3))
    scheduler = await make_scheduler(jobs=(job,), timezone="UTC", engine=engine, misfire_grace=3600)
    runs = await scheduler.store.runs("daily")
    assert [(r.status, r.trigger) for r in runs] == [("missed", "catch-up")]
    assert runs[0].error is not None
    assert "1 run was missed" in runs[0].error and "misfire_grace" in runs[0].error
    await asyncio.sleep(0.5)
    assert prompts_seen(fake_api, "stale news") == []
    assert scheduler.status()["jobs"][0]["last_run"]["status"] == "missed"
    # the job itself still runs on its schedule
    assert scheduler.jobs()[0].next_run is not None


async def test_a_new_job_has_missed_nothing(
    make_scheduler: SchedulerFactory, fake_api: FakeAnthropic
) -> None:
    now = datetime.now(UTC)
    job = JobSpec("fresh-job", daily_at(now - timedelta(minutes=5)), "first time", "log")
    scheduler = await make_scheduler(jobs=(job,), timezone="UTC")
    await asyncio.sleep(0.3)
    assert await scheduler.store.runs("fresh-job") == []
    assert prompts_seen(fake_api, "first time") == []


# ----------------------------------------------------------------------------- persistence


async def test_chat_jobs_and_history_survive_a_restart(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    first = await make_scheduler()
    kept = await first.add(name="kept", cron="0 9 * * 1-5", prompt="morning summary",
                           target="log", created_by="telegram:1", created_in="telegram:1")
    paused = await first.add(name=None, cron="@daily", prompt="Nightly backup check!",
                             target="log")
    assert paused.name == "nightly-backup-check"
    await first.pause(paused)
    assert first.run_now(kept)
    await first.wait_idle("kept")
    await first.stop()
    await first.engine.stop()

    second = await make_scheduler(engine=await make_engine())
    views = {v.spec.name: v for v in second.jobs()}
    assert set(views) == {"kept", "nightly-backup-check"}
    assert views["kept"].spec.id == kept.id and views["kept"].spec.created_by == "telegram:1"
    assert views["kept"].next_run is not None and views["kept"].spec.enabled
    assert not views["nightly-backup-check"].spec.enabled
    assert views["nightly-backup-check"].next_run is None
    assert views["kept"].last_run is not None and views["kept"].last_run.status == "ok"
    assert [r.trigger for r in await second.history(str(kept.id))] == ["manual"]
    resumed = await second.resume(views["nightly-backup-check"].spec)
    assert resumed.enabled and second.jobs()[1].next_run is not None
    await second.remove(second.get("kept") or kept)
    assert second.get("kept") is None

    third = await make_scheduler(engine=second.engine)
    assert [v.spec.name for v in third.jobs()] == ["nightly-backup-check"]
    assert third.jobs()[0].spec.enabled


async def test_a_run_cut_off_by_shutdown_is_marked_interrupted(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    fake_api.script({"text": "late", "delay": 30}, match="long job")
    first = await make_scheduler()
    # not "@hourly": its slot at the full hour was skipped next to this run (runs[0])
    job = await first.add(name="long", cron="@daily", prompt="long job", target="log")
    first.run_now(job)
    await runs_until(first, "long", finished("running"))
    await first.stop()
    runs = await first.store.runs("long")
    assert runs[0].status == "interrupted"


# ----------------------------------------------------------------------------- sessions


async def test_fresh_and_continue_sessions(
    make_scheduler: SchedulerFactory, fake_api: FakeAnthropic
) -> None:
    scheduler = await make_scheduler()
    cont = await scheduler.add(name="diary", cron="@daily", prompt="diary entry", target="log",
                               session=SessionMode.CONTINUE)
    fresh = await scheduler.add(name="quote", cron="@daily", prompt="quote of the day",
                                target="log")
    for spec in (cont, fresh, cont, fresh):
        assert scheduler.run_now(spec)
        await scheduler.wait_idle(spec.name)

    def user_turns(marker: str) -> list[int]:
        return [sum(1 for role in r["roles"] if role == "user")
                for r in prompts_seen(fake_api, marker)]

    assert user_turns("diary entry") == [1, 2]  # the second run sees the first
    assert user_turns("quote of the day") == [1, 1]  # each run starts anew


# ----------------------------------------------------------------------------- errors


async def test_a_failed_turn_is_delivered_as_an_error(
    make_scheduler: SchedulerFactory, fake_api: FakeAnthropic
) -> None:
    scheduler = await make_scheduler()
    got: list[Delivery] = []

    async def record(delivery: Delivery) -> None:  # a stand-in chat platform
        got.append(delivery)

    scheduler.register_target("telegram", record)
    spec = await scheduler.add(name="broken", cron="@daily", prompt="FAIL_401 now",
                               target="telegram:77")
    scheduler.run_now(spec)
    await scheduler.wait_idle("broken")
    assert len(got) == 1 and got[0].text is None and got[0].error is not None
    assert got[0].error.kind is ErrorKind.AUTHENTICATION and got[0].trigger == "manual"
    run = (await scheduler.store.runs("broken"))[0]
    assert run.status == "error" and run.error == got[0].error.message


async def test_an_undeliverable_answer_is_kept_in_the_history(
    make_scheduler: SchedulerFactory, fake_api: FakeAnthropic
) -> None:
    scheduler = await make_scheduler()

    async def down(delivery: Delivery) -> None:
        raise ConnectionError("chat service unreachable")

    scheduler.register_target("telegram", down)
    spec = await scheduler.add(name="lost", cron="@daily", prompt="keep me", target="telegram:5")
    scheduler.run_now(spec)
    await scheduler.wait_idle("lost")
    run = (await scheduler.store.runs("lost"))[0]
    assert run.status == "undelivered" and run.answer == "echo: keep me"
    assert run.error == "could not deliver to telegram:5: chat service unreachable"


async def test_bad_chat_jobs_are_refused_naming_the_field(
    make_scheduler: SchedulerFactory,
) -> None:
    good = JobSpec("config-job", "0 8 * * *", "hello", "log")
    scheduler = await make_scheduler(jobs=(good,))

    async def refused(**fields: Any) -> JobError:
        values: dict[str, Any] = {"name": "x", "cron": "0 9 * * *", "prompt": "p",
                                  "target": "log", **fields}
        with pytest.raises(JobError) as caught:
            await scheduler.add(**values)
        return caught.value

    err = await refused(cron="0 25 * * *")
    assert (err.job, err.field) == ("x", "cron") and "hour '25'" in err.message
    err = await refused(cron="0 9 * *")
    assert err.field == "cron" and "has 4 field(s)" in err.message
    err = await refused(timezone="Mars/Olympus")
    assert err.field == "timezone" and "unknown time zone" in err.message
    err = await refused(target="slack:general")
    assert err.field == "target" and "unknown target 'slack:general'" in err.message
    err = await refused(target="telegram:12")  # no Telegram bot runs here
    assert err.field == "target" and "needs the Telegram bot" in err.message
    err = await refused(name="config-job")
    assert (err.job, err.field) == ("config-job", "name") and "exists" in err.message
    err = await refused(model="gpt-4o")
    assert err.field == "model" and "unknown model" in err.message
    err = await refused(prompt="   ")
    assert err.field == "prompt"
    err = await refused(name="no spaces allowed")
    assert err.field == "name"
    await scheduler.add(name="taken", cron="0 9 * * *", prompt="p", target="log")
    err = await refused(name="taken")
    assert (err.job, err.field) == ("taken", "name")
    with pytest.raises(JobError) as caught:
        await scheduler.remove(scheduler.get("config-job") or good)
    assert caught.value.field == "source" and "read-only" in caught.value.message
    # nothing else was affected
    assert [v.spec.name for v in scheduler.jobs()] == ["config-job", "taken"]
    assert all(v.next_run is not None for v in scheduler.jobs())


async def test_a_config_job_that_cannot_run_is_held_and_the_others_run(
    make_scheduler: SchedulerFactory, make_engine: EngineFactory, fake_api: FakeAnthropic,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = await make_engine()
    jobs = (
        JobSpec("to-telegram", "0 8 * * *", "hello", "telegram:42"),
        JobSpec("bad-model", "0 8 * * *", "hello", "log", model="gpt-5"),
        JobSpec("fine", soon(2), "still fine", "log"),
    )
    scheduler = await make_scheduler(jobs=jobs, engine=engine)
    views = {v.spec.name: v for v in scheduler.jobs()}
    assert views["to-telegram"].problem is not None
    assert views["to-telegram"].problem.startswith("target: telegram:42 needs the Telegram bot")
    assert views["bad-model"].problem is not None
    assert views["bad-model"].problem.startswith("model: unknown model 'gpt-5'")
    assert views["to-telegram"].next_run is None and views["fine"].problem is None
    assert "schedule 'to-telegram': target:" in caplog.text
    with pytest.raises(JobError):
        scheduler.run_now(views["bad-model"].spec)
    await runs_until(scheduler, "fine", finished(), within=75)


async def test_duplicate_config_names_are_refused() -> None:
    class NoEngine:
        def tables(self, group: Any) -> Any:
            return None

    with pytest.raises(JobError) as caught:
        Scheduler(NoEngine(), FAST, (JobSpec("a", "@daily", "p", "log"),  # type: ignore[arg-type]
                                     JobSpec("a", "@hourly", "q", "log")))
    assert (caught.value.job, caught.value.field) == ("a", "name")
