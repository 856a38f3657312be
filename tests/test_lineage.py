"""Conversation fidelity (gateway/api/lineage.py, gateway/api/conversation.py): properties
over random histories and rewrites, against the real planner and classifier with a model of
the turn record and of the CLI's sessions.

A client keeps its history and rewrites it between requests: it regenerates the last
answer, edits turn k, deletes its last turns, compacts its first turns into a summary, and
unrelated conversations share a first message. After every request the model checks what
the CLI session that answered holds (its branch): every user message of the client's
current history and of the request is in it exactly once, the request was answered there,
and nothing in it comes from a conversation whose history the client did not carry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.chat_wire import parse_chat_request
from gateway.api.conversation import (
    KEY_PREFIX,
    Plan,
    meta_after_turn,
    plan_conversation,
    transcript_part,
)
from gateway.api.convert import build_prompt, fingerprint, split_conversation
from gateway.api.lineage import (
    ClientTurn,
    Lineage,
    RecordTurn,
    classify,
    client_chains,
    client_turns,
    extend,
)
from gateway.api.normalize import normalize_text
from gateway.api.turn_store import TurnStore
from gateway.engine.api import Pref
from gateway.engine.events import TurnMark
from gateway.store import Store

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
OPENCLAW = Path(__file__).parent / "data" / "openclaw-requests"

# --------------------------------------------------------------------------- the model


class MemoryMeta:
    """The conversations' preferences in a dict (the store's meta table)."""

    def __init__(self) -> None:
        self.meta: dict[str, dict[Pref, str]] = {}

    async def get(self, key: str) -> dict[Pref, str]:
        return dict(self.meta.get(key, {}))

    async def set(self, key: str, values: dict[Pref, str]) -> None:
        self.meta.setdefault(key, {}).update(values)

    async def find_keys(self, name: Pref, value: str) -> list[str]:
        return [k for k, m in self.meta.items() if m.get(name) == value]


class MemoryRecords:
    """A model of gateway/api/turn_store.py: records by key, most recently committed last."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[RecordTurn, ...]] = {}
        self.owners: dict[str, str] = {}

    async def load(self, key: str) -> tuple[RecordTurn, ...]:
        return self.records.get(key, ())

    async def candidates(
        self, owner: str, chains: Sequence[str], reply: str | None, limit: int = 8
    ) -> list[str]:
        wanted = set(chains)
        found = [k for k, r in self.records.items() if self.owners[k] == owner
                 and any(t.chain in wanted or t.reply == reply for t in r)]
        return list(reversed(found))[:limit]

    def commit(self, key: str, owner: str, unchanged: int, turns: tuple[RecordTurn, ...]) -> None:
        assert self.records.get(key, ())[:unchanged] == turns[:unchanged]
        self.records.pop(key, None)  # re-inserted last: the most recent
        self.records[key] = turns
        self.owners[key] = owner


@dataclass
class Session:
    """A CLI session: the prompts it was sent, each turn ending at a message id."""

    id: str
    turns: list[tuple[str, str, str]] = field(default_factory=list)  # prompt, reply, msg id

    def text(self) -> str:
        return "\n".join(f"{p}\n{r}" for p, r, _ in self.turns)


