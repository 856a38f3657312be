"""The port: everything a frontend may use of the engine. Read this file first.

The OpenAI-compatible API (``gateway/api``), the chat bridges (``bridges/``) and the scheduler
(``gateway/scheduler``) are typed against :class:`EngineAPI` alone: they run turns and manage
conversations through it, remember their own small settings through :class:`Preferences`, and
keep their own durable tables (chat inbox, schedule runs) through :meth:`EngineAPI.tables`. None
of them touches the engine's store or its configuration; :class:`gateway.engine.Engine` is the
one implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from claude_agent_sdk import SDKSessionInfo

from gateway.engine.activity import ActivityEntry, ProcessReport, TranscriptEntry, TurnActivity
from gateway.engine.approvals import ApprovalRequest, Approver, Decision, Settled
from gateway.engine.config import Project
from gateway.engine.events import (
    Event,
    Prompt,
    RateLimitStatus,
    SessionInfo,
    TurnError,
    TurnOptions,
)
from gateway.engine.permissions import PermissionMode
from gateway.engine.projects import Worktree, project_key
from gateway.engine.tools import FileSink
from gateway.store import Store

T = TypeVar("T")

__all__ = ["Project", "Worktree", "project_key"]


@dataclass(frozen=True)
class Alert:
    """A turn ended in a way the owner should hear about even if nobody watched it."""

    key: str
    origin: str
    error: TurnError


AlertHandler = Callable[[Alert], Awaitable[None]]


@dataclass(frozen=True)
class EngineStatus:
    """What ``/health`` and ``/status`` report about the engine right now."""

    cli_path: str | None
    cli_version: str | None
    cli_source: str | None
    live_processes: int
    #: conversations the engine holds now: a live process, a running or queued turn
    sessions: int
    running_turns: int
    queued_turns: int
    spare_processes: int
    rate_limit: RateLimitStatus | None

    @property
    def ready(self) -> bool:
        """The CLI was found and runs: turns can be served."""
        return self.cli_path is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of ``/health`` (stable: clients read it)."""
        rl = self.rate_limit
        return {
            "cli_path": self.cli_path,
            "cli_version": self.cli_version,
            "cli_source": self.cli_source,
            "live_processes": self.live_processes,
            "sessions": self.sessions,
            "running_turns": self.running_turns,
            "queued_turns": self.queued_turns,
            "spare_processes": self.spare_processes,
            "rate_limit": None if rl is None else {
                "status": rl.status,
                "type": rl.rate_limit_type,
                "resets_at": rl.resets_at,
                "utilization": rl.utilization,
                "seen_at": rl.seen_at,
            },
        }


# --------------------------------------------------------------------------- usage and limits
# What the CLI reported: tokens and API-equivalent cost per turn, and the subscription's
# rate-limit windows. ``/usage``, ``GET /v1/usage`` and the status page show a UsageReport.


