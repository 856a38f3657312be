"""Splitting a Markdown answer into messages that fit a platform's length limit.

Pure functions, no platform knowledge: the limit and the way length is measured are
parameters (Telegram: 4096 UTF-16 code units, Discord: 2000 characters).

What a split guarantees (``tests/test_telegram_split.py`` checks it on random input):

* every chunk's ``text`` measures at most ``limit``;
* fenced code blocks are balanced in every chunk: a block cut in two is closed with its
  fence at the end of one chunk and reopened (same fence, same language) at the start of
  the next, so each message renders as code on its own;
* nothing is lost: the chunks' ``source`` slices, joined, are exactly the input;
* cuts fall, in order of preference, between blocks (paragraphs, lists, code blocks), at
  a line end, or between words, and never inside an inline span (bold, a link, inline
  code, a table) unless a single span is longer than the limit. A word is cut only when
  it alone is longer than the limit.

The Markdown structure comes from a CommonMark parser (``pyromark``, pulldown-cmark), so
fences inside lists, ``~~~`` fences and longer fences are recognised like a renderer does.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyromark

_OPTIONS = (
    pyromark.Options.ENABLE_TABLES
    | pyromark.Options.ENABLE_STRIKETHROUGH
    | pyromark.Options.ENABLE_TASKLISTS
    | pyromark.Options.ENABLE_MATH
)

#: Inline (and table) elements a cut should not fall into.
_SPAN_TAGS = frozenset(
    {"Strong", "Emphasis", "Strikethrough", "Link", "Image", "Table", "Superscript",
     "Subscript"}
)
_SPAN_EVENTS = frozenset({"Code", "InlineMath", "DisplayMath", "InlineHtml"})

#: Longest info string carried over when a code block is reopened in the next chunk.
_MAX_INFO = 24
#: A preferred cut must fill at least this share of the room a chunk has.
MIN_FILL = 0.5

Measure = Callable[[str], int]


@dataclass(frozen=True)
class MarkdownChunk:
    """One message's worth of Markdown."""

    text: str  # what to send: [reopened fence] + source + [closing fence]
    source: str  # the exact slice of the input this chunk carries
    opener: str = ""  # the reopened fence line ``text`` starts with ("" if none)


@dataclass(frozen=True)
class _CodeBlock:
    line_start: int  # start of the opening fence's line
    content_start: int  # first character after the opening fence line
    content_end: int  # start of the closing fence's line (len(text) if unclosed)
    end: int  # first character after the closing fence line
    fence: str  # "```", "````", "~~~"
    info: str  # "python"


@dataclass
class _Structure:
    blocks: list[_CodeBlock]
    soft: bytearray  # 1 where a cut would fall inside an inline span or a table
    hard: bytearray  # 1 where a cut would fall inside a fence line
    block_starts: set[int]  # line starts where a top-level block begins


def split_markdown(
    text: str, limit: int, *, measure: Measure = len, min_fill: float = MIN_FILL
) -> list[MarkdownChunk]:
    """Cut ``text`` into chunks whose ``text`` measures at most ``limit`` (see module doc).

    ``measure`` must be additive (the length of a string is the sum of its characters'
    lengths): ``len``, or UTF-16 code units for Telegram.
    """
    if limit < 16:
        raise ValueError("limit must be at least 16")
    if measure(text) <= limit:
        return [MarkdownChunk(text, text)] if text else []
    structure = _analyse(text)
    costs = _prefix_costs(text, measure)
    reserve = max((measure("\n" + b.fence) for b in structure.blocks), default=0)
    chunks: list[MarkdownChunk] = []
    pos = 0
    reopened: _CodeBlock | None = None
    while pos < len(text):
        opener = _opener(reopened) if reopened else ""
        room = limit - measure(opener)
        if costs[len(text)] - costs[pos] <= room:
            chunks.append(MarkdownChunk(opener + text[pos:], text[pos:], opener))
            break
        cut = _choose_cut(text, structure, costs, pos, room - reserve, min_fill)
        source = text[pos:cut]
        inside = _inside_code(structure, cut)
        closer = ""
        if inside is not None:
            closer = ("" if source.endswith("\n") else "\n") + inside.fence
        chunks.append(MarkdownChunk(opener + source + closer, source, opener))
        pos, reopened = cut, inside
    return chunks


def reopen_fence(text: str, pos: int) -> str:
    """The fence line that reopens the code block ``pos`` lies inside ("" if none): what a
    text continuing ``text[:pos]`` in a new message must start with to stay code."""
    for block in _analyse(text).blocks:
        if block.content_start <= pos < block.content_end:
            return _opener(block)
    return ""


# --------------------------------------------------------------------------- analysis


