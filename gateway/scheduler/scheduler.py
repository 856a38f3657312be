"""The scheduler: cron jobs whose turns run through the engine and whose answers go to a chat.

APScheduler 3 (``AsyncIOScheduler``) runs in the gateway's own event loop and only decides
*when*; everything else is here:

* A fire starts a run task and returns, so APScheduler never queues behind a slow turn. A
  job whose previous run (or its jitter wait) is still going is **skipped**, and the skip
  is recorded in the run history.
* Each run waits a random **jitter** (default up to 60 s), then runs one turn in ``final``
  mode with the scheduler's **light model** (default ``haiku``) unless the job names one,
  and hands the answer or the error to the target's :data:`~gateway.scheduler.delivery.Deliverer`.
* The last slot of every job is kept in SQLite. At start-up, slots that passed while the
  gateway was down are coalesced into **one catch-up run** if the latest is within
  ``misfire_grace``; otherwise a ``missed`` entry is recorded. APScheduler's own
  ``misfire_grace_time``/``coalesce`` cover lateness while running (a suspended laptop).
* Jobs from the configuration are read-only; jobs made in chats live in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from gateway.engine import EngineAPI, Prompt, StreamMode, TurnError, TurnOptions, TurnResult
from gateway.errors import ErrorKind, GatewayError
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.cron import (
    CronError,
    cron_trigger,
    next_fire,
    parse_timezone,
    passed_slots,
)
from gateway.scheduler.delivery import Deliverer, Delivery, deliver_to_log
from gateway.scheduler.jobs import (
    JobError,
    JobSource,
    JobSpec,
    SessionMode,
    check_spec,
    target_platform,
)
from gateway.store import ScheduleJobRow, ScheduleRunRow, ScheduleStore

log = logging.getLogger(__name__)

#: Missed slots counted at start-up before counting stops (a seconds-level job down a week).
MAX_COUNTED_MISSES = 10_000
_PLATFORM_TITLES = {"telegram": "Telegram", "discord": "Discord"}
_TOKEN_VARS = {"telegram": "TELEGRAM_BOT_TOKEN", "discord": "DISCORD_BOT_TOKEN"}


@dataclass(frozen=True)
class JobView:
    """A job as ``/schedule list`` and ``/health`` show it."""

    spec: JobSpec
    next_run: datetime | None
    last_run: ScheduleRunRow | None
    running: bool
    problem: str | None  # why it is held (not scheduled), if it is


class Scheduler:
    def __init__(
        self, engine: EngineAPI, config: SchedulerConfig | None = None,
        jobs: Iterable[JobSpec] = (),
    ) -> None:
        self.engine = engine
        self.config = config or SchedulerConfig()
        self.store = engine.tables(ScheduleStore)
        self._config_jobs = [
            replace(check_spec(spec, allow_seconds=self.config.allow_seconds),
                    source=JobSource.CONFIG)
            for spec in jobs
        ]
        names = [spec.name for spec in self._config_jobs]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise JobError(duplicate, "name", "is used by two jobs; names must be unique")
        self._deliverers: dict[str, Deliverer] = {"log": deliver_to_log}
        self._jobs: dict[str, JobSpec] = {}
        self._problems: dict[str, str] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}  # job name -> its running run
        self._last: dict[str, ScheduleRunRow] = {}
        #: each scheduled job's trigger and the slot it fires for next (APScheduler does not
        #: tell a job function which slot it runs for)
        self._triggers: dict[str, BaseTrigger] = {}
        self._due: dict[str, datetime | None] = {}
        self._aps: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()
        self._started = False

    # ================================================================== wiring

    def register_target(self, platform: str, deliver: Deliverer) -> None:
        """Let ``deliver`` carry answers for targets ``<platform>:…`` (a chat bridge's job)."""
        self._deliverers[platform.rstrip(":")] = deliver

    # ================================================================== lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        interrupted = await self.store.close_unfinished_runs()
        if interrupted:
            log.warning("%d scheduled run(s) were cut off by the last shutdown", interrupted)
        for row in reversed(await self.store.runs(limit=1000)):
            self._last[row.job] = row
        if not self.config.enabled:
            log.info("scheduler disabled (scheduler.enabled = false)")
            return
        self._aps = AsyncIOScheduler(timezone=parse_timezone(self.config.timezone))
        self._aps.start()
        for spec in self._config_jobs:
            self._jobs[spec.name] = spec
        for job_row in await self.store.jobs():
            spec = _spec_from_row(job_row)
            if spec.name in self._jobs:  # a config job took the name since
                log.error("schedule #%d %r: name: a job in the config now has this name; the"
                          " chat-made job is not loaded (remove it with /schedule remove %d)",
                          job_row.id, spec.name, job_row.id)
                continue
            self._jobs[spec.name] = spec
        slots = await self.store.last_slots()
        for spec in list(self._jobs.values()):
            problem = self._problem(spec)
            if problem is not None:
                self._problems[spec.name] = problem
                log.error("schedule %r: %s; the job is held, the others run", spec.name, problem)
                continue
            if spec.enabled:
                self._schedule(spec)
                await self._catch_up(spec, slots.get(spec.name))
        log.info("scheduler running: %d job(s), %d held", len(self._jobs), len(self._problems))

    async def stop(self) -> None:
        """Stop firing and end running runs (recorded as interrupted)."""
        if self._aps is not None:
            with contextlib.suppress(Exception):
                self._aps.shutdown(wait=False)
            self._aps = None
        tasks = [t for t in self._runs.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self._runs.clear()
        self._started = False

    # ================================================================== queries

    def get(self, ref: str) -> JobSpec | None:
        """A job by chat number (``3`` or ``#3``) or by name."""
        ref = ref.strip().lstrip("#")
        if ref.isdigit():
            for spec in self._jobs.values():
                if spec.id == int(ref):
                    return spec
        return self._jobs.get(ref)

    def jobs(self) -> list[JobView]:
        """Config jobs first, then chat jobs by number."""
        specs = sorted(self._jobs.values(), key=lambda s: (s.id is not None, s.id or 0, s.name))
        return [self._view(spec) for spec in specs]

    async def history(self, ref: str, limit: int = 10) -> list[ScheduleRunRow]:
        spec = self.get(ref)
        return await self.store.runs(spec.name if spec else ref, limit=limit)

    def status(self) -> dict[str, Any]:
        """For ``/health``: jobs, next and last runs, what is held and why."""
        jobs: list[dict[str, Any]] = []
        for view in self.jobs():
            spec, last = view.spec, view.last_run
            jobs.append({
                "name": spec.name,
                "id": spec.id,
                "source": spec.source.value,
                "cron": spec.cron,
                "target": spec.target,
                "enabled": spec.enabled,
                "running": view.running,
                "problem": view.problem,
                "next_run": view.next_run.isoformat() if view.next_run else None,
                "last_run": None if last is None else {
                    "status": last.status,
                    "trigger": last.trigger,
                    "started_at": last.started_at,
                    "duration_ms": last.duration_ms,
                    "cost_usd": last.cost_usd,
                    "error": last.error,
                },
            })
        return {
            "enabled": self.config.enabled,
            "running": self._aps is not None,
            "model": self.config.model,
            "jobs": jobs,
        }

    # ================================================================== chat commands

    async def add(
        self, *, name: str | None, cron: str, prompt: str, target: str, timezone: str = "",
        model: str | None = None, session: SessionMode = SessionMode.FRESH,
        created_by: str = "", created_in: str = "",
    ) -> JobSpec:
        """Create and schedule a chat job; :class:`JobError` names the bad field."""
        async with self._lock:
            chosen = name.strip() if name else self._free_name(prompt)
            spec = check_spec(
                JobSpec(chosen, cron, prompt, target, timezone=timezone, model=model,
                        session=session, source=JobSource.CHAT),
                allow_seconds=self.config.allow_seconds,
            )
            if spec.name in self._jobs or (await self._name_in_store(spec.name)):
                raise JobError(spec.name, "name", "a job with this name exists; choose another"
                               " name or remove that job first")
            problem = self._problem(spec)
            if problem is not None:
                field, _, text = problem.partition(": ")
                raise JobError(spec.name, field, text)
            try:
                row = await self.store.add_job(
                    name=spec.name, cron=spec.cron, timezone=spec.timezone, prompt=spec.prompt,
                    model=spec.model, target=spec.target, session=spec.session.value,
                    jitter=spec.jitter, created_by=created_by, created_in=created_in,
                )
            except sqlite3.IntegrityError:
                raise JobError(spec.name, "name", "a job with this name exists") from None
            spec = _spec_from_row(row)
            self._jobs[spec.name] = spec
            await self.store.set_last_slot(spec.name, time.time())
            if self._aps is not None:
                self._schedule(spec)
            log.info("schedule %r (#%s) added by %s: %s → %s", spec.name, spec.id,
                     created_by or "?", spec.cron, spec.target)
            return spec

    async def remove(self, spec: JobSpec) -> None:
        self._writable(spec)
        assert spec.id is not None
        async with self._lock:
            self._unschedule(spec.name)
            await self.store.delete_job(spec.id)
            self._jobs.pop(spec.name, None)
            self._problems.pop(spec.name, None)
            task = self._runs.get(spec.name)
        if task is not None and not task.done():
            task.cancel()

    async def pause(self, spec: JobSpec) -> JobSpec:
        self._writable(spec)
        assert spec.id is not None
        async with self._lock:
            await self.store.set_enabled(spec.id, False)
            self._unschedule(spec.name)
            paused = self._jobs[spec.name] = replace(spec, enabled=False)
            return paused

    async def resume(self, spec: JobSpec) -> JobSpec:
        self._writable(spec)
        assert spec.id is not None
        async with self._lock:
            await self.store.set_enabled(spec.id, True)
            # runs missed while paused are not made up
            await self.store.set_last_slot(spec.name, time.time())
            resumed = self._jobs[spec.name] = replace(spec, enabled=True)
            if self._aps is not None and spec.name not in self._problems:
                self._schedule(resumed)
            return resumed

    def run_now(self, spec: JobSpec) -> bool:
        """Start a run at once (no jitter); ``False`` if one is running already."""
        if spec.name in self._problems:
            raise JobError(spec.name, *self._problems[spec.name].split(": ", 1))
        running = self._runs.get(spec.name)
        if running is not None and not running.done():
            return False
        self._start_run(spec, "manual", time.time(), jitter=False)
        return True

    async def wait_idle(self, name: str) -> None:
        """Wait until the job's run (if one is running) has finished."""
        task = self._runs.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    # ================================================================== internals

    def _writable(self, spec: JobSpec) -> None:
        if spec.read_only:
            raise JobError(spec.name, "source", "is defined in the gateway's config file and"
                           " is read-only here; change it in config.toml")

    async def _name_in_store(self, name: str) -> bool:
        return any(row.name == name for row in await self.store.jobs())

    def _free_name(self, prompt: str) -> str:
        words = re.findall(r"[A-Za-z0-9]+", prompt.lower())[:4]
        base = "-".join(words)[:40].strip("-") or "job"
        name, number = base, 2
        while name in self._jobs:
            name, number = f"{base}-{number}", number + 1
        return name

    def _problem(self, spec: JobSpec) -> str | None:
        """Why ``spec`` cannot run here ("field: text"), or ``None``."""
        platform = target_platform(spec.target)
        if platform not in self._deliverers:
            title = _PLATFORM_TITLES.get(platform, platform)
            return (f"target: {spec.target} needs the {title} bot, which is not running"
                    f" (set {_TOKEN_VARS.get(platform, 'its token')})")
        try:
            self.engine.resolve_model(self._model(spec))
        except GatewayError as exc:
            field = "model" if spec.model else "scheduler.model"
            return f"{field}: {exc.message}"
        try:
            self.engine.project(spec.project or None)
        except GatewayError as exc:
            return f"project: {exc.message}"
        return None

    def _model(self, spec: JobSpec) -> str | None:
        return spec.model or self.config.model or None

    def _zone(self, spec: JobSpec) -> tzinfo:
        return parse_timezone(spec.timezone or self.config.timezone)

    def _trigger(self, spec: JobSpec) -> BaseTrigger:
        try:
            return cron_trigger(spec.cron, self._zone(spec),
                                allow_seconds=self.config.allow_seconds)
        except CronError as exc:  # checked on the way in; a zone database change at most
            raise JobError(spec.name, "cron", str(exc)) from None

    def _schedule(self, spec: JobSpec) -> None:
        assert self._aps is not None
        trigger = self._trigger(spec)
        self._triggers[spec.name] = trigger
        self._due[spec.name] = next_fire(trigger, datetime.now(self._zone(spec)))
        self._aps.add_job(
            self._fire, trigger, args=[spec.name], id=spec.name, name=spec.name,
            misfire_grace_time=max(1, int(self.config.misfire_grace)), coalesce=True,
            max_instances=1, replace_existing=True,
        )

    def _unschedule(self, name: str) -> None:
        if self._aps is not None and self._aps.get_job(name) is not None:
            self._aps.remove_job(name)

    def _view(self, spec: JobSpec) -> JobView:
        next_run: datetime | None = None
        if self._aps is not None and spec.enabled:
            job = self._aps.get_job(spec.name)
            next_run = job.next_run_time if job is not None else None
        task = self._runs.get(spec.name)
        return JobView(spec, next_run, self._last.get(spec.name),
                       task is not None and not task.done(), self._problems.get(spec.name))

    async def _catch_up(self, spec: JobSpec, last_slot: float | None) -> None:
        now = datetime.now(self._zone(spec))
        if last_slot is None:  # a job seen for the first time has missed nothing
            await self.store.set_last_slot(spec.name, now.timestamp())
            return
        trigger = self._trigger(spec)
        passed = passed_slots(trigger, datetime.fromtimestamp(last_slot, now.tzinfo), now,
                              MAX_COUNTED_MISSES)
        if passed is None:
            return
        latest, missed, late = passed.latest, passed.count, passed.late
        await self.store.set_last_slot(spec.name, latest.timestamp())
        plural = "run was" if missed == 1 else "runs were"
        if late <= self.config.misfire_grace:
            log.info("schedule %r: %d %s missed while the gateway was down; running once now",
                     spec.name, missed, plural)
            self._start_run(spec, "catch-up", latest.timestamp(), jitter=True)
            return
        error = (
            f"{missed} {plural} missed while the gateway was down; the latest was"
            f" {_duration(late)} ago, beyond scheduler.misfire_grace"
            f" ({_duration(self.config.misfire_grace)}), so it was not made up"
        )
        log.warning("schedule %r: %s", spec.name, error)
        await self.store.record_run(spec.name, trigger="catch-up", status="missed",
                                    scheduled_at=latest.timestamp(), error=error)
        self._remember(spec.name, "missed", "catch-up", latest.timestamp(), error)

    async def _fire(self, name: str) -> None:
        """APScheduler's job function: start a run unless the previous one still runs."""
        spec = self._jobs.get(name)
        if spec is None or not spec.enabled:
            return
        slot = self._slot(name)
        await self.store.set_last_slot(name, slot)
        running = self._runs.get(name)
        if running is not None and not running.done():
            error = "the previous run was still going, so this one was skipped"
            log.warning("schedule %r: %s", name, error)
            await self.store.record_run(name, trigger="cron", status="skipped",
                                        scheduled_at=slot, error=error)
            self._remember(name, "skipped", "cron", slot, error)
            return
        self._start_run(spec, "cron", slot, jitter=True)

    def _slot(self, name: str) -> float:
        """The slot a fire is for: the latest due slot up to now (several when coalesced)."""
        due, trigger = self._due.get(name), self._triggers.get(name)
        now = datetime.now(due.tzinfo if due is not None else None)
        if due is None or trigger is None or due.timestamp() > now.timestamp() + 1:
            return time.time()  # fired off-schedule (cannot happen with APScheduler's cron)
        passed = passed_slots(trigger, due, now, MAX_COUNTED_MISSES)
        slot = due if passed is None else passed.latest
        self._due[name] = next_fire(trigger, slot)
        return slot.timestamp()

    def _start_run(self, spec: JobSpec, trigger: str, slot: float, *, jitter: bool) -> None:
        task = asyncio.create_task(self._run(spec, trigger, slot, jitter),
                                   name=f"schedule {spec.name}")
        self._runs[spec.name] = task

    async def _run(self, spec: JobSpec, trigger: str, slot: float, jitter: bool) -> None:
        run_id = await self.store.start_run(spec.name, trigger, slot)
        started = time.monotonic()
        status, error, answer, cost = "error", None, None, None
        try:
            delay = spec.jitter if spec.jitter is not None else self.config.jitter
            if jitter and delay > 0:
                await asyncio.sleep(random.uniform(0, delay))
            started = time.monotonic()
            over = await self._over_budget()
            if over is not None:
                status, error = "skipped", over
                log.warning("schedule %r: skipped: %s", spec.name, over)
                return
            final = await self._turn(spec)
            cost = final.cost_usd if isinstance(final, TurnResult) else None
            delivery = Delivery(
                spec.name, spec.target,
                text=final.text if isinstance(final, TurnResult) else None,
                error=final if isinstance(final, TurnError) else None,
                trigger=trigger,
            )
            status = "ok" if isinstance(final, TurnResult) else "error"
            error = final.message if isinstance(final, TurnError) else None
            try:
                await self._deliverer(spec)(delivery)
            except Exception as exc:  # the answer is kept in the history instead
                log.warning("schedule %r: delivery to %s failed: %s", spec.name, spec.target,
                            exc)
                status = "undelivered"
                reason = exc.message if isinstance(exc, GatewayError) else str(exc) or repr(exc)
                error = f"{error}; " if error else ""
                error += f"could not deliver to {spec.target}: {reason}"
                answer = delivery.text
        except asyncio.CancelledError:
            status, error = "interrupted", "the run was stopped (gateway shutdown or removal)"
            raise
        except Exception as exc:
            log.exception("schedule %r: run failed", spec.name)
            error = f"internal error: {exc}"
        finally:
            duration = int((time.monotonic() - started) * 1000)
            self._remember(spec.name, status, trigger, slot, error, duration, cost)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.finish_run(
                    run_id, status=status, duration_ms=duration, cost_usd=cost, error=error,
                    answer=answer,
                ))
            if self._runs.get(spec.name) is asyncio.current_task():
                self._runs.pop(spec.name, None)

    async def _over_budget(self) -> str | None:
        """Why no scheduled turn may run now (today's cap is spent), or None."""
        cap = self.config.max_daily_cost_usd
        if not cap:
            return None
        report = await self.engine.usage(hours=1)
        spent = report.scheduled_cost_today_usd
        if spent < cap:
            return None
        return (f"scheduled turns have cost ${spent:.4f} today (API-equivalent), which reached"
                f" scheduler.max_daily_cost_usd (${cap:.2f}); runs go on after midnight"
                f" ({report.timezone})")

    async def _turn(self, spec: JobSpec) -> TurnResult | TurnError:
        if spec.session is SessionMode.FRESH:
            await self.engine.reset(spec.key)
        options = TurnOptions(model=self._model(spec), mode=StreamMode.FINAL, origin="cron")
        final: TurnResult | TurnError | None = None
        async for event in self.engine.turn(spec.key, Prompt(text=spec.prompt), options):
            if isinstance(event, TurnResult | TurnError):
                final = event
        if final is None:
            final = TurnError(ErrorKind.CRASHED, "the turn ended without an answer")
        return final

    def _deliverer(self, spec: JobSpec) -> Deliverer:
        platform = target_platform(spec.target)
        deliver = self._deliverers.get(platform)
        if deliver is None:
            raise GatewayError(ErrorKind.CONFIG, f"no {platform} bot is running")
        return deliver

    def _remember(
        self, name: str, status: str, trigger: str, slot: float | None, error: str | None,
        duration_ms: int | None = None, cost: float | None = None,
    ) -> None:
        now = time.time()
        self._last[name] = ScheduleRunRow(
            id=0, job=name, trigger=trigger, scheduled_at=slot,
            started_at=now - (duration_ms or 0) / 1000,
            finished_at=now, status=status, duration_ms=duration_ms, cost_usd=cost,
            error=error, answer=None,
        )


def _spec_from_row(row: ScheduleJobRow) -> JobSpec:
    return JobSpec(
        name=row.name, cron=row.cron, prompt=row.prompt, target=row.target,
        timezone=row.timezone, model=row.model, session=SessionMode(row.session),
        jitter=row.jitter, enabled=row.enabled, source=JobSource.CHAT, id=row.id,
        created_by=row.created_by, created_in=row.created_in, created_at=row.created_at,
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"

