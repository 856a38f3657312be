"""Conversation fidelity end to end: the official ``openai`` and ``anthropic`` clients -> the
API -> the real engine -> the REAL Claude Code CLI -> the fake Anthropic API, whose request
log shows what Claude was given as real history (earlier turns as messages) and what as a
seeded transcript (``<conversation_history>``).

One gateway for the module (with two API keys, for the stranger); each test has its own
words, so their conversations never meet but where a test makes them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from gateway.api import ApiConfig, create_app
from gateway.api.convert import HISTORY_OPEN
from gateway.engine import Engine, EngineConfig
from gateway.store import Store
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env
from tests.test_api_routes import serve
from tests.test_engine_fork import dialogue

pytestmark = [pytest.mark.cli, pytest.mark.asyncio(loop_scope="module")]

KEY, OTHER_KEY = "sk-lineage-owner", "sk-lineage-stranger"
OPENCLAW = Path(__file__).parent / "data" / "openclaw-requests"


@dataclass
class Served:
    url: str
    engine: Engine
    fake: FakeAnthropic

    def openai(self, key: str = KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def requests_for(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.fake.requests() if r["last_user_text"] == text]

    def seen(self, text: str) -> list[tuple[str, str]]:
        """What Claude was sent by the latest request that ended with ``text``."""
        return dialogue(self.requests_for(text)[-1])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
             ) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("lineage")
    (root / "home").mkdir()
    env = cli_env(fake.base_url, str(root / "home"), inherit=False)
    env.pop("PATH", None)
    config = EngineConfig(workspace=root / "workspace", cli_path=bundled_cli(), env=env,
                          activity_timeout=60.0, bash_max_timeout=60.0, idle_timeout=300.0,
                          spare_processes=1)
    engine = Engine(config, Store(root / "gateway.sqlite3"))
    await engine.start()
    try:
        async with serve(create_app(engine, ApiConfig(api_keys=(KEY, OTHER_KEY)))) as url:
            yield Served(url, engine, fake)
    finally:
        await engine.stop()


def chat(*texts: str) -> list[Any]:
    """Alternating user/assistant messages, user first."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(texts)]


async def ask(client: openai.AsyncOpenAI, messages: list[Any],
              headers: dict[str, str] | None = None) -> tuple[str, str]:
    """One Chat Completions turn: (the answer, X-Conversation-Id)."""
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4", messages=messages, extra_headers=headers)
    answer = raw.parse().choices[0].message.content
    assert answer is not None
    return answer, raw.headers["x-conversation-id"]


async def three_turns(gw: Served, tag: str) -> tuple[list[str], str]:
    """A conversation of three turns, the whole history resent each time: its texts and id."""
    client = gw.openai()
    history: list[str] = []
    ids = set()
    for n in (1, 2, 3):
        question = f"{tag} question {n} with enough words to count"
        answer, cid = await ask(client, chat(*history, question))
        history += [question, answer]
        ids.add(cid)
    assert len(ids) == 1, "a plain follow-up continues its conversation"
    return history, ids.pop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def three(gw: Served) -> tuple[list[str], str]:
    """One three-turn conversation the tests branch from (each fork is a new conversation,
    so they do not disturb each other)."""
    return await three_turns(gw, "shared")


def transcript_free(seen: list[tuple[str, str]]) -> bool:
    return not any(HISTORY_OPEN in text for _, text in seen)


async def health(gw: Served) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/health", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        body = await resp.json()
    counts: dict[str, int] = body["conversations"]["lineage"]
    return counts


# --------------------------------------------------------------------------- the rules


