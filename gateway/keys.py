"""Conversation keys and projects: a frontend's key (``telegram:<chat>``, ``openai:<id>``,
``cron:<job>``) names a conversation in the default project; ``<key>|<project>`` the same
one's conversation in another project (``[[projects]]``). No imports: the config, the
scheduler and the engine all build keys with it."""

from __future__ import annotations

#: the project of ``claude.workspace``
DEFAULT_PROJECT = "default"
#: between a frontend's key and the project's name (never part of a chat key or of a
#: sanitized API conversation id)
PROJECT_SEPARATOR = "|"


def project_key(base: str, project: str | None) -> str:
    """The conversation key of ``base`` (a chat, an API conversation) in ``project``."""
    if not project or project == DEFAULT_PROJECT:
        return base
    return f"{base}{PROJECT_SEPARATOR}{project}"


def base_key(key: str) -> str:
    """The frontend's key of a conversation key (the chat, without its project)."""
    return key.partition(PROJECT_SEPARATOR)[0]