def _analyse(text: str) -> _Structure:
    data = text.encode("utf-8")
    to_char = _byte_to_char(text, data)
    blocks: list[_CodeBlock] = []
    spans: list[tuple[int, int]] = []
    block_starts: set[int] = set()
    depth = 0
    code_start: int | None = None
    code_text_end: int | None = None
    for event, rng in pyromark.events_with_range(text, options=_OPTIONS):
        payload: Any = event  # pyromark's TypedDicts, handled generically here
        start, end = to_char(rng["start"]), to_char(rng["end"])
        if isinstance(payload, dict):
            if "Start" in payload:
                tag = payload["Start"]
                name = tag if isinstance(tag, str) else next(iter(tag))
                if depth == 0:
                    block_starts.add(_line_start(text, start))
                depth += 1
                if name == "CodeBlock" and isinstance(tag, dict):
                    kind = tag["CodeBlock"]
                    if isinstance(kind, dict) and "Fenced" in kind:
                        code_start, code_text_end = start, None
                if name in _SPAN_TAGS:
                    spans.append((start, end))
                continue
            if "End" in payload:
                depth -= 1
                tag = payload["End"]
                name = tag if isinstance(tag, str) else next(iter(tag))
                if name == "CodeBlock" and code_start is not None:
                    block = _code_block(text, code_start, end, code_text_end)
                    if block is not None:
                        blocks.append(block)
                    code_start = None
                continue
            if "Text" in payload and code_start is not None:
                code_text_end = end
                continue
            if any(key in payload for key in _SPAN_EVENTS):
                spans.append((start, end))
    soft = bytearray(len(text) + 1)
    for start, end in spans:
        soft[start + 1 : end] = b"\x01" * max(0, end - start - 1)
    hard = bytearray(len(text) + 1)
    for block in blocks:
        hard[block.line_start + 1 : block.content_start + 1] = b"\x01" * (
            block.content_start - block.line_start
        )
        if block.content_end < len(text):
            hard[block.content_end : block.end] = b"\x01" * (block.end - block.content_end)
    return _Structure(blocks, soft, hard, block_starts)


def _code_block(text: str, start: int, end: int, text_end: int | None) -> _CodeBlock | None:
    line_start = _line_start(text, start)
    newline = text.find("\n", start)
    if newline == -1 or (newline >= end and end < len(text)):
        return None  # a fence line with nothing after it
    content_start = newline + 1
    head = text[start:newline].strip()
    char = head[:1]
    if char not in ("`", "~"):
        return None
    run = len(head) - len(head.lstrip(char))
    fence = char * run
    info = head[run:].strip()
    # the closing fence's line, if the block is closed
    content_end = len(text)
    tail_from = text_end if text_end is not None else content_start
    tail = text[tail_from:end]
    if tail.strip().startswith(fence):
        content_end = _line_start(text, tail_from + tail.index(fence[0]))
        content_end = max(content_end, content_start)
    block_end = end
    if block_end < len(text) and text[block_end] == "\n":
        block_end += 1
    if content_end >= len(text):
        block_end = len(text)
    return _CodeBlock(line_start, content_start, content_end, block_end, fence,
                      info if len(info) <= _MAX_INFO else "")


def _byte_to_char(text: str, data: bytes) -> Callable[[int], int]:
    if len(data) == len(text):
        return lambda offset: offset
    starts: list[int] = []
    offset = 0
    for ch in text:
        starts.append(offset)
        offset += len(ch.encode("utf-8"))
    starts.append(offset)
    return lambda byte: bisect.bisect_left(starts, byte)


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _prefix_costs(text: str, measure: Measure) -> list[int]:
    if measure is len:
        return list(range(len(text) + 1))
    costs = [0]
    total = 0
    for ch in text:
        total += measure(ch)
        costs.append(total)
    return costs


# --------------------------------------------------------------------------- cutting


def _opener(block: _CodeBlock) -> str:
    return f"{block.fence}{block.info}\n"


def _inside_code(structure: _Structure, pos: int) -> _CodeBlock | None:
    """The code block whose interior ``pos`` lies in (a cut there closes and reopens it)."""
    for block in structure.blocks:
        if block.content_start < pos < block.content_end:
            return block
    return None


def _choose_cut(
    text: str, st: _Structure, costs: list[int], pos: int, room: int, min_fill: float
) -> int:
    """Where the chunk starting at ``pos`` ends (exclusive), with ``room`` to spend."""
    max_end = bisect.bisect_right(costs, costs[pos] + room, lo=pos) - 1
    max_end = max(max_end, pos + 1)
    floor = pos + max(1, int((max_end - pos) * min_fill))

    def ok(p: int) -> bool:
        return not st.hard[p]

    def soft_ok(p: int) -> bool:
        return not st.hard[p] and not st.soft[p]

    def boundary(p: int) -> bool:
        if text[p - 1] != "\n" or not soft_ok(p) or _inside_code(st, p) is not None:
            return False
        return p in st.block_starts or _line_blank(text, p)

    tests: list[tuple[Callable[[int], bool], int]] = [
        (boundary, floor),
        (lambda p: text[p - 1] == "\n" and soft_ok(p), floor),
        (lambda p: text[p - 1] in " \t" and soft_ok(p), floor),
        (lambda p: text[p - 1].isspace() and ok(p), pos + 1),
        (ok, pos + 1),
    ]
    for test, lowest in tests:
        for p in range(max_end, lowest - 1, -1):
            if test(p):
                return p
    return max_end  # only fence lines in reach: cut anyway rather than loop


def _line_blank(text: str, p: int) -> bool:
    """True if the line that ends at ``p`` (exclusive) is blank."""
    previous = text.rfind("\n", 0, p - 1)
    return not text[previous + 1 : p - 1].strip()
