"""Telegram bridge: python-telegram-bot adapter over :mod:`bridges.common`."""

from bridges.telegram.bot import TelegramBridge
from bridges.telegram.platform import TelegramPlatform, chat_key, parse_key
from bridges.telegram.render import render

__all__ = ["TelegramBridge", "TelegramPlatform", "chat_key", "parse_key", "render"]
