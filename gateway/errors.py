"""One exception family for the whole gateway.

Every failure a user can meet is a :class:`GatewayError` with a :class:`ErrorKind`.
The HTTP API maps kinds to status codes, the chat bridges to a sentence; nobody
matches on message text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorKind(StrEnum):
    # configuration and start-up
    CONFIG = "config"
    CLI_MISSING = "cli_missing"
    # the request itself
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    BUSY = "busy"  # queue for a conversation or the gateway is full
    # the account / Anthropic side
    NOT_LOGGED_IN = "not_logged_in"
    AUTHENTICATION = "authentication_failed"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    API_ERROR = "api_error"
    #: the turn's API-equivalent cost reached claude.max_turn_cost_usd
    BUDGET_EXCEEDED = "budget_exceeded"
    # the CLI process
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"
    SHUTDOWN = "shutdown"
    # the answer: not what the request's response_format asked for (after one retry)
    INVALID_OUTPUT = "invalid_output"
    # a chat platform (Telegram's Bot API, Discord) cannot be reached right now
    PLATFORM_UNAVAILABLE = "platform_unavailable"
    # an optional feature's package, model or program is not installed (voice)
    UNAVAILABLE = "unavailable"
    # a part of the gateway failed on this request (a speech engine on this text)
    INTERNAL = "internal"


#: what a person reads when a turn was stopped (/stop, interrupt, its client left)
TURN_INTERRUPTED = "The turn was interrupted."


class GatewayError(Exception):
    """A failure with a kind, a message a person can act on, and optional retry hint."""

    #: a stable name of the case, finer than the kind (e.g. ``audio_too_long``); when set,
    #: it is the error ``code`` of the HTTP answer (the status still comes from the kind)
    code: ClassVar[str | None] = None

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        #: HTTP status of the upstream API error, when the CLI reported one.
        self.status = status

    def __repr__(self) -> str:
        return f"GatewayError({self.kind.value!r}, {self.message!r})"


class ConfigError(GatewayError):
    """A configuration value is missing, of the wrong type, or impossible."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.CONFIG, message)
