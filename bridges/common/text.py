"""Sentences a person reads: errors, notices, the status line, durations, sizes.

Pure functions; the bridge decides where they go.
"""

from __future__ import annotations

import time

from gateway.engine import Notice, RateLimitStatus, TurnError
from gateway.errors import ErrorKind


def duration(seconds: float) -> str:
    """``"4 s"``, ``"2 min 5 s"``, ``"1 h 20 min"``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def size(n: float) -> str:
    """``"512 B"``, ``"12.3 KB"``, ``"4.0 MB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def clock(epoch: float) -> str:
    """A local wall-clock time, with the day when it is not today: ``"14:05"``."""
    moment = time.localtime(epoch)
    today = time.localtime()
    if moment.tm_yday == today.tm_yday and moment.tm_year == today.tm_year:
        return time.strftime("%H:%M %Z", moment).strip()
    return time.strftime("%a %d %b %H:%M %Z", moment).strip()


def ago(epoch: float, now: float | None = None) -> str:
    delta = (time.time() if now is None else now) - epoch
    return "just now" if delta < 60 else f"{duration(delta)} ago"


def reset_hint(retry_after: float | None, resets_at: float | None, now: float) -> str:
    """ "It resets at 14:05 (in 2 h 5 min)." or "" when nothing is known."""
    when = resets_at if resets_at and resets_at > now else None
    if when is None and retry_after:
        when = now + retry_after
    if when is None:
        return ""
    return f" It resets at {clock(when)} (in {duration(when - now)})."


def error_text(
    error: TurnError, *, rate_limit: RateLimitStatus | None = None, now: float | None = None
) -> str:
    """The sentence a chat user reads when a turn failed. Never a traceback."""
    now = time.time() if now is None else now
    kind, detail = error.kind, error.message.strip()
    if kind is ErrorKind.TIMEOUT:
        return f"⏱ {detail}"
    if kind is ErrorKind.CRASHED:
        return (
            "💥 Claude Code stopped unexpectedly, so this turn has no answer. The conversation"
            f" is kept: send your next message to continue.\n({_first_line(detail)})"
        )
    if kind is ErrorKind.INTERRUPTED:
        return "⏹ Stopped."
    if kind is ErrorKind.RATE_LIMITED:
        resets_at = rate_limit.resets_at if rate_limit is not None else None
        hint = reset_hint(error.retry_after, resets_at, now)
        return (
            "🚦 Your Claude plan's usage limit is reached."
            + (hint or " Try again later; /status shows the last limit report.")
        )
    if kind is ErrorKind.NOT_LOGGED_IN:
        return (
            "🔑 Claude Code is not logged in on the gateway's machine. Open a terminal there,"
            " run `claude` and type /login (or set CLAUDE_CODE_OAUTH_TOKEN from"
            " `claude setup-token`), then send your message again."
        )
    if kind is ErrorKind.AUTHENTICATION:
        return (
            "🔑 Claude Code's login was refused (expired or revoked). Log in again on the"
            " gateway's machine: run `claude` and type /login."
        )
    if kind is ErrorKind.OVERLOADED:
        wait = f" in {duration(error.retry_after)}" if error.retry_after else " in a minute"
        return f"🌊 Anthropic is overloaded right now. Try again{wait}."
    if kind is ErrorKind.API_ERROR:
        return f"⚠️ Anthropic's API failed: {_first_line(detail)}"
    if kind is ErrorKind.BUDGET_EXCEEDED:
        return f"💸 {detail} What it did so far is kept; send a message to go on."
    if kind is ErrorKind.BUSY:
        return f"⏳ {detail}"
    if kind is ErrorKind.SHUTDOWN:
        return "🔌 The gateway is shutting down; send your message again in a minute."
    if kind is ErrorKind.CLI_MISSING:
        return (
            "🧩 The Claude Code CLI was not found on the gateway's machine. Install it, or set"
            " claude.cli_path in the gateway's config."
        )
    return f"⚠️ {detail}"  # unknown_model, invalid_request, config: their message says it


def notice_text(notice: Notice) -> str | None:
    """A line for the status message, or ``None`` for notices a person need not see."""
    if notice.kind == "queued":
        return "Waiting for the previous message to finish…"
    if notice.kind == "retrying":
        attempt, most = notice.data.get("attempt"), notice.data.get("max_retries")
        count = f" ({attempt}/{most})" if attempt and most else ""
        return f"Anthropic's API hiccupped; retrying{count}…"
    if notice.kind == "approval":
        return f"⏸ Waiting for your approval: {notice.data.get('summary') or notice.message}"
    if notice.kind == "approval_settled":
        allowed = notice.data.get("verdict") in ("allow", "always")
        return f"{'✅ Allowed' if allowed else '🚫 Denied'}: {notice.data.get('summary', '')}"
    if notice.kind == "rate_limit":
        status = str(notice.data.get("status") or "")
        if status in ("", "allowed"):
            return None
        return f"Usage limit: {notice.message.removeprefix('usage limit status: ')}"
    return None


def rate_limit_text(info: RateLimitStatus | None, now: float | None = None) -> str:
    """One line about the last usage-limit report (for /status)."""
    if info is None:
        return "no report yet"
    now = time.time() if now is None else now
    parts = [info.status or "unknown"]
    if info.rate_limit_type:
        parts.append(info.rate_limit_type.replace("_", "-"))
    if info.utilization is not None:
        parts.append(f"{info.utilization:.0%} used")
    text = ", ".join(parts)
    if info.resets_at is not None and info.resets_at > now:
        text += f", resets {clock(info.resets_at)}"
    return text + f" (reported {ago(info.seen_at, now)})"


def status_text(activity: str, elapsed: float, *, tools: int = 0, queued: int = 0,
                project: str = "") -> str:
    """The single status message shown while Claude works (``project``: named unless it
    is the default one)."""
    lines = [f"⚙️ {activity}"]
    meta = [f"⏱ {duration(elapsed)}"]
    if project and project != "default":
        meta.insert(0, f"📁 {project}")
    if tools > 1:
        meta.append(f"{tools} steps")
    if queued:
        meta.append(f"{queued} message{'s' if queued > 1 else ''} waiting")
    lines.append(" · ".join(meta))
    return "\n".join(lines)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line if len(line) <= 300 else line[:297] + "…"