@dataclass(frozen=True)
class UsageTotals:
    """Turns and what they used; ``cost_usd`` is the CLI's API-equivalent estimate."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class LimitWindow:
    """The latest report of one rate-limit window (``five_hour``, ``seven_day``, ...)."""

    window: str
    status: str  # allowed | allowed_warning | rejected
    utilization: float | None  # fraction 0..1
    resets_at: float | None  # epoch seconds
    seen_at: float
    #: the reset time has passed since the report: its figures are stale
    expired: bool = False


@dataclass(frozen=True)
class UsagePeriod:
    """Totals since ``start`` (today: local midnight; week: Monday 00:00 local)."""

    start: float
    totals: UsageTotals
    by_frontend: Mapping[str, UsageTotals] = field(default_factory=dict)
    by_project: Mapping[str, UsageTotals] = field(default_factory=dict)
    by_model: Mapping[str, UsageTotals] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageBucket:
    """One local hour starting at ``start``."""

    start: float
    totals: UsageTotals


@dataclass(frozen=True)
class UsageReport:
    """Everything ``/usage`` shows; :meth:`to_json` is the stable ``GET /v1/usage`` body."""

    now: float
    timezone: str  # IANA name of the owner's zone (usage.timezone)
    windows: tuple[LimitWindow, ...]
    today: UsagePeriod
    week: UsagePeriod
    hours: int
    hourly: tuple[UsageBucket, ...]  # oldest first, empty hours included
    max_turn_cost_usd: float | None = None
    scheduled_daily_cost_cap_usd: float | None = None

    @property
    def scheduled_cost_today_usd(self) -> float:
        cron = self.today.by_frontend.get("cron")
        return cron.cost_usd if cron is not None else 0.0

    def local(self, epoch: float) -> datetime:
        """``epoch`` in the owner's zone."""
        return datetime.fromtimestamp(epoch, ZoneInfo(self.timezone))

    def to_json(self) -> dict[str, Any]:
        def iso(epoch: float | None) -> str | None:
            return None if epoch is None else self.local(epoch).isoformat(timespec="seconds")

        def period(p: UsagePeriod) -> dict[str, Any]:
            return {
                "start": iso(p.start),
                "totals": p.totals.to_json(),
                **{name: {k: v.to_json() for k, v in sorted(group.items())}
                   for name, group in (("by_frontend", p.by_frontend),
                                       ("by_project", p.by_project),
                                       ("by_model", p.by_model))},
            }

        return {
            "object": "usage",
            "generated_at": iso(self.now),
            "timezone": self.timezone,
            "windows": [
                {"window": w.window, "status": w.status, "utilization": w.utilization,
                 "resets_at": iso(w.resets_at), "resets_at_epoch": w.resets_at,
                 "seen_at": iso(w.seen_at), "expired": w.expired}
                for w in self.windows
            ],
            "today": period(self.today),
            "week": period(self.week),
            "hourly": {
                "hours": self.hours,
                "buckets": [{"start": iso(b.start), "start_epoch": b.start, **b.totals.to_json()}
                            for b in self.hourly],
            },
            "budgets": {
                "max_turn_cost_usd": self.max_turn_cost_usd,
                "scheduled_daily_cost_cap_usd": self.scheduled_daily_cost_cap_usd,
                "scheduled_cost_today_usd": round(self.scheduled_cost_today_usd, 6),
            },
        }


@dataclass(frozen=True)
class UsageWarning:
    """A window reached a warning threshold, or a request was refused for the limit. Sent
    once per window, reset and level (the engine remembers what it sent)."""

    window: str
    status: str
    utilization: float | None
    #: the threshold reached; None when a request was refused
    threshold: float | None
    resets_at: float | None
    timezone: str

    @property
    def refused(self) -> bool:
        return self.threshold is None


UsageWarningHandler = Callable[[UsageWarning], Awaitable[None]]


class Pref(StrEnum):
    """Every name a frontend remembers a value under (:class:`Preferences`), declared once.
    The values are the names stored in the database: renaming one forgets what it held."""

    #: an API conversation: fingerprint of its first user message
    FIRST_USER = "first_user"
    #: an API conversation: fingerprint of the last reply its client was shown
    LAST_REPLY = "last_reply"
    #: a chat: spoken replies, "1" on, "0" off
    VOICE_REPLIES = "on"
    #: a stranger on a chat platform: when they were refused (epoch seconds)
    REFUSED_AT = "refused_at"
    #: Discord: the digest of the slash commands last registered, and for which application
    COMMANDS_DIGEST = "digest"
    COMMANDS_APPLICATION = "application"
    #: a chat: the project it works in (a [[projects]] name; none = the default)
    PROJECT = "project"


class Preferences(Protocol):
    """Small named values a frontend remembers per key across restarts (a chat's voice
    replies, a refused user, the slash-command digest, an API conversation's fingerprints),
    under the names of :class:`Pref`. Deleted with the conversation of the same key by
    :meth:`EngineAPI.reset`."""

    async def get(self, key: str) -> dict[Pref, str]: ...

    async def set(self, key: str, values: Mapping[Pref, str]) -> None: ...

    async def find_keys(self, name: Pref, value: str) -> list[str]:
        """The keys whose ``name`` holds ``value``."""
        ...


class TurnRunner(Protocol):
    """Something that runs turns: the engine, or a wrapper such as the API's checked JSON."""

    def turn(
        self, key: str, prompt: Prompt, options: TurnOptions | None = ...
    ) -> AsyncIterator[Event]: ...


