"""schemathesis against the served OpenAPI document: the real ``claude-max-api`` command
(subprocess, temp config and data dir), the real bundled CLI, the fake Anthropic API.

Requests are generated from ``/openapi.json`` as the gateway serves it, both schema-valid
("positive") and schema-violating ("negative") ones, for /health, the models and the turn
endpoints of all three dialects: Chat Completions, Responses (and reading a stored
response), Anthropic Messages (and count_tokens). Not the audio endpoints (they run the
voice models; their limits are tested in tests/test_audio_api.py) nor the status page.
Half of the turn requests get a real model name and a conversation in a valid shape, and
valid values in every other field and header they send (even when generated as negative
cases), so they become real turns, and most of those are pinned to a few conversations
and mostly send only their new message, so those sessions stay warm and the run stays
bounded; most reads of a stored response ask for one the run made. Every response must
be documented (status), never a 5xx, and come back within the request timeout (no hangs).
Afterwards the gateway still answers and leaves no stray CLI process.

The suite runs ``FUZZ_API_EXAMPLES`` requests (default 200); for thousands::

    FUZZ_API_EXAMPLES=5000 .venv/bin/python -m pytest -p no:cacheprovider tests/test_fuzz_api.py -s
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.reliability_support import GatewayProcess, http

pytestmark = pytest.mark.cli

EXAMPLES = int(os.environ.get("FUZZ_API_EXAMPLES", "200"))
#: seconds a single generated request may take (a real turn takes well under 1 s)
REQUEST_TIMEOUT = 60.0
#: the turn endpoints of each dialect (their POSTs get most of the draws), and the rest
TURNS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
FUZZED = ("/health", "/v1/models", "/v1/models/{model_id}", "/v1/chat/completions",
          "/v1/responses", "/v1/responses/{response_id}")
COUNT_TOKENS = "/v1/messages/count_tokens"
#: fuzzed as soon as the document has them (the Anthropic dialect of issue 17)
FUZZED_WHEN_SERVED = ("/v1/messages", COUNT_TOKENS)
MODELS = ["sonnet", "opus", "haiku", "claude-sonnet-4", "claude-opus-4"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    home = root / "home"
    home.mkdir()
    with FakeAnthropic() as fake:
        env = cli_env(fake.base_url, str(home))
        env.pop("CLAUDE_MAX_GATEWAY_CONFIG", None)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        gateway = GatewayProcess(root, env, claude="max_live_sessions = 4").start()
        try:
            yield gateway
        finally:
            gateway.signal(signal.SIGTERM)
            try:
                assert gateway.wait(timeout=30) == 0
            finally:
                gateway.kill()


@pytest.fixture(scope="module")
def schema(served: GatewayProcess) -> Any:
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


def _texts(draw: Any) -> list[str]:
    """Random texts (any Unicode) for a conversation in a valid shape, so they reach the
    CLI (the schemas leave enough optional that generated ones rarely are accepted)."""
    texts: list[str] = draw(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=5))
    return texts


def _roles(count: int) -> list[str]:
    return [*("user" if i % 2 == 0 else "assistant" for i in range(count - 1)), "user"]


def _keep_only(body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in list(body):
        if name not in names:
            del body[name]


#: a steered turn request's optional fields, each sent or not, with a valid value of its own:
#: it keeps no generated value (a negative case's may be of any type, "stream": {})
_STREAM_MODE = st.sampled_from(["smart", "final", "verbose"])
_TOOL_MODE = st.sampled_from(["agent", "client", "hybrid"])
_MODES = {"stream_mode": _STREAM_MODE, "tool_mode": _TOOL_MODE}
OPTIONAL: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/chat/completions": {"stream": st.none() | st.booleans(),
                             "user": st.none() | st.text(max_size=40), **_MODES},
    "/v1/responses": {"stream": st.booleans(), "store": st.booleans(), **_MODES},
    "/v1/messages": {"stream": st.booleans(), **_MODES},
    COUNT_TOKENS: {},
}
#: the gateway's own headers, which it checks (it ignores the other generated ones or takes
#: any string): a steered request sends a valid one or none
HEADERS = {"X-Stream-Mode": _STREAM_MODE, "X-Tool-Mode": _TOOL_MODE}
_CHECKED = {name.lower() for name in HEADERS}


def _steer(case: Any, draw: Any, stored: list[str], mode: GenerationMode) -> None:
    """Make half of the turn requests real turns in a few pinned conversations, and most
    reads of a stored response ask for one that exists. A steered turn request is a valid
    one whatever the case was generated as: its body (a negative case's may be raw bytes),
    every field it keeps and the headers the gateway checks are valid."""
    path = case.operation.path
    if path == "/v1/responses/{response_id}" and stored and draw(st.integers(0, 3)):
        case.path_parameters = {"response_id": draw(st.sampled_from(stored))}
        return
    if path not in (*TURNS, COUNT_TOKENS) or not draw(st.booleans()):
        return
    if not isinstance(case.body, dict):
        case.body = {}
    body = case.body
    body["model"] = draw(st.sampled_from(MODELS))
    # a steered turn request is a valid conversation (the unsteered half is not)
    texts = _texts(draw)
    messages = [{"role": r, "content": t} for r, t in zip(_roles(len(texts)), texts,
                                                          strict=True)]
    system = draw(st.booleans())
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "system", "content": "Be brief."}] * system + messages
        keep: tuple[str, ...] = ("model", "messages")
    elif path == "/v1/responses":
        body["input"] = messages if len(messages) > 1 or draw(st.booleans()) else texts[0]
        if system:
            body["instructions"] = "Be brief."
        keep = ("model", "input", "instructions")
    else:  # Anthropic Messages (a turn, or count_tokens: an estimate, no turn)
        body["messages"] = messages
        if path != COUNT_TOKENS:
            body["max_tokens"] = 1024
        if system:
            body["system"] = "Be brief."
        keep = ("model", "messages", "system", "max_tokens")
    # mostly the generated extras (tools, n, …) left out, always a negative case's (one of
    # them may be what makes it invalid)
    if mode is GenerationMode.NEGATIVE or draw(st.integers(0, 3)):
        _keep_only(body, keep)
    for name, values in OPTIONAL[path].items():
        body.pop(name, None)
        if draw(st.booleans()):
            body[name] = draw(values)
    headers = {name: value for name, value in (case.headers or {}).items()
               if name.lower() not in _CHECKED}
    for name, values in HEADERS.items():
        if draw(st.booleans()):
            headers[name] = draw(values)
    case.headers = headers
    if draw(st.integers(0, 3)):
        case.headers["X-Conversation-Id"] = f"fuzz-{draw(st.integers(0, 2))}"
        if path != COUNT_TOKENS and draw(st.integers(0, 3)):
            # mostly as a client that sends only its new message: the pinned session goes
            # on warm (a random history shares nothing with the record, so each would start
            # a new CLI session: tests/test_lineage_e2e.py covers that path)
            last = messages[-1:]
            if path == "/v1/responses":
                body["input"] = last
            else:
                body["messages"] = [*body["messages"][:-len(messages)], *last]


@pytest.mark.timeout(60 + EXAMPLES * 0.3)
def test_generated_requests_never_get_a_5xx_or_hang(
    served: GatewayProcess, schema: Any, tmp_path: Path
) -> None:
    all_operations = [op.ok() for op in schema.get_all_operations()]
    documented = {op.path for op in all_operations}
    assert set(FUZZED) <= documented
    fuzzed = {*FUZZED, *(documented & set(FUZZED_WHEN_SERVED))}
    operations = [op for op in all_operations if op.path in fuzzed]
    # the turns are where the work is: each turn endpoint gets three draws
    weighted = [*operations, *[op for op in operations if op.path in TURNS] * 2]
    stored: list[str] = []  # ids of responses made with store (GET /v1/responses/{id})
    seen: Counter[str] = Counter()
    slowest = 0.0
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        nonlocal slowest
        op = data.draw(st.sampled_from(weighted))
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(op.as_strategy(generation_mode=mode))
        _steer(case, data.draw, stored, mode)
        started = time.monotonic()
        try:
            response = case.call(session=session, timeout=REQUEST_TIMEOUT)
        except requests.Timeout:
            raise AssertionError(f"no answer in {REQUEST_TIMEOUT} s: {case.as_curl_command()}"
                                 ) from None
        elapsed = time.monotonic() - started
        slowest = max(slowest, elapsed)
        seen[f"{op.method.upper()} {op.path} -> {response.status_code}"] += 1
        if (op.path == "/v1/responses" and response.status_code == 200
                and response.content.startswith(b"{")):  # not a stream
            stored.append(response.json()["id"])
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (response.status_code, response.text[:500])
        documented = op.definition.raw["responses"]
        assert str(response.status_code) in documented or response.status_code in (404, 405), (
            f"{op.label} answered an undocumented {response.status_code}: {response.text[:300]}")
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"], error
            assert error.get("code") or error.get("type"), error  # Anthropic: type only

    started = time.monotonic()
    one_request()
    wall = time.monotonic() - started
    total = sum(seen.values())
    assert total >= EXAMPLES * 0.9
    turns = sum(n for k, n in seen.items()
                if k.startswith("POST") and any(f"{t} -> 200" in k for t in TURNS))
    for path in documented & set(TURNS):
        assert seen[f"POST {path} -> 200"] > 0, f"no generated {path} became a real turn"
    # the gateway is fine afterwards
    status, _, body = served.chat("still alive?", "after-fuzz")
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == (
        "echo: still alive?")
    health = json.loads(http("GET", served.url + "/health")[2])
    assert health["running_turns"] == 0 and health["queued_turns"] == 0
    assert len(served.descendants()) <= 4, "at most max_live_sessions CLI processes"
    print(f"\nschemathesis: {total} requests in {wall:.0f} s ({turns} real turns), slowest"
          f" {slowest:.2f} s, 0 server errors; by outcome: {dict(sorted(seen.items()))}")


def _post_raw(url: str, data: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    response = requests.post(url + "/v1/chat/completions", data=data, timeout=REQUEST_TIMEOUT,
                             headers={"content-type": content_type, **(headers or {})})
    return response.status_code, response.content


def _chat_body(content: str, **extra: Any) -> bytes:
    body = {"model": "sonnet", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


# (what, raw body, statuses accepted)
HOSTILE: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("lone surrogate", _chat_body("\ud800 half a character"), (200,)),
    ("lone surrogate in the system prompt",
     json.dumps({"model": "sonnet", "messages": [{"role": "system", "content": "\udfff"},
                                                 {"role": "user", "content": "hi"}]}).encode(),
     (200, 400)),
    ("NUL characters", _chat_body("a\x00b\x00c"), (200, 400)),
    ("control characters", _chat_body("".join(chr(c) for c in range(1, 32))), (200, 400)),
    ("bidi and zero-width", _chat_body("\u202e\u200b\ufeff\u2066abc"), (200,)),
    ("not UTF-8", b'{"model": "sonnet", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     (400,)),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + _chat_body("with a BOM"), (200, 400)),
    ("deeply nested", b'{"model": "sonnet", "messages": ' + b"[" * 100_000 + b"]" * 100_000
     + b"}", (400,)),
    ("huge number", b'{"model": "sonnet", "n": 1' + b"0" * 5000 + b', "messages": []}', (400,)),
    ("NaN", b'{"model": "sonnet", "temperature": NaN, "messages": [{"role": "user", '
            b'"content": "nan"}]}', (200, 400)),
    ("duplicate keys", b'{"model": "nope", "model": "sonnet", "messages": [{"role": "user", '
                       b'"content": "dup"}]}', (200, 400)),
    ("ten thousand messages",
     json.dumps({"model": "sonnet", "messages": [{"role": "user", "content": f"m{i}"}
                                                 for i in range(10_000)]}).encode(), (200,)),
    ("empty body", b"", (400,)),
    ("a JSON string", b'"hello"', (400,)),
    ("truncated", _chat_body("cut")[:-5], (400,)),
]


@pytest.mark.parametrize(("what", "raw", "allowed"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_get_a_clear_answer_never_a_5xx(
    served: GatewayProcess, what: str, raw: bytes, allowed: tuple[int, ...]
) -> None:
    status, body = _post_raw(served.url, raw, headers={"X-Conversation-Id": "hostile"})
    assert status in allowed, (what, status, body[:500])
    if status != 200:
        assert json.loads(body)["error"]["message"], body[:500]


def test_wrong_content_type_and_oversized_chunked_body(served: GatewayProcess) -> None:
    status, body = _post_raw(served.url, _chat_body("form?"),
                             content_type="application/x-www-form-urlencoded")
    assert status in (200, 400, 415), body[:300]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
        yield b'{"model": "sonnet", "messages": [{"role": "user", "content": "'
        for _ in range(25):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    response = requests.post(served.url + "/v1/chat/completions", data=chunks(),
                             timeout=REQUEST_TIMEOUT,
                             headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["code"] == "request_too_large"
    assert len(served.descendants()) <= 4


@pytest.mark.parametrize("raw", [
    b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"input": "hi", "speed": 1' + b"0" * 5000 + b"}",
    b'{"input": 5',
], ids=["deeply nested", "huge number", "truncated"])
def test_hostile_speech_bodies_are_400_before_any_model_runs(
    served: GatewayProcess, raw: bytes
) -> None:
    response = requests.post(served.url + "/v1/audio/speech", data=raw, timeout=REQUEST_TIMEOUT,
                             headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["message"]
