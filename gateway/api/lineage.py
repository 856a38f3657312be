"""Where a resent history stands against a conversation's turn record: pure functions.

A client that resends its whole history also rewrites it: it regenerates the last answer,
edits or deletes turns, or replaces old turns with a summary. The gateway keeps, per
conversation, a compact record of the turns as the client saw them (:class:`RecordTurn`:
fingerprints and the CLI session's mark at the end of each turn, see
:mod:`gateway.api.turn_store`) and :func:`classify` compares the request's turns
(:func:`client_turns`) with it. One :class:`Lineage` rule comes out:

* **continuation**: the history is the record (today's rule): the session goes on with
  the new messages only;
* **regenerate**: the history is the record up to turn *k*, and the new message is turn
  *k+1*'s again (its reply is asked anew): a new CLI session forked at turn *k*'s mark
  gets that message;
* **edit** (also undo, delete): the history matches the record up to turn *k* and then
  differs or ends: fork at turn *k*, send what follows (later history as a transcript);
* **compaction**: the beginning was replaced (a summary) or cut off, but the recent turns
  are the record's last ones (the first of them may have lost its start): the same session
  goes on, the summary is not sent;
* **diverged**: nothing matches: a new session seeded with the history as a transcript;
* **new**: no history at all: a new session.

A fork happens only where the client's history matches turns 1..k exactly (modulo
:mod:`gateway.api.normalize`), so no request is given a session holding more than it sent.
When turn *k* has no mark (it was sent as part of a transcript, or ended in a client tool
call), the fork is at the nearest earlier turn with one and the turns after it are sent as
a transcript: every user message of the client reaches Claude exactly once in the branch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.api.convert import Conversation, Message, reply_text
from gateway.api.normalize import digest, normalized_digest
from gateway.engine.events import TurnMark

#: matched recent turns a compaction needs: with a key the client named, the last one; on
#: its own, the last two, whose replies hold at least :data:`COMPACTION_MIN_REPLY_CHARS`
COMPACTION_MIN_TURNS_KEYED = 1
COMPACTION_MIN_TURNS = 2
COMPACTION_MIN_REPLY_CHARS = 40


class Lineage(StrEnum):
    """How a request's history relates to its conversation's record (logged, counted)."""

    NEW = "new"
    CONTINUATION = "continuation"
    REGENERATE = "regenerate"
    EDIT = "edit"
    COMPACTION = "compaction"
    DIVERGED = "diverged"


# --------------------------------------------------------------------------- fingerprints


def chain(previous: str, users: str, reply: str) -> str:
    """The fingerprint of everything up to a turn: the previous turn's chain and this one."""
    return digest(f"{previous}|{users}|{reply}")


