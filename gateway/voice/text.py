"""What of a Markdown answer is worth saying aloud: :func:`speakable_text`."""

from __future__ import annotations

import re

CODE_OMITTED = "Code omitted."
TABLE_OMITTED = "Table omitted."
TRUNCATED = "The rest is in the written answer."

#: Tables with more body rows than this are left out; shorter ones are read row by row.
MAX_TABLE_ROWS = 4
#: Inline code longer than this is left out (`ls -la` is read; a long command is not).
MAX_INLINE_CODE = 40

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_URL = re.compile(r"\bhttps?://([^/\s)>\]]*[^/\s)>\].,;:!?])(?:[^\s)>\]]*[^\s)>\].,;:!?])?")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EMPHASIS = re.compile(r"(\*\*|__|~~|\*|_)(?=\S)(.+?)(?<=\S)\1")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_QUOTE = re.compile(r"^\s{0,3}(>\s?)+")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_SPACES = re.compile(r"[ \t]+")
_ENDS_SENTENCE = re.compile(r"[.!?:;…]['\")\]]*$")


def speakable_text(markdown: str, max_chars: int = 1500) -> str:
    """The part of ``markdown`` worth reading aloud, as plain text of at most ``max_chars``.

    Code blocks and tables of more than :data:`MAX_TABLE_ROWS` rows are left out (a short
    "Code omitted." says so); short tables are read row by row; links become their text,
    bare URLs their host name; Markdown markup is removed; list items and headings end as
    sentences so the voice pauses. Text longer than ``max_chars`` is cut at a sentence end
    and says that the rest is in the written answer. Returns ``""`` when nothing but code
    or tables is left.
    """
    if max_chars <= 0:
        return ""
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []  # spoken lines; "" separates paragraphs
    spoken = False  # anything besides the omission notes?
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            i = _skip_fence(lines, i, fence.group(1))
            _note(out, CODE_OMITTED)
            continue
        if i + 1 < len(lines) and "|" in line and _TABLE_SEPARATOR.match(lines[i + 1]):
            end = i + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            rows = [_cells(lines[i]), *(_cells(row) for row in lines[i + 2 : end])]
            if len(rows) - 1 > MAX_TABLE_ROWS:
                _note(out, TABLE_OMITTED)
            else:
                for cells in rows:
                    text = ", ".join(c for c in (_inline(cell) for cell in cells) if c)
                    if text:
                        out.append(_sentence(text))
                        spoken = True
            i = end
            continue
        i += 1
        if not line.strip():
            if out and out[-1] != "":
                out.append("")
            continue
        if _RULE.match(line):
            continue
        structural = bool(_HEADING.match(line) or _BULLET.match(line))
        text = _inline(_BULLET.sub("", _QUOTE.sub("", _HEADING.sub("", line))))
        if not text:
            continue
        out.append(_sentence(text) if structural else text)
        spoken = True
    if not spoken:
        return ""
    text = _join(out)
    return _cap(text, max_chars)


def _skip_fence(lines: list[str], start: int, opener: str) -> int:
    """The index after the fenced block that starts at ``start`` (or the end of the text)."""
    closer = re.compile(rf"^\s{{0,3}}{re.escape(opener[0])}{{{len(opener)},}}\s*$")
    for j in range(start + 1, len(lines)):
        if closer.match(lines[j]):
            return j + 1
    return len(lines)


def _note(out: list[str], note: str) -> None:
    if note not in out[-2:]:
        if out and out[-1] != "":
            out.append("")
        out.append(note)
        out.append("")


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [cell.strip() for cell in row.split("|")]


def _inline(text: str) -> str:
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _INLINE_CODE.sub(
        lambda m: m.group(2).strip() if len(m.group(2).strip()) <= MAX_INLINE_CODE else "", text
    )
    text = _URL.sub(lambda m: m.group(1).removeprefix("www."), text)
    text = _HTML_TAG.sub("", text)
    for _ in range(3):  # nested emphasis: ***bold italic***
        text = _EMPHASIS.sub(r"\2", text)
    return _SPACES.sub(" ", text).strip()


def _sentence(text: str) -> str:
    return text if _ENDS_SENTENCE.search(text) else text + "."


def _join(lines: list[str]) -> str:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n".join(paragraphs)


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    room = max_chars - len(TRUNCATED) - 1
    if room < max_chars // 2:  # a tiny limit: no room for the note
        room, note = max_chars, ""
    else:
        note = " " + TRUNCATED
    head = text[:room]
    cut = max(head.rfind(". "), head.rfind("! "), head.rfind("? "), head.rfind(".\n"))
    if cut >= room // 2:
        head = head[: cut + 1]
    else:
        space = head.rfind(" ")
        head = (head[:space] if space >= room // 2 else head).rstrip(",;:- ") + "…"
    return (head.rstrip() + note)[:max_chars]
