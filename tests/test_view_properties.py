"""Hypothesis properties of the streaming view (bridges/common/view.py): nothing of the
answer is lost or doubled, whatever the timing.

The view runs against :class:`FlakyPlatform`, an in-process implementation of
:class:`bridges.common.platform.Platform` that behaves like a chat platform on a bad day:
every call takes a random time, some are refused with flood control (``retry_after``),
some fail with network errors, and some edits take effect although their answer is lost.
The answer arrives in random pieces at random moments. Time is virtual
(:class:`VirtualClockLoop`): sleeps and timeouts take no real time but keep their order, so
thousands of turns with seconds of simulated latency run in seconds and every example
replays exactly.

Properties:

* every character of the final answer reaches the chat exactly once and in order (the
  answer messages, concatenated, are the final text, up to the code fences a split closes
  and reopens), and ``finish()`` returns ``""`` when the platform recovers;
* when the platform goes down for good at a random moment, what the chat shows followed by
  what ``finish()`` returns is the final text, and ``finish()`` returns within its budget;
* when the final text differs from what was streamed, the chat is repaired to show it;
* an answer too long for messages arrives whole as a file;
* at most one call that changes the chat is in flight at a time (the typing action runs
  beside them, one at a time itself).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import re
import selectors
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridges.common.platform import Chat, MessageId
from bridges.common.view import CLEANUP_BUDGET, TurnView, ViewSettings
from gateway.engine import TextDelta, TurnResult, Usage
from gateway.engine.tools import FileKind

#: turns of the main property (the others run a half or a twentieth of it);
#: VIEW_EXAMPLES=20000 for a long run
EXAMPLES = int(os.environ.get("VIEW_EXAMPLES", "600"))


def examples(share: float = 1.0) -> settings:
    return settings(max_examples=max(20, int(EXAMPLES * share)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CHAT = Chat(key="flaky:1", id=1)

@pytest.fixture(autouse=True)
def _quiet_view() -> Iterator[None]:
    """The view logs each failure it meets, thousands here: keep only errors."""
    logger = logging.getLogger("bridges.common.view")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# --------------------------------------------------------------------------- virtual time


class _VirtualSelector(selectors.BaseSelector):
    """A selector whose waits advance a virtual clock instead of blocking. Real I/O still
    wakes it, and while a thread works for the loop (``asyncio.to_thread``) it waits for
    real, so the thread's result is not overtaken by virtual time."""

    def __init__(self) -> None:
        self.real = selectors.DefaultSelector()
        self.now = 0.0
        self.threads = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.threads or timeout is None:  # only real I/O can move things on
            ready = self.real.select(0)
            if ready or timeout == 0:
                return ready
            return self.real.select(None if timeout is None else min(timeout, 0.01))
        # (no sockets here: the loop's own wake-up pipe only matters for threads)
        self.now += timeout
        return []

    def close(self) -> None:
        self.real.close()

    def get_map(self) -> Any:
        return self.real.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Any, *args: Any
    ) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self._virtual.threads += 1

        def done(_: object) -> None:
            self._virtual.threads -= 1

        future.add_done_callback(done)
        return future


def run_virtual(coro: Any) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# --------------------------------------------------------------------------- the platform


