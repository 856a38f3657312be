"""Discord bridge: discord.py adapter over :mod:`bridges.common`."""

from bridges.discord.bot import DiscordBridge, DiscordChatBridge
from bridges.discord.platform import DiscordPlatform, chat_key, parse_key
from bridges.discord.render import discord_length, render

__all__ = ["DiscordBridge", "DiscordChatBridge", "DiscordPlatform", "chat_key", "discord_length",
           "parse_key", "render"]
