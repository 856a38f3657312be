"""Which CLI session a chat request belongs to, what of it is new, and where it branches.

A conversation maps to one warm CLI session, so each turn sends only what the session has
not seen. How the conversation is found, in order:

1. **Explicit key.** The ``X-Conversation-Id`` header (or ``X-Session-Id``), else the body's
   ``prompt_cache_key``, else its ``user`` (Responses: ``previous_response_id`` names one).
   The key names the conversation; a request with no history continues its session.
2. **Automatic.** Without a key, the conversations whose turn record shares turns with the
   resent history (same API key, same project) are candidates, found through the record's
   indexes (:mod:`gateway.api.turn_store`); the best classification wins.
3. **New conversation**, seeded with the client's earlier history as a transcript.

Inside the conversation, :func:`gateway.api.lineage.classify` compares the history with
the record: a continuation or a compaction goes on in the same session; a regenerate or an
edit of turn *k+1* forks the CLI session at turn *k*'s mark: with an explicit key the key
moves to the fork (its record rewound to turn *k*), an automatic conversation's fork is a
new conversation id (the old one keeps its branch, which its own history still continues).
Anything else is a new session seeded with the history. One request at a time continues an
automatic conversation (``claim``).

Engine keys are ``openai:<conversation id>``; the conversation id is returned in the
``X-Conversation-Id`` response header and, sent back in that header, names the same session.
The store keeps fingerprints (sha256 of normalised text), never the messages.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.api.convert import Conversation, fingerprint, message_fingerprint
from gateway.api.lineage import (
    ClientTurn,
    Decision,
    Lineage,
    RecordTurn,
    classify,
    client_chains,
    client_turns,
    extend,
    rank,
    usable,
)
from gateway.engine.api import Pref, Preferences
from gateway.engine.events import TurnMark
from gateway.engine.projects import base_key, project_key

KEY_PREFIX = "openai:"
Rule = Literal["header", "prompt_cache_key", "user", "continued", "forked", "new"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=~-]{1,128}$")
_OWN_ID = re.compile(r"^(?:auto|h|pck|u):")


@dataclass(frozen=True)
class Branch:
    """A point the client named to go on from (Responses: an older ``previous_response_id``):
    the CLI session's mark there and the fingerprint of the reply that ended there."""

    mark: TurnMark
    reply: str


class TurnRecords(Protocol):
    """The turn record the planner reads (:class:`gateway.api.turn_store.TurnStore`)."""

    async def load(self, key: str) -> tuple[RecordTurn, ...]: ...

    async def candidates(
        self, owner: str, chains: Sequence[str], reply: str | None, limit: int = ...
    ) -> list[str]: ...


@dataclass(frozen=True)
class Plan:
    """Where a request goes and how its prompt is built."""

    key: str  # engine key, ``openai:<conversation_id>``
    conversation_id: str  # returned in ``X-Conversation-Id``
    rule: Rule  # how the conversation was found
    seed: bool  # send the history from ``seed_from`` as a transcript before the new messages
    #: fingerprint to store as ``first_user`` after the turn (None: keep what is stored)
    first_user: str | None
    #: how the history relates to the conversation's record
    lineage: Lineage = Lineage.NEW
    #: the record turn the branch goes on after (logs)
    turn: int = 0
    #: the turn starts a new CLI session forked at this mark
    fork_at: TurnMark | None = None
    #: the key's CLI session is dropped first: the turn starts a new, empty one
    fresh: bool = False
    #: index in ``Conversation.history`` where the transcript starts (with ``seed``)
    seed_from: int = 0
    #: the record before this turn, and how many of its leading rows are stored already
    keep: tuple[RecordTurn, ...] = ()
    unchanged: int = 0
    #: fingerprint of this request's new input, and who made it (the record's owner)
    new_users: str = ""
    owner: str = ""

    @property
    def claimed(self) -> bool:
        """Automatic conversations own their key for the duration of the turn."""
        return self.rule in ("continued", "forked", "new")

    def record_after(
        self, reply: str, mark: TurnMark | None
    ) -> tuple[RecordTurn, ...]:
        """The record once the client received the reply fingerprinted ``reply``."""
        ids = (None, None) if mark is None else (mark.session_id, mark.message_id)
        return extend(self.keep, [(self.new_users, reply, *ids)])


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