class Flood(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests: retry after {retry_after:.2f}")
        self.retry_after = retry_after


class NetworkDown(Exception):
    pass


@dataclass
class Shown:
    """A message in the fake chat, as it stands now."""

    id: MessageId
    text: str
    silent: bool
    history: list[str] = field(default_factory=list)
    deleted: bool = False


class FlakyPlatform:
    """A chat platform with random latency, flood control, network errors and lost answers
    (see the module doc). ``down_from`` (virtual time): from then on every call fails."""

    name = "flaky"
    max_upload_bytes = 10 * 1024 * 1024
    typing_interval = 4.0

    def __init__(self, rnd: random.Random, *, max_length: int, utf16: bool, latency: float,
                 flood_rate: float, fail_rate: float, lost_ack_rate: float,
                 drafts: bool) -> None:
        self.rnd = rnd
        self.max_length = max_length
        self.utf16 = utf16
        self.latency = latency
        self.flood_rate = flood_rate
        self.fail_rate = fail_rate
        self.lost_ack_rate = lost_ack_rate
        self.drafts = drafts
        self.down_from: float | None = None
        self.chat: dict[MessageId, Shown] = {}
        self.files: list[str] = []
        self.draft = ""
        self.problems: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.typing_in_flight = 0
        self.most_typing_in_flight = 0
        self.floods = 0
        self._ids = itertools.count(1)

    # -- Platform

    def measure(self, text: str) -> int:
        return len(text.encode("utf-16-le")) // 2 if self.utf16 else len(text)

    def chat_for_key(self, key: str) -> Chat | None:
        return CHAT if key == CHAT.key else None

    def supports_drafts(self, chat: Chat) -> bool:
        return self.drafts

    async def send_text(self, chat: Chat, text: str, *, markdown: bool = True,
                        silent: bool = False) -> MessageId:
        async with self._call():
            self._check(text)
            message = Shown(next(self._ids), text, silent, [text])
            self.chat[message.id] = message
            await self._way_back()
            return message.id

    async def edit_text(self, chat: Chat, message: MessageId, text: str, *,
                        markdown: bool = True) -> bool:
        async with self._call():
            shown = self.chat.get(message)
            if shown is None or shown.deleted:
                return False
            self._check(text)
            if text != shown.text:
                shown.text = text
                shown.history.append(text)
            if self.rnd.random() < self.lost_ack_rate:
                raise NetworkDown("the edit was made but its answer was lost")
            await self._way_back()
            return True

    async def delete(self, chat: Chat, message: MessageId) -> None:
        async with self._call():
            shown = self.chat.get(message)
            if shown is not None:
                shown.deleted = True

    async def send_draft(self, chat: Chat, draft_id: int, text: str) -> bool:
        async with self._call():
            self._check(text)
            self.draft = text
            return True

    async def typing(self, chat: Chat) -> None:
        """Runs beside the other calls (the view sends it in a task of its own, so its
        round trip never delays the answer); it shows nothing, so it cannot race them."""
        self.typing_in_flight += 1
        self.most_typing_in_flight = max(self.most_typing_in_flight, self.typing_in_flight)
        try:
            await asyncio.sleep(self.rnd.uniform(0, self.latency))
            loop = asyncio.get_running_loop()
            if self.down_from is not None and loop.time() >= self.down_from:
                raise NetworkDown("the platform is down")
            if self.rnd.random() < self.fail_rate:
                raise NetworkDown("connection reset")
            await self._way_back()
        finally:
            self.typing_in_flight -= 1

    async def send_file(self, chat: Chat, path: Path, caption: str, kind: FileKind) -> None:
        async with self._call():
            self.files.append(await asyncio.to_thread(path.read_text, "utf-8"))

    def retry_delay(self, exc: Exception) -> float | None:
        if isinstance(exc, Flood):
            return exc.retry_after
        if isinstance(exc, NetworkDown):
            return 0.0
        return None

    # -- the chat, as the person sees it

    def answer_messages(self) -> list[str]:
        return [m.text for m in self.chat.values() if not m.deleted and not m.silent]

    # -- internals

    def _call(self) -> _Call:
        return _Call(self)

    async def _way_there(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.rnd.uniform(0, self.latency))
        loop = asyncio.get_running_loop()
        if self.down_from is not None and loop.time() >= self.down_from:
            raise NetworkDown("the platform is down")
        roll = self.rnd.random()
        if roll < self.flood_rate:
            self.floods += 1
            raise Flood(self.rnd.uniform(0, 4 * self.latency))
        if roll < self.flood_rate + self.fail_rate:
            raise NetworkDown("connection reset")

    async def _way_back(self) -> None:
        await asyncio.sleep(self.rnd.uniform(0, self.latency))

    def _check(self, text: str) -> None:
        if not text.strip():
            self.problems.append(f"empty text sent: {text!r}")
        if self.measure(text) > self.max_length:
            self.problems.append(f"{self.measure(text)} > {self.max_length}: {text[:40]!r}")


class _Call:
    def __init__(self, platform: FlakyPlatform) -> None:
        self.platform = platform

    async def __aenter__(self) -> None:
        try:
            await self.platform._way_there()
        except BaseException:
            self.platform.in_flight -= 1
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.platform.in_flight -= 1


# --------------------------------------------------------------------------- checking


_OPENER = re.compile(r"(`{3,}|~{3,})[^\n`]*\n")
_CLOSER = re.compile(r"\n?(`{3,}|~{3,})\Z")


def _variants(message: str) -> set[str]:
    """``message`` without the fence a split may have reopened at its start and/or closed
    at its end."""
    heads = {message}
    opener = _OPENER.match(message)
    if opener:
        heads.add(message[opener.end():])
    out: set[str] = set()
    for head in heads:
        out.add(head)
        closer = _CLOSER.search(head)
        if closer:
            out.add(head[: closer.start()])
            out.add(head[: closer.start(1)])
    return out


def carries(messages: list[str], final: str, rest: str = "", *, prefix: bool = False) -> bool:
    """True if ``messages`` then ``rest`` carry exactly ``final``: each message a slice of it
    in order (up to the split's fences; whitespace between messages may be left out, as
    platforms drop it), and ``rest`` the remainder (up to a reopened fence). With
    ``prefix``, the messages need only carry the start of ``final``."""
    rests = _variants(rest) if rest else {""}

    @cache
    def fits(index: int, pos: int) -> bool:
        while pos < len(final) and final[pos].isspace() and index > 0:
            if fits_here(index, pos):
                return True
            pos += 1
        return fits_here(index, pos)

    def fits_here(index: int, pos: int) -> bool:
        if index == len(messages):
            if prefix:
                return True
            tail = final[pos:]
            return any(r == tail for r in rests) or (not tail.strip() and not rest)
        return any(final.startswith(v, pos) and fits(index + 1, pos + len(v))
                   for v in _variants(messages[index]) if v)

    return fits(0, 0)


# --------------------------------------------------------------------------- scenarios

WORDS = ["alpha", "beta", "gamma", "delta", "ünïcödé", "日本語", "😀🎉", "x", "**bold**",
         "`code`", "[a link](https://example.com)", "_it_",
         "supercalifragilisticexpialidocious-and-more-than-fifty-characters"]
CODE_LINES = ["", "x = 1", "    return f(x)  # {done}", "if a == b:", "~~", "``", "}",
              "echo 'hello world' && ls -la /tmp | grep -v total" * 2]
BLOCK = st.tuples(st.sampled_from(["para", "para", "code", "list"]), st.integers(1, 30),
                  st.sampled_from(["```", "~~~", "````"]), st.sampled_from(["", "python"]))


@st.composite
def answers(draw: st.DrawFn) -> str:
    """Answer-like Markdown: paragraphs, lists, fenced code, unicode, over-long words. The
    structure is drawn (and shrinks); the words come from a drawn seed (drawing each word
    would cost more than running the turn)."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    blocks: list[str] = []
    for kind, size, fence, lang in draw(st.lists(BLOCK, min_size=1, max_size=6)):
        if kind == "para":
            blocks.append(" ".join(rnd.choices(WORDS, k=size)))
        elif kind == "code":
            lines = rnd.choices(CODE_LINES, k=size // 2)
            blocks.append(f"{fence}{lang}\n" + "\n".join(lines) + f"\n{fence}")
        else:
            items = [" ".join(rnd.choices(WORDS, k=rnd.randint(1, 6)))
                     for _ in range(1 + size // 7)]
            blocks.append("\n".join("- " + item for item in items))
    return "\n\n".join(blocks)


@dataclass
class Case:
    answer: str
    seed: int
    max_length: int
    utf16: bool
    stream: str
    stream_interval: float
    latency: float
    flood_rate: float
    fail_rate: float
    lost_ack_rate: float
    drafts: bool
    long_answer_chars: int = 0
    streamed: str | None = None  # what streams, when the final text differs from it
    down_at: float | None = None  # fraction of the stream after which the platform dies


PARAMS = st.tuples(
    st.integers(0, 2**32),  # seed: the pieces, the pauses, the platform's luck
    st.integers(50, 200),  # max_length
    st.booleans(),  # utf16
    st.sampled_from(["draft", "edit", "edit", "off"]),
    st.sampled_from([0.05, 0.3, 1.0, 2.0]),  # stream_interval
    st.sampled_from([0.0, 0.02, 0.1, 0.3]),  # latency
    st.sampled_from([0.0, 0.05, 0.2]),  # flood_rate
    st.sampled_from([0.0, 0.05, 0.2]),  # fail_rate
    st.sampled_from([0.0, 0.1]),  # lost_ack_rate
    st.booleans(),  # drafts
)


@st.composite
def cases(draw: st.DrawFn, *, down: bool = False, differ: bool = False,
          overflow: bool = False) -> Case:
    answer = draw(answers())
    seed, max_length, utf16, stream, interval, latency, floods, fails, lost, drafts = \
        draw(PARAMS)
    case = Case(answer, seed, max_length, utf16, stream, interval, latency, floods, fails,
                0.0 if down else lost, drafts)
    if differ:
        change, extra, where = draw(st.tuples(
            st.sampled_from(["prefix", "insert", "replace"]),
            st.sampled_from(["oops ", "\n\n```\nstray", "**", "and more words " * 8]),
            st.floats(0, 1)))
        cut = int(where * len(answer))
        case.streamed = {"prefix": answer[:cut], "insert": answer[:cut] + extra + answer[cut:],
                         "replace": answer[:cut] + extra}[change]
    if down:
        case.down_at = draw(st.floats(0.0, 1.3))
    if overflow:
        case.long_answer_chars = draw(st.integers(1, max(1, len(answer) - 1)))
    return case


@dataclass
class Outcome:
    platform: FlakyPlatform
    rest: str
    finish_seconds: float
    view: TurnView


async def play(case: Case, budget: float = 20.0) -> Outcome:
    """Stream ``case`` through a view on a flaky platform and finish the turn."""
    rnd = random.Random(case.seed)
    loop = asyncio.get_running_loop()
    platform = FlakyPlatform(rnd, max_length=case.max_length, utf16=case.utf16,
                             latency=case.latency, flood_rate=case.flood_rate,
                             fail_rate=case.fail_rate, lost_ack_rate=case.lost_ack_rate,
                             drafts=case.drafts)
    view_settings = ViewSettings(
        stream=case.stream,  # type: ignore[arg-type]
        stream_interval=case.stream_interval, status_interval=1.0,
        status_delay=rnd.uniform(0.1, 3.0), long_answer_chars=case.long_answer_chars,
        delivery_budget=budget, retry_backoff=0.01,
    )
    view = TurnView(platform, CHAT, view_settings, clock=loop.time)
    streamed = case.answer if case.streamed is None else case.streamed
    pieces = _pieces(rnd, streamed)
    pauses = [rnd.choice([0.0, 0.0, rnd.uniform(0, 0.05), rnd.uniform(0, 3 * case.stream_interval)])
              for _ in pieces]
    if case.down_at is not None:
        platform.down_from = loop.time() + case.down_at * (sum(pauses) + 1.0)
    await view.start()
    await asyncio.sleep(rnd.uniform(0, 1.0))
    for piece, pause in zip(pieces, pauses, strict=True):
        if pause:
            await asyncio.sleep(pause)
        await view.on_event(TextDelta(piece))
    started = loop.time()
    rest = await view.finish(TurnResult(case.answer, "session", None, Usage(), 0.0, 0, 0, 1))
    return Outcome(platform, rest, loop.time() - started, view)


def _pieces(rnd: random.Random, text: str) -> list[str]:
    """``text`` cut at random places into 1 to ~80 pieces (single characters included)."""
    if not text:
        return []
    cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, rnd.randint(0, 80))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def describe(outcome: Outcome, case: Case) -> str:
    return (f"{case}\nrest={outcome.rest!r}\nmessages={outcome.platform.answer_messages()!r}"
            f"\nproblems={outcome.platform.problems}")


#: Virtual seconds finish() may spend when the platform recovers: long enough that a run
#: of bad luck (40% of the calls failing, 300 ms each way) always ends within it.
RECOVERS = 120.0


# --------------------------------------------------------------------------- properties


@examples()
@given(cases())
def test_every_character_reaches_the_chat_once_in_order(case: Case) -> None:
    outcome = run_virtual(play(case, budget=RECOVERS))
    platform = outcome.platform
    assert outcome.rest == "", describe(outcome, case)
    assert carries(platform.answer_messages(), case.answer), describe(outcome, case)
    assert platform.problems == []
    assert platform.most_in_flight == 1, "one call that changes the chat at a time"
    assert platform.most_typing_in_flight <= 1, "one typing action at a time"
    assert not any(m.silent and not m.deleted for m in platform.chat.values()), "status gone"


@examples(1 / 2)
@given(cases(down=True))
def test_when_the_platform_stays_down_finish_returns_exactly_the_missing_rest(
    case: Case,
) -> None:
    outcome = run_virtual(play(case, budget=8.0))
    shown = outcome.platform.answer_messages()
    assert carries(shown, case.answer, outcome.rest), describe(outcome, case)
    assert outcome.platform.problems == []
    assert outcome.finish_seconds <= 8.0 + CLEANUP_BUDGET + 0.5, "finish keeps to its budget"


@examples(1 / 2)
@given(cases(differ=True))
def test_the_chat_is_repaired_to_the_final_text(case: Case) -> None:
    outcome = run_virtual(play(case, budget=RECOVERS))
    assert outcome.rest == "", describe(outcome, case)
    assert carries(outcome.platform.answer_messages(), case.answer), describe(outcome, case)
    assert outcome.platform.problems == []


@examples(1 / 20)
@given(cases(overflow=True))
def test_an_answer_too_long_for_messages_arrives_whole_as_a_file(case: Case) -> None:
    assume(len(case.answer) > case.long_answer_chars)
    outcome = run_virtual(play(case, budget=RECOVERS))
    assert outcome.rest == "", describe(outcome, case)
    assert outcome.platform.files == [case.answer]
    assert carries(outcome.platform.answer_messages(), case.answer, prefix=True), \
        describe(outcome, case)


def test_the_checker_sees_a_lost_or_doubled_word() -> None:
    """The property's yardstick itself: a missing, doubled or reordered piece is caught;
    the split's reopened fences are not mistaken for text."""
    final = "one two three\n\n```py\nx = 1\ny = 2\n```\nend"
    assert carries(["one two ", "three\n\n```py\nx = 1\n```", "```py\ny = 2\n```\nend"], final)
    assert not carries(["one two ", "three\n\n```py\nx = 1\n```", "```py\n```\nend"], final)
    assert not carries(["one two ", "two three\n\n```py\nx = 1\ny = 2\n```\nend"], final)
    assert not carries(["three\n\n```py\nx = 1\ny = 2\n```\nend", "one two "], final)
    assert carries(["one two "], final, "three\n\n```py\nx = 1\ny = 2\n```\nend")
    assert not carries(["one two "], final, "two three\n\n```py\nx = 1\ny = 2\n```\nend")
