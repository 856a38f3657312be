"""The engine's activity log (running turns, their tool, the last errors and notices) and
the transcript lines an owner sees when expanding a conversation on the status page."""

from __future__ import annotations

import os

from gateway.engine.activity import ActivityLog, measure, transcript_entry, tree_rss
from gateway.engine.events import (
    Notice,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnResult,
    TurnStarted,
    Usage,
)
from gateway.errors import ErrorKind


def test_a_turn_shows_its_tool_while_it_runs_and_leaves_when_it_ends() -> None:
    now = [1000.0]
    log = ActivityLog(size=3, clock=lambda: now[0])
    watch = log.watcher("telegram:1", "telegram")
    watch(TurnStarted("telegram:1", None, None, resumed=False))
    assert log.turns()["telegram:1"].started_at == 1000.0
    assert log.turns()["telegram:1"].tool is None
    now[0] = 1002.0
    watch(ToolStarted("t1", "Bash", "Bash: sleep 5"))
    turn = log.turns()["telegram:1"]
    assert (turn.tool, turn.tool_summary, turn.tool_started_at, turn.tools_used) == (
        "Bash", "Bash: sleep 5", 1002.0, 1)
    watch(ToolFinished("other", "Read", is_error=False))  # not the running one
    assert log.turns()["telegram:1"].tool == "Bash"
    watch(ToolFinished("t1", "Bash", is_error=False))
    assert log.turns()["telegram:1"].tool is None
    watch(TextDelta("hello"))
    watch(TurnResult("hello", "s", None, Usage(), 0.0, 1, 1, 1))
    assert log.turns() == {}
    assert log.recent() == []  # a turn that went well leaves nothing to report


def test_errors_and_notable_notices_are_kept_newest_first_up_to_the_size() -> None:
    now = [0.0]
    log = ActivityLog(size=3, clock=lambda: now[0])
    events = [
        Notice("queued", "queued behind 1 turn(s)"),  # noise: not kept
        Notice("rate_limit", "91% of the five-hour limit used"),
        TurnError(ErrorKind.TIMEOUT, "no activity for 600 s"),
        TurnError(ErrorKind.INTERRUPTED, "The turn was interrupted."),
        TurnError(ErrorKind.CRASHED, "Claude Code stopped unexpectedly"),
    ]
    for event in events:
        now[0] += 1
        log.observe("api:x", "api", event)
    got = [(e.at, e.level, e.kind, e.key) for e in log.recent()]
    assert got == [(5.0, "error", "crashed", "api:x"), (4.0, "notice", "interrupted", "api:x"),
                   (3.0, "error", "timeout", "api:x")]
    assert [e.kind for e in log.recent(limit=1)] == ["crashed"]


def test_transcript_lines_name_tools_and_drop_reminders() -> None:
    entry = transcript_entry("assistant", {"content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}},
    ]})
    assert entry is not None and entry.text == "Let me look.\n[tool: Bash]"
    user = transcript_entry("user", {"content": [
        {"type": "text", "text": "<system-reminder>hidden</system-reminder>"},
        {"type": "text", "text": "hi"}]})
    assert user is not None and (user.role, user.text) == ("user", "hi")
    assert transcript_entry("user", {"content": "x" * 3000}).text.endswith("…")  # type: ignore[union-attr]
    assert transcript_entry("user", {"content": []}) is None


def test_memory_is_measured_for_a_live_process_and_none_for_a_gone_one() -> None:
    rss = tree_rss(os.getpid())
    assert rss is not None and rss > 1_000_000
    report = measure([(os.getpid(), "k", "opus"), (None, None, None)], max_live=4, spares=1)
    assert report.processes[0].rss_bytes is not None and report.processes[1].rss_bytes is None
    assert (report.spares, report.max_live, report.spares_wanted) == (1, 4, 1)
