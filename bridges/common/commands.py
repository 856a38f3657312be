"""Chat commands: parsing ``/name@bot args`` and a registry other features extend.

The bridge registers the built-in commands (/new, /stop, /retry, /model, /status, /help,
/sessions, /resume); the voice and schedule features add theirs with
:meth:`CommandRegistry.add`. Adapters read the registry to publish the command menu.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bridges.common.platform import Chat, User

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{1,64}))?(?:\s+(.*))?$", re.S)


def parse_command(text: str, bot_username: str | None = None) -> tuple[str, str] | None:
    """``("model", "opus")`` for ``"/model@MyBot opus"``; ``None`` if it is not a command
    for this bot (plain text, or ``/cmd@OtherBot``)."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    name, target, args = match.group(1), match.group(2), match.group(3) or ""
    if target and bot_username and target.lower() != bot_username.lower():
        return None
    return name.lower(), args.strip()


class Replier(Protocol):
    """Where a command's reply goes (the chat bridge)."""

    async def say(self, chat: Chat, text: str, *, markdown: bool = True) -> None: ...


@dataclass(frozen=True)
class CommandContext:
    """What a command handler gets."""

    bridge: Replier
    chat: Chat
    user: User
    args: str

    async def reply(self, text: str, *, markdown: bool = True) -> None:
        await self.bridge.say(self.chat, text, markdown=markdown)


CommandHandler = Callable[[CommandContext], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str  # without the slash, [a-z0-9_]{1,32}
    description: str  # one line for the menu and /help
    handler: CommandHandler
    usage: str = ""  # arguments, for /help: "[name]"
    hidden: bool = False  # handled, but not listed in the menu or /help


class CommandRegistry:
    """Commands by name, in the order they were added."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        """Add a command (or replace the one with the same name)."""
        if not re.fullmatch(r"[a-z0-9_]{1,32}", command.name):
            raise ValueError(f"invalid command name {command.name!r}")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name.lower())

    def __iter__(self) -> Iterator[Command]:
        return iter(list(self._commands.values()))

    def __len__(self) -> int:
        return len(self._commands)