async def test_regenerate_forks_at_the_turn_before_and_the_old_branch_goes_on(
        gw: Served, three: tuple[list[str], str]) -> None:
    before = await health(gw)
    history, cid = three
    q1, a1, q2, a2, q3, _ = history
    gw.fake.script({"text": "a second, different answer"}, match=q3)
    answer, forked = await ask(gw.openai(), chat(q1, a1, q2, a2, q3))
    assert answer == "a second, different answer"
    assert forked != cid, "the fork of an automatic conversation is a new conversation"
    # Claude got turns 1-2 as its real history and turn 3 again, no transcript
    assert gw.seen(q3) == [("user", q1), ("assistant", a1), ("user", q2), ("assistant", a2),
                           ("user", q3)]
    # the fork goes on with its own history ...
    q4 = "question 4 on the new branch"
    _, cid4 = await ask(gw.openai(), chat(q1, a1, q2, a2, q3, answer, q4))
    assert cid4 == forked and transcript_free(gw.seen(q4))
    assert [t for _, t in gw.seen(q4)][-3:] == [q3, answer, q4]
    # ... and the older branch with its own
    q5 = "question 4 on the old branch"
    _, cid5 = await ask(gw.openai(), chat(*history, q5))
    assert cid5 == cid
    assert gw.seen(q5) == [*[(r, t) for r, t in zip(["user", "assistant"] * 3, history,
                                                     strict=False)], ("user", q5)]
    after = await health(gw)
    assert after["regenerate"] == before["regenerate"] + 1
    assert after["continuation"] >= before["continuation"] + 2


async def test_an_edit_of_turn_two_forks_at_turn_one(
        gw: Served, three: tuple[list[str], str]) -> None:
    history, cid = three
    q1, a1 = history[:2]
    edited = "question 2, said differently"
    _, forked = await ask(gw.openai(), chat(q1, a1, edited))
    assert forked != cid
    assert gw.seen(edited) == [("user", q1), ("assistant", a1), ("user", edited)]


async def test_an_explicit_key_moves_to_the_fork(gw: Served) -> None:
    pin = {"X-Conversation-Id": "lineage-pinned"}
    client = gw.openai()
    history: list[str] = []
    for n in (1, 2, 3):
        question = f"pinned question {n}"
        answer, cid = await ask(client, chat(*history, question), pin)
        history += [question, answer]
    assert cid == "h:lineage-pinned"
    gw.fake.script({"text": "pinned, answered again"}, match="pinned question 3")
    answer, cid = await ask(client, chat(*history[:4], "pinned question 3"), pin)
    assert cid == "h:lineage-pinned" and answer == "pinned, answered again"
    assert transcript_free(gw.seen("pinned question 3"))
    # the record was rewound: the new branch continues under the same key
    _, cid = await ask(client, chat(*history[:4], "pinned question 3", answer, "pinned 4"), pin)
    assert cid == "h:lineage-pinned"
    assert [t for _, t in gw.seen("pinned 4")] == [*history[:4], "pinned question 3", answer,
                                                   "pinned 4"]
    # a history that shares nothing with it: the key's session is replaced by a new one,
    # seeded with that history (the old one would hold messages this client no longer has)
    info = await gw.engine.describe("openai:h:lineage-pinned")
    assert info is not None and info.session_id
    _, cid = await ask(client, chat("unrelated start", "unrelated answer", "unrelated next"),
                       pin)
    assert cid == "h:lineage-pinned"
    (request,) = [r for r in gw.fake.requests() if "unrelated next" in r["last_user_text"]]
    assert len(dialogue(request)) == 1 and "pinned question" not in json.dumps(request)
    assert HISTORY_OPEN in request["last_user_text"]
    after = await gw.engine.describe("openai:h:lineage-pinned")
    assert after is not None and after.session_id not in (None, info.session_id)


async def test_a_compacted_history_continues_the_same_session(gw: Served) -> None:
    history, cid = await three_turns(gw, "compact")
    summary = "compact SUMMARY: we talked about three questions"
    compacted = [summary, "Noted, I have the summary.", *history[2:]]
    q4 = "compact question 4 after the summary"
    _, cid4 = await ask(gw.openai(), chat(*compacted, q4))
    assert cid4 == cid
    seen = gw.seen(q4)
    assert transcript_free(seen) and not any("SUMMARY" in t for _, t in seen)
    assert [t for _, t in seen] == [*history, q4], "the same session: turn 1 is still there"


async def test_conversations_sharing_a_first_message_never_cross(gw: Served) -> None:
    client = gw.openai()
    first = "shared opening line"
    a1, cid_a = await ask(client, chat(first))
    a2, _ = await ask(client, chat(first, a1, "A: my secret plan"))
    b1, cid_b = await ask(client, chat(first))
    assert cid_b != cid_a and b1 == a1  # the fake echoes: the same words, another chat
    _, cid = await ask(client, chat(first, b1, "B: second message"))
    assert cid == cid_b
    assert not any("secret" in t for _, t in gw.seen("B: second message"))
    _, cid = await ask(client, chat(first, a1, "A: my secret plan", a2, "A: third"))
    assert cid == cid_a
    assert not any("B:" in t for _, t in gw.seen("A: third"))


