"""Prove that tests/fake_anthropic.py and tests/fake_cli.py are faithful.

The ``cli`` tests run the real bundled Claude Code CLI against :class:`FakeAnthropic`; the last
test drives ``tests/fake_cli.py`` through ``claude_agent_sdk.ClaudeSDKClient``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fake_anthropic import (
    RATELIMIT_GATEWAY_TOKEN,
    FakeAnthropic,
    bundled_cli,
    cli_env,
    sample_ratelimit_headers,
    user_message_line,
)

FAKE_CLI = Path(__file__).with_name("fake_cli.py")
CLI_TIMEOUT = 30.0


# --------------------------------------------------------------------------- helpers


def http(
    fake_api: FakeAnthropic, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    """A blocking request from the test thread (the fake must keep serving meanwhile)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        fake_api.base_url + path,
        data=data,
        method=method,
        headers={"content-type": "application/json", "x-api-key": "sk-secret"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sse_text(raw: bytes) -> str:
    """The text of all text deltas of an SSE body."""
    return "".join(
        data["delta"].get("text", "")
        for kind, data in sse_events(raw)
        if kind == "content_block_delta"
    )


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = frame.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


async def run_cli(
    env: dict[str, str],
    cwd: Path,
    prompts: list[str | list[dict[str, Any]]],
    *extra_args: str,
) -> tuple[list[dict[str, Any]], int]:
    """Run the real CLI with stream-json input, one turn per prompt (waiting for each result)."""
    cmd = [
        bundled_cli(),
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        *extra_args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    events: list[dict[str, Any]] = []

    async def drive() -> int:
        assert proc.stdin is not None and proc.stdout is not None
        for prompt in prompts:
            proc.stdin.write(user_message_line(prompt))
            await proc.stdin.drain()
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return await proc.wait()
                events.append(json.loads(line))
                if events[-1]["type"] == "result":
                    break
        proc.stdin.close()
        async for line in proc.stdout:
            events.append(json.loads(line))
        return await proc.wait()

    try:
        code = await asyncio.wait_for(drive(), CLI_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return events, code


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def stream_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"]["type"] for e in of_type(events, "stream_event")]


# --------------------------------------------------------------------------- fake server alone


def test_server_routes_and_non_streaming(fake_api: FakeAnthropic) -> None:
    assert http(fake_api, "GET", "/")[0] == 200
    assert http(fake_api, "HEAD", "/")[0] == 200
    status, _, body = http(fake_api, "GET", "/v1/models")
    assert status == 200 and json.loads(body)["data"]
    status, _, body = http(fake_api, "POST", "/v1/messages/count_tokens", {"messages": []})
    assert status == 200 and json.loads(body)["input_tokens"] > 0
    status, _, body = http(fake_api, "GET", "/nope")
    assert status == 404 and json.loads(body)["type"] == "error"

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>x</system-reminder>"},
                {"type": "text", "text": "hi there"},
            ],
        },
        {"role": "system", "content": "agents list"},
    ]
    status, headers, body = http(
        fake_api,
        "POST",
        "/v1/messages?beta=true",
        {
            "model": "m-1",
            "messages": messages,
            "system": [{"type": "text", "text": "sys"}],
            "tools": [{"name": "Bash"}],
            "max_tokens": 5,
        },
    )
    reply = json.loads(body)
    assert status == 200 and headers["request-id"].startswith("req_fake")
    assert reply["id"].startswith("msg_fake") and reply["model"] == "m-1"
    assert reply["content"] == [{"type": "text", "text": "echo: hi there"}]
    assert reply["stop_reason"] == "end_turn" and reply["usage"]["input_tokens"] > 0

    (entry,) = fake_api.requests()
    assert entry["path"] == "/v1/messages" and entry["query"] == "beta=true"
    assert entry["roles"] == ["user", "system"] and entry["last_user_text"] == "hi there"
    assert entry["system_text"] == "sys\nagents list" and entry["tools"] == ["Bash"]
    assert entry["stream"] is False and entry["headers"]["x-api-key"] == "<redacted>"
    assert "GET /nope" in fake_api.hits()
    fake_api.reset()
    assert fake_api.requests() == [] and fake_api.hits() == []


