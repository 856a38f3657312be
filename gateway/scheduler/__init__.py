"""Scheduled prompts: cron jobs whose turns run through the engine and whose answers arrive
in a chat (or the log). See :mod:`gateway.scheduler.scheduler`."""

from gateway.scheduler.config import SchedulerConfig, config_jobs
from gateway.scheduler.cron import CronError, cron_trigger, parse_timezone, validate_cron
from gateway.scheduler.delivery import Deliverer, Delivery, deliver_to_log
from gateway.scheduler.jobs import (
    TARGET_HELP,
    JobError,
    JobSource,
    JobSpec,
    SessionMode,
    check_spec,
    check_target,
    target_platform,
)
from gateway.scheduler.scheduler import JobView, Scheduler

__all__ = [
    "TARGET_HELP",
    "CronError",
    "Deliverer",
    "Delivery",
    "JobError",
    "JobSource",
    "JobSpec",
    "JobView",
    "Scheduler",
    "SchedulerConfig",
    "SessionMode",
    "check_spec",
    "check_target",
    "config_jobs",
    "cron_trigger",
    "deliver_to_log",
    "parse_timezone",
    "target_platform",
    "validate_cron",
]
