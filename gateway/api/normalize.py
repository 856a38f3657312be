"""What two copies of one message have in common: the one place that decides it.

The gateway recognises a conversation by fingerprints (sha256) of its messages, computed on
both sides: of the reply when the gateway sends it, and of the copy the client resends with
its history. Real clients change that copy a little, and each change is undone here:

* whitespace: chat UIs trim it, re-wrap lines or collapse blank lines -> collapsed to one
  space, ends trimmed;
* OpenClaw's reply directives, which it strips from what it stores: ``[[reply_to_current]]``,
  ``[[reply_to:<id>]]``, ``[[audio_as_voice]]``, ``MEDIA:<path>`` lines (the attachment is
  sent apart), and a reply that is only ``NO_REPLY`` (its silent token);
* OpenClaw's internal-context blocks (``<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>`` ...
  ``<<<END_OPENCLAW_INTERNAL_CONTEXT>>>``), sent with a turn but never stored in its history;
* a leading reasoning block (``<think>``, ``<thinking>``, ``<thought>``), which UIs drop.

Nothing else is changed: case, punctuation and wording count, so ``ok`` and ``OK!`` stay
different messages.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

_INTERNAL_CONTEXT = re.compile(
    r"<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>.*?<<<END_OPENCLAW_INTERNAL_CONTEXT>>>", re.DOTALL
)
_DIRECTIVE = re.compile(
    r"\[\[\s*(?:reply_to_current|audio_as_voice|reply_to\s*:[^\]\n]*)\s*\]\]", re.IGNORECASE
)
_MEDIA_LINE = re.compile(r"^[ \t]*MEDIA:[^\n]*$", re.IGNORECASE | re.MULTILINE)
_REASONING = re.compile(
    r"^\s*<\s*(think|thinking|thought)\b[^<>]*>.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL
)
_SILENT = re.compile(r"^\W*NO_REPLY(?:\s+NO_REPLY)*\W*$")


class _Seen:
    """Long texts already normalised, newest last, within a budget of characters: a client
    resends its whole history every turn, so all but its newest messages were normalised
    on the previous request (a 1 MB history: a dictionary look-up per message instead of
    normalising 1 MB again), and its fingerprint with it (hashing 1 MB again was ~5 ms a
    request). Thread-safe: a large body is parsed in a worker thread."""

    MIN_CHARS = 1024  # shorter texts are normalised faster than they are looked up
    BUDGET_CHARS = 4 << 20  # the texts and their normalised forms together

    def __init__(self) -> None:
        #: text -> (its normalised form, that form's sha256 hex)
        self._texts: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, text: str) -> tuple[str, str] | None:
        with self._lock:
            found = self._texts.get(text)
            if found is not None:
                self._texts.move_to_end(text)
            return found

    def put(self, text: str, found: tuple[str, str]) -> None:
        size = len(text) + len(found[0])
        if size > self.BUDGET_CHARS:
            return
        with self._lock:
            if text in self._texts:
                return
            self._texts[text] = found
            self._chars += size
            while self._chars > self.BUDGET_CHARS:
                old, (old_normalized, _) = self._texts.popitem(last=False)
                self._chars -= len(old) + len(old_normalized)


_SEEN = _Seen()


def normalize_text(text: str) -> str:
    """``text`` without what clients add or strip on their own (see the module docstring)."""
    if len(text) < _Seen.MIN_CHARS:
        return _normalize(text)
    return normalized_digest(text)[0]


def normalized_digest(text: str) -> tuple[str, str]:
    """``normalize_text(text)`` and the sha256 hex of it (UTF-8): the fingerprint every
    conversation rule hashes a message by, so a long text is normalised and hashed once
    however many requests resend it."""
    if len(text) < _Seen.MIN_CHARS:
        normalized = _normalize(text)
        return normalized, digest(normalized)
    found = _SEEN.get(text)
    if found is None:
        normalized = _normalize(text)
        found = (normalized, digest(normalized))
        _SEEN.put(text, found)
    return found


def digest(text: str) -> str:
    """The sha256 hex of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalize(text: str) -> str:
    if "<<<" in text:
        text = _INTERNAL_CONTEXT.sub(" ", text)
    if "[[" in text:
        text = _DIRECTIVE.sub(" ", text)
    if "MEDIA:" in text.upper():
        text = _MEDIA_LINE.sub(" ", text)
    if "<" in text:
        while (stripped := _REASONING.sub("", text, count=1)) != text:
            text = stripped
    text = collapse_whitespace(text)
    return "" if _SILENT.match(text) else text


#: the ASCII characters ``str.split()`` splits at, each as a space
_ASCII_SPACES = bytes.maketrans(b"\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f", b" " * 9)


def collapse_whitespace(text: str) -> str:
    """``" ".join(text.split())``, without a string per word: an ASCII text (most of a
    resent history) is collapsed as bytes, several times faster (every message of a 1 MB
    history is normalised on every request) with the same result."""
    if not text.isascii():
        return " ".join(text.split())
    data = text.encode("ascii").translate(_ASCII_SPACES)
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data.strip(b" ").decode("ascii")
