"""Large system prompts and other client-sized inputs never go through the CLI's argv.

Linux caps one command-line argument at 128 KiB (MAX_ARG_STRLEN); the appended system text
used to be ``--append-system-prompt <text>`` and a 200 KB ``system`` message was a 502
"Argument list too long". It now reaches the CLI in a private file
(``--append-system-prompt-file``). Real engine, real bundled CLI, fake Anthropic API: what the
model got is read back from the fake's request log.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gateway.engine import Engine, TurnOptions, TurnResult
from gateway.engine.client_tools import ToolMode
from gateway.engine.process import PromptFiles
from gateway.errors import ErrorKind, GatewayError
from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory, collect
from tests.fake_anthropic import FakeAnthropic
from tests.test_api_routes import GatewayFactory, msgs

pytestmark = pytest.mark.cli

make_gateway = api_routes.make_gateway
new_engine = api_routes.new_engine

#: the longest single argument a CLI process may get: far below Linux's 128 KiB
ARGV_BOUND = 4096
#: a sentence of Claude Code's own (preset) prompt: the full preset must still be sent
PRESET_MARK = "You are Claude Code"


def big_text(size: int, tag: str) -> str:
    """``size`` characters, distinct lines, with markers at both ends (a cut shows)."""
    lines = [f"{tag} rule {i:07d}: keep every line of this prompt." for i in range(size // 40)]
    body = "\n".join(lines)
    return f"<<{tag} START>>\n{body[: size - 40]}\n<<{tag} END>>"


def longest_arg(pid: int) -> int:
    return max(len(a) for a in psutil.Process(pid).cmdline())


def private_files(engine: Engine) -> list[Path]:
    folder = engine._prompt_files.folder
    assert folder is not None
    return sorted(p for p in folder.iterdir())


@pytest.mark.parametrize("size", [200_000, 1_000_000], ids=["200KB", "1MB"])
async def test_a_large_system_message_reaches_the_model_whole(
    size: int, make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine()
    gw = await make_gateway(engine)
    system = big_text(size, f"S{size}")
    reply = await gw.client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "hi big"}],
        extra_headers={"X-Conversation-Id": f"big{size}"},
    )
    assert reply.choices[0].message.content == "echo: hi big"
    seen = gw.seen("hi big")["system_text"]
    assert system in seen, "the system text must arrive whole"
    assert PRESET_MARK in seen and seen.index(PRESET_MARK) < seen.index(system[:30]), (
        "Claude Code's own prompt first, then the appended text"
    )
    (pid,) = engine.live_pids().values()
    assert pid is not None and longest_arg(pid) < ARGV_BOUND
    # the same system again: the same process answers (system_hash still matches)
    again = await gw.client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "hi again"}],
        extra_headers={"X-Conversation-Id": f"big{size}"},
    )
    assert again.choices[0].message.content == "echo: hi again"
    assert list(engine.live_pids().values()) == [pid]
    assert system in gw.seen("hi again")["system_text"]


async def test_a_large_owner_prompt_and_a_client_system_both_arrive(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    owner = big_text(200_000, "OWNER")
    engine = await make_engine(append_system_prompt=owner, spare_processes=0)
    events = await collect(engine, "t:owner", "owner rules?", TurnOptions(system="CLIENT RULES"))
    assert isinstance(events[-1], TurnResult), events[-1]
    seen = [r for r in fake_api.requests() if r["last_user_text"] == "owner rules?"][-1]
    system = seen["system_text"]
    assert owner in system and "CLIENT RULES" in system
    assert system.index(owner) < system.index("CLIENT RULES"), "the owner's text comes first"
    pid = engine.live_pids()["t:owner"]
    assert pid is not None and longest_arg(pid) < ARGV_BOUND
    assert owner not in " ".join(psutil.Process(pid).cmdline())


async def test_prompt_files_are_private_follow_their_process_and_a_new_system_applies(
    make_engine: EngineFactory, fake_api: FakeAnthropic
) -> None:
    engine = await make_engine(spare_processes=0)
    folder = engine._prompt_files.folder
    assert folder is not None and private_files(engine) == []
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(engine._prompt_files.root).st_mode) == 0o700
    await collect(engine, "t:change", "with A", TurnOptions(system="SYSTEM VERSION A"))
    (file_a,) = private_files(engine)
    assert stat.S_IMODE(os.stat(file_a).st_mode) == 0o600
    assert file_a.read_text() == "SYSTEM VERSION A"
    pid_a = engine.live_pids()["t:change"]
    # a changed system: another process (the CLI reads the file only while it starts), which
    # resumes the session and sends the NEW text (the CLI's system-prompt snapshot is off)
    events = await collect(engine, "t:change", "with B", TurnOptions(system="SYSTEM VERSION B"))
    assert isinstance(events[-1], TurnResult), events[-1]
    assert engine.live_pids()["t:change"] != pid_a, "a different system needs another process"
    seen = [r for r in fake_api.requests() if r["last_user_text"] == "with B"][-1]
    assert "SYSTEM VERSION B" in seen["system_text"]
    assert "SYSTEM VERSION A" not in seen["system_text"]
    assert "with A" in json.dumps(seen["messages"]), "the history is kept (--resume)"
    row = await engine.store.get_session("t:change")
    live = engine._conversations["t:change"].live
    assert row is not None and live is not None and row.system_hash == live.system_hash
    assert [p.read_text() for p in private_files(engine)] == ["SYSTEM VERSION B"], (
        "the closed process's file is removed"
    )
    await engine.stop()
    assert not folder.exists(), "stop removes the engine's folder"


def test_leftovers_of_dead_gateways_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    for name in (f"{dead_pid}-left", f"{os.getppid()}-alive", "unrelated"):
        (root / name).mkdir(parents=True)
        (root / name / "x.txt").write_text("secret")
    (root / f"{dead_pid}-stray.partial").write_text("half")
    (root / f"{dead_pid}-link").symlink_to(root / "unrelated")
    files = PromptFiles(root)
    files.open()
    assert files.folder is not None and files.folder.parent == root
    names = {p.name for p in root.iterdir()}
    assert not any(n.startswith(f"{dead_pid}-") for n in names), "a dead gateway's are removed"
    assert (root / "unrelated" / "x.txt").exists(), "a link is removed, not followed"
    assert {f"{os.getppid()}-alive", "unrelated"} <= names, "a running one's are kept"
    path = files.write("héllo\n" * 3)
    assert path.read_text() == "héllo\n" * 3
    assert [p.name for p in files.folder.iterdir()] == [path.name], "no partial file remains"
    own = files.folder
    files.close()
    assert not own.exists() and files.folder is None


def test_a_shared_or_linked_root_is_refused_and_a_loose_one_tightened(tmp_path: Path) -> None:
    """Another local user must not read the prompts, nor plant the folder beforehand."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(GatewayError) as info:
        PromptFiles(link).open()
    assert info.value.kind is ErrorKind.CONFIG and "link" in info.value.message
    if os.geteuid() == 0:  # only root can hand a folder to another user
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(GatewayError) as info:
            PromptFiles(foreign).open()
        assert info.value.kind is ErrorKind.CONFIG and "another user" in info.value.message
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    files = PromptFiles(loose)
    files.open()
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700, "a group/world-readable root is fixed"
    files.close()