class World:
    """The engine's side of the model: keys -> sessions, forks copy a session's turns."""

    def __init__(self) -> None:
        self.meta = MemoryMeta()
        self.records = MemoryRecords()
        self.sessions: dict[str, Session] = {}
        self.of_key: dict[str, str] = {}
        self.claimed: set[str] = set()
        self.ids = 0

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    def claim(self, key: str) -> bool:
        if key in self.claimed:
            return False
        self.claimed.add(key)
        return True

    async def request(
        self, messages: list[dict[str, Any]], *, header: str | None = None, owner: str = "",
        project: str | None = None,
    ) -> tuple[Plan, Session, str]:
        conversation = split_conversation(
            parse_chat_request({"model": "sonnet", "messages": messages}).messages)
        plan = await plan_conversation(
            conversation, header_id=header, prompt_cache_key=None, user=None,
            store=self.meta, records=self.records, claim=self.claim,
            new_id=lambda: self.new_id("auto:"), project=project, owner=owner)
        prompt = build_prompt(transcript_part(conversation, plan), seed=plan.seed).text
        if plan.fresh:  # engine.reset
            self.of_key.pop(plan.key, None)
            self.meta.meta.pop(plan.key, None)
        if plan.fork_at is not None:
            source = self.sessions[plan.fork_at.session_id]
            ends = [m for _, _, m in source.turns]
            session = Session(self.new_id("s"), source.turns[:ends.index(plan.fork_at.message_id)
                                                              + 1])
            self.sessions[session.id] = session
            self.of_key[plan.key] = session.id
        elif plan.key in self.of_key:
            session = self.sessions[self.of_key[plan.key]]
        else:
            session = Session(self.new_id("s"))
            self.sessions[session.id] = session
            self.of_key[plan.key] = session.id
        reply = answer(prompt)
        message_id = self.new_id("m")
        session.turns.append((prompt, reply, message_id))
        await self.meta.set(plan.key, meta_after_turn(plan, reply))
        self.records.commit(plan.key, plan.owner, plan.unchanged,
                            plan.record_after(fingerprint(reply),
                                              TurnMark(session.id, message_id)))
        self.claimed.discard(plan.key)
        return plan, session, reply


TOKEN = re.compile(r"⟨[^⟩]*⟩")


def answer(prompt: str) -> str:
    """The fake model: an echo of the request's last message (so two conversations that
    share a first message get the same first reply), long enough to count as evidence."""
    last = TOKEN.findall(prompt)[-1]
    return f"echo {last.replace('⟨', '⟪').replace('⟩', '⟫')} " + "and some more words " * 2


def user_tokens(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text) if not t.startswith("⟨summary")]


