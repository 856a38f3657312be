"""Real npm clients against the real gateway (real CLI, fake Anthropic API): Codex CLI with
a custom ``wire_api = "responses"`` provider, and OpenClaw with an ``openai-responses`` and
an ``anthropic-messages`` provider. In each, two turns continue ONE CLI session of the
gateway, also when OpenClaw strips its reply directives from the history it resends or
compacts its transcript.

One gateway and one ``openclaw gateway run`` process serve the module (OpenClaw takes
seconds to start); the clients run as subprocesses of the event loop that serves the
gateway, never blocking it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import node_tool
from tests.responses_support import KEY, Api, serve_api

#: OpenClaw needs ~10 s to start and ~5 s for its first turn on an idle machine, but
#: a minute or more each on 2 loaded cores (its own SQLite upkeep): more than the default 120 s
pytestmark = [pytest.mark.cli, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(400)]

MODEL = "claude-sonnet-4"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    async with serve_api(tmp_path_factory.mktemp("responses-clients")) as gateway:
        yield gateway


async def run(argv: list[str], env: dict[str, str], cwd: Path,
              limit: float = 90.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def continued_in_one_session(api: Api, first: str, second: str) -> dict[str, Any]:
    """The model request of the second turn carries the first turn as the CLI's own
    history (one session resumed, no transcript of a new one)."""
    hits = [r for r in api.fake.requests() if second in json.dumps(r["messages"][-1:])]
    assert hits, f"the model never saw {second!r}"
    request = hits[-1]
    earlier = json.dumps(request["messages"][:-1])
    assert first in earlier, "the second turn does not carry the first as history"
    assert "conversation_history" not in json.dumps(request["messages"])
    return request


# --------------------------------------------------------------------------- Codex CLI


async def test_codex_exec_two_turns_in_one_session(api: Api, tmp_path: Path) -> None:
    codex, node_env = node_tool("codex")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{MODEL}"\nmodel_provider = "gateway"\n\n'
        "[model_providers.gateway]\n"
        'name = "Claude Max Gateway"\n'
        f'base_url = "{api.url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "GATEWAY_API_KEY"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, **node_env, "CODEX_HOME": str(home), "HOME": str(tmp_path),
           "GATEWAY_API_KEY": KEY}
    api.fake.script({"text": "Codex, this is Claude."}, match="codex turn one")
    flags = ["exec", "--skip-git-repo-check", "-C", str(work), "-s", "read-only"]
    code, out, err = await run([codex, *flags, "codex turn one"], env, work)
    assert code == 0, err[-2000:]
    assert "Codex, this is Claude." in out  # shown only after response.output_item.done

    api.fake.script({"text": "Still the same session."}, match="codex turn two")
    code, out, err = await run([codex, *flags, "resume", "--last", "codex turn two"], env,
                               work)
    assert code == 0, err[-2000:]
    assert "Still the same session." in out
    request = continued_in_one_session(api, "codex turn one", "codex turn two")
    assert request["system_text"]  # Codex's developer messages became the system text


# --------------------------------------------------------------------------- OpenClaw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenClaw:
    """``openclaw gateway run`` with providers pointing at our gateway; its own OpenAI
    endpoint drives a turn (``x-openclaw-model`` picks the provider, ``user`` the session)."""

    def __init__(self, url: str, binary: str = "", env: dict[str, str] | None = None,
                 home: Path | None = None) -> None:
        self.url = url
        self.binary, self.env, self.home = binary, env or {}, home

    async def cli(self, *args: str, rpc: bool = False) -> str:
        """``openclaw <args>``; with ``rpc`` against this gateway (its WebSocket RPC)."""
        assert self.home is not None
        port = self.url.rsplit(":", 1)[1]
        remote = ["--url", f"ws://127.0.0.1:{port}", "--token", "openclaw-test"] if rpc else []
        code, out, err = await run([self.binary, *args, *remote], self.env, self.home,
                                   limit=180.0)
        assert code == 0, (out + err)[-3000:]
        return out

    async def turn(self, provider: str, session: str, text: str) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.url}/v1/chat/completions",
                headers={"Authorization": "Bearer openclaw-test",
                         "x-openclaw-model": f"{provider}/{MODEL}"},
                json={"model": "openclaw", "user": session,
                      "messages": [{"role": "user", "content": text}]},
                timeout=aiohttp.ClientTimeout(total=300),
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
        return str(body["choices"][0]["message"]["content"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def openclaw(api: Api, tmp_path_factory: pytest.TempPathFactory,
                   ) -> AsyncIterator[OpenClaw]:
    binary, node_env = node_tool("openclaw")
    home = tmp_path_factory.mktemp("openclaw-home")
    (home / ".openclaw").mkdir()
    port = free_port()
    models = [{"id": MODEL, "name": "Claude through the gateway", "input": ["text"]}]
    config = {
        "gateway": {"mode": "local", "bind": "loopback", "port": port,
                    "auth": {"mode": "token", "token": "openclaw-test"},
                    "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
        "models": {"providers": {
            "responses": {"baseUrl": f"{api.url}/v1", "apiKey": KEY,
                          "api": "openai-responses", "models": models},
            "messages": {"baseUrl": api.url, "apiKey": KEY,
                         "api": "anthropic-messages", "models": models},
        }},
        "agents": {"defaults": {"model": {"primary": f"responses/{MODEL}"}}},
    }
    (home / ".openclaw" / "openclaw.json").write_text(json.dumps(config))
    env = {**os.environ, **node_env, "HOME": str(home)}
    log = os.open(home / "openclaw.log", os.O_WRONLY | os.O_CREAT, 0o600)
    proc = await asyncio.create_subprocess_exec(
        binary, "gateway", "run", "--bind", "loopback", "--port", str(port),
        env=env, cwd=home, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(720):  # 180 s
                assert proc.returncode is None, (home / "openclaw.log").read_text()[-3000:]
                try:
                    async with http.get(f"{url}/v1/models",
                                        headers={"Authorization": "Bearer openclaw-test"}) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("OpenClaw did not start:\n"
                                     + (home / "openclaw.log").read_text()[-3000:])
        yield OpenClaw(url, binary, env, home)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        os.close(log)


async def test_openclaw_openai_responses_two_turns_in_one_session(
    api: Api, openclaw: OpenClaw
) -> None:
    first = await openclaw.turn("responses", "oc-responses", "openclaw responses one")
    assert "openclaw responses one" in first  # the fake echoes what the model was sent
    second = await openclaw.turn("responses", "oc-responses", "openclaw responses two")
    assert "openclaw responses two" in second
    continued_in_one_session(api, "openclaw responses one", "openclaw responses two")


async def test_openclaw_anthropic_messages_two_turns_in_one_session(
    api: Api, openclaw: OpenClaw
) -> None:
    first = await openclaw.turn("messages", "oc-messages", "openclaw messages one")
    assert "openclaw messages one" in first
    second = await openclaw.turn("messages", "oc-messages", "openclaw messages two")
    assert "openclaw messages two" in second
    continued_in_one_session(api, "openclaw messages one", "openclaw messages two")


async def test_openclaw_directives_and_compaction_continue_the_same_session(
    api: Api, openclaw: OpenClaw
) -> None:
    """Claude's first answer carries OpenClaw's reply directives, which OpenClaw strips from
    the history it keeps and resends; then ``openclaw sessions compact --max-lines`` (its own
    compaction, by truncation) cuts the beginning off its transcript, mid-turn. Each history
    it then resends still continues the same CLI session (gateway/api/lineage.py), which keeps
    the turns OpenClaw dropped, with no transcript."""
    api.fake.script({"text": "[[reply_to_current]] Directive answer one.\n\n[[audio_as_voice]]"},
                    match="openclaw compact 1")
    for n in (1, 2, 3):
        text = f"openclaw compact {n} " + "word " * 8
        answer = await openclaw.turn("responses", "oc-compact", text)
        if n == 1:
            assert "Directive answer one." in answer and "[[" not in answer
    request = continued_in_one_session(api, "openclaw compact 1", "openclaw compact 2")
    assert "Directive answer one." in json.dumps(request["messages"][:-1])
    sessions = json.loads(await openclaw.cli("sessions", "list", "--json"))
    (key,) = [s["key"] for s in sessions["sessions"] if s["key"].endswith(":oc-compact")]
    await openclaw.cli("sessions", "compact", key, "--max-lines", "6", "--json", rpc=True)
    await openclaw.turn("responses", "oc-compact", "openclaw compact 4")
    continued_in_one_session(api, "openclaw compact 1", "openclaw compact 4")
