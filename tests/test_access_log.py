"""The HTTP access log (gateway/api/access.py): one INFO line per request, streams logged
when they end, refused requests too, and never a body, a query string or a key.

The real API over a real engine running the real CLI against the fake Anthropic API (the
scripted fake CLI where a crash mid-stream is needed).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from gateway.api import api_config_from_settings
from gateway.config import load_settings
from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory
from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.reliability_support import GatewayProcess, http
from tests.test_api_routes import FAKE_CLI, GatewayFactory

pytestmark = pytest.mark.cli

# fixtures of tests/test_api_routes.py: the API over a real engine
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine
KEY = "sk-gateway-key-9f8e7d6c"
ACCESS = "gateway.api.access"
LINE = re.compile(
    r"^(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<seconds>\d+\.\d{3})s "
    r"conversation=(?P<conversation>\S+)(?P<extra>.*)$"
)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    lines = []
    for record in caplog.records:
        if record.name == ACCESS:
            assert record.levelno == logging.INFO
            match = LINE.match(record.getMessage())
            assert match, record.getMessage()
            lines.append(match.groupdict())
    return lines


async def test_one_line_per_request_without_bodies_queries_or_keys(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(api_keys=(KEY,))
    auth = {"Authorization": f"Bearer {KEY}"}
    secret_text = "BODY-SECRET-41ab do not log me"
    status, headers, body = await gw.chat(
        {"model": "sonnet", "messages": [{"role": "user", "content": secret_text}]},
        headers=auth, params={"api_key": "QUERY-SECRET-77"},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == f"echo: {secret_text}"
    status, _, _ = await gw.raw("GET", "/v1/models", headers={"Authorization": "Bearer WRONG-1"})
    assert status == 401
    status, _, _ = await gw.raw("GET", "/v1/nothing?token=QUERY-SECRET-88", headers=auth,
                                check=False)
    assert status == 404
    # refused by the guard before anything else (a DNS-rebinding Host)
    status, _, _ = await gw.raw("GET", "/v1/models", headers={**auth, "Host": "evil.example"},
                                check=False)
    assert status == 421

    lines = access_lines(caplog)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/chat/completions", "200"),
        ("GET", "/v1/models", "401"),
        ("GET", "/v1/nothing", "404"),
        ("GET", "/v1/models", "421"),
    ]
    assert lines[0]["conversation"] == headers["X-Conversation-Id"]
    assert lines[0]["conversation"].startswith("auto:") and lines[0]["extra"] == ""
    assert all(x["conversation"] == "-" for x in lines[1:])
    assert 0 < float(lines[0]["seconds"]) < 60
    # nothing secret in any record written at INFO or above, whatever the logger (but the
    # aiohttp.access log of this test's own runner: the gateway's runs with access_log=None)
    written = "\n".join(r.getMessage() for r in caplog.records
                        if r.levelno >= logging.INFO and r.name != "aiohttp.access")
    assert "/v1/chat/completions" in written
    for secret in (KEY, "WRONG-1", "QUERY-SECRET", "BODY-SECRET", "do not log me"):
        assert secret not in written


async def test_a_stream_is_logged_when_it_ends_with_its_real_outcome(
    make_gateway: GatewayFactory, new_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    gw = await make_gateway()
    gw.fake.script({"text": "a slow streamed answer in pieces", "chunk_delay": 0.2},
                   match="stream slowly")
    started = time.monotonic()
    status, headers, (events, done) = await gw.chat(
        {"model": "sonnet", "messages": [{"role": "user", "content": "stream slowly"}],
         "stream": True}
    )
    took = time.monotonic() - started
    assert status == 200 and done
    (line,) = access_lines(caplog)
    assert (line["status"], line["extra"]) == ("200", " stream")
    assert line["conversation"] == headers["X-Conversation-Id"]
    # the duration is the whole stream's (5 deltas 0.2 s apart), not the time to the headers
    assert took * 0.8 <= float(line["seconds"]) <= took
    assert float(line["seconds"]) >= 0.8

    # a stream whose CLI died after text went out: HTTP 200, but the log says how it ended
    caplog.clear()
    crashing = await make_gateway(await new_engine(cli_path=FAKE_CLI))
    status, _, (events, done) = await crashing.chat(
        {"model": "sonnet", "messages": [{"role": "user", "content": "DIE midway"}],
         "stream": True}, headers={"X-Stream-Mode": "verbose"}
    )
    assert status == 200 and done and events[-1]["error"]["code"] == "cli_crashed"
    (line,) = access_lines(caplog)
    assert (line["status"], line["extra"]) == ("200", " stream error=cli_crashed")


async def test_access_log_off(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    gw = await make_gateway(access_log=False)
    status, _, _ = await gw.raw("GET", "/v1/models")
    assert status == 200
    assert access_lines(caplog) == []


def test_the_real_gateway_writes_it_and_no_query_strings(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path
) -> None:
    """The ``claude-max-api`` command as installed: its log has our lines, and aiohttp's own
    access log (which writes query strings) is off."""
    env = cli_env(fake_api.base_url, str(cli_home))
    env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["GATEWAY_API_KEYS"] = KEY
    gateway = GatewayProcess(tmp_path, env).start()
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        status, headers, _ = gateway.chat("PROCESS-BODY-SECRET", headers=auth)
        assert status == 200
        status, _, _ = http("GET", gateway.url + "/v1/models?api_key=QUERY-SECRET-99")
        assert status == 401
    finally:
        gateway.signal(signal.SIGTERM)
        try:
            assert gateway.wait(timeout=30) == 0
        finally:
            gateway.kill()
    log = gateway.log()
    conversation = headers["X-Conversation-Id"]
    lines = [line.split(" gateway.api.access: ", 1)[1] for line in log.splitlines()
             if " INFO " in line and " gateway.api.access: " in line]
    assert lines[0].startswith("GET /health 200 ")  # start() waited for it
    lines = [x for x in lines if not x.startswith("GET /health ")]
    assert [LINE.match(x) is not None for x in lines] == [True, True], lines
    assert lines[0].startswith("POST /v1/chat/completions 200 ")
    assert lines[0].endswith(f"s conversation={conversation}")
    assert lines[1].startswith("GET /v1/models 401 ")
    for secret in (KEY, "QUERY-SECRET", "PROCESS-BODY-SECRET"):
        assert secret not in log


def test_the_setting_reaches_the_api(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    none = tmp_path / "none.env"
    assert api_config_from_settings(load_settings(None, env, env_file=none)).access_log is True
    off = tmp_path / "config.toml"
    off.write_text("[logging]\naccess_log = false\n", encoding="utf-8")
    assert api_config_from_settings(load_settings(off, env, env_file=none)).access_log is False
    on = load_settings(off, {**env, "CMG_LOGGING__ACCESS_LOG": "true"}, env_file=none)
    assert on.logging.access_log is True
