"""``GET /v1/usage``: the usage-limit windows and what the turns used, as the CLI reported it.

The body is :meth:`gateway.engine.api.UsageReport.to_json`; the models below document it in
``/openapi.json`` and are the tests' oracle (the shape is stable: the status page reads it).
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.exchange import ENGINE
from gateway.api.openapi import Operation, Param, error_reply, json_reply
from gateway.engine.usage import MAX_HOURS
from gateway.errors import ErrorKind, GatewayError

DEFAULT_HOURS = 48
_ISO = "ISO 8601 in the owner's zone (usage.timezone), with its UTC offset."


class UsageTotalsWire(BaseModel):
    turns: int
    input_tokens: int = Field(description="Input tokens not read from or written to cache.")
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float = Field(
        description="API-equivalent cost the CLI estimated (total_cost_usd), not a bill.")


class UsageWindowWire(BaseModel):
    window: str = Field(description="The CLI's window type: five_hour, seven_day, ...")
    status: str = Field(description="allowed, allowed_warning or rejected.")
    utilization: float | None = Field(description="Fraction of the window used, 0 to 1.")
    resets_at: str | None = Field(description=_ISO)
    resets_at_epoch: float | None
    seen_at: str = Field(description="When the CLI reported it. " + _ISO)
    expired: bool = Field(description="The reset time has passed since: the figures are stale.")


class UsagePeriodWire(BaseModel):
    start: str = Field(description="Today: local midnight; week: Monday 00:00. " + _ISO)
    totals: UsageTotalsWire
    by_frontend: dict[str, UsageTotalsWire] = Field(
        description="By the turn's origin: api, telegram, discord, cron.")
    by_project: dict[str, UsageTotalsWire]
    by_model: dict[str, UsageTotalsWire]


class UsageBucketWire(UsageTotalsWire):
    start: str = Field(description="The local hour's start. " + _ISO)
    start_epoch: float


class UsageHourlyWire(BaseModel):
    hours: int
    buckets: list[UsageBucketWire] = Field(
        description="Oldest first, one per local hour, empty hours included; the last is the"
        " current hour.")


class UsageBudgetsWire(BaseModel):
    max_turn_cost_usd: float | None = Field(description="claude.max_turn_cost_usd (null: none).")
    scheduled_daily_cost_cap_usd: float | None = Field(
        description="scheduler.max_daily_cost_usd (null: none).")
    scheduled_cost_today_usd: float


class UsageReply(BaseModel):
    """What the CLI reported: rate-limit windows, and turns' tokens and API-equivalent cost."""

    object: Literal["usage"]
    generated_at: str
    timezone: str = Field(description="IANA name of the owner's zone.")
    windows: list[UsageWindowWire] = Field(
        description="The latest report of each window; empty until the CLI sent one.")
    today: UsagePeriodWire
    week: UsagePeriodWire
    hourly: UsageHourlyWire
    budgets: UsageBudgetsWire


def parse_hours(value: str | None) -> int:
    """The ``hours`` query parameter: 1 to 336, default 48."""
    if value is None or not value.strip():
        return DEFAULT_HOURS
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_HOURS:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"hours: expected a whole number from 1 to {MAX_HOURS}, got {value!r}")
    return int(text)


async def get_usage(request: web.Request) -> web.Response:
    hours = parse_hours(request.query.get("hours"))
    report = await request.app[ENGINE].usage(hours=hours)
    return web.json_response(report.to_json())


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/v1/usage", get_usage, "getUsage",
        "Usage-limit windows (state and reset time) and the turns' tokens and API-equivalent"
        " cost today, this week and per hour, as the CLI reported them (not a bill).",
        params=(Param("hours", f"Hours of the hourly series, 1 to {MAX_HOURS}.",
                      {"type": "integer", "minimum": 1, "maximum": MAX_HOURS,
                       "default": DEFAULT_HOURS}, where="query"),),
        responses={200: json_reply("The usage report.", UsageReply),
                   400: error_reply("hours is not a whole number from 1 to 336.")},
    ),
)