def users_fingerprint(messages: Iterable[Message]) -> str:
    """The fingerprint of a turn's input (user messages, tool results), as the client stores
    it: a message that normalises to nothing (OpenClaw's internal context) is left out."""
    h = hashlib.sha256()
    for m in messages:
        text, text_digest = normalized_digest(m.text)  # == digest(normalize_text(m.text))
        if not text and not m.images:
            continue
        h.update(b"t:" if m.role in ("tool", "function") else b"u:")
        h.update(text_digest.encode("ascii"))
        for image in m.images:
            h.update(b"|image:" + digest(image.data_b64).encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ClientTurn:
    """One turn of the client's history: its input, then one assistant message."""

    users: str
    reply: str
    #: index in ``Conversation.history`` just after the turn's assistant message
    end: int
    #: normalised length of the reply (the evidence a compaction needs, never stored)
    reply_chars: int


def client_turns(conversation: Conversation) -> tuple[tuple[ClientTurn, ...], str]:
    """The client's history as turns, and the fingerprint of this request's new input.
    Each message is normalised and hashed once."""
    turns: list[ClientTurn] = []
    start = 0
    history = conversation.history
    for i, m in enumerate(history):
        if m.role != "assistant":
            continue
        text, reply = normalized_digest(reply_text(m))
        turns.append(ClientTurn(users_fingerprint(history[start:i]), reply, i + 1, len(text)))
        start = i + 1
    return tuple(turns), users_fingerprint(conversation.new)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RecordTurn:
    """One turn of a conversation's record; ``session_id``/``message_id`` is the CLI
    session's mark at its end (None: the turn is in no session as a turn of its own)."""

    users: str
    reply: str
    chain: str
    session_id: str | None = None
    message_id: str | None = None

    @property
    def mark(self) -> TurnMark | None:
        """The CLI session's mark at the end of this turn (None: not a turn of its own)."""
        return TurnMark.of(self.session_id, self.message_id)

    def same_turn(self, turn: ClientTurn) -> bool:
        return self.users == turn.users and self.reply == turn.reply


def extend(
    base: Sequence[RecordTurn], turns: Iterable[tuple[str, str, str | None, str | None]]
) -> tuple[RecordTurn, ...]:
    """``base`` followed by ``(users, reply, session_id, message_id)`` turns, chained."""
    out = list(base)
    previous = out[-1].chain if out else ""
    for users, reply, session_id, message_id in turns:
        previous = chain(previous, users, reply)
        out.append(RecordTurn(users, reply, previous, session_id, message_id))
    return tuple(out)


def client_chains(turns: Sequence[ClientTurn]) -> list[str]:
    """The chain value after each client turn (to find records sharing a prefix)."""
    out: list[str] = []
    previous = ""
    for t in turns:
        previous = chain(previous, t.users, t.reply)
        out.append(previous)
    return out


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Decision:
    """What a request does with a conversation."""

    rule: Lineage
    #: the record turn the branch goes on after (for logs; 0: none)
    turn: int
    #: the record turn whose mark a new CLI session is forked from (None: no fork)
    fork_at: int | None
    #: the branch starts a new, empty CLI session
    fresh: bool
    #: client turns before this one are in the branch; those from it on are sent as a
    #: transcript before the new messages (None: nothing is sent from the history)
    seed_from: int | None
    #: the record of the branch before this request's turn
    keep: tuple[RecordTurn, ...]
    #: leading turns of the classified record that ``keep`` leaves as they are
    unchanged: int

    @property
    def continues(self) -> bool:
        """The conversation's own CLI session goes on (no fork, no new session)."""
        return self.fork_at is None and not self.fresh


def _unmarked(turns: Sequence[ClientTurn]) -> list[tuple[str, str, str | None, str | None]]:
    return [(t.users, t.reply, None, None) for t in turns]


def _prefix(client: Sequence[ClientTurn], record: Sequence[RecordTurn]) -> int:
    p = 0
    for c, r in zip(client, record, strict=False):
        if not r.same_turn(c):
            break
        p += 1
    return p


def _suffix(client: Sequence[ClientTurn], record: Sequence[RecordTurn], floor: int) -> int:
    s = 0
    while (s < len(client) - floor and s < len(record) - floor
           and record[len(record) - 1 - s].same_turn(client[len(client) - 1 - s])):
        s += 1
    return s


def classify(
    client: Sequence[ClientTurn], new_users: str, record: Sequence[RecordTurn], *, keyed: bool
) -> Decision:
    """The rule for a request with ``client`` turns of history and ``new_users`` as its new
    input, against ``record`` (empty: no conversation yet). ``keyed``: the client named the
    conversation; then a request without history continues it (a client that sends only
    its new messages), and a compaction needs one matching recent turn instead of two."""
    n, m = len(client), len(record)
    if n == 0:
        if keyed and m == 1 and new_users == record[0].users:
            # the first answer asked again: a fresh session (a client that sends only its
            # new messages would not repeat its only one)
            return Decision(Lineage.REGENERATE, 0, None, True, None, (), 0)
        if keyed and m:
            return Decision(Lineage.CONTINUATION, m, None, False, None, tuple(record), m)
        return Decision(Lineage.NEW, 0, None, bool(m), None, (), 0)
    p = _prefix(client, record)
    if p == m and m > 0:
        # the record is the history (or the start of it: the rest was never sent here)
        keep = extend(record, _unmarked(client[m:]))
        return Decision(Lineage.CONTINUATION, m, None, False, m if n > m else None, keep, m)
    s = _suffix(client, record, p) if p < n else 0
    # the first turn kept after a cut may have lost its start (or have the summary in
    # front): its reply still shows where it is
    partial = n - s > p and m - s > p and client[n - s - 1].reply == record[m - s - 1].reply
    if s and m - s > p and _compacted(client[n - s - partial:], keyed):
        keep = extend(record[:p], _unmarked(client[p:n - s]))
        keep = extend(keep, [(r.users, r.reply, r.session_id, r.message_id)
                             for r in record[m - s:]])
        return Decision(Lineage.COMPACTION, m, None, False, None, keep, p)
    if p == 0:
        return Decision(Lineage.DIVERGED, 0, None, True, 0, extend((), _unmarked(client)), 0)
    rule = Lineage.REGENERATE if p == n and new_users == record[p].users else Lineage.EDIT
    j = next((i for i in range(p, 0, -1) if record[i - 1].mark is not None), 0)
    keep = extend(record[:j], _unmarked(client[j:]))
    seed_from = j if j < n else None
    if j == 0:
        return Decision(rule, p, None, True, seed_from, keep, 0)
    return Decision(rule, p, j, False, seed_from, keep, j)


def _compacted(tail: Sequence[ClientTurn], keyed: bool) -> bool:
    if keyed:
        return len(tail) >= COMPACTION_MIN_TURNS_KEYED
    return (len(tail) >= COMPACTION_MIN_TURNS
            and sum(t.reply_chars for t in tail) >= COMPACTION_MIN_REPLY_CHARS)


_PREFERENCE = {Lineage.CONTINUATION: 3, Lineage.COMPACTION: 2, Lineage.REGENERATE: 1,
               Lineage.EDIT: 1}


def usable(decision: Decision) -> bool:
    """A decision a request without a key may take on another conversation's record: it
    shares at least one turn with it and starts no empty session there."""
    return decision.rule in _PREFERENCE and not decision.fresh


def rank(decision: Decision) -> tuple[int, int]:
    """Better candidates sort higher: the own session before a compaction before a fork,
    a later fork point before an earlier one."""
    return _PREFERENCE.get(decision.rule, 0), decision.fork_at or decision.turn
