"""Pure parts of the chat bridges: rendering, commands, sentences, names, keys, settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridges.common import error_text, parse_command, status_text
from bridges.common.bridge import safe_filename
from bridges.common.text import duration, notice_text, rate_limit_text
from bridges.telegram import chat_key, parse_key, render
from bridges.telegram.render import telegram_length
from gateway.config import load_settings
from gateway.engine import Notice, RateLimitStatus, TurnError
from gateway.errors import ConfigError, ErrorKind


def test_render_gives_text_and_entities_without_escaping() -> None:
    text, entities = render("# Plan\n\nUse **bold**, `x_y*z`, [docs](https://x.org/a_b) and"
                            " Vec<T> <b>here</b>.\n\n```py\nprint(1)\n```")
    assert text.startswith("Plan\n")
    assert "x_y*z" in text and "Vec<T>" in text and "<b>here</b>" in text
    kinds = {e.type for e in entities}
    assert {"bold", "code", "text_link", "pre"} <= kinds
    pre = next(e for e in entities if e.type == "pre")
    assert pre.language == "py"
    assert text[pre.offset:pre.offset + pre.length].startswith("print(1)")


def test_render_counts_offsets_in_utf16_and_falls_back_when_too_long() -> None:
    _, entities = render("😀 **bold**")
    bold = entities[0]
    assert (bold.offset, bold.length) == (3, 4)  # the emoji is two UTF-16 code units
    source = "**x** " * 10
    assert render(source, limit=10) == (source, [])


def test_parse_command() -> None:
    assert parse_command("/model opus") == ("model", "opus")
    assert parse_command("/Model@Claude_Test_Bot  sonnet ", "claude_test_bot") == ("model",
                                                                                  "sonnet")
    assert parse_command("/model@other_bot opus", "claude_test_bot") is None
    assert parse_command("hello /model") is None
    assert parse_command("/resume\n2") == ("resume", "2")


def test_error_sentences_say_what_to_do() -> None:
    assert "/login" in error_text(TurnError(ErrorKind.NOT_LOGGED_IN, "x"))
    timeout = error_text(TurnError(ErrorKind.TIMEOUT, "Claude Code showed no activity for 600 s"))
    assert timeout.startswith("⏱") and "600 s" in timeout
    crashed = error_text(TurnError(ErrorKind.CRASHED, "boom\ntraceback line"))
    assert "conversation is kept" in crashed and "traceback" not in crashed
    now = time.time()
    limited = error_text(TurnError(ErrorKind.RATE_LIMITED, "limit", retry_after=3600), now=now)
    assert "resets at" in limited and "1 h" in limited
    from_report = error_text(TurnError(ErrorKind.RATE_LIMITED, "limit"),
                             rate_limit=RateLimitStatus("rejected", "five_hour", now + 120,
                                                        None, now), now=now)
    assert "in 2 min" in from_report
    assert error_text(TurnError(ErrorKind.INTERRUPTED, "x")) == "⏹ Stopped."
    assert "unknown model" in error_text(TurnError(ErrorKind.UNKNOWN_MODEL, "unknown model x"))


def test_status_and_notice_lines() -> None:
    assert status_text("Running npm test", 75, tools=3, queued=1) == (
        "⚙️ Running npm test\n⏱ 1 min 15 s · 3 steps · 1 message waiting")
    assert duration(7200) == "2 h"
    assert notice_text(Notice("rate_limit", "usage limit status: allowed",
                              {"status": "allowed"})) is None
    warn = notice_text(Notice("rate_limit", "usage limit status: allowed_warning (five_hour)",
                              {"status": "allowed_warning"}))
    assert warn is not None and "five_hour" in warn
    assert "retrying (2/10)" in str(notice_text(Notice("retrying", "x", {"attempt": 2,
                                                                         "max_retries": 10})))
    assert rate_limit_text(None) == "no report yet"
    line = rate_limit_text(RateLimitStatus("allowed", "five_hour", time.time() + 600, 0.5,
                                           time.time()))
    assert "50% used" in line and "five-hour" in line and "resets" in line


def test_safe_filenames_stay_in_their_folder() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("quarterly report?.csv") == "quarterly_report_.csv"
    assert safe_filename("..") == "file"
    assert safe_filename("C:\\Users\\x\\notes.txt") == "notes.txt"
    long = safe_filename("a" * 300 + ".pdf")
    assert len(long) <= 100 and long.endswith(".pdf")


def test_chat_keys() -> None:
    assert chat_key(42) == "telegram:42" and chat_key(-100, 7) == "telegram:-100:7"
    assert parse_key("telegram:-100:7") == (-100, 7)
    assert parse_key("telegram:42") == (42, None)
    assert parse_key("discord:42") is None and parse_key("telegram:abc") is None
    assert telegram_length("a😀") == 3


def test_telegram_settings(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "TELEGRAM_BOT_TOKEN": "1:abc",
           "CMG_TELEGRAM__ALLOWED_USERS": "123, 456"}
    settings = load_settings(env=env)
    assert settings.telegram.enabled and settings.telegram.allowed_users == [123, 456]
    assert settings.telegram.stream == "draft" and settings.telegram.mode == "polling"
    config = tmp_path / "config.toml"
    config.write_text('[telegram]\nallowed_users = [1, "me"]\n'
                      'stream_interval = 0.01\nbase_url = "localhost:8081"\n')
    with pytest.raises(ConfigError) as bad:
        load_settings(config, env={"HOME": str(tmp_path)})
    message = str(bad.value)
    for key in ("telegram.allowed_users", "telegram.stream_interval", "telegram.base_url"):
        assert key in message, message
    config.write_text('[telegram]\nmode = "webhook"\n')
    with pytest.raises(ConfigError, match=r"telegram\.webhook_url: .*https://"):
        load_settings(config, env={"HOME": str(tmp_path)})
    config.write_text('[telegram]\ntoken = "1:abc"\n')
    with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN"):
        load_settings(config, env={"HOME": str(tmp_path)})
