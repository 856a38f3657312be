"""Markdown → Telegram text + entities, with ``telegramify-markdown``.

Why entities and not ``parse_mode``: telegramify-markdown parses Markdown with a real
CommonMark parser (pulldown-cmark through pyromark) and returns plain text plus
``MessageEntity`` offsets in UTF-16 code units. Nothing has to be escaped, so an answer full
of ``_``, ``*``, ``<`` or backslashes cannot make Telegram reject the message the way a
MarkdownV2 or HTML string can. If Telegram rejects it anyway, the adapter sends the
Markdown source as plain text (see :mod:`bridges.telegram.platform`).
"""

from __future__ import annotations

import functools
import re

import pyromark
import telegram
import telegramify_markdown
from telegramify_markdown.config import RenderConfig
from telegramify_markdown.converter import STANDARD_OPTIONS
from telegramify_markdown.entity import utf16_len

#: Telegram's limit for one message (and one caption is 1024), in UTF-16 code units.
MAX_MESSAGE = 4096
MAX_CAPTION = 1024


@functools.cache
def _config() -> RenderConfig:
    config = RenderConfig.isolated()
    symbol = config.markdown_symbol
    # headings are bold (and underlined) already; the default emoji markers add noise
    symbol.heading_level_1 = symbol.heading_level_2 = symbol.heading_level_3 = ""
    symbol.heading_level_4 = ""
    symbol.horizontal_rule = "———"
    return config


def telegram_length(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return utf16_len(text)


def render(markdown: str, limit: int = MAX_MESSAGE) -> tuple[str, list[telegram.MessageEntity]]:
    """The text and entities to send for ``markdown``.

    Falls back to the Markdown source as plain text when the rendering would be empty or
    longer than ``limit`` (the source was already split to fit).
    """
    try:
        text, entities = telegramify_markdown.convert(_keep_html_text(markdown),
                                                      config=_config())
    except Exception:  # a converter bug must not cost the answer
        return markdown, []
    text = text.rstrip()
    if not text.strip() or utf16_len(text) > limit:
        return markdown, []
    end = utf16_len(text)
    out: list[telegram.MessageEntity] = []
    for e in entities:
        length = min(e.length, end - e.offset)
        if length <= 0:
            continue
        out.append(telegram.MessageEntity(
            type=e.type, offset=e.offset, length=length, url=e.url, language=e.language,
            custom_emoji_id=e.custom_emoji_id,
        ))
    return text, out


_HTML_START = re.compile(r"(?<!\\)<(?=[A-Za-z/!?])")


def _keep_html_text(markdown: str) -> str:
    """Escape ``<`` outside code so text like ``Vec<T>`` or ``<div>`` stays visible.

    The converter drops raw HTML (Telegram could not show it anyway); Claude's answers use
    angle brackets as text far more often than as HTML.
    """
    if "<" not in markdown:
        return markdown
    data = markdown.encode("utf-8")
    parts: list[str] = []
    cursor = 0
    for start, end in _code_regions(markdown):
        parts.append(_HTML_START.sub(r"\\<", data[cursor:start].decode("utf-8")))
        parts.append(data[start:end].decode("utf-8"))
        cursor = end
    parts.append(_HTML_START.sub(r"\\<", data[cursor:].decode("utf-8")))
    return "".join(parts)


def _code_regions(markdown: str) -> list[tuple[int, int]]:
    """UTF-8 byte ranges the parser treats as code (fenced, indented, inline)."""
    regions: list[tuple[int, int]] = []
    for event, rng in pyromark.events_with_range(markdown, options=STANDARD_OPTIONS):
        if not isinstance(event, dict):
            continue
        start = event.get("Start")
        if (isinstance(start, dict) and "CodeBlock" in start) or "Code" in event:
            if not regions or rng["start"] >= regions[-1][1]:
                regions.append((rng["start"], rng["end"]))
    return regions
