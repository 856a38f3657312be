"""The status page in a real browser: Debian's headless chromium (driven by Playwright with
``executable_path``; no browser download) against the real gateway (``Gateway.build`` from a
config file, its scheduler included) running the real CLI against the fake Anthropic API.

One browser and one gateway for the whole module. Screenshots are saved under the test
run's temporary folder (the path is printed) as artefacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.api import ApiConfig, create_app
from gateway.api.status import CSP, SOURCES
from gateway.app import Gateway
from gateway.config import load_settings
from gateway.engine import Prompt, TurnError, TurnOptions
from gateway.engine.approvals import ApprovalRequest, Cause, Decision
from gateway.engine.permissions import PermissionMode
from gateway.errors import ErrorKind
from tests.clock import noon_zone
from tests.conftest import system_binary
from tests.fake_anthropic import (
    RATELIMIT_GATEWAY_TOKEN,
    FakeAnthropic,
    bundled_cli,
    cli_env,
    sample_ratelimit_headers,
)

pytestmark = [pytest.mark.cli, pytest.mark.asyncio(loop_scope="module")]
playwright_api = pytest.importorskip("playwright.async_api")

KEY = "status-page-test-key"
DEMO = "openai:h:status-demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake_api:
        yield fake_api


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("status_page_screenshots", numbered=False)
    print(f"\nstatus page screenshots: {folder}")
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    root = tmp_path_factory.mktemp("status_gateway")
    home = root / "home"
    home.mkdir()
    # an "LLM gateway" token: the CLI then reports the fake's rate-limit headers
    env = cli_env(fake.base_url, str(home), inherit=False,
                  ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN)
    fake.set_ratelimit_headers(sample_ratelimit_headers(utilization=0.91))
    env_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in env.items() if k != "PATH")
    # about noon there for the module's minutes: in the machine's zone (UTC) "digest" ran
    # itself at 07:00, and "Today" lost its turns at midnight
    zone = noon_zone()
    config = root / "config.toml"
    config.write_text(f"""
[server]
port = {_free_port()}
[claude]
cli_path = "{bundled_cli()}"
workspace = "{root / 'ws'}"
spare_processes = 1
[claude.env]
{env_lines}
[storage]
data_dir = "{root / 'data'}"
[usage]
timezone = "{zone}"
[scheduler]
jitter = 0
timezone = "{zone}"
[[schedules]]
name = "digest"
cron = "0 7 * * *"
prompt = "daily digest"
target = "log"
[[schedules]]
name = "to-telegram"
cron = "30 8 * * 1-5"
prompt = "never runs here"
target = "telegram:42"
""")
    gw = Gateway.build(load_settings(config, env={"HOME": str(root)}))
    with pytest.MonkeyPatch.context() as patch:
        # where the CLI keeps its transcripts here (as when it inherits the gateway's HOME)
        patch.setenv("HOME", str(home))
        await gw.start()
        await gw.login.wait()
        try:
            yield gw
        finally:
            await gw.stop()


def url_of(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.settings.server.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    chromium = system_binary("chromium", "chromium")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            await launched.close()


class Page:
    """A browser tab on the status page that records console errors and page errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Page(await context.new_page())
    finally:
        await context.close()


