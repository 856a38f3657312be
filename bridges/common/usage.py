"""``/usage``, the usage line of ``/status`` and the usage-limit warning, as text. Pure
functions over the engine's :class:`~gateway.engine.api.UsageReport`; times are shown in the
owner's zone (``usage.timezone``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from bridges.common.text import duration
from gateway.engine import LimitWindow, UsagePeriod, UsageReport, UsageTotals, UsageWarning

#: how the CLI's window types read
WINDOW_NAMES = {
    "five_hour": "5-hour",
    "seven_day": "7-day",
    "seven_day_opus": "7-day Opus",
    "seven_day_sonnet": "7-day Sonnet",
    "overage": "extra usage",
    "overall": "usage limit",
}
NOT_A_BILL = (
    "Costs are what Claude Code estimates at API list prices (API-equivalent), not a bill:"
    " a subscription pays its plan, not these amounts."
)


def window_name(window: str) -> str:
    return WINDOW_NAMES.get(window, window.replace("_", " "))


def local_clock(epoch: float, zone: str, now: float | None = None) -> str:
    """``"14:05 CET"`` today, ``"Sat 06 Dec 10:00 CET"`` another day, in ``zone``."""
    tz = ZoneInfo(zone)
    moment = datetime.fromtimestamp(epoch, tz)
    today = datetime.fromtimestamp(time.time() if now is None else now, tz)
    fmt = "%H:%M %Z" if moment.date() == today.date() else "%a %d %b %H:%M %Z"
    return moment.strftime(fmt)


def _resets(resets_at: float | None, zone: str, now: float) -> str:
    if resets_at is None:
        return ""
    if resets_at <= now:
        return f"reset at {local_clock(resets_at, zone, now)} (since then: no report yet)"
    return f"resets {local_clock(resets_at, zone, now)} (in {duration(resets_at - now)})"


def window_text(w: LimitWindow, zone: str, now: float) -> str:
    parts = [window_name(w.window)]
    if w.utilization is not None:
        parts.append(f"{w.utilization:.0%} used")
    status = {"allowed": "", "allowed_warning": "close to the limit",
              "rejected": "LIMIT REACHED"}.get(w.status, w.status)
    if status and not w.expired:
        parts.append(status)
    text = ", ".join(parts)
    reset = _resets(w.resets_at, zone, now)
    return f"{text} — {reset}" if reset else text


def money(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


def totals_text(t: UsageTotals) -> str:
    turns = "1 turn" if t.turns == 1 else f"{t.turns} turns"
    return f"{turns}, {money(t.cost_usd)}"


def _groups(label: str, group: Mapping[str, UsageTotals]) -> str | None:
    if not group:
        return None
    items = sorted(group.items(), key=lambda kv: -kv[1].cost_usd)
    return f"  {label}: " + " · ".join(f"{name} {totals_text(t)}" for name, t in items)


def period_text(title: str, p: UsagePeriod, report: UsageReport) -> list[str]:
    since = local_clock(p.start, report.timezone, report.now)
    t = p.totals
    lines = [f"**{title}** (since {since}): {totals_text(t)} API-equivalent"]
    if not t.turns:
        return lines
    lines.append(
        f"  tokens: {t.input_tokens + t.cache_read_tokens + t.cache_creation_tokens:,} in"
        f" ({t.cache_read_tokens:,} read from cache, {t.cache_creation_tokens:,} written to"
        f" cache), {t.output_tokens:,} out"
    )
    for label, group in (("by frontend", p.by_frontend), ("by model", p.by_model),
                         ("by project", p.by_project)):
        line = _groups(label, group)
        if line:
            lines.append(line)
    return lines


def usage_text(report: UsageReport) -> str:
    """The whole ``/usage`` answer."""
    now, zone = report.now, report.timezone
    lines = [f"**Usage limits** (times in {zone})"]
    if report.windows:
        lines += [f"• {window_text(w, zone, now)}" for w in report.windows]
        newest = max(w.seen_at for w in report.windows)
        lines.append(f"  (last report {duration(now - newest)} ago)")
    else:
        lines.append("• no report yet: Claude Code reports them with a subscription login,"
                     " after a turn")
    lines.append("")
    lines += period_text("Today", report.today, report)
    lines += period_text("This week", report.week, report)
    budgets = []
    if report.max_turn_cost_usd:
        budgets.append(f"a turn stops at {money(report.max_turn_cost_usd)}")
    if report.scheduled_daily_cost_cap_usd:
        budgets.append(f"scheduled jobs today {money(report.scheduled_cost_today_usd)} of"
                       f" {money(report.scheduled_daily_cost_cap_usd)}")
    if budgets:
        lines += ["", "**Budgets:** " + "; ".join(budgets)]
    lines += ["", NOT_A_BILL]
    return "\n".join(lines)


def usage_line(report: UsageReport) -> str:
    """One line for ``/status``: the windows in short, and today's totals."""
    parts = []
    for w in report.windows:
        if w.expired:
            continue
        short = window_name(w.window)
        if w.utilization is not None:
            short += f" {w.utilization:.0%}"
        if w.status == "rejected":
            short += " (limit reached)"
        parts.append(short)
    today = report.today.totals
    parts.append(f"today {totals_text(today)}")
    return " · ".join(parts) + " — /usage for more"


def warning_text(w: UsageWarning, now: float | None = None) -> str:
    """What the notification chat reads when a window reaches a threshold or a request
    was refused for the limit."""
    now = time.time() if now is None else now
    name = window_name(w.window)
    reset = _resets(w.resets_at, w.timezone, now)
    if w.refused:
        head = f"🚦 Claude usage limit reached ({name}): requests are refused"
        return head + (f"; it {reset}." if reset else " until it resets.")
    used = f"{w.utilization:.0%}" if w.utilization is not None else f"{w.threshold:.0%}"
    head = f"⚠️ Claude {name} window: {used} used"
    return head + (f"; it {reset}." if reset else ".")
