"""What a scheduled job is, and the checks every job passes, wherever it comes from.

A job comes from ``[[schedules]]`` in the configuration (read-only at run time) or from a
chat (``/schedule add``, kept in SQLite). Both are a :class:`JobSpec`; every check raises
:class:`JobError` naming the job and the field, so one bad job never hides which it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.keys import project_key
from gateway.scheduler.cron import CronError, cron_trigger, parse_timezone

#: A job's name: also part of its conversation key ``cron:<name>``.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: ``telegram:<chat>[:<topic>]``, ``discord:<channel>``, ``log``.
TARGET_PATTERNS: dict[str, re.Pattern[str]] = {
    "telegram": re.compile(r"^telegram:-?\d+(?::\d+)?$"),
    "discord": re.compile(r"^discord:\d+$"),
    "log": re.compile(r"^log$"),
}
TARGET_HELP = '"telegram:<chat id>", "discord:<channel id>" or "log"'
#: Longest prompt a job may carry.
MAX_PROMPT_CHARS = 20_000


class SessionMode(StrEnum):
    """``fresh``: every run starts a new conversation. ``continue``: runs share one."""

    FRESH = "fresh"
    CONTINUE = "continue"


class JobSource(StrEnum):
    CONFIG = "config"
    CHAT = "chat"


class JobError(ValueError):
    """A job that cannot be accepted; ``field`` is the offending field."""

    def __init__(self, job: str, field: str, message: str) -> None:
        self.job = job
        self.field = field
        self.message = message
        super().__init__(f"schedule {job!r}: {field}: {message}")


@dataclass(frozen=True)
class JobSpec:
    """One scheduled prompt. ``model``/``jitter`` ``None`` = the scheduler's default."""

    name: str
    cron: str
    prompt: str
    target: str
    timezone: str = ""
    model: str | None = None
    session: SessionMode = SessionMode.FRESH
    #: bounded where it is set, in ``[[schedules]]`` (``MAX_JITTER_SECONDS`` of
    #: :mod:`gateway.config.sections`); a chat job has none
    jitter: float | None = None
    enabled: bool = True
    source: JobSource = JobSource.CONFIG
    #: chat jobs: the row id, who made it ("telegram:<user id>") and where
    id: int | None = None
    created_by: str = ""
    created_in: str = ""
    created_at: float = 0.0
    #: the project ([[projects]]) its turns work in; "" = the default (config jobs only)
    project: str = ""

    @property
    def key(self) -> str:
        """The engine conversation this job's turns run in (in its project)."""
        return project_key(f"cron:{self.name}", self.project)

    @property
    def read_only(self) -> bool:
        return self.source is JobSource.CONFIG

    @property
    def ref(self) -> str:
        """How chat commands name it: the number of a chat job, the name of a config job."""
        return str(self.id) if self.id is not None else self.name


def target_platform(target: str) -> str:
    """``telegram`` for ``telegram:123``; ``log`` for ``log``."""
    return target.split(":", 1)[0]


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise JobError(
            name or "(unnamed)",
            "name",
            f"{name!r} is not a valid job name: 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
        )
    return name


def check_target(job: str, target: str) -> str:
    target = target.strip()
    platform = target_platform(target)
    pattern = TARGET_PATTERNS.get(platform)
    if pattern is None:
        raise JobError(job, "target", f"unknown target {target!r}; use {TARGET_HELP}")
    if not pattern.match(target):
        raise JobError(
            job, "target", f"{target!r} is not a valid {platform} target; use {TARGET_HELP}"
        )
    return target


def check_cron(job: str, cron: str, timezone: str = "", *, allow_seconds: bool = False) -> str:
    try:
        zone = parse_timezone(timezone)
    except CronError as exc:
        raise JobError(job, "timezone", str(exc)) from None
    try:
        cron_trigger(cron, zone, allow_seconds=allow_seconds)
    except CronError as exc:
        raise JobError(job, "cron", str(exc)) from None
    return " ".join(cron.split())


def check_prompt(job: str, prompt: str) -> str:
    if not prompt.strip():
        raise JobError(job, "prompt", "is empty: say what Claude should do on each run")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise JobError(
            job, "prompt", f"is {len(prompt)} characters; at most {MAX_PROMPT_CHARS} fit"
        )
    return prompt.strip()


def check_spec(spec: JobSpec, *, allow_seconds: bool = False) -> JobSpec:
    """``spec`` normalised, or :class:`JobError` for its first bad field."""
    from dataclasses import replace

    name = check_name(spec.name)
    return replace(
        spec,
        name=name,
        cron=check_cron(name, spec.cron, spec.timezone, allow_seconds=allow_seconds),
        prompt=check_prompt(name, spec.prompt),
        target=check_target(name, spec.target),
        timezone=spec.timezone.strip(),
        model=(spec.model or "").strip() or None,
    )