def first_user_fingerprint(conversation: Conversation) -> str | None:
    first = conversation.first_user
    return None if first is None else message_fingerprint(first)


async def _record(
    records: TurnRecords, key: str, meta: dict[Pref, str]
) -> tuple[RecordTurn, ...]:
    """The key's record if it is still the conversation's: its last reply is the one the
    conversation remembers (a reset forgets that, so the record is ignored)."""
    record = await records.load(key)
    if record and meta.get(Pref.LAST_REPLY) == record[-1].reply:
        return record
    return ()


def _mark(record: Sequence[RecordTurn], turn: int | None) -> TurnMark | None:
    if turn is None:
        return None
    mark = record[turn - 1].mark
    assert mark is not None  # classify forks only at a marked turn
    return mark


def _seed_from(client: Sequence[ClientTurn], turn: int) -> int:
    return client[turn - 1].end if turn else 0


def _plan(
    key: str, conversation_id: str, rule: Rule, decision: Decision,
    record: Sequence[RecordTurn], client: Sequence[ClientTurn], first_user: str | None,
    new_users: str, owner: str, *, moved: bool = False,
) -> Plan:
    seed = decision.seed_from is not None
    return Plan(
        key, conversation_id, rule, seed, first_user,
        lineage=decision.rule, turn=decision.turn,
        fork_at=_mark(record, decision.fork_at),
        fresh=decision.fresh and bool(record) and not moved,
        seed_from=_seed_from(client, decision.seed_from or 0),
        keep=decision.keep, unchanged=0 if moved else decision.unchanged,
        new_users=new_users, owner=owner,
    )


async def plan_conversation(
    conversation: Conversation,
    *,
    header_id: str | None,
    prompt_cache_key: str | None,
    user: str | None,
    store: Preferences,
    records: TurnRecords,
    claim: Callable[[str], bool],
    new_id: Callable[[], str] = new_conversation_id,
    project: str | None = None,
    owner: str = "",
    branch: Branch | None = None,
) -> Plan:
    """Find the conversation and classify the request in it.

    ``project``: the conversation's project (X-Project; None = default): part of the key,
    so the same conversation id in another project is another conversation. ``owner``: the
    hash of the API key that made the request; a conversation made with another key is
    never found without naming it. ``branch``: the named conversation goes on from there.

    ``claim(key)`` atomically reserves an automatic key for this request and returns False
    when another request already holds it (the caller releases it when the turn ends).
    """
    first_user = first_user_fingerprint(conversation)
    client, new_users = client_turns(conversation)
    named = explicit_id(header_id, prompt_cache_key, user)
    if named is not None:
        conversation_id, rule = named
        key = project_key(KEY_PREFIX + conversation_id, project)
        meta = await store.get(key)
        if not client and Pref.FIRST_USER in meta:
            first_user = None  # only new messages: keep the conversation's first one
        record = await _record(records, key, meta)
        if branch is not None:
            return _branch(key, conversation_id, rule, branch, record, client, first_user,
                           new_users, owner)
        if not record and Pref.LAST_REPLY in meta:
            return _legacy(key, conversation_id, rule, meta, client, first_user, new_users,
                           owner)
        decision = classify(client, new_users, record, keyed=True)
        return _plan(key, conversation_id, rule, decision, record, client, first_user,
                     new_users, owner)
    if client:
        chains = client_chains(client)

        async def usable_records(
            sharing: Sequence[str], reply: str | None,
        ) -> list[tuple[Decision, str, tuple[RecordTurn, ...]]]:
            """The records holding one of the chains ``sharing`` or the reply ``reply``
            that this request may take, with its decision on each."""
            found = []
            for key in await records.candidates(owner, sharing, reply):
                if not key.startswith(KEY_PREFIX) or project_key(base_key(key), project) != key:
                    continue
                record = await _record(records, key, await store.get(key))
                decision = classify(client, new_users, record, keyed=False)
                if record and usable(decision):
                    found.append((decision, key, record))
            return found

        def continued(decision: Decision, key: str, record: Sequence[RecordTurn]) -> Plan:
            return _plan(key, base_key(key)[len(KEY_PREFIX):], "continued", decision, record,
                         client, first_user, new_users, owner)

        # A record holding this whole history is the conversation continued, if it can be
        # claimed: asked for first, it spares the look-up of every shorter prefix.
        for decision, key, record in await usable_records(chains[-1:], None):
            if decision.continues and claim(key):
                return continued(decision, key, record)
        found = await usable_records(chains, client[-1].reply)
        found.sort(key=lambda f: rank(f[0]), reverse=True)  # stable: most recent first
        for decision, key, record in found:
            if decision.continues:
                if not claim(key):
                    continue  # another request is continuing it right now
                return continued(decision, key, record)
            conversation_id = new_id()
            fork_key = project_key(KEY_PREFIX + conversation_id, project)
            claim(fork_key)
            return _plan(fork_key, conversation_id, "forked", decision, record, client,
                         first_user, new_users, owner, moved=True)
    conversation_id = new_id()
    key = project_key(KEY_PREFIX + conversation_id, project)
    claim(key)
    decision = classify(client, new_users, (), keyed=False)
    return _plan(key, conversation_id, "new", decision, (), client, first_user, new_users,
                 owner)