class EngineAPI(TurnRunner, Protocol):
    """The one way into the engine."""

    # ---------------------------------------------------------------- turns
    async def interrupt(self, key: str) -> bool: ...

    # ---------------------------------------------------------------- conversations
    async def reset(self, key: str) -> None: ...

    async def set_model(self, key: str, name: str | None) -> str | None: ...

    async def attach_session(self, key: str, session_id: str) -> None: ...

    async def describe(self, key: str) -> SessionInfo | None: ...

    async def list_sessions(self) -> list[SessionInfo]: ...

    async def cli_sessions(
        self, limit: int = 20, project: str | None = None
    ) -> list[SDKSessionInfo]:
        """Claude Code's sessions of ``project``'s folder (None: the default project)."""
        ...

    # ---------------------------------------------------------------- projects
    # A conversation's project is part of its key: ``project_key(base, name)``.

    def projects(self) -> list[Project]:
        """Every project, ``default`` (claude.workspace) first."""
        ...

    def project(self, name: str | None) -> Project:
        """The project ``name`` (None: default); unknown: INVALID_REQUEST naming the valid ones."""
        ...

    def project_of(self, key: str) -> Project:
        """The project of a conversation key."""
        ...

    async def worktrees(self) -> list[Worktree]:
        """The git worktrees made for conversations (``in_use``: one still works in it)."""
        ...

    async def remove_worktree(self, name: str) -> Worktree:
        """Remove a finished conversation's worktree (its branch stays); refused while in use
        or with uncommitted changes."""
        ...

    # ---------------------------------------------------------------- permissions
    async def permission_mode(self, key: str) -> PermissionMode: ...

    async def set_permission_mode(
        self, key: str, mode: PermissionMode | None
    ) -> PermissionMode: ...

    def register_permissions(
        self, prefix: str, *, default: PermissionMode | None = None,
        approver: Approver | None = None,
    ) -> None: ...

    def decide_approval(self, request_id: str, decision: Decision) -> Settled: ...

    def pending_approvals(self, key: str | None = None) -> list[ApprovalRequest]:
        """Approval requests waiting for a person (of ``key``, or all)."""
        ...

    # ---------------------------------------------------------------- models
    def resolve_model(self, name: str | None) -> str | None: ...

    def model_names(self) -> list[str]: ...

    def listed_models(self) -> list[str]: ...

    @property
    def default_model(self) -> str | None:
        """The configured default model, None for the CLI's own default."""
        ...

    # ---------------------------------------------------------------- the rest
    @property
    def workspace(self) -> Path:
        """Claude Code's working directory."""
        ...

    @property
    def stopping(self) -> bool: ...

    @property
    def preferences(self) -> Preferences: ...

    def tables(self, group: Callable[[Store], T]) -> T:
        """A frontend's own table group (``ChatStore``, ``ScheduleStore``) on the engine's
        database, opened and closed with the engine."""
        ...

    def status(self) -> EngineStatus: ...

    def activity(self) -> dict[str, TurnActivity]:
        """The turns sent to Claude and not ended yet, by key: since when, which tool."""
        ...

    def recent_events(self, limit: int = 50) -> list[ActivityEntry]:
        """The latest errors and notices of turns (rate limits, timeouts, crashes, stops),
        newest first; kinds and one-line messages, never message bodies."""
        ...

    async def processes(self) -> ProcessReport:
        """The live CLI processes (conversations' and spares) with their memory."""
        ...

    async def transcript(self, key: str, limit: int = 20) -> list[TranscriptEntry]:
        """The last ``limit`` messages of the conversation's Claude Code session (text
        shortened, tool calls named): what an owner sees who expands it on the status page."""
        ...

    def register_file_sink(self, prefix: str, sink: FileSink) -> None: ...

    def add_alert_handler(self, handler: AlertHandler) -> None: ...

    # ---------------------------------------------------------------- usage and limits
    async def usage(self, hours: int = 48) -> UsageReport:
        """Rate-limit windows, totals today / this week and ``hours`` hourly buckets."""
        ...

    def add_usage_warning_handler(self, handler: UsageWarningHandler) -> None:
        """Called once per window and reset when a threshold is reached or a request is
        refused for the limit (the bridges tell the notification chat)."""
        ...