def test_server_stream_shape_errors_and_triggers(fake_api: FakeAnthropic) -> None:
    def post(content: Any, **extra: Any) -> tuple[int, dict[str, str], bytes]:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
        return http(fake_api, "POST", "/v1/messages", {**body, **extra})

    status, headers, raw = post("RUN_BASH")
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == [
        "message_delta",
        "message_stop",
    ]
    assert all(kind == data["type"] for kind, data in events)
    start = events[0][1]["message"]["usage"]
    assert start["output_tokens"] == 1 and "cache_read_input_tokens" in start
    tool_start = next(d for k, d in events if k == "content_block_start" and d["index"] == 1)
    assert tool_start["content_block"]["id"].startswith("toolu_fake")
    json_parts = [
        d["delta"]["partial_json"]
        for k, d in events
        if k == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(json_parts) == 3
    assert json.loads("".join(json_parts)) == {
        "command": "echo hello",
        "description": "Print hello",
    }
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    tool_result = [
        {
            "type": "tool_result",
            "tool_use_id": tool_start["content_block"]["id"],
            "content": [{"type": "text", "text": "hello"}],
        }
    ]
    assert sse_text(post(tool_result)[2]) == "Tool said: hello"

    status, headers, raw = post("please FAIL_429")
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(raw)["error"] == {"type": "rate_limit_error", "message": "fake 429 error"}
    assert post("x FAIL_500_ONCE")[0] == 500
    assert post("x FAIL_500_ONCE")[0] == 200
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}
    image_reply = sse_text(post([png, {"type": "text", "text": "look"}])[2])
    assert image_reply == "image received (image/png, 4 b64 chars)"
    assert sse_text(post("x" * 5000)[2]) == f"echo: {'x' * 50}… (5000 chars)"

    fake_api.script({"error": 503, "message": "busy", "retry_after": 3}, match="scripted")
    fake_api.script({"text": "two", "usage": {"cache_read_input_tokens": 7}}, match="scripted")
    status, headers, raw = post("scripted one")
    assert status == 503 and headers["retry-after"] == "3" and b"busy" in raw
    events = sse_events(post("scripted two")[2])
    assert events[0][1]["message"]["usage"]["cache_read_input_tokens"] == 7
    assert fake_api.pending_scripts() == 0
    assert [r["reply"] for r in fake_api.requests()][-2:] == ["error 503", "text"]


def test_server_hang_is_cut_by_stop() -> None:
    fake_api = FakeAnthropic().start()
    results: list[Any] = []

    import threading

    def client() -> None:
        try:
            results.append(
                http(
                    fake_api,
                    "POST",
                    "/v1/messages",
                    {"messages": [{"role": "user", "content": "HANG"}]},
                )
            )
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    while not fake_api.requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_api.requests()[0]["reply"] == "hang"
    started = time.monotonic()
    fake_api.stop()
    fake_api.stop()  # idempotent
    thread.join(5)
    assert time.monotonic() - started < 3
    assert results and isinstance(results[0], Exception)


def test_standalone_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_anthropic.py")), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING ")
        port = int(line.split()[1])

        def call(method: str, path: str, body: Any = None) -> Any:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=data, method=method
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())

        assert call("GET", "/") == {}
        assert call("POST", "/_fake/script", {"steps": [{"text": "remote"}], "match": "hi"})
        body = {"messages": [{"role": "user", "content": "hi"}]}
        assert call("POST", "/v1/messages", body)["content"][0]["text"] == "remote"
        assert [r["last_user_text"] for r in call("GET", "/_fake/requests")] == ["hi"]
        call("POST", "/_fake/reset", {})
        assert call("GET", "/_fake/requests") == []
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


# --------------------------------------------------------------------------- real CLI


@pytest.mark.cli
async def test_cli_echo_and_script(fake_api: FakeAnthropic, cli_home: Path, tmp_path: Path) -> None:
    # A plain API key: rate-limit headers are ignored (see the fake_anthropic docstring).
    fake_api.set_ratelimit_headers(sample_ratelimit_headers())
    fake_api.script(
        {"text": "scripted reply", "usage": {"cache_read_input_tokens": 1234}}, match="magic"
    )
    events, code = await run_cli(
        cli_env(fake_api.base_url, str(cli_home)), tmp_path, ["hello fake", "the magic word"]
    )
    assert code == 0
    results = of_type(events, "result")
    assert [r["result"] for r in results] == ["echo: hello fake", "scripted reply"]
    assert all(r["subtype"] == "success" and r["is_error"] is False for r in results)
    assert results[1]["usage"]["cache_read_input_tokens"] == 1234
    inits = [e for e in events if e["type"] == "system" and e["subtype"] == "init"]
    assert len(inits) == 2 and inits[0]["session_id"] == results[0]["session_id"]
    assert of_type(events, "rate_limit_event") == []

    first_turn = events[: events.index(results[0]) + 1]
    kinds = stream_types(first_turn)
    n_deltas = kinds.count("content_block_delta")
    assert 2 <= n_deltas <= 5
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * n_deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    deltas = [
        e["event"]["delta"]["text"]
        for e in of_type(first_turn, "stream_event")
        if e["event"]["type"] == "content_block_delta"
    ]
    assert "".join(deltas) == "echo: hello fake"
    (assistant,) = of_type(first_turn, "assistant")
    assert assistant["message"]["id"].startswith("msg_fake")

    requests = fake_api.requests()
    assert [r["last_user_text"] for r in requests] == ["hello fake", "the magic word"]
    assert all(r["stream"] and r["query"] == "beta=true" for r in requests)
    assert "user" in requests[0]["roles"] and "Bash" in requests[0]["tools"]
    assert requests[0]["headers"]["x-api-key"] == "<redacted>"
    assert requests[0]["headers"]["user-agent"].startswith("claude-cli/")
    assert fake_api.pending_scripts() == 0


