"""Hypothesis properties of the pure functions the gateway trusts with every message.

* request -> prompt (gateway/api/convert.py): any JSON body is either a ChatRequest or a
  400 naming a field, never another exception; a seeded prompt keeps every message's text,
  and the transcript cannot be closed from inside;
* conversation continuation (gateway/api/conversation.py): after a turn, the client's next
  request with the whole history continues the same session and sends only what is new,
  whatever the history, reply and whitespace; an edited history starts a seeded session;
* splitting and formatting for Telegram and Discord (bridges/common/split.py, the two
  render modules): arbitrary text never goes over the limit, loses nothing, and no chunk
  but the last can hold an unclosed code block; rendered chunks stay under the limit;
* send_file (gateway/engine/tools.py): whatever path Claude names, through ``..`` or
  symlinks, nothing outside the allowed folders is ever sent.

tests/test_telegram_split.py already checks structured Markdown for Telegram; this file
adds arbitrary text, the Discord limit and measure, and the renderers.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pyromark
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridges.common.split import split_markdown
from bridges.discord.render import MAX_MESSAGE as DISCORD_MAX
from bridges.discord.render import discord_length
from bridges.discord.render import render as discord_render
from bridges.telegram.render import render as telegram_render
from bridges.telegram.render import telegram_length
from gateway.api.chat_wire import parse_chat_request
from gateway.api.conversation import meta_after_turn, plan_conversation
from gateway.api.convert import (
    HISTORY_CLOSE,
    HISTORY_OPEN,
    build_prompt,
    fingerprint,
    split_conversation,
)
from gateway.engine.api import Pref
from gateway.engine.events import TurnMark
from gateway.engine.tools import resolve_outgoing
from gateway.errors import ErrorKind, GatewayError
from tests.test_lineage import MemoryRecords
from tests.test_telegram_split import markdown

#: examples per property; FUZZ_EXAMPLES=5000 for a long run
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- requests

TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
) | st.sampled_from([HISTORY_CLOSE, HISTORY_OPEN, "[[reply_to_current]]", "", "  ", "\x00"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def content(draw: st.DrawFn) -> tuple[Any, str]:
    """A message content as a string or text parts, and the text it stands for."""
    parts = draw(st.lists(TEXT, min_size=1, max_size=3))
    if draw(st.booleans()):
        return "\n".join(parts), "\n".join(parts)
    return [{"type": "text", "text": p} for p in parts], "\n".join(parts)


@st.composite
def chat(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A message list that ends with a user message (system/developer messages anywhere)."""
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 6))):
        role = draw(st.sampled_from(["user", "assistant", "system", "developer"]))
        body, _ = draw(content())
        messages.append({"role": role, "content": body})
    body, _ = draw(content())
    messages.append({"role": "user", "content": body})
    return messages


@FAST
@given(st.dictionaries(st.sampled_from(["model", "messages", "stream", "stream_options", "n",
                                        "tools", "tool_choice", "user", "prompt_cache_key",
                                        "stream_mode", "tool_mode", "parallel_tool_calls"]),
                       JSON, max_size=6) | JSON)
def test_any_json_body_is_a_request_or_a_400_naming_the_field(body: Any) -> None:
    try:
        request = parse_chat_request(body)
    except GatewayError as exc:
        assert exc.kind is ErrorKind.INVALID_REQUEST
        assert re.match(r"^[\w.\[\]]+: ", exc.message), exc.message
        return
    assert request.model.strip() and request.messages


@FAST
@given(chat(), st.booleans())
def test_a_seeded_prompt_keeps_every_message(messages: list[dict[str, Any]], seed: bool) -> None:
    request = parse_chat_request({"model": "sonnet", "messages": messages})
    try:
        conversation = split_conversation(request.messages)
    except GatewayError as exc:
        assert exc.kind is ErrorKind.INVALID_REQUEST
        return
    prompt = build_prompt(conversation, seed=seed)
    text = prompt.text
    for m in request.messages:
        if m.role in ("system", "developer") and m.text.strip():
            assert conversation.system is not None and m.text in conversation.system
    for m in conversation.new:
        if m.text.strip():
            assert m.text in text
    if seed and conversation.history:
        assert text.count(HISTORY_OPEN) >= 1
        start = text.index(HISTORY_OPEN)
        end = text.index(HISTORY_CLOSE, start)  # the first close is the real one
        transcript = text[start:end]
        for m in conversation.history:
            visible = m.text.replace(HISTORY_CLOSE, "</conversation_history >")
            assert visible in transcript, (m.text, transcript)
    else:
        assert not text.startswith("The earlier part of this conversation")


