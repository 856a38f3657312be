"""The engine: one typed API through which every frontend reaches Claude Code."""

from gateway.engine.client_tools import ClientTool, ToolCall, ToolMode, ToolResult
from gateway.engine.engine import Alert, Engine
from gateway.engine.events import (
    FINAL_EVENTS,
    Commentary,
    Event,
    ImagePart,
    Notice,
    Prompt,
    RateLimitStatus,
    SessionInfo,
    StepBoundary,
    StreamMode,
    TextDelta,
    ToolCallsRequested,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnOptions,
    TurnResult,
    TurnStarted,
    Usage,
)
from gateway.engine.process import CliInfo, EngineConfig
from gateway.engine.tools import FileSink, OutgoingFile

__all__ = [
    "FINAL_EVENTS",
    "Alert",
    "CliInfo",
    "ClientTool",
    "Commentary",
    "Engine",
    "EngineConfig",
    "Event",
    "FileSink",
    "ImagePart",
    "Notice",
    "OutgoingFile",
    "Prompt",
    "RateLimitStatus",
    "SessionInfo",
    "StepBoundary",
    "StreamMode",
    "TextDelta",
    "ToolCall",
    "ToolCallsRequested",
    "ToolFinished",
    "ToolMode",
    "ToolResult",
    "ToolStarted",
    "TurnError",
    "TurnOptions",
    "TurnResult",
    "TurnStarted",
    "Usage",
]
