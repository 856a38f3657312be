"""Splitting answers into messages (pure): property tests on random Markdown, plus examples."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.common.split import split_markdown
from bridges.telegram.render import telegram_length

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé😀_*", min_size=1, max_size=12)
LANG = st.sampled_from(["", "python", "bash", "js"])
FENCE = st.sampled_from(["```", "~~~", "````"])


@st.composite
def markdown(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """Random answer-like Markdown, and the spans of its short bold phrases."""
    parts: list[str] = []
    bold: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["para", "code", "list", "bold", "long"]))
        if kind == "para":
            parts.append(" ".join(draw(st.lists(WORD, min_size=1, max_size=60))))
        elif kind == "code":
            fence, lang = draw(FENCE), draw(LANG)
            lines = draw(st.lists(st.text(alphabet="abc xyz=()#{}`", max_size=50),
                                  max_size=40))
            lines = [line.replace("`", "'") for line in lines]
            parts.append(f"{fence}{lang}\n" + "\n".join(lines) + f"\n{fence}")
        elif kind == "list":
            items = draw(st.lists(st.lists(WORD, min_size=1, max_size=8), min_size=1,
                                  max_size=8))
            parts.append("\n".join("- " + " ".join(item) for item in items))
        elif kind == "bold":
            words = draw(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=6),
                                  min_size=1, max_size=3))
            start = len("\n\n".join(parts)) + (2 if parts else 0) + len("see ")
            phrase = "**" + " ".join(words) + "**"
            bold.append((start, start + len(phrase)))
            parts.append(f"see {phrase} here")
        else:
            parts.append("x" * draw(st.integers(300, 700)))
    return "\n\n".join(parts), bold


def open_fence_at_end(text: str) -> bool:
    """Line-based CommonMark fence tracking (the generator puts fences at line starts)."""
    fence: str | None = None
    for line in text.split("\n"):
        match = re.match(r"^(`{3,}|~{3,})(.*)$", line)
        if match is None:
            continue
        run = match.group(1)
        if fence is None:
            fence = run
        elif run[0] == fence[0] and len(run) >= len(fence) and not match.group(2).strip():
            fence = None
    return fence is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdown(), st.integers(60, 600), st.booleans())
def test_split_properties(
    doc: tuple[str, list[tuple[int, int]]], limit: int, utf16: bool
) -> None:
    text, bold = doc
    measure = telegram_length if utf16 else len
    chunks = split_markdown(text, limit, measure=measure)
    # no text lost: the sources are the input, in order
    assert "".join(c.source for c in chunks) == text
    cuts: list[int] = []
    at = 0
    for chunk in chunks:
        at += len(chunk.source)
        cuts.append(at)
        # never over the limit, and each chunk carries its own source
        assert measure(chunk.text) <= limit
        assert chunk.source in chunk.text
        # fences balanced in every chunk
        assert not open_fence_at_end(chunk.text), chunk.text
    for cut in cuts[:-1]:
        # never inside a word (only the 300+ character "words" are longer than a chunk)
        if not text[cut - 1].isspace() and not text[cut].isspace():
            run = re.search(r"\S+$", text[:cut])
            after = re.match(r"\S+", text[cut:])
            word = (run.group(0) if run else "") + (after.group(0) if after else "")
            assert len(word) > limit // 2 or "`" in word or "~" in word, (cut, word)
        # never inside a short bold phrase
        assert not any(start < cut < end for start, end in bold), cut


def test_short_text_is_one_chunk_and_empty_is_none() -> None:
    assert [c.text for c in split_markdown("hello", 100)] == ["hello"]
    assert split_markdown("", 100) == []


def test_a_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"line_{i} = {i}" for i in range(30))
    text = f"Intro.\n\n```python\n{code}\n```\n\nOutro."
    chunks = split_markdown(text, 200)
    assert len(chunks) > 2
    assert chunks[0].text.endswith("```") and chunks[0].text.startswith("Intro.")
    for chunk in chunks[1:-1]:
        assert chunk.text.startswith("```python\n") and chunk.text.endswith("```")
    assert chunks[-1].text.endswith("Outro.")


def test_prefers_paragraph_boundaries_then_lines_then_words() -> None:
    para = "word " * 30
    text = f"{para.strip()}\n\n{para.strip()}\n{para.strip()}"
    chunks = split_markdown(text, 200)
    assert chunks[0].source == para.strip() + "\n\n"
    single = ("alpha beta gamma delta " * 20).strip()
    for chunk in split_markdown(single, 100):
        assert not chunk.source.startswith(("lpha", "eta", "amma", "elta"))


def test_inline_spans_are_not_cut() -> None:
    link = "[a link with several words in it](https://example.com/path)"
    text = ("filler " * 10) + link + (" filler" * 10)
    for chunk in split_markdown(text, 90):
        assert chunk.text.count("[") == chunk.text.count("](")


def test_utf16_limit_counts_emoji_twice() -> None:
    text = "😀" * 100  # 200 UTF-16 code units
    chunks = split_markdown(text, 64, measure=telegram_length)
    assert all(telegram_length(c.text) <= 64 for c in chunks)
    assert "".join(c.source for c in chunks) == text
