"""Security: who may use the gateway, what leaks, what Claude may send, how processes start.

Already proven elsewhere and not repeated here (see the README's "Reliability" section):
a stranger in an allow-list is refused with no CLI turn (tests/test_telegram.py,
tests/test_discord.py ``test_a_stranger_is_refused_once_and_nothing_reaches_claude``),
413 for bodies over ``server.max_body_mb`` (tests/test_api_routes.py), oversized chat
attachments (test_telegram.py, test_discord.py), the log redaction filter
(tests/test_config.py), ``..`` in send_file (tests/test_engine_tools.py).

Added here:

* the real ``claude-max-api`` command with every secret set (API keys, a Telegram bot token
  against the fake Bot API, an OAuth token) at DEBUG log level: no secret (nor a wrong key a
  client offered) in the log or in any response body; the spawned CLI's
  ``/proc/<pid>/environ`` carries none of the gateway's secrets; the CLI is a direct child
  of the gateway, no shell in between; an empty Telegram allow-list refuses everyone;
* a non-loopback bind without keys stops start-up (the real command, nothing listens);
* keys compared with ``hmac.compare_digest`` against every key, no early exit;
* an empty Discord allow-list refuses everyone, with no CLI turn;
* send_file through the real CLI: symlinked files and folders and absolute paths out of
  the workspace are refused, in the same turn that sends a legitimate file;
* no ``shell=True``, ``os.system``, ``os.popen`` or ``create_subprocess_shell`` anywhere in
  gateway/ or bridges/.
"""

from __future__ import annotations

import ast
import asyncio
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.engine import TurnResult
from gateway.engine.tools import SEND_FILE
from tests import test_api_routes as api_routes
from tests import test_discord
from tests.conftest import EngineFactory, collect, file_sink
from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.fake_telegram import FakeTelegram
from tests.reliability_support import COMMAND, GatewayProcess, free_port, http

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parent.parent
# fixtures of other modules: the API over a real engine, the Discord bridge on dpytest
make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine
make_bridge = test_discord.make_bridge

API_KEYS = ("gwk-SECRETalpha-7f3a91", "gwk-SECRETbeta-c04d22")
TELEGRAM_TOKEN = "7777777:AAH-SECRETtelegram-9d8c7b6a5f"
OAUTH_TOKEN = "sk-ant-oat01-SECREToauth-5e4d3c2b1a"
WRONG_KEY = "gwk-SECRETalpha-7f3a9"  # a prefix of a real key
STRANGER = 4242


def _gateway_env(fake: FakeAnthropic, home: Path) -> dict[str, str]:
    env = cli_env(fake.base_url, str(home))
    env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


async def test_no_secret_leaks_into_logs_bodies_or_the_cli_environment(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path
) -> None:
    env = {**_gateway_env(fake_api, cli_home), "GATEWAY_API_KEYS": ",".join(API_KEYS),
           "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN}
    async with FakeTelegram(token=TELEGRAM_TOKEN) as tg:
        gateway = GatewayProcess(
            tmp_path, env, server='[logging]\nlevel = "DEBUG"\n'
            f'[telegram]\nbase_url = "{tg.base_url}"\nstatus_delay = 30\n')
        try:
            await asyncio.to_thread(gateway.start)
            bodies = await asyncio.to_thread(_exercise_the_api, gateway)
            # the CLI: a direct child, started without a shell, without the gateway's secrets
            assert gateway.proc is not None
            clis = gateway.descendants()
            assert clis, "a warm CLI process"
            for cli in clis:
                assert cli.ppid() == gateway.proc.pid, "started directly by the gateway"
                assert cli.name() not in ("sh", "bash", "dash", "zsh")
                environ = cli.environ()  # /proc/<pid>/environ
                for secret in (*API_KEYS, TELEGRAM_TOKEN):
                    assert secret not in json.dumps(environ), f"{secret} reached the CLI"
                assert environ["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH_TOKEN, (
                    "the CLI's own credential passes through")
            # an empty allow-list: everyone is refused, and nothing reaches Claude
            tg.user_text(STRANGER, "hello from telegram")
            refusal = await tg.wait_for(lambda: tg.sent(STRANGER), within=30)
            assert "allowed_users" in refusal[0].text and str(STRANGER) in refusal[0].text
            assert not [r for r in fake_api.requests()
                        if "hello from telegram" in r["last_user_text"]]
        finally:
            if gateway.proc is not None and gateway.proc.poll() is None:
                gateway.signal(signal.SIGTERM)
                await asyncio.to_thread(gateway.wait, 30)
            gateway.kill()
    log = gateway.log()
    assert "Telegram bot" in log and "chat openai:" in log, "the log saw the action"
    assert "/bot***/getMe" in log, "the token was in a logged URL, and redacted"
    for secret in (*API_KEYS, TELEGRAM_TOKEN, OAUTH_TOKEN, WRONG_KEY,
                   TELEGRAM_TOKEN.split(":")[1]):
        assert secret not in log, f"{secret} is in the log"
        for body in bodies:
            assert secret.encode() not in body, f"{secret} is in a response body"
    assert "Traceback" not in log


def _exercise_the_api(gateway: GatewayProcess) -> list[bytes]:
    """Requests that succeed and fail in every way a client can see; their bodies."""
    url = gateway.url
    good = {"Authorization": f"Bearer {API_KEYS[1]}"}
    bodies: list[bytes] = []

    def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             expect: int = 200) -> bytes:
        status, _, data = http(method, url + path, body, headers)
        assert status == expect, (method, path, status, data[:300])
        bodies.append(data)
        return data

    call("GET", "/v1/models", expect=401)
    call("GET", "/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"}, expect=401)
    call("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEYS[0].upper()}"},
         expect=401)
    call("GET", "/v1/models", headers={"X-Api-Key": API_KEYS[0]})
    call("GET", "/v1/models", headers=good)
    call("GET", "/health")
    chat = {"model": "sonnet", "messages": [{"role": "user", "content": "hi there"}]}
    call("POST", "/v1/chat/completions", chat, {**good, "X-Conversation-Id": "sec"})
    call("POST", "/v1/chat/completions", chat,
         {"Authorization": f"Bearer {WRONG_KEY}"}, expect=401)
    for trigger, status in (("FAIL_401", 502), ("FAIL_500", 502), ("FAIL_429", 429)):
        failing = {"model": "sonnet", "messages": [{"role": "user", "content": trigger}]}
        call("POST", "/v1/chat/completions", failing, {**good, "X-Conversation-Id": "sec"},
             expect=status)
    call("POST", "/v1/chat/completions", {"model": "gpt-9", "messages": chat["messages"]}, good,
         expect=400)
    call("POST", "/v1/chat/completions", {"messages": "nope"}, good, expect=400)
    call("GET", "/v1/nothing-here", headers=good, expect=404)
    return bodies