async def test_a_stranger_with_the_same_history_gets_its_own_session(
        gw: Served, three: tuple[list[str], str]) -> None:
    history, cid = three
    question = "private question from a stranger"
    _, other = await ask(gw.openai(OTHER_KEY), chat(*history, question))
    assert other != cid
    (request,) = [r for r in gw.fake.requests() if question in r["last_user_text"]]
    seen = dialogue(request)
    assert len(seen) == 1 and HISTORY_OPEN in seen[0][1], "a new session, seeded"


async def test_messages_regenerate_forks_too(gw: Served) -> None:
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    messages: list[Any] = []
    ids = []
    for n in (1, 2, 3):
        question = f"messages question {n}"
        messages.append({"role": "user", "content": question})
        raw = await client.messages.with_raw_response.create(
            model="claude-sonnet-4", max_tokens=100, messages=messages)
        reply = await raw.parse()
        text = "".join(b.text for b in reply.content if b.type == "text")
        messages.append({"role": "assistant", "content": text})
        ids.append(raw.headers["x-conversation-id"])
    assert len(set(ids)) == 1
    gw.fake.script({"text": "messages, answered again"}, match="messages question 3")
    raw = await client.messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=100, messages=messages[:5])
    assert raw.headers["x-conversation-id"] != ids[0]
    assert gw.seen("messages question 3") == [
        (m["role"], m["content"]) for m in messages[:5]]
    await client.close()


async def test_openclaw_shaped_histories_regenerate_and_edit(gw: Served) -> None:
    """OpenClaw's own bodies (tests/data/openclaw-requests: its 47 KB system prompt, tools and
    the trailing internal-context message it never stores). Claude's first answer carries
    OpenClaw's reply directives, which OpenClaw strips from the history it resends. OpenClaw
    has no regenerate or edit command of its own on the CLI (its Control UI retries a turn
    by resending the history without the answer), so those rewrites are sent as such
    bodies: each forks after turn 1 with no transcript."""
    turn1 = json.loads((OPENCLAW / "turn1.json").read_text())["json"]
    turn2 = json.loads((OPENCLAW / "turn2.json").read_text())["json"]
    for body in (turn1, turn2):
        for message in body["messages"]:
            if message["role"] == "user" and isinstance(message["content"], str):
                message["content"] += " (lineage)"  # this test's own words
        body["stream"] = False
        body.pop("stream_options")
    gw.fake.script({"text": "[[reply_to_current]] Banana noted.\nMEDIA: /tmp/banana.png"},
                   match="shell=bash (lineage)")
    client = gw.openai()

    async def post(body: dict[str, Any]) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(**body)
        return raw.parse().choices[0].message.content or "", raw.headers["x-conversation-id"]

    reply, cid = await post(turn1)
    assert reply.startswith("[[reply_to_current]]")
    turn2["messages"][2]["content"] = "Banana noted."  # as OpenClaw keeps it
    _, cid2 = await post(turn2)
    assert cid2 == cid
    second = "[Tue 2026-11-24 16:28 UTC] Second message: what word? (lineage)"

    def model_saw() -> dict[str, Any]:
        return [r for r in gw.fake.requests() if r["last_user_text"].startswith(second[:40])][-1]

    assert "conversation_history" not in json.dumps(model_saw()["messages"])
    # regenerate: the same body again, its answer asked anew
    _, regenerated = await post(turn2)
    request = model_saw()
    assert regenerated != cid and "conversation_history" not in json.dumps(request)
    assert "banana" in json.dumps(request["messages"][:-1])
    assert json.dumps(request["messages"]).count("what word?") == 1
    # edit: turn 2 said differently
    turn2["messages"][3]["content"] = second.replace("what word?", "which word, again?")
    _, edited = await post(turn2)
    request = [r for r in gw.fake.requests() if "which word, again?" in r["last_user_text"]][-1]
    assert edited not in (cid, regenerated)
    assert "banana" in json.dumps(request["messages"][:-1])
    assert "what word?" not in json.dumps(request["messages"])