async def _wait(predicate: Any, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- the page


async def test_the_page_loads_with_no_console_errors_and_shows_the_gateway(
    gateway: Gateway, tab: Page, artefacts: Path
) -> None:
    response = await tab.page.goto(url_of(gateway) + "/")
    assert response.status == 200
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-frame-options"] == "DENY"
    await tab.page.wait_for_selector("#overview:not([hidden])")
    status = gateway.engine.status()
    assert status.cli_version and status.cli_version in await tab.page.inner_text("#cli")
    assert await tab.page.inner_text("#config") == str(gateway.settings.config_file)
    assert "logged in" in await tab.page.inner_text("#login")
    await tab.page.wait_for_selector("#proc-list li")  # the pre-started spare
    assert "spare" in await tab.page.inner_text("#processes")
    assert " MB" in await tab.page.inner_text("#proc-summary")
    jobs = await tab.page.inner_text("#jobs")
    assert "digest" in jobs and "to-telegram" in jobs
    await tab.page.screenshot(path=str(artefacts / "desktop.png"), full_page=True)
    assert tab.errors == []


async def test_a_scheduled_job_is_shown_and_runs_from_the_page(
    gateway: Gateway, fake: FakeAnthropic, tab: Page
) -> None:
    await tab.page.goto(url_of(gateway) + "/")
    digest = 'li[data-job="digest"]'
    await tab.page.wait_for_selector(digest)
    assert "next in " in await tab.page.inner_text(digest)
    assert "last never" in await tab.page.inner_text(digest)
    held = 'li[data-job="to-telegram"]'
    assert "needs the Telegram bot" in await tab.page.inner_text(held)
    assert await tab.page.query_selector(f"{held} button") is None  # nothing to run
    before = len(fake_requests_for(fake, "daily digest"))
    await tab.page.click(f'{digest} button[data-run="digest"]')
    await tab.page.wait_for_selector(f"{digest} .meta:has-text('last ok')", timeout=20_000)
    assert len(fake_requests_for(fake, "daily digest")) == before + 1
    assert tab.errors == []


async def test_a_running_turn_shows_its_tool_and_the_stop_button_stops_it(
    gateway: Gateway, fake: FakeAnthropic, tab: Page, artefacts: Path
) -> None:
    fake.script({"text": "I'll wait a while.", "chunk_delay": 0.3,
                 "tool_use": {"name": "Bash", "input": {"command": "timeout 30 tail -f /dev/null",
                                                         "description": "Wait"}}},
                match="wait for me")
    await tab.page.goto(url_of(gateway) + "/")
    async with aiohttp.ClientSession() as http:
        chat = asyncio.create_task(_post(http, url_of(gateway) + "/v1/chat/completions", {
            "model": "sonnet", "messages": [{"role": "user", "content": "wait for me"}]},
            {"X-Conversation-Id": "status-demo"}))
        row = f'li[data-conversation="{DEMO}"]'
        await tab.page.wait_for_selector(
            f'{row}[data-state="running"] .tool:has-text("tail -f")', timeout=20_000)
        tool = await tab.page.inner_text(f"{row} .tool")
        assert tool.startswith("▶ Bash: Running timeout 30 tail -f /dev/null · "), tool
        await asyncio.sleep(1.2)  # the elapsed time counts up in the page
        assert any(ch.isdigit() for ch in await tab.page.inner_text(f"{row} .elapsed"))
        meta = tab.page.locator(f"{row} .meta")
        assert (await meta.inner_text()).startswith("default · ")  # its project, by name
        assert await meta.get_attribute("title") == str(gateway.engine.workspace)
        # no message body shown until the owner expands the conversation
        assert "wait for me" not in await tab.page.inner_text("#conversations")
        await tab.page.screenshot(path=str(artefacts / "running.png"), full_page=True)
        started = time.monotonic()
        await tab.page.click(f'{row} button[data-stop="{DEMO}"]')
        status, body = await asyncio.wait_for(chat, 15)
        stopped_in = time.monotonic() - started
    assert status == 409 and body["error"]["code"] == "interrupted", body
    await tab.page.wait_for_selector(f'{row}[data-state="idle"]')
    await tab.page.wait_for_selector('#event-list li[data-kind="interrupted"]')
    assert DEMO in await tab.page.inner_text("#event-list")
    # expanding it shows its messages
    await tab.page.click(f'{row} button[data-messages="{DEMO}"]')
    await tab.page.wait_for_selector(f'{row} .transcript .msg.user:has-text("wait for me")')
    assert "[tool: Bash]" in await tab.page.inner_text(f"{row} .transcript")
    await tab.page.screenshot(path=str(artefacts / "stopped.png"), full_page=True)
    assert tab.errors == []
    print(f"\nstopped from the page in {stopped_in:.2f} s")


class HoldingApprover:
    """A frontend that shows approval requests to nobody: they wait until the turn stops."""

    def __init__(self) -> None:
        self.settled_with: list[Decision] = []

    async def present(self, request: ApprovalRequest) -> None:
        return None

    async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
        self.settled_with.append(decision)


async def test_a_turn_waiting_for_approval_shows_what_it_asks_and_can_be_stopped(
    gateway: Gateway, fake: FakeAnthropic, tab: Page
) -> None:
    approver = HoldingApprover()
    gateway.engine.register_permissions("approve:", default=PermissionMode.ASK,
                                        approver=approver)
    fake.script({"tool_use": {"name": "Bash", "input": {"command": "touch approved-file",
                                                         "description": "Make a file"}}},
                match="ask me first")
    await tab.page.goto(url_of(gateway) + "/")

    async def run() -> list[Any]:
        return [e async for e in gateway.engine.turn(
            "approve:phone", Prompt(text="ask me first"), TurnOptions(origin="test"))]

    turn = asyncio.create_task(run())
    row = 'li[data-conversation="approve:phone"]'
    try:
        await tab.page.wait_for_selector(f'{row}[data-state="waiting_approval"]',
                                         timeout=20_000)
        shown = await tab.page.inner_text(row)
        assert "waiting for approval" in shown and "Bash: Run: touch approved-file" in shown, shown
        await tab.page.click(f'{row} button[data-stop="approve:phone"]')
        events = await asyncio.wait_for(turn, 15)
    finally:
        turn.cancel()
    assert isinstance(events[-1], TurnError) and events[-1].kind is ErrorKind.INTERRUPTED
    assert [d.cause for d in approver.settled_with] == [Cause.STOPPED]
    await tab.page.wait_for_selector(f'{row}[data-state="idle"]')
    assert not (gateway.engine.workspace / "approved-file").exists()
    assert tab.errors == []


async def test_the_page_fits_a_phone_without_horizontal_scrolling(
    gateway: Gateway, browser: Any, artefacts: Path
) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844},
                                        device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page = Page(await context.new_page())
        await page.page.goto(url_of(gateway) + "/")
        await page.page.wait_for_selector("#events:not([hidden])")
        await page.page.wait_for_selector(f'li[data-conversation="{DEMO}"]')
        # the limit window the CLI reported, with its reset time
        window = await page.page.inner_text('#usage [data-window="five_hour"]')
        assert "91% used" in window and "resets in 2 h" in window, window
        # today's totals and the hourly chart (three days, one bar per hour), drawn once
        # /v1/usage has answered (the window above may come from /v1/status before it)
        await page.page.wait_for_function(
            "document.getElementById('usage-today').textContent !== ''")
        today = await page.page.inner_text("#usage-today")
        assert today.startswith("Today: ") and " turns · " in today, today
        assert await page.page.locator("#usage-chart svg rect").count() == 72
        widths = await page.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " document.body.scrollWidth]")
        assert widths[0] <= widths[1] and widths[2] <= widths[1], widths
        await page.page.screenshot(path=str(artefacts / "phone.png"), full_page=True)
        assert page.errors == []
    finally:
        await context.close()


