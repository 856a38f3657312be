"""What the engine is doing right now, for status pages: the running turns (since when,
which tool), the last errors and notices, and the live CLI processes with their memory.

:class:`ActivityLog` watches every event a turn emits (the engine hands it each one, also
when nobody listens any more); it keeps no message text, only kinds, tool names and the
one-line tool summaries. Read through :meth:`gateway.engine.api.EngineAPI.activity`,
:meth:`~gateway.engine.api.EngineAPI.recent_events` and
:meth:`~gateway.engine.api.EngineAPI.processes`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from gateway.engine.events import (
    Event,
    Notice,
    ToolCallsRequested,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnResult,
    TurnStarted,
)
from gateway.errors import ErrorKind

log = logging.getLogger(__name__)

#: how many errors and notices are remembered (the oldest go first)
RECENT_EVENTS = 100
#: Notice kinds worth showing the owner later (queued/coalesced/model_changed are not)
NOTABLE_NOTICES = frozenset({"retrying", "rate_limit", "session_reset", "approval_denied"})


@dataclass(frozen=True)
class TurnActivity:
    """A turn that was sent to Claude and has not ended yet."""

    key: str
    origin: str
    started_at: float  # epoch seconds
    #: the tool running now (name, one-line summary, since when), if one is
    tool: str | None = None
    tool_summary: str | None = None
    tool_started_at: float | None = None
    tools_used: int = 0


@dataclass(frozen=True)
class ActivityEntry:
    """An error or notice of a turn, kept for the status page (no message bodies)."""

    at: float  # epoch seconds
    key: str
    origin: str
    level: str  # "error" | "notice"
    kind: str  # an ErrorKind value, or a Notice kind
    message: str


@dataclass(frozen=True)
class ProcessInfo:
    """One live Claude Code process."""

    pid: int | None
    key: str | None  # the conversation using it; None for a pre-started spare
    model: str | None
    #: resident memory of the process and its children (tools it runs), bytes
    rss_bytes: int | None


@dataclass(frozen=True)
class ProcessReport:
    processes: tuple[ProcessInfo, ...]
    max_live: int  # claude.max_live_sessions
    spares_wanted: int  # claude.spare_processes

    @property
    def spares(self) -> int:
        return sum(1 for p in self.processes if p.key is None)


@dataclass(frozen=True)
class TranscriptEntry:
    """One message of a conversation's Claude Code transcript, shortened for a page."""

    role: str  # "user" | "assistant"
    text: str  # its text blocks; a tool call or result as "[tool: Bash]" / "[tool result]"


#: the longest message text a transcript entry carries
TRANSCRIPT_TEXT_CHARS = 2000


def transcript_entry(role: str, message: Any) -> TranscriptEntry | None:
    """A transcript line from a raw API message (``content`` a string or blocks)."""
    content = message.get("content") if isinstance(message, dict) else None
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                if not block["text"].startswith("<system-reminder>"):
                    parts.append(block["text"])
            elif kind == "tool_use":
                parts.append(f"[tool: {block.get('name', '?')}]")
            elif kind == "tool_result":
                parts.append("[tool result]")
            elif kind == "image":
                parts.append("[image]")
    text = "\n".join(p for p in parts if p.strip())
    if not text:
        return None
    if len(text) > TRANSCRIPT_TEXT_CHARS:
        text = text[:TRANSCRIPT_TEXT_CHARS] + "…"
    return TranscriptEntry(role, text)


@dataclass
class _Running:
    origin: str
    started_at: float
    tool_id: str | None = None
    tool: str | None = None
    tool_summary: str | None = None
    tool_started_at: float | None = None
    tools_used: int = 0


@dataclass
class ActivityLog:
    """Fed every event of every turn through :meth:`watcher`."""

    size: int = RECENT_EVENTS
    clock: Callable[[], float] = time.time
    _running: dict[str, _Running] = field(default_factory=dict)
    _recent: deque[ActivityEntry] = field(init=False)

    def __post_init__(self) -> None:
        self._recent = deque(maxlen=self.size)

    def watcher(self, key: str, origin: str) -> Callable[[Event], None]:
        return lambda event: self.observe(key, origin, event)

    def observe(self, key: str, origin: str, event: Event) -> None:
        now = self.clock()
        if isinstance(event, TurnStarted):
            self._running[key] = _Running(origin, now)
        elif isinstance(event, ToolStarted):
            run = self._running.get(key)
            if run is not None:
                run.tool_id, run.tool, run.tool_summary = event.tool_id, event.name, event.summary
                run.tool_started_at = now
                run.tools_used += 1
        elif isinstance(event, ToolFinished):
            run = self._running.get(key)
            if run is not None and run.tool_id == event.tool_id:
                run.tool_id = run.tool = run.tool_summary = run.tool_started_at = None
        elif isinstance(event, Notice):
            if event.kind in NOTABLE_NOTICES:
                self._add(now, key, origin, "notice", event.kind, event.message)
        elif isinstance(event, TurnError):
            self._running.pop(key, None)
            level = "notice" if event.kind is ErrorKind.INTERRUPTED else "error"
            self._add(now, key, origin, level, event.kind.value, event.message)
        elif isinstance(event, TurnResult | ToolCallsRequested):
            self._running.pop(key, None)

    def _add(self, at: float, key: str, origin: str, level: str, kind: str, text: str) -> None:
        self._recent.append(ActivityEntry(at, key, origin, level, kind, text))

    def turns(self) -> dict[str, TurnActivity]:
        return {
            key: TurnActivity(key, r.origin, r.started_at, r.tool, r.tool_summary,
                              r.tool_started_at, r.tools_used)
            for key, r in self._running.items()
        }

    def recent(self, limit: int = RECENT_EVENTS) -> list[ActivityEntry]:
        """The latest errors and notices, newest first."""
        return list(reversed(self._recent))[:max(0, limit)]


def tree_rss(pid: int | None) -> int | None:
    """Resident memory of ``pid`` and its descendants in bytes (None if it is gone)."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


def measure(
    live: Iterable[tuple[int | None, str | None, str | None]], max_live: int, spares: int
) -> ProcessReport:
    """``live``: (pid, conversation key or None for a spare, model). Blocking (psutil)."""
    return ProcessReport(
        tuple(ProcessInfo(pid, key, model, tree_rss(pid)) for pid, key, model in live),
        max_live, spares,
    )
