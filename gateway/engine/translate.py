"""Claude Code messages → engine events, with the streaming policy. Pure: no I/O.

One :class:`TurnTranslator` per turn. Feed it every message the SDK parsed from the
CLI's stdout (``feed``); it returns the events to emit, in order.

Smart streaming, precisely (``StreamMode.SMART``):

* A turn is made of *steps*: one model call each (``message_start`` … ``message_stop``).
  Steps after the first run because the model called tools.
* Text of a step is **held back** until it is known whether it is answer text:
  - when the step turns out to call a tool (a ``tool_use`` block starts), the held text
    is the model thinking aloud and comes out as :class:`Commentary`;
  - when the step ends without a tool call, the held text is answer text;
  - when the held text grows past ``holdback_chars`` (default 240) it is taken as answer
    text and from then on every token streams as it arrives. A long text before a tool
    call therefore shows (Claude writes those rarely; short "Let me check…" lines are
    what this filters).
* Answer text from different steps is separated by a blank line, so steps never run
  together.
* Tool calls come out as :class:`ToolStarted` / :class:`ToolFinished` with a one-line
  summary; text written by sub-agents never counts as answer text.
* If the CLI produced no stream events (older CLIs), the result text is the answer.

``StreamMode.VERBOSE`` emits every text token as answer text immediately.
``StreamMode.FINAL`` emits no text deltas; the :class:`TurnResult` carries the answer,
which is the text of the final step (what Claude Code itself reports as the result).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    RateLimitEvent,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from gateway.engine.client_tools import PREFIX as CLIENT_PREFIX
from gateway.engine.client_tools import ToolCall
from gateway.engine.events import (
    Commentary,
    Event,
    Notice,
    RateLimitStatus,
    StepBoundary,
    StreamMode,
    TextDelta,
    ToolCallsRequested,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnMark,
    TurnResult,
    Usage,
)
from gateway.engine.session import names_missing_session
from gateway.errors import TURN_INTERRUPTED, ErrorKind

HOLDBACK_CHARS = 240
STEP_SEPARATOR = "\n\n"


@dataclass
class _Block:
    text: str = ""
    committed: bool = False  # known to be answer text: deltas pass straight through


@dataclass
class TurnTranslator:
    mode: StreamMode = StreamMode.SMART
    holdback_chars: int = HOLDBACK_CHARS
    cwd: str = ""

    session_id: str | None = None
    model: str | None = None
    rate_limit: RateLimitStatus | None = None
    #: set when the CLI reports that the session to resume does not exist
    resume_failed: bool = False
    finished: bool = False
    #: the result's usage and running cost total, failed results included (a turn stopped
    #: by its budget or an error still spent what it spent)
    result_usage: Usage | None = None
    result_total_cost: float | None = None
    #: the uuid of the turn's latest top-level assistant message (see TurnMark)
    last_message_id: str | None = None

    _answer: list[str] = field(default_factory=list)
    _step: int = 0
    _block: _Block | None = None
    _step_has_tool: bool = False
    _saw_stream_text: bool = False
    _tool_names: dict[str, str] = field(default_factory=dict)
    _assistant_error: str | None = None
    _assistant_error_text: str | None = None
    _last_retry: dict[str, Any] | None = None
    #: client tool calls of the current step, reported when the step ends
    _client_calls: list[ToolCall] = field(default_factory=list)
    #: client tool calls not yet handed to the engine's broker
    new_client_calls: list[ToolCall] = field(default_factory=list)

    # ------------------------------------------------------------------ public

    @property
    def answer(self) -> str:
        return "".join(self._answer)

    def feed(self, msg: object) -> list[Event]:
        if isinstance(msg, StreamEvent):
            return self._stream_event(msg)
        if isinstance(msg, AssistantMessage):
            return self._assistant(msg)
        if isinstance(msg, UserMessage):
            return self._user(msg)
        if isinstance(msg, SystemMessage):
            return self._system(msg)
        if isinstance(msg, RateLimitEvent):
            return self._rate_limit(msg)
        if isinstance(msg, ResultMessage):
            return self._result(msg)
        return []

    # ------------------------------------------------------------------ stream events

    def _stream_event(self, msg: StreamEvent) -> list[Event]:
        if msg.session_id:
            self.session_id = msg.session_id
        if msg.parent_tool_use_id is not None:
            return []  # a sub-agent's tokens: its tool calls are reported from messages
        ev = msg.event
        etype = ev.get("type")
        out: list[Event] = []
        if etype == "message_start":
            out += self._settle_block(step_ended=True)
            self._step += 1
            self._step_has_tool = False
            if self._step > 1:
                out.append(StepBoundary(self._step))
            model = (ev.get("message") or {}).get("model")
            if model:
                self.model = model
        elif etype == "content_block_start":
            btype = (ev.get("content_block") or {}).get("type")
            if btype == "text" and self._block is not None and (
                self._block.text or self._block.committed
            ):
                # a second text block in the same step: keep it apart from the first
                out += self._text(STEP_SEPARATOR)
            elif btype in ("tool_use", "server_tool_use"):
                self._step_has_tool = True
                out += self._settle_block(step_ended=False)
        elif etype == "content_block_delta":
            delta = ev.get("delta") or {}
            if delta.get("type") == "text_delta":
                out += self._text(delta.get("text") or "")
        elif etype == "message_delta":
            stop = (ev.get("delta") or {}).get("stop_reason")
            if stop == "tool_use":
                self._step_has_tool = True
            out += self._settle_block(step_ended=True)
            if self._client_calls:
                out.append(ToolCallsRequested(tuple(self._client_calls)))
                self._client_calls = []
        elif etype == "message_stop":
            out += self._settle_block(step_ended=True)
        return out

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        self._saw_stream_text = True
        if self._block is None:
            self._block = _Block()
        block = self._block
        if self.mode is StreamMode.FINAL:
            block.text += text
            return []
        if self.mode is StreamMode.VERBOSE or block.committed:
            return self._emit_answer(block, text)
        block.text += text
        if len(block.text) >= self.holdback_chars:
            held, block.text = block.text, ""
            return self._emit_answer(block, held)
        return []

    def _emit_answer(self, block: _Block, text: str) -> list[Event]:
        out: list[Event] = []
        if not block.committed:
            block.committed = True
            if self._answer and not self.answer.endswith(STEP_SEPARATOR):
                out.append(TextDelta(STEP_SEPARATOR))
                self._answer.append(STEP_SEPARATOR)
        self._answer.append(text)
        out.append(TextDelta(text))
        return out

    def _settle_block(self, *, step_ended: bool) -> list[Event]:
        """Decide the fate of the text held for the current step."""
        block = self._block
        if block is None:
            return []
        if self._step_has_tool:
            self._block = None
            if self.mode is StreamMode.SMART and block.text.strip():
                return [Commentary(block.text.strip())]
            return []
        if not step_ended:
            return []
        self._block = None
        if self.mode is StreamMode.SMART and block.text:
            return self._emit_answer(block, block.text)
        return []

    # ------------------------------------------------------------------ whole messages

    def _assistant(self, msg: AssistantMessage) -> list[Event]:
        if msg.session_id:
            self.session_id = msg.session_id
        if msg.error:
            self._assistant_error = str(msg.error)
            self._assistant_error_text = " ".join(
                b.text for b in msg.content if isinstance(b, TextBlock)
            ).strip()
        if msg.model and msg.model != "<synthetic>" and msg.parent_tool_use_id is None:
            self.model = msg.model
        if msg.uuid and msg.parent_tool_use_id is None:
            self.last_message_id = msg.uuid
        out: list[Event] = []
        for block in msg.content:
            if isinstance(block, ToolUseBlock):
                self._tool_names[block.id] = block.name
                if block.name.startswith(CLIENT_PREFIX) and msg.parent_tool_use_id is None:
                    call = ToolCall(block.id, block.name[len(CLIENT_PREFIX):],
                                    json.dumps(block.input or {}))
                    self._client_calls.append(call)
                    self.new_client_calls.append(call)
                    continue
                out.append(ToolStarted(block.id, block.name, tool_summary(block, self.cwd)))
        return out

    def _user(self, msg: UserMessage) -> list[Event]:
        out: list[Event] = []
        if isinstance(msg.content, list):
            for block in msg.content:
                if isinstance(block, ToolResultBlock):
                    name = self._tool_names.get(block.tool_use_id, "tool")
                    if name.startswith(CLIENT_PREFIX):
                        continue
                    out.append(ToolFinished(block.tool_use_id, name, bool(block.is_error)))
        return out

    def _system(self, msg: SystemMessage) -> list[Event]:
        data = msg.data
        if msg.subtype == "init":
            self.session_id = data.get("session_id") or self.session_id
            self.model = data.get("model") or self.model
            return []
        if msg.subtype == "api_retry":
            self._last_retry = data
            attempt, max_retries = data.get("attempt"), data.get("max_retries")
            status = data.get("error_status")
            delay = float(data.get("retry_delay_ms") or 0) / 1000
            what = f"HTTP {status}" if status else str(data.get("error") or "an error")
            return [
                Notice(
                    "retrying",
                    f"Anthropic API answered {what}; retry {attempt}/{max_retries}"
                    f" in {delay:.1f} s",
                    {k: data.get(k) for k in ("attempt", "max_retries", "error_status", "error")},
                )
            ]
        return []

    def _rate_limit(self, msg: RateLimitEvent) -> list[Event]:
        info = msg.rate_limit_info
        self.rate_limit = RateLimitStatus(
            status=str(info.status),
            rate_limit_type=info.rate_limit_type,
            resets_at=float(info.resets_at) if info.resets_at else None,
            utilization=info.utilization,
            seen_at=time.time(),
            raw=dict(info.raw),
        )
        text = f"usage limit status: {info.status}"
        if info.rate_limit_type:
            text += f" ({info.rate_limit_type})"
        if info.utilization is not None:
            text += f", {info.utilization:.0%} used"
        return [Notice("rate_limit", text, dict(info.raw))]

    def _result(self, msg: ResultMessage) -> list[Event]:
        self.finished = True
        self.session_id = msg.session_id or self.session_id
        out = self._settle_block(step_ended=True)
        self.result_usage = usage_from_cli(msg.usage)
        self.result_total_cost = float(msg.total_cost_usd or 0.0)
        if msg.is_error:
            err = self.classify_error(msg)
            if err is not None:
                return [*out, err]
        text = msg.result or ""
        if self.mode is StreamMode.FINAL:
            answer = text
        else:
            if not self._saw_stream_text and text:
                # no partial messages: the result is all we have, stream it in one piece
                out += self._emit_answer(_Block(), text)
            answer = self.answer
        usage = usage_from_cli(msg.usage)
        out.append(
            TurnResult(
                text=answer,
                session_id=self.session_id or "",
                model=self.model,
                usage=usage,
                cost_usd=float(msg.total_cost_usd or 0.0),
                duration_ms=int(msg.duration_ms or 0),
                duration_api_ms=int(msg.duration_api_ms or 0),
                num_turns=int(msg.num_turns or 0),
                stop_reason=msg.stop_reason,
                mark=self.mark,
            )
        )
        return out

    @property
    def mark(self) -> TurnMark | None:
        """Where the turn stands in its session now (see :class:`TurnMark`)."""
        return TurnMark.of(self.session_id, self.last_message_id)

    # ------------------------------------------------------------------ errors

    def classify_error(self, msg: ResultMessage) -> TurnError | None:
        """The typed error for an ``is_error`` result; ``None`` if it is not really one."""
        errors = [str(e) for e in (msg.errors or [])]
        text = (msg.result or "").strip() or self._assistant_error_text or "; ".join(errors)
        if any(names_missing_session(e) for e in errors) or names_missing_session(text):
            self.resume_failed = True
            return TurnError(ErrorKind.CRASHED, f"Claude Code could not resume: {text}")
        if msg.terminal_reason in ("aborted_streaming", "aborted_tools") or (
            msg.subtype == "error_during_execution" and msg.api_error_status is None
            and not text.startswith("API Error")
        ):
            return TurnError(ErrorKind.INTERRUPTED, TURN_INTERRUPTED)
        status = msg.api_error_status
        hint = self._assistant_error or ""
        lowered = text.lower()
        if "not logged in" in lowered or ("/login" in lowered and status is None):
            return TurnError(
                ErrorKind.NOT_LOGGED_IN,
                "Claude Code is not logged in. Run `claude` in a terminal on this machine and"
                " use /login (or set CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`).",
            )
        if status in (401, 403) or hint == "authentication_failed":
            return TurnError(
                ErrorKind.AUTHENTICATION,
                f"Claude Code could not authenticate: {text}. Log in again with `claude` → /login.",
                status=status,
            )
        if status == 429 or hint == "rate_limit":
            return TurnError(
                ErrorKind.RATE_LIMITED,
                f"Usage limit reached: {text}",
                retry_after=self.retry_after(),
                status=status,
            )
        if status == 529 or hint == "overloaded":
            return TurnError(
                ErrorKind.OVERLOADED, f"Anthropic is overloaded: {text}",
                retry_after=self.retry_after(), status=status,
            )
        if msg.subtype == "error_max_budget_usd":
            return TurnError(
                ErrorKind.BUDGET_EXCEEDED,
                "This turn was stopped: its API-equivalent cost reached claude.max_turn_cost_usd"
                f" ({'; '.join(errors) or text}).",
            )
        if msg.subtype == "error_max_turns":
            return TurnError(ErrorKind.API_ERROR, "Claude Code stopped: maximum turns reached.")
        return TurnError(ErrorKind.API_ERROR, text or f"Claude Code failed ({msg.subtype})",
                         status=status)

    def retry_after(self) -> float | None:
        rl = self.rate_limit
        if rl is not None and rl.resets_at:
            return max(1.0, rl.resets_at - time.time())
        if self._last_retry and self._last_retry.get("retry_delay_ms"):
            return max(1.0, float(self._last_retry["retry_delay_ms"]) / 1000)
        return None


def usage_from_cli(raw: dict[str, Any] | None) -> Usage:
    raw = raw or {}
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
        cache_creation_tokens=int(raw.get("cache_creation_input_tokens") or 0),
    )


def _short(text: str, limit: int = 80) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _path(value: Any, cwd: str) -> str:
    path = str(value or "")
    if cwd and path.startswith(cwd.rstrip("/") + "/"):
        path = path[len(cwd.rstrip("/")) + 1 :]
    return _short(path)


def tool_summary(block: ToolUseBlock, cwd: str = "") -> str:
    """One line a person understands: "Running Bash: npm test", "Reading src/app.py"."""
    name, args = block.name, block.input or {}
    if name == "Bash":
        return f"Running {_short(args.get('command', ''))}"
    if name == "Read":
        return f"Reading {_path(args.get('file_path'), cwd)}"
    if name in ("Edit", "MultiEdit"):
        return f"Editing {_path(args.get('file_path'), cwd)}"
    if name == "Write":
        return f"Writing {_path(args.get('file_path'), cwd)}"
    if name == "NotebookEdit":
        return f"Editing {_path(args.get('notebook_path'), cwd)}"
    if name in ("Grep", "Glob"):
        return f"Searching for {_short(args.get('pattern', ''))}"
    if name == "WebFetch":
        return f"Fetching {_short(args.get('url', ''))}"
    if name == "WebSearch":
        return f"Searching the web for {_short(args.get('query', ''))}"
    if name in ("Task", "Agent"):
        return f"Delegating: {_short(args.get('description') or args.get('prompt') or '')}"
    if name == "TodoWrite":
        return "Updating the to-do list"
    if name.startswith("mcp__"):
        _, server, tool = [*name.split("__", 2), "", ""][:3]
        return f"Using {server}: {tool}"
    return f"Using {name}"