@pytest.mark.cli
async def test_cli_bash_round_trip(fake_api: FakeAnthropic, cli_home: Path, tmp_path: Path) -> None:
    events, code = await run_cli(
        cli_env(fake_api.base_url, str(cli_home)),
        tmp_path,
        ["RUN_BASH please"],
        "--permission-mode",
        "bypassPermissions",
    )
    assert code == 0
    (result,) = of_type(events, "result")
    assert result["result"] == "Tool said: hello" and result["num_turns"] == 2
    tool_uses = [
        b
        for e in of_type(events, "assistant")
        for b in e["message"]["content"]
        if b["type"] == "tool_use"
    ]
    assert [(t["name"], t["input"]["command"]) for t in tool_uses] == [("Bash", "echo hello")]
    assert "input_json_delta" in {
        e["event"]["delta"]["type"]
        for e in of_type(events, "stream_event")
        if e["event"]["type"] == "content_block_delta"
    }
    first, second = fake_api.requests()
    assert first["reply"] == "tool_use" and second["last_user_text"] == ""
    assert second["tool_results"] == [
        {"tool_use_id": tool_uses[0]["id"], "content": "hello", "is_error": False}
    ]
    assert second["roles"][-2:] == ["assistant", "user"]


@pytest.mark.cli
async def test_cli_fail_500(fake_api: FakeAnthropic, cli_home: Path, tmp_path: Path) -> None:
    env = cli_env(fake_api.base_url, str(cli_home))
    events, code = await run_cli(env, tmp_path, ["boom FAIL_500"])
    assert code == 1
    (result,) = of_type(events, "result")
    assert result["is_error"] is True and result["api_error_status"] == 500
    assert result["subtype"] == "success"  # sic: errors are flagged by is_error
    (assistant,) = of_type(events, "assistant")
    assert assistant["error"] == "server_error"
    assert [r["reply"] for r in fake_api.requests()] == ["error 500"]


@pytest.mark.cli
async def test_cli_rate_limit_event(
    fake_api: FakeAnthropic, cli_home: Path, tmp_path: Path
) -> None:
    fake_api.set_ratelimit_headers(sample_ratelimit_headers("allowed_warning", 0.91))
    env = cli_env(fake_api.base_url, str(cli_home), ANTHROPIC_AUTH_TOKEN=RATELIMIT_GATEWAY_TOKEN)
    events, code = await run_cli(env, tmp_path, ["hi"])
    assert code == 0
    (event,) = of_type(events, "rate_limit_event")
    info = event["rate_limit_info"]
    assert info["status"] == "allowed_warning" and info["rateLimitType"] == "five_hour"
    assert info["utilization"] == pytest.approx(0.91) and isinstance(info["resetsAt"], int)
    assert event["session_id"] == of_type(events, "result")[0]["session_id"]
    # It comes after the API call's message_stop and before the result.
    kinds = [e["event"]["type"] if e["type"] == "stream_event" else e["type"] for e in events]
    assert kinds.index("message_stop") < kinds.index("rate_limit_event") < kinds.index("result")


# --------------------------------------------------------------------------- fake CLI via SDK


async def test_fake_cli_through_sdk(tmp_path: Path) -> None:
    from claude_agent_sdk import (
        AssistantMessage,
        ClaudeAgentOptions,
        ClaudeSDKClient,
        ProcessError,
        ResultMessage,
        StreamEvent,
        TextBlock,
    )

    options = ClaudeAgentOptions(
        cli_path=str(FAKE_CLI), include_partial_messages=True, cwd=str(tmp_path)
    )
    client = ClaudeSDKClient(options)
    await asyncio.wait_for(client.connect(), 10)
    try:
        await client.query("hello fake cli")
        messages = [m async for m in client.receive_response()]
        assert any(isinstance(m, StreamEvent) for m in messages)
        texts = [
            b.text
            for m in messages
            if isinstance(m, AssistantMessage)
            for b in m.content
            if isinstance(b, TextBlock)
        ]
        assert texts == ["fake: hello fake cli"]
        result = messages[-1]
        assert isinstance(result, ResultMessage) and result.result == "fake: hello fake cli"
        assert result.is_error is False and result.total_cost_usd == 0.001

        await client.query("now DIE")
        seen: list[Any] = []

        async def consume() -> None:
            async for message in client.receive_response():
                seen.append(message)

        with pytest.raises(ProcessError) as excinfo:
            await asyncio.wait_for(consume(), 10)
        assert excinfo.value.exit_code == -9
        assert any(isinstance(m, StreamEvent) for m in seen)
        assert not any(isinstance(m, ResultMessage) for m in seen)
    finally:
        await asyncio.wait_for(client.disconnect(), 20)
