"""Which CLI session a Chat Completions request belongs to, and what of it is new.

A conversation maps to one warm CLI session, so each turn sends only what the session has
not seen. Three rules, in order:

1. **Explicit key.** The ``X-Conversation-Id`` header (or ``X-Session-Id``), else the body's
   ``prompt_cache_key``, else its ``user``. The key names the session. If the client resent
   its history and its last ``assistant`` message is the reply that session produced last,
   only the messages after it are sent; otherwise (new session, edited history) the earlier
   history is sent as a transcript first, so no user message is lost.
2. **Automatic continuation.** Without a key, a request whose last ``assistant`` message is
   the reply some session produced last, and whose first ``user`` message is that session's
   first, continues that session with the messages after the reply (OpenClaw's trailing
   internal-context message included). A session is continued by one request at a time.
3. **New session**, seeded with the client's earlier history as a delimited transcript.

Engine keys are ``openai:<conversation id>``; the conversation id is returned in the
``X-Conversation-Id`` response header and, sent back in that header, names the same session.
The store keeps fingerprints (sha256 of normalised text), never the messages.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.api.convert import Conversation, fingerprint, message_fingerprint
from gateway.api.functions import calls_fingerprint_text
from gateway.engine.api import Pref, Preferences
from gateway.engine.projects import base_key, project_key

KEY_PREFIX = "openai:"
Rule = Literal["header", "prompt_cache_key", "user", "continued", "new"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=~-]{1,128}$")
_OWN_ID = re.compile(r"^(?:auto|h|pck|u):")


@dataclass(frozen=True)
class Plan:
    """Where a request goes and how its prompt is built."""

    key: str  # engine key, ``openai:<conversation_id>``
    conversation_id: str  # returned in ``X-Conversation-Id``
    rule: Rule
    seed: bool  # send the earlier history as a transcript before the new messages
    #: fingerprint to store as ``first_user`` after the turn (None: keep what is stored)
    first_user: str | None

    @property
    def claimed(self) -> bool:
        """Rules 2 and 3 own their key for the duration of the turn."""
        return self.rule in ("continued", "new")


def _safe(value: str) -> str:
    value = value.strip()
    if _SAFE_ID.match(value):
        return value
    return "#" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:40]


def explicit_id(
    header: str | None, prompt_cache_key: str | None, user: str | None
) -> tuple[str, Rule] | None:
    """Rule 1: the conversation id a client named, by precedence header > cache key > user.

    A header value the gateway handed out (``auto:…``, ``h:…``, ``pck:…``, ``u:…``) is used
    as is, so pinning the returned ``X-Conversation-Id`` continues the same session.
    """
    if header and header.strip():
        value = header.strip()
        if _OWN_ID.match(value):
            kind, _, rest = value.partition(":")
            return f"{kind}:{_safe(rest)}", "header"
        return f"h:{_safe(value)}", "header"
    if prompt_cache_key and prompt_cache_key.strip():
        return f"pck:{_safe(prompt_cache_key)}", "prompt_cache_key"
    if user and user.strip():
        return f"u:{_safe(user)}", "user"
    return None


def new_conversation_id() -> str:
    return f"auto:{uuid.uuid4().hex}"


def reply_fingerprint(conversation: Conversation) -> str | None:
    """Fingerprint of the client's last assistant message; None when absent or empty."""
    reply = conversation.last_reply
    if reply is None:
        return None
    text = calls_fingerprint_text(reply.text, [(c.name, c.arguments) for c in reply.tool_calls])
    return fingerprint(text) if text.strip() else None


def first_user_fingerprint(conversation: Conversation) -> str | None:
    first = conversation.first_user
    return None if first is None else message_fingerprint(first)


async def plan_conversation(
    conversation: Conversation,
    *,
    header_id: str | None,
    prompt_cache_key: str | None,
    user: str | None,
    store: Preferences,
    claim: Callable[[str], bool],
    new_id: Callable[[], str] = new_conversation_id,
    project: str | None = None,
) -> Plan:
    """Apply the three rules.

    ``project``: the conversation's project (X-Project; None = default): part of the key,
    so the same conversation id in another project is another conversation.

    ``claim(key)`` atomically reserves an automatic key for this request and returns False
    when another request already holds it (the caller releases it when the turn ends).
    """
    first_user = first_user_fingerprint(conversation)
    reply = reply_fingerprint(conversation)
    named = explicit_id(header_id, prompt_cache_key, user)
    if named is not None:
        conversation_id, rule = named
        key = project_key(KEY_PREFIX + conversation_id, project)
        if not conversation.history:
            # Only new messages: the client relies on the session for the history. Keep the
            # stored first message unless the session has none yet.
            meta = await store.get(key)
            keep = Pref.FIRST_USER in meta
            return Plan(key, conversation_id, rule, False, None if keep else first_user)
        meta = await store.get(key)
        continues = reply is not None and meta.get(Pref.LAST_REPLY) == reply
        return Plan(key, conversation_id, rule, not continues, first_user)
    if reply is not None and first_user is not None:
        for key in await store.find_keys(Pref.LAST_REPLY, reply):
            if not key.startswith(KEY_PREFIX) or project_key(base_key(key), project) != key:
                continue
            meta = await store.get(key)
            if meta.get(Pref.FIRST_USER) != first_user or meta.get(Pref.LAST_REPLY) != reply:
                continue
            if not claim(key):
                continue  # another request is continuing it right now: its reply will change
            return Plan(key, base_key(key)[len(KEY_PREFIX) :], "continued", False, first_user)
    conversation_id = new_id()
    key = project_key(KEY_PREFIX + conversation_id, project)
    claim(key)
    return Plan(key, conversation_id, "new", bool(conversation.history), first_user)


def meta_after_turn(plan: Plan, reply_text: str) -> dict[Pref, str]:
    """What to store on the key once the client has received ``reply_text``."""
    meta = {Pref.LAST_REPLY: fingerprint(reply_text)}
    if plan.first_user is not None:
        meta[Pref.FIRST_USER] = plan.first_user
    return meta
