"""Claude's Markdown as Discord shows it.

Discord renders Markdown itself (bold, italics, ``code``, fenced blocks with syntax colours,
``#``-``###`` headings, lists, quotes, masked links), so an answer mostly goes out as it is.
What Discord lacks is adapted, without growing a message past the limit the split measured:

* pipe tables (shown raw by Discord) go into a code block, where their columns line up;
* ``####``-``######`` headings (shown raw) become bold lines;
* images ``![alt](url)`` become links.

Texts sent as plain (refusals, errors, the status line) are escaped, so a ``*`` in a shell
command shows as a star instead of starting italics.

Length: Discord counts a message's 2000 characters as Unicode code points; we measure
UTF-16 code units, never fewer, so a chunk that fits here fits there.
"""

from __future__ import annotations

import re

import discord

#: The longest message content Discord accepts.
MAX_MESSAGE = 2000

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_DEEP_HEADING = re.compile(r"^ {0,3}#{4,6}\s+(.+?)\s*#*\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)[^)]*\)")


def discord_length(text: str) -> int:
    """UTF-16 code units: at least what Discord counts, whatever it counts."""
    return len(text.encode("utf-16-le")) // 2


def render(markdown: str, limit: int = MAX_MESSAGE) -> str:
    """``markdown`` adapted to Discord (see the module doc); the input itself if the
    adapted text would not fit ``limit``."""
    out: list[str] = []
    lines = markdown.split("\n")
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _FENCE.match(line)
        if fence is not None:
            out.append(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
            i += 1
            continue
        if match:
            fence = match.group(1)
            out.append(line)
            i += 1
            continue
        if (
            _TABLE_ROW.match(line) and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1])
        ):
            end = i + 2
            while end < len(lines) and _TABLE_ROW.match(lines[end]):
                end += 1
            out.append("```")
            out.extend(_table(lines[i:end]))
            out.append("```")
            i = end
            continue
        heading = _DEEP_HEADING.match(line)
        if heading:
            line = f"**{heading.group(1)}**"
        out.append(_IMAGE.sub(lambda m: f"[{m.group(1) or 'image'}]({m.group(2)})", line))
        i += 1
    rendered = "\n".join(out)
    return rendered if discord_length(rendered) <= limit else markdown


def _table(rows: list[str]) -> list[str]:
    """Pipe-table rows with their columns padded to line up in a monospaced block."""
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    body = [cells[0], *cells[2:]]
    width = max(len(r) for r in body)
    sizes = [max((len(r[c]) if c < len(r) else 0) for r in body) for c in range(width)]

    def line(row: list[str]) -> str:
        padded = [(row[c] if c < len(row) else "").ljust(sizes[c]) for c in range(width)]
        return " | ".join(padded).rstrip()

    rule = "-+-".join("-" * s for s in sizes)
    return [line(body[0]), rule, *(line(r) for r in body[1:])]


def plain(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` shown literally (Markdown characters escaped), if that still fits."""
    escaped = discord.utils.escape_markdown(text, ignore_links=True)
    return escaped if discord_length(escaped) <= limit else text
