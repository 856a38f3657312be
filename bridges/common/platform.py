"""What the common chat logic needs from a platform (Telegram, Discord): a small Protocol.

An adapter maps its updates to :class:`Chat`/:class:`User` and calls the
:class:`~bridges.common.bridge.ChatBridge`; the bridge answers through the
:class:`Platform` methods below. Texts handed to ``send_text``/``edit_text`` with
``markdown=True`` are Markdown already split to fit ``max_length`` (measured with
``measure``); the adapter renders them in the platform's own formatting and must fall back
to plain text if the platform rejects the formatting, so an answer is never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.engine.tools import FileKind

MessageId = int


@dataclass(frozen=True)
class Chat:
    """A conversation place: a chat, or a topic/thread inside one."""

    key: str  # the engine's conversation key: "telegram:<chat>[:<topic>]"
    id: int
    thread_id: int | None = None
    private: bool = True
    title: str = ""


@dataclass(frozen=True)
class User:
    id: int
    name: str = ""


class Platform(Protocol):
    """The adapter's side of the contract."""

    #: "telegram", "discord": used in keys, inbox folder names and turn origins
    name: str
    #: the longest message text, in ``measure`` units (4096 Telegram, 2000 Discord)
    max_length: int
    #: the largest file the platform lets a bot upload, in bytes
    max_upload_bytes: int
    #: seconds a "typing…" indicator lasts (it is renewed before it runs out)
    typing_interval: float

    def measure(self, text: str) -> int:
        """The length of ``text`` as the platform counts it (additive per character)."""
        ...

    def chat_for_key(self, key: str) -> Chat | None:
        """The chat a conversation key belongs to (``None`` if it is not this platform's)."""
        ...

    def supports_drafts(self, chat: Chat) -> bool:
        """True if ``send_draft`` can stream a reply preview in this chat."""
        ...

    async def send_text(
        self, chat: Chat, text: str, *, markdown: bool = True, silent: bool = False
    ) -> MessageId:
        ...

    async def edit_text(
        self, chat: Chat, message: MessageId, text: str, *, markdown: bool = True
    ) -> bool:
        """Replace a message's text; ``False`` if the message is gone (deleted by the user)."""
        ...

    async def delete(self, chat: Chat, message: MessageId) -> None:
        ...

    async def send_draft(self, chat: Chat, draft_id: int, text: str) -> bool:
        """Show ``text`` as the reply being written; ``False`` if drafts do not work here."""
        ...

    async def typing(self, chat: Chat) -> None:
        ...

    async def send_file(self, chat: Chat, path: Path, caption: str, kind: FileKind) -> None:
        """Send a file as a document, a photo or a voice note; raise if it did not go out."""
        ...

    def retry_delay(self, exc: Exception) -> float | None:
        """After a call raised ``exc`` (having done its own retries): the seconds the
        platform asks to wait before trying again (flood control's ``retry_after``; ``0``
        for no particular wait, as after a network error), or ``None`` if trying again
        cannot help (a refusal, a missing permission)."""
        ...