@dataclass
class Client:
    """A chat client: its history as (user text, reply) turns, rewritten at will."""

    name: str
    turns: list[tuple[str, str]] = field(default_factory=list)
    summary: str | None = None  # the compacted beginning, sent as a system message
    sent: set[str] = field(default_factory=set)  # every token it ever sent or received
    header: str | None = None
    counter: int = 0

    def fresh_text(self, shared: bool = False) -> str:
        self.counter += 1
        return "⟨hello shared⟩" if shared else f"⟨u {self.name} {self.counter}⟩"

    def messages(self, new: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.summary:
            out.append({"role": "system", "content": self.summary})
        for u, r in self.turns:
            out += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
        return [*out, {"role": "user", "content": new}]


OPS = st.sampled_from(["send", "send", "send", "regenerate", "edit", "delete", "compact"])


async def run_ops(
    world: World, client: Client, ops: list[tuple[str, int]], shared_first: bool
) -> list[Lineage]:
    rules: list[Lineage] = []
    # With a key, a request without history is a client that sends only its new messages
    # (the session holds the rest): a keyed client here empties its history only by
    # regenerating its one turn.
    least = 1 if client.header else 0
    for step, (op, k) in enumerate(ops):
        if op == "regenerate" and client.turns:
            new = client.turns.pop()[0]
        elif op == "edit" and len(client.turns) > least:
            del client.turns[max(least, k % len(client.turns)):]
            new = client.fresh_text()
        elif op == "delete" and len(client.turns) > least:
            del client.turns[max(least, len(client.turns) - 1 - k % len(client.turns)):]
            new = client.fresh_text()
        elif op == "compact" and len(client.turns) >= 3:
            cut = 1 + k % (len(client.turns) - 2)
            client.summary = f"⟨summary {client.name} {step}⟩ of {cut} turns"
            del client.turns[:cut]
            new = client.fresh_text()
        else:
            new = client.fresh_text(shared=shared_first and not client.turns and step == 0)
        messages = client.messages(new)
        client.sent |= {t for m in messages for t in TOKEN.findall(str(m["content"]))}
        plan, session, reply = await world.request(messages, header=client.header)
        client.sent |= set(TOKEN.findall(reply.replace("⟪", "⟨").replace("⟫", "⟩")))
        rules.append(plan.lineage)
        check_branch(client, session, new, plan)
        client.turns.append((new, reply))
    return rules


def check_branch(client: Client, session: Session, new: str, plan: Plan) -> None:
    branch = session.text()
    seen = user_tokens(branch)
    visible = [u for u, _ in client.turns] + [new]
    for token in visible:
        assert seen.count(token) == 1, (plan, token, branch)
    assert len(seen) == len(set(seen)), (plan, "a message reached Claude twice", branch)
    assert set(seen) <= client.sent, (plan, "a stranger's message is in the branch", branch)
    assert new in session.turns[-1][0]
    if plan.lineage is Lineage.COMPACTION and client.summary is not None:
        assert client.summary not in session.turns[-1][0]  # the summary is not re-sent


# --------------------------------------------------------------------------- properties


@FAST
@given(st.lists(st.tuples(OPS, st.integers(0, 5)), min_size=1, max_size=9),
       st.sampled_from([None, "pinned"]))
def test_every_user_message_reaches_claude_exactly_once_in_its_branch(
    ops: list[tuple[str, int]], header: str | None
) -> None:
    async def run() -> None:
        world = World()
        client = Client("a", header=header)
        rules = await run_ops(world, client, ops, shared_first=False)
        assert rules[0] is Lineage.NEW
        for (op, _), rule in zip(ops[1:], rules[1:], strict=True):
            if op == "send":  # a plain next message continues (or compacts) its session
                assert rule in (Lineage.CONTINUATION, Lineage.COMPACTION), (ops, rules)

    asyncio.run(run())


@FAST
@given(st.lists(st.tuples(OPS, st.integers(0, 5)), min_size=1, max_size=6),
       st.lists(st.tuples(OPS, st.integers(0, 5)), min_size=1, max_size=6),
       st.booleans(), st.booleans())
def test_unrelated_conversations_never_cross(
    ops_a: list[tuple[str, int]], ops_b: list[tuple[str, int]], shared: bool,
    interleave: bool,
) -> None:
    """Two clients, maybe sharing their first message, each rewriting its own history: each
    request's branch holds only what that client itself sent or received."""

    async def run() -> None:
        world = World()
        a, b = Client("a"), Client("b")
        if interleave:
            for pa, pb in zip(ops_a, ops_b, strict=False):
                await run_ops(world, a, [pa], shared_first=shared)
                await run_ops(world, b, [pb], shared_first=shared)
        else:
            await run_ops(world, a, ops_a, shared_first=shared)
            await run_ops(world, b, ops_b, shared_first=shared)

    asyncio.run(run())


def _turns(draw: st.DrawFn, n: int) -> list[ClientTurn]:
    vocab = st.sampled_from(["x", "y", "z"])
    return [ClientTurn(draw(vocab), draw(vocab), i + 1, 50) for i in range(n)]


@FAST
@given(st.data())
def test_a_fork_point_is_always_a_matched_prefix(data: st.DataObject) -> None:
    """Whatever the record and the history (from a tiny alphabet, so they collide a lot),
    the branch the classifier keeps is a prefix both share, and a fork is at a marked turn."""
    record_turns = _turns(data.draw, data.draw(st.integers(0, 5)))
    record = extend((), [(t.users, t.reply, f"s{i}" if data.draw(st.booleans()) else None,
                          f"m{i}") for i, t in enumerate(record_turns)])
    client = _turns(data.draw, data.draw(st.integers(0, 5)))
    keyed = data.draw(st.booleans())
    d = classify(client, data.draw(st.sampled_from(["x", "y"])), record, keyed=keyed)
    if d.fork_at is not None:
        assert record[d.fork_at - 1].mark is not None
        assert all(record[i].same_turn(client[i]) for i in range(d.fork_at))
    kept = d.keep[:d.unchanged]
    assert kept == record[:d.unchanged]
    if client or not keyed:
        # the branch's record is the client's history, turn for turn
        assert [(t.users, t.reply) for t in d.keep] == [(t.users, t.reply) for t in client]
        assert [t.chain for t in d.keep] == client_chains(client)
    if d.rule is Lineage.COMPACTION:  # the same session, its recent turns' marks kept
        assert d.continues and d.seed_from is None and record[-1].same_turn(client[-1])
        assert d.keep[-1].message_id == record[-1].message_id


# --------------------------------------------------------------------------- examples


async def _rules(world: World, client: Client, ops: list[str]) -> list[Lineage]:
    return await run_ops(world, client, [(op, 0) for op in ops], shared_first=False)


async def test_the_rules_by_name() -> None:
    world = World()
    client = Client("a")
    assert await _rules(world, client, ["send", "send", "send"]) == [
        Lineage.NEW, Lineage.CONTINUATION, Lineage.CONTINUATION]
    first_key = next(iter(world.of_key))
    old = list(client.turns)
    last = client.turns.pop()[0]
    plan, session, reply = await world.request(client.messages(last))
    assert (plan.lineage, plan.turn, plan.rule) == (Lineage.REGENERATE, 2, "forked")
    assert plan.fork_at is not None and plan.key != first_key and not plan.seed
    assert [p for p, _, _ in session.turns] == ["⟨u a 1⟩", "⟨u a 2⟩", "⟨u a 3⟩"]
    client.turns.append((last, reply))
    assert await _rules(world, client, ["send"]) == [Lineage.CONTINUATION]
    # the old branch is still continued by its own history
    plan, _, _ = await world.request(Client("a", turns=old).messages("⟨u a 9⟩"))
    assert (plan.lineage, plan.key) == (Lineage.CONTINUATION, first_key)
    # an edit of turn 2 forks at turn 1
    client.turns = client.turns[:1]
    plan, _, _ = await world.request(client.messages("⟨u a edited⟩"))
    assert (plan.lineage, plan.turn, plan.rule) == (Lineage.EDIT, 1, "forked")


async def test_an_explicit_key_moves_to_the_fork_and_a_stranger_never_gets_in() -> None:
    world = World()
    client = Client("a", header="mine")
    await _rules(world, client, ["send", "send", "send"])
    plan, _, _ = await world.request(client.messages(client.turns.pop()[0]), header="mine")
    assert (plan.lineage, plan.key, plan.unchanged) == (Lineage.REGENERATE, "openai:h:mine", 2)
    assert len(world.records.records["openai:h:mine"]) == 3  # rewound to 2, then the new one
    # another API key, or another project, with the very same history: a new conversation
    for owner, project in (("other-key", None), ("", "elsewhere")):
        plan, _, _ = await world.request(client.messages("⟨u x 1⟩"), owner=owner,
                                         project=project)
        assert (plan.rule, plan.lineage) == ("new", Lineage.DIVERGED)


def test_compaction_needs_recent_turns_that_carry_evidence() -> None:
    turns = [ClientTurn(f"u{i}", f"r{i}", 2 * i + 2, 10) for i in range(4)]
    record = extend((), [(t.users, t.reply, "s", f"m{i}") for i, t in enumerate(turns)])
    summary = ClientTurn("summary", "ok", 2, 2)
    compacted = [summary, *turns[2:]]
    assert classify(compacted, "n", record, keyed=True).rule is Lineage.COMPACTION
    # short replies are too easy to share by chance without a key
    assert classify(compacted, "n", record, keyed=False).rule is Lineage.DIVERGED
    long = [ClientTurn(t.users, t.reply, t.end, 30) for t in turns]
    record = extend((), [(t.users, t.reply, "s", f"m{i}") for i, t in enumerate(long)])
    assert classify([summary, *long[2:]], "n", record, keyed=False).rule is Lineage.COMPACTION
    assert classify([summary, *long[3:]], "n", record, keyed=False).rule is Lineage.DIVERGED
    # cut mid-turn (OpenClaw's compact --max-lines): the first kept turn lost its message,
    # its reply still places it
    cut = ClientTurn("nothing", long[2].reply, 1, 30)
    assert classify([cut, long[3]], "n", record, keyed=False).rule is Lineage.COMPACTION
    assert classify([long[3]], "n", record, keyed=False).rule is Lineage.DIVERGED


def test_normalisation_undoes_what_clients_change_and_nothing_more() -> None:
    sent = ("<thinking>plan it</thinking>[[reply_to_current]] Here it is.\n"
            "MEDIA: /tmp/chart.png\n\n  [[audio_as_voice]] Done  ")
    assert normalize_text(sent) == "Here it is. Done"
    assert normalize_text("[[reply_to: 12345]]Hi") == "Hi"
    assert normalize_text("NO_REPLY") == normalize_text(" NO_REPLY. ") == ""
    assert normalize_text("NO_REPLY here") == "NO_REPLY here"
    assert normalize_text("[[wiki page]]") == "[[wiki page]]"
    assert fingerprint("ok") != fingerprint("OK!") != fingerprint("OK")
    assert fingerprint("a  b\n") == fingerprint("a b")


def test_openclaw_turn_two_is_turn_one_plus_one() -> None:
    """OpenClaw's trailing internal-context message is sent with a turn but not stored: the
    turn's fingerprint is the same either way."""

    def conversation(name: str) -> Any:
        body = json.loads((OPENCLAW / name).read_text())["json"]
        return split_conversation(parse_chat_request(body).messages)

    _, first = client_turns(conversation("turn1.json"))
    turns, second = client_turns(conversation("turn2.json"))
    assert len(turns) == 1 and turns[0].users == first and second != first
    assert turns[0].reply == fingerprint("STUB-REPLY #1: hello from stub")
    assert KEY_PREFIX == "openai:"


async def test_the_turn_store_keeps_fingerprints_per_key_and_owner(tmp_path: Path) -> None:
    """gateway/api/turn_store.py on the real database: commits rewind and extend a record,
    candidates are found by chain or reply and only for their owner, and the records used
    longest ago are dropped whole past keep_rows."""
    store = Store(tmp_path / "gateway.sqlite3")
    await store.open()
    try:
        turns = TurnStore(store)
        record = extend((), [(f"u{i}", f"r{i}", "s", f"m{i}") for i in range(3)])
        await turns.commit("openai:a", "me", 0, record)
        assert await turns.load("openai:a") == record
        rewound = extend(record[:1], [("u9", "r9", "s", "m9")])
        await turns.commit("openai:a", "me", 1, rewound)
        assert await turns.load("openai:a") == rewound
        await turns.commit("openai:b", "someone else", 0, record)
        assert await turns.candidates("me", [record[0].chain], None) == ["openai:a"]
        assert await turns.candidates("me", [], "r9") == ["openai:a"]
        assert await turns.candidates("me", [record[2].chain], "r2") == []
        assert await turns.candidates("someone else", [record[2].chain], None) == ["openai:b"]
        turns.keep_rows, turns.prune_every = 3, 1
        await turns.commit("openai:c", "me", 0, record)  # 7 rows: a and b go
        assert await turns.load("openai:a") == () and await turns.load("openai:b") == ()
        assert await turns.load("openai:c") == record
    finally:
        await store.close()


async def test_the_turn_store_keeps_in_memory_what_the_database_holds(tmp_path: Path) -> None:
    """The records TurnStore keeps in memory are the database's: after commits, rewinds,
    a read that straddles a commit, evictions past ``cache_turns`` and a prune, a fresh
    instance reading only the database sees exactly what the caching one returns."""
    store = Store(tmp_path / "gateway.sqlite3")
    await store.open()
    try:
        turns = TurnStore(store)
        turns.cache_turns = 4

        async def same(key: str) -> tuple[RecordTurn, ...]:
            cached = await turns.load(key)
            assert cached == await TurnStore(store).load(key)
            return cached

        record = extend((), [(f"u{i}", f"r{i}", "s", f"m{i}") for i in range(3)])
        await turns.commit("openai:a", "me", 0, record)
        assert await same("openai:a") == record
        # a read under way while the record changes must not leave the old one in memory
        reading = asyncio.ensure_future(turns.load("openai:a"))
        await asyncio.sleep(0)
        rewound = extend(record[:1], [("u9", "r9", "s", "m9")])
        await turns.commit("openai:a", "me", 1, rewound)
        assert await reading in (record, rewound)
        assert await same("openai:a") == rewound
        await turns.commit("openai:b", "me", 0, record)  # 2 + 3 turns: a is pushed out
        assert list(turns._cache) == ["openai:b"]
        assert await same("openai:a") == rewound and await same("openai:b") == record
        assert await same("openai:none") == ()
        turns.keep_rows, turns.prune_every = 3, 1
        await turns.commit("openai:c", "me", 0, record)  # the prune drops a and b
        assert await same("openai:a") == () and await same("openai:b") == ()
        assert await same("openai:c") == record
    finally:
        await store.close()