async def test_a_huge_model_name_is_a_clear_400(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    status, _, body = await gw.chat({"model": "claude-" + "x" * 200_000, "messages": msgs("hi")})
    assert status == 400, body
    assert body["error"]["code"] == "model_not_found"
    assert "at most 100" in body["error"]["message"] and len(body["error"]["message"]) < 300
    assert gw.saw("hi") is None


async def test_huge_client_tool_schemas_do_not_go_through_argv(
    make_gateway: GatewayFactory, new_engine: EngineFactory
) -> None:
    engine = await new_engine()
    gw = await make_gateway(engine, tool_mode=ToolMode.CLIENT)
    props = {f"field_{i}": {"type": "string", "description": f"field number {i} " * 8}
             for i in range(2500)}
    tool = {"type": "function", "function": {
        "name": "lookup", "description": "Look something up. " * 500,
        "parameters": {"type": "object", "properties": props}}}
    size = len(json.dumps(props, separators=(",", ":")))
    assert size > 300_000
    status, _, body = await gw.chat(
        {"model": "sonnet", "messages": msgs("use tools?"), "tools": [tool]},
        headers={"X-Conversation-Id": "tools"},
    )
    assert status == 200, body
    seen = gw.seen("use tools?")
    assert "mcp__client__lookup" in seen["tools"]
    # nothing else in the request is that big: the whole schema reached the model
    assert seen["body_size"] > size
    (pid,) = engine.live_pids().values()
    assert pid is not None and longest_arg(pid) < ARGV_BOUND
