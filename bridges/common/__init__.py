"""Chat logic shared by every chat platform (Telegram now, Discord next).

No platform imports here: an adapter implements :class:`Platform` and feeds a
:class:`ChatBridge`; see ``bridges/telegram`` for the first one.
"""

from bridges.common.bridge import CHAT_PREFIXES, AfterTurn, BridgeSettings, ChatBridge
from bridges.common.commands import Command, CommandContext, CommandRegistry, parse_command
from bridges.common.inbox import Source
from bridges.common.platform import Chat, MessageId, Platform, User
from bridges.common.split import MarkdownChunk, split_markdown
from bridges.common.text import error_text, notice_text, status_text
from bridges.common.view import TurnView, ViewSettings
from bridges.common.voice import ChatVoice, VoiceBackend, setup_voice

__all__ = [
    "CHAT_PREFIXES",
    "AfterTurn",
    "BridgeSettings",
    "Chat",
    "ChatBridge",
    "ChatVoice",
    "Command",
    "CommandContext",
    "CommandRegistry",
    "MarkdownChunk",
    "MessageId",
    "Platform",
    "Source",
    "TurnView",
    "User",
    "ViewSettings",
    "VoiceBackend",
    "error_text",
    "notice_text",
    "parse_command",
    "setup_voice",
    "split_markdown",
    "status_text",
]