class MemoryMeta:
    """The store's meta table in a dict (gateway.store.Store has the same two queries)."""

    def __init__(self) -> None:
        self.meta: dict[str, dict[str, str]] = {}

    async def get(self, key: str) -> dict[Pref, str]:
        return {Pref(name): value for name, value in self.meta.get(key, {}).items()}

    async def find_keys(self, name: Pref, value: str) -> list[str]:
        return [k for k, m in self.meta.items() if m.get(name) == value]

    def remember(self, key: str, values: dict[Pref, str]) -> None:
        self.meta.setdefault(key, {}).update(values)


async def _plan(messages: list[dict[str, Any]], store: MemoryMeta, records: MemoryRecords,
                header: str | None = None) -> tuple[Any, Any]:
    conversation = split_conversation(parse_chat_request(
        {"model": "sonnet", "messages": messages}).messages)
    plan = await plan_conversation(conversation, header_id=header, prompt_cache_key=None,
                                   user=None, store=store, records=records,
                                   claim=lambda key: True)
    return plan, conversation


WORDS = st.text(alphabet="abcdefghij XYZ\n\t.,!é😀", min_size=1, max_size=40).filter(
    lambda t: t.strip() != "" and "[[" not in t)


@FAST
@given(st.lists(WORDS, min_size=1, max_size=6), WORDS, WORDS, st.booleans(),
       st.sampled_from([None, "pinned"]))
def test_the_next_request_continues_the_session_with_only_the_new_message(
    history: list[str], reply: str, follow_up: str, reformat: bool, header: str | None
) -> None:
    async def run() -> None:
        store, records = MemoryMeta(), MemoryRecords()
        # turn 1: the client's history ends with a user message
        first = [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                 for i, t in enumerate(history)]
        if first[-1]["role"] == "assistant":
            first.append({"role": "user", "content": "and?"})
        plan1, _ = await _plan(first, store, records, header)
        store.remember(plan1.key, meta_after_turn(plan1, reply))
        records.commit(plan1.key, plan1.owner, plan1.unchanged,
                       plan1.record_after(fingerprint(reply), TurnMark("s", "m")))
        # turn 2: the whole history again, the reply (maybe re-wrapped by the client), more
        echoed = " \n".join(reply.split()) + "\n" if reformat else reply
        second = [*first, {"role": "assistant", "content": echoed},
                  {"role": "user", "content": follow_up}]
        plan2, conversation = await _plan(second, store, records, header)
        assert plan2.key == plan1.key
        assert not plan2.seed
        assert build_prompt(conversation, seed=plan2.seed).text == follow_up
        # an edited reply: a new session (or the pinned one) seeded with everything
        edited = [*first, {"role": "assistant", "content": reply + " (edited)"},
                  {"role": "user", "content": follow_up}]
        plan3, conversation = await _plan(edited, store, records, header)
        assert plan3.seed
        if header is None:
            assert plan3.key != plan1.key
        text = build_prompt(conversation, seed=plan3.seed).text
        for message in edited:
            assert message["content"] in text

    asyncio.run(run())


# --------------------------------------------------------------------------- chat splitting

ANY_TEXT = st.lists(
    st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from([*"`~*_[]()#>|-\n \t", "```", "~~~", "```py\n", "\n```\n", "- ", "> ",
                       "1. ", "    ", "word "]),
    max_size=600,
).map("".join)


def _unclosed_fence(text: str) -> bool:
    """Whether a fenced code block runs to the end of ``text`` without its closing fence
    (by the same CommonMark parser Telegram's renderer uses)."""
    data = text.encode()
    for event, span in pyromark.events_with_range(text, options=pyromark.Options.ENABLE_TABLES):
        if not isinstance(event, dict):
            continue
        start = event.get("Start")
        if not (isinstance(start, dict) and isinstance(start.get("CodeBlock"), dict)
                and "Fenced" in start["CodeBlock"]):
            continue
        block = data[span["start"]:span["end"]].decode(errors="replace")
        opener = re.match(r"^[ >\t]*(`{3,}|~{3,})", block)
        assert opener is not None, block
        fence = opener.group(1)
        last = block.rstrip("\n").split("\n")[-1]
        closed = len(block.rstrip("\n").split("\n")) > 1 and re.fullmatch(
            rf"[ >\t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", last)
        if not closed:
            return True
    return False


