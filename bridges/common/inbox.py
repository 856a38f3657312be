"""The durable chat inbox: what a bridge keeps of each message it accepted.

Every message a person sends is written to SQLite (:class:`gateway.store.ChatStore`)
before its turn starts, with what it takes to run it again: its text (quotes and notes of
saved files included), its images (kept in the database), the platform's ids,
the sender, and a voice note's transcription. Its state follows the turn:
``received`` → ``sent_to_claude`` (the engine handed it to the CLI) → ``answered`` (the
turn ended) → ``delivered`` (or ``outboxed`` while what could not be shown waits in the
outbox). At start-up :meth:`ChatBridge.recover <bridges.common.bridge.ChatBridge.recover>`
runs again what never reached Claude and tells the chat about what did
(:func:`restart_notice`), so nothing is dropped silently.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from gateway.engine import ImagePart, Prompt
from gateway.store import InboxRow

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Source:
    """Where a chat message came from (the adapter fills it in)."""

    #: the platform's id of the person's message (``None`` for one made up, as by /retry)
    message_id: int | None = None
    sender_id: int = 0
    #: paths of the files the person sent, saved in the chat's inbox folder
    attachments: tuple[str, ...] = ()
    #: a voice note: the prompt text is its transcription
    voice: bool = False


#: The source of the message being prepared in the background (a voice note being
#: transcribed): set around the intake task, read when its prompt is submitted.
CURRENT_SOURCE: contextvars.ContextVar[Source | None] = contextvars.ContextVar(
    "chat_source", default=None
)


def first_line(row: InboxRow, limit: int = 80) -> str:
    """The line a person recognises their message by (a quote or a file note skipped)."""
    text = row.transcription or row.text
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith(("[In reply to", "[The user sent a file")):
            return line if len(line) <= limit else line[: limit - 1] + "…"
    if row.attachments:
        return "(a file you sent)"
    if row.images:
        return "(a photo you sent)"
    return "(your message)"


def restart_notice(row: InboxRow) -> str:
    return (f"⚠️ I was restarted while working on: {first_line(row)}. Send it again or"
            " /retry")


def images_of(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt's images as the inbox keeps them (base64, as Claude gets them)."""
    return [{"media_type": i.media_type, "data": i.data_b64} for i in prompt.images]


def prompt_of(row: InboxRow) -> Prompt:
    """The prompt of an inbox entry, to run it again."""
    images = tuple(ImagePart(i["media_type"], i["data"]) for i in row.images)
    return Prompt(text=row.text, images=images)
