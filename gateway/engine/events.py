"""The engine's public vocabulary: what a frontend sends in and what comes back out.

Everything here is a small frozen dataclass so frontends can pattern-match on type.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.engine.client_tools import ClientTool, ToolCall, ToolMode, ToolResult
from gateway.engine.permissions import PermissionMode
from gateway.errors import ErrorKind, GatewayError


class StreamMode(StrEnum):
    """How the text of a turn reaches the frontend (see README, "Smart streaming").

    * ``smart``: the answer streams token by token; text the model writes before a
      tool call is reported as :class:`Commentary` (progress), not as answer text.
    * ``final``: no :class:`TextDelta` at all; the answer arrives once, in :class:`TurnResult`.
    * ``verbose``: every piece of text is answer text, as the CLI produced it.
    """

    SMART = "smart"
    FINAL = "final"
    VERBOSE = "verbose"


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class TurnMark:
    """A point in a CLI session's transcript at the END of one turn: a turn started with
    ``TurnOptions(fork_at=mark)`` continues from exactly there, in a new session that holds
    this turn and everything before it, and nothing after.

    ``message_id`` is the ``uuid`` of the turn's last top-level assistant message (the
    answer's ``AssistantMessage.uuid``; what the CLI loads with ``--resume-session-at``).
    Measured with the bundled CLI 2.1.332 against tests/fake_anthropic.py: that uuid is the
    last conversation entry of the turn in the transcript (``~/.claude/projects/<cwd>/
    <session>.jsonl``; in the engine's processes only rows without a uuid follow it:
    ``last-prompt``, ``queue-operation``, ``cost-state``), and ``--resume S --fork-session
    --resume-session-at=<it>`` (the SDK's ``fork_session``/``resume_session_at``) sent the
    API exactly the turns up to it (with a Bash call: its tool_use and tool_result too) in
    a new session id, leaving S's transcript unchanged. The result's ``uuid`` is NOT a
    transcript entry (``No message found with message.uuid of: …``, exit 1). Sub-agents'
    messages are never taken (the CLI writes them to the sub-agent's own side-chain).
    The fork's own transcript is a self-contained copy of the kept entries with their
    uuids unchanged, so a mark of a kept turn is also valid with the fork's session id, and
    deleting the source transcript later does not harm the fork.
    tests/test_engine_fork.py checks these facts on every run.

    A mark is only a pair of ids: it may be taken to any conversation of the same project
    folder (transcripts are per folder).
    """

    session_id: str
    message_id: str

    @classmethod
    def of(cls, session_id: str | None, message_id: str | None) -> TurnMark | None:
        """The mark of a pair that may be missing (a stored row, a turn under way): None
        unless both ids are there."""
        if not session_id or not message_id:
            return None
        return cls(session_id, message_id)


@dataclass(frozen=True)
class ImagePart:
    """An image for Claude; reaches the CLI as a native base64 image block."""

    media_type: str  # image/png, image/jpeg, image/gif, image/webp
    data_b64: str

    @classmethod
    def from_bytes(cls, media_type: str, data: bytes) -> ImagePart:
        return cls(media_type, base64.b64encode(data).decode("ascii"))


@dataclass(frozen=True)
class Prompt:
    """What the user says in one turn: text plus images."""

    text: str = ""
    images: tuple[ImagePart, ...] = ()
    #: results for the client tool calls a suspended turn waits for (function calling)
    tool_results: tuple[ToolResult, ...] = ()

    def is_empty(self) -> bool:
        return not self.text.strip() and not self.images and not self.tool_results

    @staticmethod
    def joined(prompts: list[Prompt]) -> Prompt:
        """Several messages as one (coalesced turns, a chat's messages re-run after a
        restart): the texts in order, a blank line apart, then all images."""
        if len(prompts) == 1:
            return prompts[0]
        return Prompt(
            text="\n\n".join(p.text for p in prompts if p.text.strip()),
            images=tuple(i for p in prompts for i in p.images),
        )

    def content_blocks(self) -> list[dict[str, Any]]:
        """The Anthropic content blocks sent to the CLI over stdin (stream-json)."""
        blocks: list[dict[str, Any]] = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": i.media_type, "data": i.data_b64},
            }
            for i in self.images
        ]
        if self.text:
            blocks.append({"type": "text", "text": self.text})
        return blocks


@dataclass(frozen=True)
class TurnOptions:
    """Per-turn choices a frontend makes. ``None`` means "the conversation's / config's"."""

    model: str | None = None
    mode: StreamMode = StreamMode.SMART
    #: Extra instructions appended to Claude Code's system prompt for this conversation.
    system: str | None = None
    #: Free-form origin label used by notifications ("api", "telegram", ...).
    origin: str = ""
    #: the client's own tools (OpenAI function calling) and how they combine with Claude
    #: Code's built-in tools
    tools: tuple[ClientTool, ...] = ()
    tool_mode: ToolMode = ToolMode.AGENT
    #: "auto" (default), "none", "required" or a tool name; the CLI has no such switch, so
    #: anything but "auto" is an instruction added to the prompt
    tool_choice: str = "auto"
    #: a prompt that finds a queued coalescing turn of this conversation with equal options
    #: joins it instead of queueing a turn of its own (chat messages sent while Claude
    #: works): one message to Claude (texts a blank line apart, then the images), the same
    #: events for every caller, the joiner's first being Notice("coalesced"). A caller that
    #: leaves before the turn starts takes its prompt out; the turn is interrupted only
    #: when every caller left. Never with tool results.
    coalesce: bool = False
    #: a mode stricter than the conversation's for this turn (the HTTP API's
    #: X-Permission-Mode); a laxer one is ignored. None: the conversation's mode
    permission_mode: PermissionMode | None = None
    #: start this turn from that point (a :class:`TurnMark` of any conversation): the
    #: conversation's process ends, a new one forks the mark's session there (a new
    #: session id, which becomes the conversation's), and the prompt goes on from it. The
    #: mark's session stays as it was. A mark whose transcript is gone: the turn runs in
    #: a new session without history, after Notice("session_reset") whose data has
    #: ``fork_at``. Never coalesces, never uses a pre-started process; tool results in
    #: its prompt go to the new session as text (a turn suspended in client tool calls
    #: ends first, as it does for any new message).
    fork_at: TurnMark | None = None


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All input the model read, OpenAI style (cached tokens included)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_creation_tokens + other.cache_creation_tokens,
        )


@dataclass(frozen=True)
class TurnStarted:
    """The turn left the queue and was sent to the CLI."""

    key: str
    session_id: str | None
    model: str | None
    resumed: bool  # a process was (re)started with --resume for this turn


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, in order. Concatenated, the deltas are the answer."""

    text: str


@dataclass(frozen=True)
class Commentary:
    """Text the model wrote that is not the answer (thinking aloud before a tool call)."""

    text: str


@dataclass(frozen=True)
class ToolStarted:
    tool_id: str
    name: str
    summary: str  # one line a person understands: "Bash: npm test", "Read: src/app.py"


@dataclass(frozen=True)
class ToolFinished:
    tool_id: str
    name: str
    is_error: bool


@dataclass(frozen=True)
class StepBoundary:
    """A new model call inside the turn (after tools ran). ``step`` counts from 1."""

    step: int


@dataclass(frozen=True)
class Notice:
    """Something the user may want to know that is not text: retries, rate limits, resets."""

    kind: str  # "retrying", "rate_limit", "session_reset", "queued", "model_changed"
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCallsRequested:
    """Claude called client tools: the last event of this request. The turn is suspended
    inside the calls until the next turn() of the conversation brings ``tool_results``."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class TurnResult:
    """The last event of a successful turn."""

    text: str  # the answer, as the stream mode defines it
    session_id: str
    model: str | None
    usage: Usage
    cost_usd: float
    duration_ms: int
    duration_api_ms: int
    num_turns: int
    stop_reason: str | None = None
    #: where this turn ended in its session: give it as ``TurnOptions.fork_at`` to go on
    #: from here later. None only when the CLI reported no top-level assistant message with
    #: a uuid in the turn (a CLI too old to send uuids; a result without a model reply)
    mark: TurnMark | None = None


@dataclass(frozen=True)
class TurnError:
    """The last event of a failed turn."""

    kind: ErrorKind
    message: str
    retry_after: float | None = None
    status: int | None = None

    @classmethod
    def from_exc(cls, exc: GatewayError) -> TurnError:
        return cls(exc.kind, exc.message, exc.retry_after, exc.status)


Event = (
    TurnStarted
    | TextDelta
    | Commentary
    | ToolStarted
    | ToolFinished
    | StepBoundary
    | Notice
    | TurnResult
    | TurnError
    | ToolCallsRequested
)

#: Events that end a turn() iteration: exactly one of them is the last event of each.
FINAL_EVENTS = (TurnResult, TurnError, ToolCallsRequested)


@dataclass(frozen=True)
class SessionInfo:
    """What ``describe``/``list`` report about a conversation."""

    key: str
    session_id: str | None
    model: str | None
    cwd: str
    created_at: float
    last_used_at: float
    turns: int
    usage: Usage
    cost_usd: float
    live: bool = False  # a CLI process is running for it
    busy: bool = False  # a turn is running
    queued: int = 0  # turns waiting behind the running one
    pid: int | None = None
    #: the configured default model, used while the conversation has chosen none
    default_model: str | None = None
    #: its project ("default" = claude.workspace) and, in a worktree project, its branch
    project: str = "default"
    branch: str | None = None

    @property
    def effective_model(self) -> str | None:
        """The model its next turn runs with (None: the CLI's own default)."""
        return self.model or self.default_model


@dataclass(frozen=True)
class RateLimitStatus:
    """The last ``rate_limit_event`` the CLI reported (how close the weekly cap is)."""

    status: str
    rate_limit_type: str | None
    resets_at: float | None
    utilization: float | None
    seen_at: float
    raw: dict[str, Any] = field(default_factory=dict)
