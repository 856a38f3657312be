"""What the scheduler needs from the configuration, built from ``[scheduler]`` and
``[[schedules]]`` in one place (:meth:`SchedulerConfig.from_settings`, :func:`config_jobs`).

Each setting is declared once, in :class:`gateway.config.SchedulerSettings` and
:class:`gateway.config.ScheduleSettings` (type, bounds, default, description); the defaults
here are read from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import SchedulerSettings, ScheduleSettings
from gateway.scheduler.jobs import JobSpec, SessionMode

#: ``[scheduler]`` with nothing set: the declared defaults.
_SCHEDULER = SchedulerSettings.model_construct()


@dataclass(frozen=True)
class SchedulerConfig:
    """The ``[scheduler]`` settings."""

    enabled: bool = _SCHEDULER.enabled
    #: model of scheduled turns unless a job names one (a light one: see the README)
    model: str = _SCHEDULER.model
    #: each run starts after a random delay of up to this many seconds
    jitter: float = _SCHEDULER.jitter
    #: a run missed while the gateway was down is made up at start-up if this recent
    misfire_grace: float = _SCHEDULER.misfire_grace
    #: zone of jobs that name none; empty = this machine's
    timezone: str = _SCHEDULER.timezone
    #: runs are skipped once scheduled turns cost this many USD today (0 = no cap)
    max_daily_cost_usd: float = _SCHEDULER.max_daily_cost_usd
    #: accept a leading seconds field in cron expressions (the tests' fast triggers only)
    allow_seconds: bool = False

    @classmethod
    def from_settings(cls, options: SchedulerSettings) -> SchedulerConfig:
        return cls(
            enabled=options.enabled, model=options.model, jitter=options.jitter,
            misfire_grace=options.misfire_grace, timezone=options.timezone,
            max_daily_cost_usd=options.max_daily_cost_usd,
        )


def config_jobs(schedules: Iterable[ScheduleSettings]) -> list[JobSpec]:
    """The ``[[schedules]]`` entries as jobs (an empty model = the scheduler's)."""
    return [
        JobSpec(
            name=job.name, cron=job.cron, prompt=job.prompt, target=job.target,
            timezone=job.timezone, model=job.model or None, session=SessionMode(job.session),
            jitter=job.jitter, enabled=job.enabled, project=job.project.strip(),
        )
        for job in schedules
    ]
