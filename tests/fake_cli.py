#!/usr/bin/env python3
"""A scripted fake ``claude`` executable, for faults the real CLI cannot show on demand.

Run it through ``claude_agent_sdk`` with ``ClaudeAgentOptions(cli_path="tests/fake_cli.py")``.
Standard library only. It speaks the SDK stream-json protocol (``--input-format stream-json``):

* argv is ignored except ``--version`` (prints ``2.1.331 (Claude Code)``, exits 0),
  ``--resume <id>`` / ``--resume=<id>`` and ``--session-id`` (used as the session id; otherwise
  one random uuid per process), ``--model``, ``--permission-mode`` (echoed in ``system/init``)
  and ``--include-partial-messages`` (``stream_event`` lines are printed only with it, as the
  real CLI does).
* ``control_request`` ``initialize`` → ``control_response`` success with a minimal response
  (commands, agents, output_style, models, account, pid). ``interrupt`` → success; if a turn is
  running (``SILENCE``, ``SLOW``) it then prints ``user`` "[Request interrupted by user]" and a
  ``result`` with subtype ``error_during_execution`` (like the real CLI; an idle interrupt only
  gets the success). Other subtypes get an empty success.
* Every ``{"type": "user"}`` line starts a turn with ``system/init`` (and ``system/status``), then
  behaves by the user text:

  ``DIE``                init + one text delta, then SIGKILL to itself (exit code -9).
  ``GARBAGE``            prints ``not json at all`` and a truncated ``{"type": "assist`` line,
                         then a normal answer. (claude-agent-sdk skips the first but raises
                         ``SDKJSONDecodeError`` on the second.)
  ``SILENCE``            init, then nothing until interrupted or stdin closes.
  ``SLOW``               1 s before the answer, then 0.3 s between text deltas (interruptible).
  ``EXIT_AFTER_RESULT``  a normal answer, then exit 1.
  anything else          ``stream_event``s (message_start, content_block_start, text_delta
                         pieces, content_block_stop, message_delta, message_stop), the
                         ``assistant`` message (printed before content_block_stop, as the real
                         CLI does) and a ``result`` success with ``result: "fake: <text>"``.

Exits 0 when stdin reaches EOF. Every line is flushed.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sys
import threading
import time
import uuid
from typing import Any

VERSION = "2.1.331"
DEFAULT_MODEL = "claude-opus-5-5"


def _arg(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


class FakeCli:
    def __init__(self, argv: list[str]) -> None:
        self.session_id = _arg(argv, "--resume") or _arg(argv, "--session-id") or str(uuid.uuid4())
        self.model = _arg(argv, "--model") or DEFAULT_MODEL
        self.permission_mode = _arg(argv, "--permission-mode") or "default"
        self.partial = "--include-partial-messages" in argv
        self.write_lock = threading.Lock()
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.interrupted = threading.Event()
        self.eof = threading.Event()
        self.turn_active = False
        self.turns = 0

    # ----------------------------------------------------------------- output

    def emit(self, obj: dict[str, Any]) -> None:
        self.emit_raw(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    def emit_raw(self, line: str) -> None:
        with self.write_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def stream_event(self, event: dict[str, Any], message_id: str) -> None:
        if self.partial:
            self.emit(
                {
                    "type": "stream_event",
                    "event": event,
                    "session_id": self.session_id,
                    "parent_tool_use_id": None,
                    "uuid": str(uuid.uuid4()),
                    "api_message_id": message_id,
                }
            )

    # ----------------------------------------------------------------- stdin

    def read_stdin(self) -> None:
        """Reader thread: answers control requests at once, queues user messages."""
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "control_request":
                self.control(msg)
            elif msg.get("type") == "user":
                self.inbox.put(msg)
        self.eof.set()
        self.interrupted.set()
        self.inbox.put(None)

    def control(self, msg: dict[str, Any]) -> None:
        request_id = msg.get("request_id")
        request = msg.get("request") or {}
        subtype = request.get("subtype")
        response: dict[str, Any] = {"subtype": "success", "request_id": request_id}
        if subtype == "initialize":
            response["response"] = {
                "commands": [],
                "agents": [],
                "output_style": "default",
                "available_output_styles": ["default"],
                "models": [{"value": "default", "displayName": "Default", "description": "fake"}],
                "account": {"tokenSource": "none", "apiKeySource": "ANTHROPIC_API_KEY"},
                "pid": os.getpid(),
            }
        self.emit({"type": "control_response", "response": response})
        if subtype == "interrupt" and self.turn_active:
            self.interrupted.set()

    # ----------------------------------------------------------------- turns

    def run(self) -> int:
        threading.Thread(target=self.read_stdin, name="stdin", daemon=True).start()
        while True:
            msg = self.inbox.get()
            if msg is None:
                return 0
            code = self.turn(msg)
            if code is not None:
                return code

    def turn(self, msg: dict[str, Any]) -> int | None:
        text = _user_text(msg.get("message", {}).get("content"))
        self.turns += 1
        if not self.eof.is_set():
            self.interrupted.clear()
        self.turn_active = True
        started = time.monotonic()
        try:
            self.emit_init()
            message_id = f"msg_fakecli{self.turns:04d}{uuid.uuid4().hex[:12]}"
            if "DIE" in text:
                self.stream_start(message_id)
                self.stream_event(_delta("fake: "), message_id)
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(10)  # never reached
            if "SILENCE" in text:
                self.interrupted.wait()
                return self.end_interrupted(started)
            if "GARBAGE" in text:
                self.emit_raw("not json at all")
                self.emit_raw('{"type": "assist')
            slow = "SLOW" in text
            answer = f"fake: {text}"
            if slow and self.interrupted.wait(1.0):
                return self.end_interrupted(started)
            self.stream_start(message_id)
            pieces = _split(answer, 5)
            for i, piece in enumerate(pieces):
                if slow and i and self.interrupted.wait(0.3):
                    return self.end_interrupted(started)
                self.stream_event(_delta(piece), message_id)
            usage = {
                "input_tokens": 10 + len(text) // 4,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            }
            self.emit(
                {
                    "type": "assistant",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [{"type": "text", "text": answer}],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                        "context_management": None,
                    },
                    "parent_tool_use_id": None,
                    "session_id": self.session_id,
                    "uuid": str(uuid.uuid4()),
                }
            )
            output_tokens = max(1, len(answer) // 4)
            self.stream_event({"type": "content_block_stop", "index": 0}, message_id)
            self.stream_event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
                message_id,
            )
            self.stream_event({"type": "message_stop"}, message_id)
            self.emit_result(
                started,
                result=answer,
                usage={**usage, "output_tokens": output_tokens},
            )
            if "EXIT_AFTER_RESULT" in text:
                return 1
            return None
        finally:
            self.turn_active = False

    def emit_init(self) -> None:
        self.emit(
            {
                "type": "system",
                "subtype": "init",
                "cwd": os.getcwd(),
                "session_id": self.session_id,
                "tools": ["Bash", "Edit", "Read", "Write"],
                "mcp_servers": [],
                "model": self.model,
                "permissionMode": self.permission_mode,
                "slash_commands": [],
                "apiKeySource": "ANTHROPIC_API_KEY",
                "claude_code_version": VERSION,
                "output_style": "default",
                "agents": [],
                "skills": [],
                "plugins": [],
                "uuid": str(uuid.uuid4()),
                "fast_mode_state": "off",
            }
        )
        self.emit(
            {
                "type": "system",
                "subtype": "status",
                "status": "requesting",
                "session_id": self.session_id,
                "uuid": str(uuid.uuid4()),
            }
        )

    def stream_start(self, message_id: str) -> None:
        self.stream_event(
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 10,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
            message_id,
        )
        self.stream_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            message_id,
        )

    def end_interrupted(self, started: float) -> int | None:
        if self.eof.is_set():
            return 0
        self.emit(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [{"type": "text", "text": "[Request interrupted by user]"}],
                },
                "parent_tool_use_id": None,
                "session_id": self.session_id,
                "uuid": str(uuid.uuid4()),
            }
        )
        self.emit_result(
            started,
            subtype="error_during_execution",
            is_error=True,
            result=None,
            stop_reason=None,
            terminal_reason="aborted_streaming",
            cost=0.0,
        )
        return None

    def emit_result(
        self,
        started: float,
        *,
        result: str | None,
        subtype: str = "success",
        is_error: bool = False,
        usage: dict[str, int] | None = None,
        stop_reason: str | None = "end_turn",
        terminal_reason: str = "completed",
        cost: float = 0.001,
    ) -> None:
        duration_ms = int((time.monotonic() - started) * 1000)
        usage = usage or {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }
        payload: dict[str, Any] = {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "api_error_status": None,
            "duration_ms": duration_ms,
            "duration_api_ms": duration_ms,
            "num_turns": 1,
            "stop_reason": stop_reason,
            "session_id": self.session_id,
            "total_cost_usd": cost,
            "usage": usage,
            "modelUsage": {
                self.model: {
                    "inputTokens": usage["input_tokens"],
                    "outputTokens": usage["output_tokens"],
                    "cacheReadInputTokens": 0,
                    "cacheCreationInputTokens": 0,
                    "costUSD": cost,
                }
            },
            "permission_denials": [],
            "terminal_reason": terminal_reason,
            "uuid": str(uuid.uuid4()),
        }
        if result is not None:
            payload["result"] = result
        self.emit(payload)


def _user_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _delta(text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def _split(text: str, pieces: int) -> list[str]:
    if not text:
        return [""]
    size = max(1, math.ceil(len(text) / pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def main(argv: list[str]) -> int:
    if "--version" in argv or "-v" in argv:
        print(f"{VERSION} (Claude Code)", flush=True)
        return 0
    return FakeCli(argv).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