def _check_split(text: str, limit: int, measure: Any) -> list[Any]:
    chunks = split_markdown(text, limit, measure=measure)
    assert "".join(c.source for c in chunks) == text, "text lost or reordered"
    for i, chunk in enumerate(chunks):
        assert measure(chunk.text) <= limit, (limit, chunk.text)
        assert chunk.source in chunk.text
        if i < len(chunks) - 1 or not _unclosed_fence(text):
            assert not _unclosed_fence(chunk.text), chunk.text
    return chunks


@FAST
@given(ANY_TEXT, st.integers(40, 400))
def test_arbitrary_text_splits_within_the_telegram_limit(text: str, limit: int) -> None:
    for chunk in _check_split(text, limit, telegram_length):
        rendered, entities = telegram_render(chunk.text, limit)
        assert telegram_length(rendered) <= limit
        for entity in entities:
            assert 0 <= entity.offset and entity.offset + entity.length <= telegram_length(
                rendered)


@FAST
@given(ANY_TEXT, st.integers(40, 400))
def test_arbitrary_text_splits_within_the_discord_limit(text: str, limit: int) -> None:
    for chunk in _check_split(text, limit, discord_length):
        assert discord_length(discord_render(chunk.text, limit)) <= limit


@FAST
@given(markdown())
def test_answers_fit_discord_messages_and_keep_their_words(
    doc: tuple[str, list[tuple[int, int]]]
) -> None:
    text, _ = doc
    words = set(re.findall(r"\b[a-z]{3,30}\b", text))  # not the 300+ character ones
    shown = []
    for chunk in _check_split(text, DISCORD_MAX // 4, discord_length):
        rendered = discord_render(chunk.text, DISCORD_MAX // 4)
        assert discord_length(rendered) <= DISCORD_MAX // 4
        shown.append(rendered)
    everything = "\n".join(shown)
    assert all(w in everything for w in words)


@FAST
@given(markdown(), st.integers(200, 1000))
def test_telegram_rendering_keeps_the_words_and_the_limit(
    doc: tuple[str, list[tuple[int, int]]], limit: int
) -> None:
    text, _ = doc
    for chunk in _check_split(text, limit, telegram_length):
        rendered, _ = telegram_render(chunk.text, limit)
        assert telegram_length(rendered) <= limit
        for word in re.findall(r"(?<![\w*_`~])[a-z]{3,30}(?![\w*_`~])", chunk.source):
            assert word in rendered, (word, chunk.source, rendered)


# --------------------------------------------------------------------------- send_file


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A workspace with files, a subfolder, and symlinks that lead in and out of it."""
    root = tmp_path_factory.mktemp("sendfile")
    ws, outside = root / "ws", root / "outside"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    (ws / "a.txt").write_text("a")
    (ws / "sub" / "b.txt").write_text("b")
    (outside / "secret.txt").write_text("secret")
    (ws / "out-file").symlink_to(outside / "secret.txt")
    (ws / "out-dir").symlink_to(outside)
    (ws / "sub" / "up").symlink_to("../..")
    (ws / "in-link").symlink_to(ws / "sub" / "b.txt")
    (ws / "loop").symlink_to(ws / "loop")
    return {"ws": ws, "outside": outside}


SEGMENTS = st.sampled_from(["..", ".", "", "a.txt", "sub", "b.txt", "out-file", "out-dir",
                            "secret.txt", "up", "in-link", "loop", "ws", "outside", "~",
                            "nope"])


@settings(max_examples=2 * EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SEGMENTS, min_size=1, max_size=7), st.booleans())
def test_send_file_never_leaves_the_workspace(
    tree: dict[str, Path], segments: list[str], absolute: bool
) -> None:
    ws = tree["ws"]
    raw = "/".join(segments)
    if absolute:
        raw = str(ws.parent) + "/" + raw
    assume(raw)
    try:
        path = resolve_outgoing(raw, cwd=ws, roots=[ws])
    except GatewayError as exc:
        assert exc.kind is ErrorKind.INVALID_REQUEST
        return
    real_ws = Path(os.path.realpath(ws))
    assert path == Path(os.path.realpath(path)) and path.is_relative_to(real_ws), raw
    assert path.is_file() and path.read_text() in ("a", "b"), raw