def _branch(
    key: str, conversation_id: str, rule: Rule, branch: Branch,
    record: Sequence[RecordTurn], client: Sequence[ClientTurn], first_user: str | None,
    new_users: str, owner: str,
) -> Plan:
    """A named conversation continued from an earlier point of it: the key moves to a fork
    at that mark; its record is kept up to that turn when it still holds it."""
    mark = branch.mark
    k = next((i for i in range(len(record), 0, -1)
              if record[i - 1].reply == branch.reply and record[i - 1].mark == mark), 0)
    again = k < len(record) and not client and new_users == record[k].users
    keep = extend(record[:k], [(t.users, t.reply, None, None) for t in client])
    return Plan(key, conversation_id, rule, bool(client), first_user,
                lineage=Lineage.REGENERATE if again else Lineage.EDIT, turn=k, fork_at=mark,
                keep=keep, unchanged=k, new_users=new_users, owner=owner)


def _legacy(
    key: str, conversation_id: str, rule: Rule, meta: dict[Pref, str],
    client: Sequence[ClientTurn], first_user: str | None, new_users: str, owner: str,
) -> Plan:
    """A named conversation with a session but no record (made before records existed):
    the history continues it when it ends with its last reply, else is sent as a
    transcript; its record starts now."""
    continues = not client or meta.get(Pref.LAST_REPLY) == client[-1].reply
    keep = extend((), [(t.users, t.reply, None, None) for t in client])
    return Plan(key, conversation_id, rule, not continues, first_user,
                lineage=Lineage.CONTINUATION if continues else Lineage.DIVERGED,
                keep=keep, new_users=new_users, owner=owner)


def transcript_part(conversation: Conversation, plan: Plan) -> Conversation:
    """The conversation as the prompt sees it: its history from where the branch lacks it."""
    if not plan.seed_from:
        return conversation
    return replace(conversation, history=conversation.history[plan.seed_from:])


def meta_after_turn(plan: Plan, reply_text: str) -> dict[Pref, str]:
    """What to store on the key once the client has received ``reply_text``."""
    meta = {Pref.LAST_REPLY: fingerprint(reply_text)}
    if plan.first_user is not None:
        meta[Pref.FIRST_USER] = plan.first_user
    return meta