def test_a_public_bind_without_keys_is_refused_at_start_up(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path
) -> None:
    env = _gateway_env(fake_api, cli_home)
    env.pop("GATEWAY_API_KEYS", None)
    port = free_port()
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        gateway = GatewayProcess(tmp_path, env, port=port, server=f'host = "{host}"')
        result = subprocess.run([*COMMAND, "--config", str(gateway.config)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "server.host" in result.stderr and host in result.stderr, result.stderr
        assert "GATEWAY_API_KEYS" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "nothing listens"


async def test_keys_are_compared_in_constant_time_against_every_key(
    make_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The middleware compares with hmac.compare_digest, and with every configured key
    whatever the result (no early exit that would tell which key matched)."""
    calls: list[tuple[bytes, bytes]] = []

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    class Hmac:
        compare_digest = staticmethod(recording)

    monkeypatch.setattr("gateway.api.http.hmac", Hmac)
    gw = await make_gateway(api_keys=("k-one", "k-two", "k-three"))
    for offered, status in (("k-one", 200), ("k-three", 200), ("k-on", 401), ("k-one ", 200),
                            ("K-ONE", 401), ("x" * 2_000, 401)):
        calls.clear()
        got, _, _ = await gw.raw("GET", "/v1/models",
                                 headers={"Authorization": f"Bearer {offered}"}, check=False)
        assert got == status, offered[:20]
        assert [b for _, b in calls] == [b"k-one", b"k-two", b"k-three"], offered[:20]
        assert all(a == offered.strip().encode() for a, _ in calls)


async def test_an_empty_discord_allow_list_refuses_everyone(
    make_bridge: Any, fake_api: FakeAnthropic
) -> None:
    bridge, fake = await make_bridge(allowed_users=[])
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "let me in")
    await fake.message(fake.general, fake.owner, f"{fake.mention()} and here?")
    await fake.wait_for(lambda: fake.bot_messages(dm.id), what="the refusal")
    refusal = fake.bot_messages(dm.id)[0].content
    assert "allowed\\_users" in refusal
    await asyncio.sleep(0.3)
    assert fake_api.requests() == [], "a refused user causes no CLI turn"
    assert await bridge.engine.describe(f"discord:{dm.id}") is None


async def test_send_file_refuses_symlinks_and_absolute_paths_out_of_the_workspace(
    make_engine: EngineFactory, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    engine = await make_engine()
    sent = file_sink(engine, "chat:")
    ws = engine.config.workspace
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "id_rsa").write_text("KEY")
    (ws / "report.txt").write_text("ok")
    (ws / "innocent.txt").symlink_to(outside / "id_rsa")
    (ws / "docs").symlink_to(outside)
    attempts = ["innocent.txt", "docs/id_rsa", str(outside / "id_rsa"), "./docs/../report.txt",
                "report.txt/../../private/id_rsa", "~/../../etc/passwd"]
    fake_api.script({"tool_uses": [
        {"name": SEND_FILE, "input": {"path": p, "kind": "file"}, "id": f"toolu_{i:02d}"}
        for i, p in enumerate([*attempts, "report.txt"])]}, match="send everything")
    events = await collect(engine, "chat:sec", "send everything")
    assert isinstance(events[-1], TurnResult)
    assert [item.path for item in sent] == [(ws / "report.txt").resolve()]
    results = {r["tool_use_id"]: r for r in fake_api.requests()[-1]["tool_results"]}
    for i, path in enumerate(attempts):
        result = results[f"toolu_{i:02d}"]
        assert result["is_error"], (path, result)
        assert "KEY" not in result["content"] and "root:" not in result["content"]
    assert not results[f"toolu_{len(attempts):02d}"]["is_error"]


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found.append((name, node))
    return found


def test_no_process_is_ever_started_through_a_shell() -> None:
    sources = sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("bridges/**/*.py")])
    assert len(sources) > 30
    offences = []
    starters = 0
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, call in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name in ("system", "popen", "create_subprocess_shell", "getoutput",
                        "getstatusoutput", "spawnlp", "spawnvp"):
                offences.append(f"{where} {name}()")
            if name in ("Popen", "run", "call", "check_call", "check_output",
                        "create_subprocess_exec"):
                starters += 1
            for keyword in call.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    offences.append(f"{where} shell=...")
    assert offences == []
    assert starters >= 2, "the scan sees the process starts"
    # and at run time: what this test process starts has no shell in between
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getppid())"],
                           capture_output=True, text=True, check=True)
    assert int(child.stdout) == os.getpid()
    assert psutil.Process().name() not in ("sh", "bash")
