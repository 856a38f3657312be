"""The engine: one typed API through which every frontend reaches Claude Code."""

from gateway.engine.api import Alert, AlertHandler, EngineAPI, EngineStatus, Preferences
from gateway.engine.client_tools import ClientTool, ToolCall, ToolMode, ToolResult
from gateway.engine.engine import Engine
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
    "AlertHandler",
    "CliInfo",
    "ClientTool",
    "Commentary",
    "Engine",
    "EngineAPI",
    "EngineConfig",
    "EngineStatus",
    "Event",
    "FileSink",
    "ImagePart",
    "Notice",
    "OutgoingFile",
    "Preferences",
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
