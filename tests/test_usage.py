"""Usage and limits: the ledger's figures, the warnings sent once, /usage in Telegram and
GET /v1/usage over a real CLI whose fake API reports tokens and rate-limit headers, the
per-turn budget and the scheduler's daily cap."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from bridges.common.usage import local_clock, money, usage_text, warning_text
from gateway.api import create_app
from gateway.api.config import ApiConfig
from gateway.api.usage import UsageReply
from gateway.config import ConfigError, load_settings
from gateway.engine import Engine, EngineConfig, RateLimitStatus, TurnError, TurnResult, Usage
from gateway.engine.usage import TurnUsage, UsageLedger, windows_of
from gateway.errors import ErrorKind
from gateway.scheduler import JobSpec, Scheduler, SchedulerConfig
from gateway.store import ScheduleStore, Store
from tests.conftest import EngineFactory, collect
from tests.fake_anthropic import RATELIMIT_GATEWAY_TOKEN, FakeAnthropic
from tests.fake_telegram import FakeTelegram
from tests.telegram_support import OWNER, BridgeFactory, answer, idle, texts
from tests.test_api_routes import check_openapi, serve

pytest_plugins = ["tests.telegram_support"]

BERLIN = "Europe/Berlin"
#: a rate_limit_event as the bundled CLI 2.1.332 printed it for sample_ratelimit_headers()
MEASURED = {
    "status": "allowed_warning", "resetsAt": 1796129678, "rateLimitType": "five_hour",
    "utilization": 0.91, "overageStatus": "rejected",
    "overageDisabledReason": "org_level_disabled", "isUsingOverage": False,
    "unifiedWindows": {
        "five_hour": {"utilization": 0.91, "resetsAt": 1796129678, "status": "allowed_warning"},
        "seven_day": {"utilization": 0.2, "resetsAt": 1796550878, "status": "allowed"},
    },
}


def status_of(raw: dict[str, Any], seen: float | None = None) -> RateLimitStatus:
    return RateLimitStatus(str(raw["status"]), raw.get("rateLimitType"), raw.get("resetsAt"),
                           raw.get("utilization"), time.time() if seen is None else seen, raw)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "usage.sqlite3")
    await store.open()
    yield store
    await store.close()


# --------------------------------------------------------------------------- the ledger


async def test_totals_today_this_week_and_per_hour_in_the_owners_zone(store: Store) -> None:
    ledger = UsageLedger(store, timezone=BERLIN)
    zone = ZoneInfo(BERLIN)
    now = datetime(2026, 12, 2, 10, 30, tzinfo=zone).timestamp()  # a Wednesday

    def at(day: int, hour: int, minute: int = 0) -> float:
        return datetime(2026, 11 if day > 20 else 12, day, hour, minute, tzinfo=zone).timestamp()

    turns = [  # (when, origin, model, usage, cost)
        (at(2, 9, 15), "telegram", "claude-opus-4-5", Usage(100, 10, 1000, 50), 0.25),
        (at(2, 10, 5), "cron", "claude-haiku-4-5", Usage(40, 4, 0, 0), 0.01),
        (at(2, 10, 20), "telegram", "claude-opus-4-5", Usage(60, 6, 500, 0), 0.125),
        (at(30, 12), "api", "claude-opus-4-5", Usage(7, 7, 7, 7), 1.5),  # Monday
        (at(29, 23, 30), "api", "claude-opus-4-5", Usage(1, 1, 1, 1), 9.0),  # last week
    ]
    for when, origin, model, usage, cost in turns:
        await ledger.tables.add_turn(
            TurnUsage("k", origin, "/ws", model, "s", usage, cost, None), at=when)

    report = await ledger.report(hours=3, now=now)

    today = report.today.totals
    assert (today.turns, today.input_tokens, today.output_tokens) == (3, 200, 20)
    assert (today.cache_read_tokens, today.cache_creation_tokens) == (1500, 50)
    assert today.cost_usd == pytest.approx(0.385)
    assert report.today.by_frontend["telegram"].cost_usd == pytest.approx(0.375)
    assert report.scheduled_cost_today_usd == pytest.approx(0.01)
    assert set(report.today.by_model) == {"claude-opus-4-5", "claude-haiku-4-5"}
    assert report.week.totals.turns == 4 and report.week.totals.cost_usd == pytest.approx(1.885)
    assert report.week.by_frontend["api"].turns == 1
    assert report.today.start == at(2, 0) and report.week.start == at(30, 0)
    # 08:00, 09:00, 10:00 local: the empty hour too
    assert [b.start for b in report.hourly] == [at(2, 8), at(2, 9), at(2, 10)]
    assert [b.totals.turns for b in report.hourly] == [0, 1, 2]

    body = report.to_json()
    UsageReply.model_validate(body)
    assert body["today"]["start"] == "2026-12-02T00:00:00+01:00"
    assert body["hourly"]["buckets"][2]["start"] == "2026-12-02T10:00:00+01:00"
    text = usage_text(report)
    assert "Today** (since 00:00 CET): 3 turns, $0.3850 API-equivalent" in text
    assert "tokens: 1,750 in (1,500 read from cache, 50 written to cache), 20 out" in text
    assert "not a bill" in text


async def test_each_window_of_a_report_is_kept_and_warned_about_once(store: Store) -> None:
    ledger = UsageLedger(store, timezone="UTC", thresholds=(0.8, 0.95))
    warned: list[Any] = []

    async def handler(warning: Any) -> None:
        warned.append(warning)

    ledger.add_handler(handler)
    assert {(w.window, w.status, w.utilization) for w in windows_of(status_of(MEASURED))} == {
        ("five_hour", "allowed_warning", 0.91), ("seven_day", "allowed", 0.2)}

    await ledger.saw_rate_limit(status_of(MEASURED))
    await ledger.saw_rate_limit(status_of(MEASURED))  # a second process saw the same
    assert [(w.window, w.threshold) for w in warned] == [("five_hour", 0.8)]
    higher = {**MEASURED, "unifiedWindows": {
        "five_hour": {**MEASURED["unifiedWindows"]["five_hour"], "utilization": 0.97}}}
    await ledger.saw_rate_limit(status_of(higher))
    await ledger.saw_rate_limit(status_of({**higher, "utilization": 0.85}))  # no going back
    assert [w.threshold for w in warned] == [0.8, 0.95]
    reset = {"status": "allowed", "rateLimitType": "five_hour", "utilization": 0.82,
             "resetsAt": 1796147678}
    await ledger.saw_rate_limit(status_of(reset))  # a new window: warned again
    assert [w.threshold for w in warned] == [0.8, 0.95, 0.8]

    refused = {"status": "rejected", "rateLimitType": "five_hour", "resetsAt": 1796147678}
    await ledger.saw_rate_limit(status_of(refused))
    await ledger.refused(status_of(refused), retry_after=60)  # its 429: told already
    assert [w.refused for w in warned] == [False, False, False, True]
    assert warning_text(warned[-1], now=1796140000) == (
        "🚦 Claude usage limit reached (5-hour): requests are refused; it resets 17:54 UTC"
        " (in 2 h 7 min).")
    await ledger.refused(None, retry_after=None)  # no report at all: once an hour
    await ledger.refused(None, retry_after=None)
    assert [w.window for w in warned][4:] == ["overall"]

    report = await ledger.report(hours=1, now=1796140000)
    assert [(w.window, w.status, w.expired) for w in report.windows] == [
        ("five_hour", "rejected", False), ("seven_day", "allowed", False)]


# --------------------------------------------------------------------------- real CLI


def ratelimit_headers(utilization: float, resets_at: int) -> dict[str, str]:
    return {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-reset": str(resets_at),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": "allowed_warning",
        "anthropic-ratelimit-unified-5h-reset": str(resets_at),
        "anthropic-ratelimit-unified-5h-utilization": str(utilization),
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": str(resets_at + 4 * 86400),
        "anthropic-ratelimit-unified-7d-utilization": "0.3",
    }


def reporting_engine(make_engine: EngineFactory, engine_config: EngineConfig,
                     **overrides: Any) -> Any:
    """An engine whose CLI reads the fake's rate-limit headers (an "LLM gateway" token), in
    the fixture's zone where it is about noon (tests.clock.noon_zone): in Berlin's, a test
    running across 00:00 there counted its first turns in yesterday."""
    env = {**engine_config.env, "ANTHROPIC_AUTH_TOKEN": RATELIMIT_GATEWAY_TOKEN}
    return make_engine(env=env, **overrides)


def test_a_reset_clock_names_the_day_only_when_it_is_not_today() -> None:
    """The CI run at 22:10 CET saw a reset two hours later shown as "Wed 02 Dec 00:10 CET"."""
    berlin = ZoneInfo(BERLIN)
    late = datetime(2026, 12, 1, 22, 10, tzinfo=berlin).timestamp()
    assert local_clock(late + 3600, BERLIN, now=late) == "23:10 CET"
    assert local_clock(late + 2 * 3600, BERLIN, now=late) == "Wed 02 Dec 00:10 CET"
    summer = datetime(2026, 7, 1, 9, 0, tzinfo=berlin).timestamp()
    assert local_clock(summer + 60, BERLIN, now=summer) == "09:01 CEST"


@pytest.mark.cli
async def test_usage_in_telegram_and_over_http_adds_up_to_what_the_cli_reported(
    make_engine: EngineFactory, engine_config: EngineConfig, make_bridge: BridgeFactory,
    tg: FakeTelegram, fake_api: FakeAnthropic,
) -> None:
    resets_at = int(time.time()) + 2 * 3600
    fake_api.set_ratelimit_headers(ratelimit_headers(0.85, resets_at))
    scripted = [("first", 1200, 30, 400, 100), ("second", 900, 20, 1600, 0)]
    for word, inp, out, read, write in scripted:
        fake_api.script({"text": f"{word} answer", "usage": {
            "input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write}}, match=word)
    engine = await reporting_engine(make_engine, engine_config)
    bridge = await make_bridge(engine, notify=OWNER)

    for word, *_ in scripted:
        tg.user_text(OWNER, f"{word} question")
        await answer(tg, OWNER, f"{word} answer")
        await idle(bridge, OWNER)
    warnings = await tg.wait_for(
        lambda: [t for t in texts(tg, OWNER) if t.startswith("⚠️ Claude 5-hour")] or None)
    tg.user_text(OWNER, "/usage")
    shown = await tg.wait_for(
        lambda: next((t for t in texts(tg, OWNER) if t.startswith("Usage limits")), None))

    info = await engine.describe(f"telegram:{OWNER}")
    assert info is not None and info.turns == 2 and info.cost_usd > 0
    tokens_in = sum(i + r + w for _, i, _, r, w in scripted)
    tokens_out = sum(o for _, _, o, _, _ in scripted)
    cached = sum(r for *_, r, _ in scripted)
    # at about noon in the engine's zone: the reset two hours on is today's, shown as HH:MM
    # (the day-and-zone forms of Berlin's clock are pinned on fixed times above)
    zone = ZoneInfo(engine_config.usage_timezone)
    reset = datetime.fromtimestamp(resets_at, zone)
    abbr = reset.strftime("%Z")
    assert (f"Today (since 00:00 {abbr}): 2 turns, {money(info.cost_usd)} API-equivalent"
            in shown.replace("**", "")), shown
    assert f"tokens: {tokens_in:,} in ({cached:,} read from cache, 100 written to cache)," \
           f" {tokens_out:,} out" in shown
    assert re.search(r"5-hour, 85% used(, close to the limit)? — resets"
                     rf" {reset:%H:%M} {re.escape(abbr)} \(in 1 h 5\d min\)", shown), shown
    assert f"by frontend: telegram 2 turns, {money(info.cost_usd)}" in shown
    assert warnings == [next(t for t in texts(tg, OWNER) if t.startswith("⚠️"))]
    assert warnings[0].startswith("⚠️ Claude 5-hour window: 85% used; it resets ")

    tg.user_text(OWNER, "/status")
    status = await tg.wait_for(
        lambda: next((t for t in texts(tg, OWNER) if t.startswith("Session:")), None))
    assert f"Usage: 5-hour 85% · 7-day 30% · today 2 turns, {money(info.cost_usd)}" in status

    # the same figures over HTTP, behind a key
    async with serve(create_app(engine, ApiConfig(api_keys=("k",)))) as url, \
            aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/usage?hours=3",
                            headers={"Authorization": "Bearer k"}) as resp:
            body = await resp.json()
            check_openapi("GET", "/v1/usage", resp.status, body)
            assert resp.status == 200
        async with http.get(f"{url}/v1/usage") as resp:
            check_openapi("GET", "/v1/usage", resp.status, await resp.json())
            assert resp.status == 401
        async with http.get(f"{url}/v1/usage?hours=0",
                            headers={"Authorization": "Bearer k"}) as resp:
            error = await resp.json()
            check_openapi("GET", "/v1/usage", resp.status, error)
            assert resp.status == 400 and error["error"]["message"].startswith("hours:")
    today = body["today"]["totals"]
    assert today == {"turns": 2, "input_tokens": 2100, "output_tokens": tokens_out,
                     "cache_read_tokens": cached, "cache_creation_tokens": 100,
                     "cost_usd": pytest.approx(info.cost_usd)}
    assert body["today"]["by_frontend"]["telegram"]["turns"] == 2
    assert sum(m["turns"] for m in body["today"]["by_model"].values()) == 2
    assert body["today"]["by_project"] == {"default": today}  # the project's name
    assert sum(b["turns"] for b in body["hourly"]["buckets"]) == 2
    five = next(w for w in body["windows"] if w["window"] == "five_hour")
    assert five["utilization"] == 0.85 and five["resets_at_epoch"] == resets_at
    assert five["resets_at"] == reset.isoformat()

    # more of the same window: one more warning at the next threshold, none repeated
    fake_api.set_ratelimit_headers(ratelimit_headers(0.97, resets_at))
    await engine.reset(f"telegram:{OWNER}")  # a new process reads the new headers
    tg.user_text(OWNER, "third")
    await answer(tg, OWNER, "echo: third")
    await tg.wait_for(lambda: len([t for t in texts(tg, OWNER) if t.startswith("⚠️")]) == 2
                      or None)
    await asyncio.sleep(0.3)
    told = [t for t in texts(tg, OWNER) if t.startswith("⚠️")]
    assert len(told) == 2 and told[1].startswith("⚠️ Claude 5-hour window: 97% used")

    # refused for the limit: the chat sees its error, the notification chat one warning
    refused = {**ratelimit_headers(1.0, resets_at),
               "anthropic-ratelimit-unified-status": "rejected",
               "anthropic-ratelimit-unified-5h-status": "rejected"}
    fake_api.set_ratelimit_headers(refused)
    for number, attempt in enumerate(("FAIL_429 once", "FAIL_429 twice"), 1):
        tg.user_text(OWNER, attempt)

        def refusals(wanted: int = number) -> bool:
            shown = [t for t in texts(tg, OWNER) if t.startswith("🚦 Your Claude plan's")]
            return len(shown) == wanted

        await tg.wait_for(refusals, what=f"refusal {number}")
        await idle(bridge, OWNER)
    await asyncio.sleep(0.3)
    limit = [t for t in texts(tg, OWNER) if t.startswith("🚦 Claude usage limit reached")]
    assert len(limit) == 1 and limit[0].startswith(
        "🚦 Claude usage limit reached (5-hour): requests are refused; it resets "), limit


@pytest.mark.cli
async def test_a_turn_stops_at_its_budget_and_each_turn_gets_the_whole_budget(
    make_engine: EngineFactory, fake_api: FakeAnthropic,
) -> None:
    # the fake's default usage (~22k input tokens with Claude Code's prompt) costs ~$0.11 a
    # turn on Opus; 100k input tokens ~$0.50. The CLI counts --max-budget-usd per process.
    engine = await make_engine(default_model="claude-opus-4-5", max_turn_cost_usd=0.2,
                               spare_processes=0)
    fake_api.script({"text": "a big one", "usage": {"input_tokens": 100_000}}, match="big")
    final = (await collect(engine, "api:budget", "big question"))[-1]
    assert isinstance(final, TurnError) and final.kind is ErrorKind.BUDGET_EXCEEDED, final
    assert "claude.max_turn_cost_usd" in final.message
    report = await engine.usage(hours=1)
    assert report.today.totals.turns == 1 and report.today.totals.cost_usd > 0.2
    # (the CLI reports no tokens on a failed result, only the cost it counted)

    costs = []
    for text in ("one", "two"):
        last = (await collect(engine, "api:budget", text))[-1]
        assert isinstance(last, TurnResult), last
        costs.append(last.cost_usd)
    # ~$0.11 turns after a $0.50 one under a $0.20 budget: each ran in a process of its own,
    # and each resumed process's cost was counted from where the session's total stood
    assert all(0.05 < c < 0.2 for c in costs), costs
    totals = (await engine.usage()).today.by_model["claude-opus-4-5"]
    assert totals.turns == 3 and totals.cost_usd == pytest.approx(report.today.totals.cost_usd
                                                                  + sum(costs))


async def test_scheduled_runs_past_the_daily_cap_are_skipped_with_the_reason(
    make_engine: EngineFactory, fake_api: FakeAnthropic,
) -> None:
    # the fixture's zone, where it is about noon: "today" cannot turn between the turn
    # recorded now and the run's check of the cap
    engine: Engine = await make_engine(spare_processes=0)
    zone = engine.ledger.timezone
    await engine.ledger.tables.add_turn(TurnUsage(
        "cron:earlier", "cron", "/ws", "claude-haiku-4-5", None, Usage(10, 10), 0.6, None))
    scheduler = Scheduler(engine, SchedulerConfig(max_daily_cost_usd=0.5, jitter=0,
                                                  timezone=zone),
                          (JobSpec("brief", "0 8 * * *", "News please", "log"),))
    await scheduler.start()
    try:
        spec = scheduler.get("brief")
        assert spec is not None and scheduler.run_now(spec)
        await scheduler.wait_idle("brief")
    finally:
        await scheduler.stop()
    run = (await engine.tables(ScheduleStore).runs("brief"))[0]
    assert run.status == "skipped"
    assert run.error is not None and "$0.6000 today" in run.error
    assert "scheduler.max_daily_cost_usd ($0.50)" in run.error and f"({zone})" in run.error
    assert not [r for r in fake_api.requests() if "News please" in r["last_user_text"]]


def test_bad_usage_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[usage]\ntimezone = "Mars/Olympus"\nwarn_at = [0.8, 1.5]\n'
                    "[claude]\nmax_turn_cost_usd = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={"HOME": str(tmp_path)})
    lines = str(caught.value).splitlines()
    assert f"{path}: usage.timezone: unknown time zone 'Mars/Olympus': use an IANA name such" \
           ' as "Europe/Berlin", "America/New_York" or "UTC"' in lines
    assert f"{path}: usage.warn_at: 1.5 is not a fraction of the window: use numbers above 0" \
           " and at most 1, e.g. [0.8, 0.95]" in lines
    assert any(line.startswith(f"{path}: claude.max_turn_cost_usd:") for line in lines), lines