def fake_requests_for(fake: FakeAnthropic, text: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["last_user_text"] == text]


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers or {}) as response:
        return response.status, await response.json()


# --------------------------------------------------------------------------- access


@contextlib.asynccontextmanager
async def other_site(html: str) -> AsyncIterator[str]:
    """Another web site on its own port serving ``html`` at /; yields its origin."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


ATTACK = """<!doctype html><title>evil</title>
<form id="stop" method="POST" action="{gw}/v1/status/stop" enctype="text/plain" target="f1">
<input name='{{"conversation": "{key}", "x": "' value='"}}'></form>
<form id="run" method="POST" action="{gw}/v1/status/run" enctype="text/plain" target="f2">
<input name='{{"job": "digest", "x": "' value='"}}'></form>
<iframe name="f1"></iframe><iframe name="f2"></iframe>
<script>
document.getElementById("stop").submit();
document.getElementById("run").submit();
fetch("{gw}/v1/status/run", {{method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{job: "digest"}})}}).then(r => r.status, e => "error").then(
  v => {{ document.title = "done " + v; }});
</script>"""


async def test_a_page_of_another_site_cannot_stop_a_turn_or_run_a_job(
    gateway: Gateway, fake: FakeAnthropic, tab: Page, caplog: pytest.LogCaptureFixture
) -> None:
    """Cross-site form POSTs (text/plain, smuggling JSON) and a fetch() to the actions:
    refused by the guard (403 forbidden_origin) before anything runs."""
    caplog.set_level(logging.WARNING, logger="gateway.api.guard")
    fake.script({"text": "still running", "hang": True}, match="do not stop me")
    gw_url = url_of(gateway)
    async with other_site(ATTACK.format(gw=gw_url, key=DEMO)) as attacker, \
            aiohttp.ClientSession() as http:
        chat = asyncio.create_task(_post(http, gw_url + "/v1/chat/completions", {
            "model": "sonnet", "messages": [{"role": "user", "content": "do not stop me"}]},
            {"X-Conversation-Id": "status-demo"}))
        try:
            await _wait(lambda: _running(gateway, DEMO), "the turn to run")
            runs_before = len(fake_requests_for(fake, "daily digest"))
            await tab.page.goto(attacker + "/")
            await tab.page.wait_for_function("document.title.startsWith('done')")
            await _wait(lambda: _refused(caplog, 3), "three refusals")
            assert await _running(gateway, DEMO), "the turn was stopped by another site"
            assert not chat.done()
            view = gateway.scheduler.jobs()[0] if gateway.scheduler else None
            assert view is not None and not view.running
            assert len(fake_requests_for(fake, "daily digest")) == runs_before
            # the same requests without Origin but form-encoded: 415 before the handler
            for path, body in (("/v1/status/stop", f"conversation={DEMO}"),
                               ("/v1/status/run", "job=digest")):
                async with http.post(gw_url + path, data=body, headers={
                        "Content-Type": "application/x-www-form-urlencoded"}) as response:
                    assert response.status == 415, path
            assert await _running(gateway, DEMO)
        finally:
            await gateway.engine.interrupt(DEMO)
            await asyncio.wait_for(chat, 15)
    refusals = [r.getMessage() for r in caplog.records if r.name == "gateway.api.guard"]
    assert any("POST /v1/status/stop" in m for m in refusals), refusals
    assert any("/v1/status/run" in m for m in refusals), refusals


LINKS = """<!doctype html><title>links</title>
<a id="page" href="{gw}/">the status page</a> <a id="json" href="{gw}/v1/status">its JSON</a>"""


async def test_a_link_from_another_site_opens_the_page_but_not_its_data(
    gateway: Gateway, tab: Page
) -> None:
    """Following a link (a top-level navigation) to the page works from any site: the page
    holds no data and its script reads /v1/status same-origin. A link straight to the JSON
    stays refused (fetching it from the other site is the test above)."""
    gw_url = url_of(gateway)
    async with other_site(LINKS.format(gw=gw_url)) as other:
        await tab.page.goto(other + "/")
        async with tab.page.expect_navigation():
            await tab.page.click("#page")
        assert tab.page.url == gw_url + "/"
        await tab.page.wait_for_selector("#overview:not([hidden])")
        assert "logged in" in await tab.page.inner_text("#login")
        await tab.page.goto(other + "/")
        async with tab.page.expect_navigation() as followed:
            await tab.page.click("#json")
        response = await followed.value
        assert response is not None and response.status == 403
        assert "forbidden_origin" in await tab.page.inner_text("body")


async def _running(gateway: Gateway, key: str) -> bool:
    return key in gateway.engine.activity()


async def _refused(caplog: pytest.LogCaptureFixture, count: int) -> bool:
    return sum(r.name == "gateway.api.guard" and "/v1/status/" in r.getMessage()
               for r in caplog.records) >= count


async def test_with_keys_set_the_page_asks_for_one_and_keeps_it_in_the_session(
    gateway: Gateway, browser: Any
) -> None:
    """The same engine behind an app with API keys: the page holds no data; /v1/status needs
    the key, the page asks for it and sends it as a Bearer token."""
    app = create_app(gateway.engine, ApiConfig(api_keys=(KEY,)))
    app[SOURCES].scheduler = gateway.scheduler
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    context = await browser.new_context()
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/v1/status"), ("POST", "/v1/status/run"),
                                 ("POST", "/v1/status/stop"),
                                 ("GET", f"/v1/status/transcript?conversation={DEMO}")):
                async with http.request(method, url + path, json={"job": "digest"}) as r:
                    assert r.status == 401, (method, path)
            async with http.get(url + "/v1/status",
                                headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200 and (await r.json())["cli"]["version"]
        page = await context.new_page()
        await page.goto(url + "/")
        await page.wait_for_selector("#keyform:not([hidden])")
        assert await page.is_hidden("#overview")
        await page.fill("#key", "wrong")
        await page.click("#keyform button")
        await page.wait_for_selector("#keyerror:not([hidden])")
        await page.fill("#key", KEY)
        await page.click("#keyform button")
        await page.wait_for_selector("#overview:not([hidden])")
        assert await page.is_hidden("#keyform")
        assert await page.evaluate("sessionStorage.getItem('claude-max-gateway-key')") == KEY
        await page.wait_for_selector(f'li[data-conversation="{DEMO}"]')
    finally:
        await context.close()
        await runner.cleanup()


async def test_the_status_actions_answer_bad_input_clearly(gateway: Gateway) -> None:
    url = url_of(gateway)
    cases = [
        ("POST", "/v1/status/stop", {}, 400, "conversation: "),
        ("POST", "/v1/status/stop", {"conversation": 5}, 400, "conversation: "),
        ("POST", "/v1/status/stop", {"conversation": "nope:1"}, 404, "no conversation 'nope:1'"),
        ("POST", "/v1/status/run", {"job": "nope"}, 404, "no scheduled job 'nope'"),
        ("POST", "/v1/status/run", {"job": "to-telegram"}, 409, "needs the Telegram bot"),
        ("POST", "/v1/status/run", {"job": "digest", "extra": 1}, 400, "extra"),
        ("GET", "/v1/status/transcript", None, 400, "conversation: is required"),
        ("GET", f"/v1/status/transcript?conversation={DEMO}&limit=0", None, 400, "limit: "),
        ("GET", "/v1/status/transcript?conversation=nope:1", None, 404, "no conversation"),
        ("GET", "/ui/secret.txt", None, 404, "Unknown path"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, body, status, text in cases:
            async with http.request(method, url + path, json=body) as response:
                got = await response.json()
            assert response.status == status, (path, body, got)
            assert text in got["error"]["message"], (path, body, got)
        # an idle conversation: nothing to stop, said so
        await gateway.engine.set_model("status:idle", None)
        async with http.post(url + "/v1/status/stop",
                             json={"conversation": "status:idle"}) as response:
            assert response.status == 200
            assert await response.json() == {"conversation": "status:idle", "stopped": False}
