"""The send_file tool the engine offers chat sessions, through the real CLI's MCP client."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engine import OutgoingFile, ToolFinished, TurnResult
from gateway.engine.tools import SEND_FILE, resolve_outgoing
from gateway.errors import GatewayError
from tests.conftest import EngineFactory, collect, file_sink
from tests.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.cli


async def test_claude_sends_a_file_through_the_sink(
    make_engine: EngineFactory, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    engine = await make_engine()
    sent = file_sink(engine, "chat:")
    report = engine.config.workspace / "report.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("numbers")
    fake_api.script(
        {"tool_use": {"name": SEND_FILE,
                      "input": {"path": "report.txt", "caption": "your report", "kind": "file"}}},
        match="send me the report",
    )
    events = await collect(engine, "chat:1", "send me the report")
    assert isinstance(events[-1], TurnResult)
    assert sent == [OutgoingFile("chat:1", report.resolve(), "your report", "file")]
    assert any(isinstance(e, ToolFinished) and not e.is_error for e in events)
    assert "sent report.txt as file" in str(fake_api.requests()[-1]["tool_results"])
    # CLI 2.1.331 defers MCP tools: it names them to the model, loadable through ToolSearch
    first = fake_api.requests()[0]
    assert SEND_FILE in first["tools"] or SEND_FILE in str(first["messages"])


async def test_outside_paths_are_refused_and_claude_is_told(
    make_engine: EngineFactory, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    engine = await make_engine()
    sent = file_sink(engine, "chat:")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send")
    fake_api.script({"tool_use": {"name": SEND_FILE, "input": {"path": "../secret.txt"}}},
                    match="leak it")
    events = await collect(engine, "chat:2", "leak it")
    assert isinstance(events[-1], TurnResult)
    assert sent == []
    result = fake_api.requests()[-1]["tool_results"][0]
    assert result["is_error"] and "outside the folders" in result["content"]


async def test_keys_without_a_sink_get_no_tool(engine: object, fake_api: FakeAnthropic) -> None:
    from gateway.engine import Engine

    assert isinstance(engine, Engine)
    await collect(engine, "openai:x", "hello")
    request = fake_api.requests()[-1]
    assert SEND_FILE not in request["tools"] and SEND_FILE not in str(request["messages"])


def test_resolve_outgoing_refuses_escapes(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "ok.png").write_bytes(b"x")
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (ws / "link.txt").symlink_to(outside)
    assert resolve_outgoing("sub/ok.png", cwd=ws, roots=[ws]) == (ws / "sub" / "ok.png").resolve()
    assert resolve_outgoing(str(ws / "sub/ok.png"), cwd=ws, roots=[ws]).name == "ok.png"
    for bad in ("../outside.txt", str(outside), "link.txt", "sub/../../outside.txt", "sub",
                "missing.txt", ""):
        with pytest.raises(GatewayError):
            resolve_outgoing(bad, cwd=ws, roots=[ws])
    assert resolve_outgoing(str(outside), cwd=ws, roots=[ws, tmp_path]) == outside.resolve()
