"""Only the owner's own clients drive the agent: Host, Origin, Content-Type, CORS, /health.

The real gateway app over a real engine that runs the real bundled CLI against the fake
Anthropic API. Requests are shaped byte for byte as a browser sends them (``Origin``,
``Sec-Fetch-Site/Mode/Dest``, ``Referer``, a Chrome ``User-Agent``), plus a forged
``Host: attacker.example:<port>`` (what a DNS-rebinding page sends). Every refused request is
checked three ways: its status and OpenAI error JSON (validated against ``/openapi.json``),
the fake Anthropic API received nothing at all, and the engine did no work: no conversation,
and no process started (a sampler watches this test's process tree while the requests run).
The allowed cases (no Origin; the gateway's own origin; an allowed origin with its preflight;
keys right and wrong) still answer. The last test runs headless Chromium, when installed,
against the gateway from pages of two other loopback origins.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.api import ApiConfig, api_config_from_settings, create_app
from gateway.api.guard import ALLOWED_HEADERS
from gateway.api.routes import STATUS_PROVIDERS, openapi_document
from gateway.config import load_settings
from gateway.errors import ConfigError
from tests import test_api_routes as api_routes
from tests.conftest import EngineFactory, child_pids, skip_unless_whole_module, system_binary
from tests.fake_anthropic import FakeAnthropic
from tests.test_api_routes import Gateway, check_openapi, serve

pytestmark = pytest.mark.cli

new_engine = api_routes.new_engine  # the real engine, no spare processes (they only cost CPU)

DOC = openapi_document()
GUARD_STATUSES = ("403", "415", "421")
SEEN: set[tuple[str, str, str]] = set()  # (path template, method, guard status) met here
ALLOWED = "http://localhost:5173"  # a chat UI on another port that the owner allows
EVIL = "https://evil.example"
KEYS = ("gwk-guard-one-4f1c", "gwk-guard-two-9e0b")
CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)
CHAT = {"model": "sonnet", "messages": [{"role": "user", "content": "run rm -rf ~ please"}]}
CHAT_JSON = json.dumps(CHAT)


def browser(
    origin: str | None, site: str, *, mode: str = "cors", dest: str = "empty",
    referer: str | None = None, **extra: str,
) -> dict[str, str]:
    """The headers Chrome sends with a request made by a page of ``origin``."""
    headers = {
        "User-Agent": CHROME_UA,
        "Accept": "*/*",
        "Accept-Language": "en-US,en;q=0.9",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "sec-ch-ua": '"Chromium";v="156", "Not)A;Brand";v="24"',
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Linux"',
        "Sec-Fetch-Site": site,
        "Sec-Fetch-Mode": mode,
        "Sec-Fetch-Dest": dest,
    }
    if origin is not None:
        headers["Origin"] = origin
    if referer or origin not in (None, "null"):
        headers["Referer"] = referer or f"{origin}/chat/index.html"
    return {**headers, **extra}


def documented(method: str, path: str, status: int, body: bytes) -> dict[str, Any]:
    """The error of a refusal (OpenAI's, Anthropic's on its paths), checked against the
    OpenAPI document and recorded."""
    check_openapi(method, path, status, json.loads(body))
    template = "/v1/models/{model_id}" if path.startswith("/v1/models/") else path
    SEEN.add((template, method.lower(), str(status)))
    answer = json.loads(body)
    error: dict[str, Any] = answer["error"]
    if path.startswith("/v1/messages"):  # Anthropic's shape for Anthropic's clients
        assert answer["type"] == "error" and error["message"], answer
        assert error["type"] in ("permission_error", "invalid_request_error"), answer
    else:
        assert error["message"] and error["type"] == "invalid_request_error", error
    return error


@asynccontextmanager
async def no_engine_work(gw: Gateway) -> AsyncIterator[None]:
    """Asserts that nothing in the block reached the model or started a process: the fake
    API got no request on any route, the engine made no conversation, and no new process
    appeared in this test's tree (sampled every 10 ms while the block runs)."""
    before = child_pids()
    hits = len(gw.fake.hits())
    appeared: set[int] = set()
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            appeared.update(child_pids() - before)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        yield
    finally:
        done.set()
        await sampler
    appeared.update(child_pids() - before)
    assert gw.fake.hits()[hits:] == [], "a refused request reached the Anthropic API"
    assert appeared == set(), "a refused request started a process"
    status = gw.engine.status()
    assert status.sessions == 0 and status.running_turns == 0, status
    assert gw.engine.live_pids() == {}


async def request(
    gw: Gateway, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        async with session.request(method, gw.url + path, **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def make_gateway(
    new_engine: EngineFactory, fake_api: FakeAnthropic
) -> AsyncIterator[Any]:
    """``await make_gateway(status_providers=None, **ApiConfig)``: the real app served on
    127.0.0.1 over a started real engine."""
    async with AsyncExitStack() as stack:

        async def factory(
            status_providers: dict[str, Any] | None = None, **config: Any
        ) -> Gateway:
            engine = await new_engine()
            app = create_app(engine, ApiConfig(**config))
            if status_providers:
                app[STATUS_PROVIDERS] = status_providers
            url = await stack.enter_async_context(serve(app))
            gateway = Gateway(url, engine, fake_api)
            stack.push_async_callback(gateway.client.close)
            return gateway

        yield factory


@pytest.fixture
async def gw(make_gateway: Any) -> Gateway:
    return await make_gateway(allowed_origins=(ALLOWED,), allowed_hosts=("gateway.lan",))


def port_of(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- refused


async def test_a_web_page_cannot_start_a_turn_by_any_simple_request(gw: Gateway) -> None:
    """What a page can send without a CORS preflight (the browser does not ask first), and
    the few things it could try besides: all 403, before any body is read."""
    page = browser(EVIL, "cross-site")
    form = browser(EVIL, "cross-site", mode="navigate", dest="document",
                   **{"Sec-Fetch-User": "?1", "Upgrade-Insecure-Requests": "1",
                      "Cache-Control": "max-age=0"})
    multipart = aiohttp.FormData()
    multipart.add_field("payload", CHAT_JSON)
    attempts: list[tuple[str, dict[str, str], Any]] = [
        # fetch(url, {method: "POST", body: JSON.stringify(...)}): text/plain, no preflight
        ("fetch text/plain", {**page, "Content-Type": "text/plain;charset=UTF-8"}, CHAT_JSON),
        # fetch(url, {mode: "no-cors", ...}): the same bytes, the answer just unreadable
        ("no-cors", {**browser(EVIL, "cross-site", mode="no-cors"),
                     "Content-Type": "text/plain;charset=UTF-8"}, CHAT_JSON),
        # <form method=post enctype=text/plain> with <input name='{"model":"sonnet",...' …>
        ("form text/plain", {**form, "Content-Type": "text/plain"}, CHAT_JSON + "="),
        ("form urlencoded", {**form, "Content-Type": "application/x-www-form-urlencoded"},
         "payload=" + CHAT_JSON),
        ("form multipart", form, multipart),
        # navigator.sendBeacon(url, new Blob([json])): no Content-Type at all
        ("sendBeacon", browser(EVIL, "cross-site", mode="no-cors"), CHAT_JSON.encode()),
        # JSON with the right type, as an old or lax browser might send it unasked
        ("fetch json", {**page, "Content-Type": "application/json"}, CHAT_JSON),
        # a page on another loopback port (a dev server, another local app): same-site
        ("other port", {**browser("http://127.0.0.1:8000", "same-site"),
                        "Content-Type": "text/plain;charset=UTF-8"}, CHAT_JSON),
        # a sandboxed iframe, a file:// page or a data: URL: Origin null
        ("origin null", {**browser("null", "cross-site"),
                         "Content-Type": "text/plain;charset=UTF-8"}, CHAT_JSON),
    ]
    async with no_engine_work(gw):
        for what, headers, body in attempts:
            status, got, data = await request(
                gw, "POST", "/v1/chat/completions", headers=headers, data=body
            )
            assert status == 403, (what, status, data[:200])
            error = documented("POST", "/v1/chat/completions", status, data)
            assert error["code"] == "forbidden_origin", what
            assert "server.allowed_origins" in error["message"], what
            assert "Access-Control-Allow-Origin" not in got, what
        # the preflight a page needs before a JSON POST: refused, no CORS headers
        status, got, data = await request(gw, "OPTIONS", "/v1/chat/completions", headers={
            **browser(EVIL, "cross-site"), "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert status == 403 and json.loads(data)["error"]["code"] == "forbidden_origin"
        assert not [h for h in got if h.lower().startswith("access-control-")], got
        # <img src="http://127.0.0.1:3456/health">: no Origin, but Sec-Fetch-Site says who
        status, _, data = await request(gw, "GET", "/health", headers=browser(
            None, "cross-site", mode="no-cors", dest="image", referer=f"{EVIL}/"))
        assert status == 403
        assert "Sec-Fetch-Site: cross-site" in documented("GET", "/health", status, data)[
            "message"]
    assert gw.fake.requests() == []


async def test_dns_rebinding_is_refused_by_host(gw: Gateway) -> None:
    """A page at http://attacker.example:<port> whose name now resolves to 127.0.0.1: its
    requests are same-origin to the browser (so they carry its own Origin, or none for a
    GET), and only the Host header gives them away. Any port, any path: 421."""
    port = port_of(gw)
    rebound = f"attacker.example:{port}"
    same_origin = browser(f"http://{rebound}", "same-origin", Host=rebound)
    async with no_engine_work(gw):
        status, got, data = await request(
            gw, "POST", "/v1/chat/completions", data=CHAT_JSON,
            headers={**same_origin, "Content-Type": "application/json"})
        assert status == 421, data[:200]
        error = documented("POST", "/v1/chat/completions", status, data)
        assert error["code"] == "host_not_allowed"
        assert f"Host {rebound}" in error["message"]
        assert '"attacker.example" to server.allowed_hosts' in error["message"]
        assert "Access-Control-Allow-Origin" not in got
        for path in ("/health", "/v1/models", "/openapi.json"):  # reading is refused too
            headers = browser(None, "same-origin", Host=rebound, referer=f"http://{rebound}/")
            status, _, data = await request(gw, "GET", path, headers=headers)
            assert status == 421, path
            documented("GET", path, status, data)
        for host in ("attacker.example", "127.0.0.1.attacker.example:3456", "localhost.:3456",
                     "[::1]x", "0.0.0.0:3456", "192.168.1.20:3456", "", "a b"):
            headers = {"Host": host, "Content-Type": "application/json"}
            status, _, data = await request(gw, "POST", "/v1/chat/completions",
                                            data=CHAT_JSON, headers=headers)
            assert status == 421, (host, data[:200])
            documented("POST", "/v1/chat/completions", status, data)
        # and Host comes first: a forged Host with a good Origin, or from the allowed app
        status, _, _ = await request(gw, "POST", "/v1/chat/completions", data=CHAT_JSON,
                                     headers={**browser(ALLOWED, "cross-site"), "Host": rebound,
                                              "Content-Type": "application/json"})
        assert status == 421
    assert gw.fake.requests() == []


async def test_no_host_header_is_refused(gw: Gateway) -> None:
    """HTTP/1.0 without Host (hand-written): refused, not guessed."""
    async with no_engine_work(gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        body = CHAT_JSON.encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, data = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"421", head
    assert json.loads(data)["error"]["code"] == "host_not_allowed"


async def test_only_the_endpoints_own_content_type_is_accepted(gw: Gateway) -> None:
    """A client without Origin (curl forgetting -H, a script) still cannot send a JSON
    endpoint anything but application/json: 415, the message naming the type."""
    forms = aiohttp.FormData()
    forms.add_field("file", b"RIFF", filename="a.wav", content_type="audio/wav")
    cases: list[tuple[str, str | None, Any]] = [
        ("/v1/chat/completions", "text/plain;charset=UTF-8", CHAT_JSON),
        ("/v1/chat/completions", "application/x-www-form-urlencoded", CHAT_JSON),
        ("/v1/chat/completions", None, forms),  # multipart/form-data; boundary=...
        ("/v1/chat/completions", "application/octet-stream", CHAT_JSON.encode()),
        ("/v1/chat/completions", "application/jsonp", CHAT_JSON),
        ("/v1/audio/speech", "text/plain", json.dumps({"input": "hello"})),
        ("/v1/audio/transcriptions", "application/json", json.dumps({"file": "x"})),
        ("/v1/audio/transcriptions", "application/x-www-form-urlencoded", "file=x"),
    ]
    async with no_engine_work(gw):
        for path, ctype, body in cases:
            headers = {"Content-Type": ctype} if ctype else {}
            status, _, data = await request(gw, "POST", path, headers=headers, data=body)
            assert status == 415, (path, ctype, data[:200])
            error = documented("POST", path, status, data)
            assert error["code"] == "unsupported_media_type"
            expected = "multipart/form-data" if "transcriptions" in path else "application/json"
            assert f"takes a {expected} body (send 'Content-Type: {expected}')" in error[
                "message"], error
        # no Content-Type at all (fetch with a Blob body, curl --data-binary @- on some setups)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        body = CHAT_JSON.encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.split()[1] == b"415" and b"without a Content-Type" in raw, raw[:300]
    assert gw.fake.requests() == []


async def test_origin_and_host_come_before_auth_and_auth_before_the_body(
    make_gateway: Any,
) -> None:
    gw = await make_gateway(api_keys=KEYS, allowed_origins=(ALLOWED,))
    good = {"Authorization": f"Bearer {KEYS[1]}"}
    async with no_engine_work(gw):
        # a page holding a key is still a page: 403, not 200
        status, _, data = await request(gw, "POST", "/v1/chat/completions", data=CHAT_JSON,
                                        headers={**browser(EVIL, "cross-site"), **good,
                                                 "Content-Type": "application/json"})
        assert status == 403, data[:200]
        # a rebinding page with a key: 421
        status, _, _ = await request(gw, "POST", "/v1/chat/completions", data=CHAT_JSON,
                                     headers={**good, "Host": "attacker.example:3456",
                                              "Content-Type": "application/json"})
        assert status == 421
        # the allowed app without a key, and a wrong Content-Type without a key: 401 first
        for headers in ({**browser(ALLOWED, "cross-site"), "Content-Type": "application/json"},
                        {"Content-Type": "text/plain"}):
            status, got, data = await request(gw, "POST", "/v1/chat/completions",
                                              data=CHAT_JSON, headers=headers)
            assert status == 401, (headers, data[:200])
            error = json.loads(data)["error"]
            assert error["code"] == "invalid_api_key" and "GATEWAY_API_KEYS" in error["message"]
            assert "server.api_keys" not in error["message"]
            # the allowed app may read why (its own error), nobody else gets CORS headers
            cors = got.get("Access-Control-Allow-Origin")
            assert cors == (ALLOWED if "Origin" in headers else None), got
        # a wrong key with the right body
        status, _, _ = await request(gw, "POST", "/v1/chat/completions", json=CHAT,
                                     headers={"X-Api-Key": KEYS[0] + "x"})
        assert status == 401
    assert gw.fake.requests() == []


# --------------------------------------------------------------------------- allowed


async def test_clients_without_origin_and_the_gateways_own_origin_still_work(
    gw: Gateway,
) -> None:
    # the official SDK (no Origin, no Sec-Fetch-*)
    pinned = {"X-Conversation-Id": "one-process"}  # every turn here reuses one CLI process
    reply = await gw.client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "sdk says hi"}],
        extra_headers=pinned)
    assert reply.choices[0].message.content == "echo: sdk says hi"
    port = port_of(gw)
    # every loopback spelling of Host, the bound address's and a listed name, any port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1",
                 "LOCALHOST", "[::1]", f"127.0.0.2:{port}", f"gateway.lan:{port}", "Gateway.LAN"):
        status, _, data = await request(gw, "GET", "/v1/models", headers={"Host": host})
        assert status == 200, (host, data[:200])
    # a page of the gateway's own origin (e.g. /openapi.json opened in a browser, or a tab
    # the owner typed the URL into), for each Host it was reached at
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"gateway.lan:{port}"):
        own = browser(f"http://{host}", "same-origin", Host=host)
        status, got, data = await request(
            gw, "POST", "/v1/chat/completions", data=json.dumps(
                {**CHAT, "messages": [{"role": "user", "content": f"own page {host}"}]}),
            headers={**own, **pinned, "Content-Type": "application/json; charset=utf-8"})
        assert status == 200, (host, data[:300])
        assert json.loads(data)["choices"][0]["message"]["content"] == f"echo: own page {host}"
        assert "Access-Control-Allow-Origin" not in got  # same-origin needs none
    typed = browser(None, "none", mode="navigate", dest="document")
    status, _, data = await request(gw, "GET", "/health", headers=typed)
    assert status == 200 and json.loads(data)["cli_path"]
    assert gw.saw("own page 127.0.0.1") and gw.saw("sdk says hi")


async def test_an_allowed_origin_gets_cors_preflight_answer_and_stream(gw: Gateway) -> None:
    page = browser(ALLOWED, "same-site")
    asked = "authorization,content-type,x-conversation-id,x-stainless-os,x-stream-mode"
    status, got, data = await request(gw, "OPTIONS", "/v1/chat/completions", headers={
        **page, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked})
    assert status == 204 and data == b""
    assert got["Access-Control-Allow-Origin"] == ALLOWED
    assert set(got["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {
        "GET", "POST", "OPTIONS"}
    allowed = {h.strip().lower() for h in got["Access-Control-Allow-Headers"].split(",")}
    assert {h.lower() for h in ALLOWED_HEADERS} <= allowed
    assert {"authorization", "content-type", "x-conversation-id", "x-session-id",
            "x-stream-mode", "x-tool-mode", "x-api-key", "x-stainless-os"} <= allowed
    assert int(got["Access-Control-Max-Age"]) > 0 and "Origin" in got["Vary"]
    assert "Access-Control-Allow-Credentials" not in got
    assert gw.fake.hits() == [], "a preflight is not a turn"
    # then the POST the preflight allowed
    body = {**CHAT, "messages": [{"role": "user", "content": "from the allowed app"}]}
    status, got, data = await request(gw, "POST", "/v1/chat/completions", json=body, headers={
        **page, "X-Conversation-Id": "webapp"})
    assert status == 200, data[:300]
    assert json.loads(data)["choices"][0]["message"]["content"] == "echo: from the allowed app"
    assert got["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Conversation-Id" in got["Access-Control-Expose-Headers"]
    assert got["X-Conversation-Id"].endswith("webapp") and "Origin" in got["Vary"]
    # streamed: the headers go out before the first byte of the stream
    status, got, data = await request(gw, "POST", "/v1/chat/completions", headers={
        **page, "X-Conversation-Id": "webapp"}, json={**body, "stream": True})
    assert status == 200 and got["Content-Type"].startswith("text/event-stream")
    assert got["Access-Control-Allow-Origin"] == ALLOWED and data.endswith(b"data: [DONE]\n\n")
    # an error the page should be able to read, and a GET
    status, got, data = await request(gw, "POST", "/v1/chat/completions", headers=page,
                                      json={"model": "gpt-9", "messages": body["messages"]})
    assert status == 400 and got["Access-Control-Allow-Origin"] == ALLOWED
    status, got, _ = await request(gw, "GET", "/v1/models", headers=page)
    assert status == 200 and got["Access-Control-Allow-Origin"] == ALLOWED
    # the allowed app's origin on another port or scheme is another origin
    for other in ("http://localhost:5174", "https://localhost:5173", "http://127.0.0.1:5173"):
        status, got, _ = await request(gw, "POST", "/v1/chat/completions", json=body,
                                       headers=browser(other, "same-site"))
        assert status == 403, other
    assert len(gw.fake.requests()) == 2


async def test_keys_and_what_health_tells_strangers(make_gateway: Any) -> None:
    secret_chat = "telegram:123456789"
    gw = await make_gateway(
        api_keys=KEYS,
        status_providers={"scheduler": lambda: {"jobs": [{"target": secret_chat}]}},
    )
    # without a key, or with a wrong one: only status and version
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-Api-Key": KEYS[0][:-1]},
                    browser(None, "none", mode="navigate", dest="document")):
        status, _, data = await request(gw, "GET", "/health", headers=headers)
        body = json.loads(data)
        assert status == 200 and set(body) == {"status", "version"}, body
        assert body["status"] == "ok"
        check_openapi("GET", "/health", status, body)
        assert secret_chat.encode() not in data and b"cli_path" not in data
    # with a key (either header): everything
    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-Api-Key": KEYS[1]}):
        status, _, data = await request(gw, "GET", "/health", headers=headers)
        body = json.loads(data)
        assert status == 200 and body["cli_path"] and body["scheduler"]["jobs"][0][
            "target"] == secret_chat
        check_openapi("GET", "/health", status, body)
    # keys right and wrong on /v1/, both headers
    for headers, expect in (({"Authorization": f"Bearer {KEYS[0]}"}, 200),
                            ({"X-Api-Key": KEYS[1]}, 200),
                            ({"Authorization": f"Bearer {KEYS[0]}x"}, 401),
                            ({"X-Api-Key": "nope"}, 401), ({}, 401)):
        status, _, data = await request(gw, "GET", "/v1/models", headers=headers)
        assert status == expect, headers
        if expect == 401:
            assert "GATEWAY_API_KEYS" in json.loads(data)["error"]["message"]
    status, _, data = await request(gw, "POST", "/v1/chat/completions", json=CHAT,
                                    headers={"X-Api-Key": KEYS[0]})
    assert status == 200 and json.loads(data)["choices"][0]["message"]["content"].startswith(
        "echo: run rm")
    # without keys, /health stays complete on loopback
    open_gw = await make_gateway()
    status, _, data = await request(open_gw, "GET", "/health")
    assert status == 200 and json.loads(data)["cli_path"]


def test_the_openapi_document_names_gateway_api_keys() -> None:
    text = json.dumps(DOC)
    assert "server.api_keys" not in text and "GATEWAY_API_KEYS" in text
    assert "GATEWAY_API_KEYS" in DOC["components"]["securitySchemes"]["bearer"]["description"]


def test_the_settings_are_read_normalized_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    env = {"HOME": str(tmp_path), "GATEWAY_API_KEYS": KEYS[0]}
    path.write_text('[server]\nhost = "192.168.1.5"\n'
                    'allowed_origins = ["HTTP://LocalHost:5173", "https://chat.example:443"]\n')
    settings = load_settings(path, env={**env, "CMG_SERVER__ALLOWED_HOSTS": "Gateway.LAN, fd00::5"})
    assert settings.server.allowed_origins == ["http://localhost:5173", "https://chat.example"]
    assert settings.server.allowed_hosts == ["gateway.lan", "fd00::5"]
    config = api_config_from_settings(settings)
    assert config.allowed_origins == ("http://localhost:5173", "https://chat.example")
    # the bound address is a Host clients may use; a wildcard bind adds nothing
    assert config.allowed_hosts == ("gateway.lan", "fd00::5", "192.168.1.5")
    path.write_text('[server]\nhost = "0.0.0.0"\n')
    assert api_config_from_settings(load_settings(path, env=env)).allowed_hosts == ()
    path.write_text('[server]\nallowed_origins = ["http://localhost:5173/"]\n'
                    'allowed_hosts = ["gateway.lan:8080"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    lines = str(info.value).splitlines()
    assert any("server.allowed_origins" in line and "trailing '/'" in line for line in lines)
    assert any("server.allowed_hosts" in line and "has a port" in line for line in lines)


def test_bad_api_config_values_are_refused_with_what_is_wrong() -> None:
    for kwargs, words in (({"allowed_origins": ("http://localhost:5173/",)}, "trailing '/'"),
                          ({"allowed_origins": ("localhost:5173",)}, "http://host[:port]"),
                          ({"allowed_origins": ("*",)}, "not an origin"),
                          ({"allowed_hosts": ("gateway.lan:80",)}, "has a port"),
                          ({"allowed_hosts": ("http://gateway.lan",)}, "is a URL")):
        with pytest.raises(ConfigError) as info:
            ApiConfig(**kwargs)  # type: ignore[arg-type]
        assert words in str(info.value) and "server.allowed_" in str(info.value)
    config = ApiConfig(allowed_origins=("HTTP://LocalHost:80",), allowed_hosts=("[FD00::5]",))
    assert config.allowed_origins == ("http://localhost",) and config.allowed_hosts == ("fd00::5",)


async def test_every_operation_refuses_foreign_origins_and_hosts(gw: Gateway) -> None:
    """Each documented operation, its guard refusals produced for real."""
    async with no_engine_work(gw):
        for template, ops in DOC["paths"].items():
            path = template.replace("{model_id}", "sonnet")
            for method, op in ops.items():
                kwargs: dict[str, Any] = {"data": CHAT_JSON} if method == "post" else {}
                for headers in (browser(EVIL, "cross-site"),
                                {"Host": "attacker.example"},
                                {"Content-Type": "text/plain"}):
                    if "Content-Type" in headers and "requestBody" not in op:
                        continue
                    status, _, data = await request(gw, method.upper(), path, headers=headers,
                                                    **kwargs)
                    assert str(status) in GUARD_STATUSES, (method, path, headers, status)
                    documented(method.upper(), path, status, data)


def test_every_documented_guard_status_was_seen(request: pytest.FixtureRequest) -> None:
    """Runs after the rest of this module: every guard status the document lists (on every
    operation) was produced by a real refusal."""
    skip_unless_whole_module(request, __name__)
    expected = {
        (path, method, status)
        for path, ops in DOC["paths"].items()
        for method, op in ops.items()
        for status in op["responses"]
        if status in GUARD_STATUSES
    }
    assert len(expected) >= 17
    assert expected - SEEN == set(), sorted(expected - SEEN)


# --------------------------------------------------------------------------- a real browser

ATTACK_PAGE = """<!doctype html><title>cute cats</title><body>
<iframe src="{app}/app.html"></iframe>
<script>
const gw = "{gateway}";
const body = JSON.stringify({chat});
const report = (what, result) => fetch("/report", {{method: "POST",
  body: JSON.stringify({{what, result}})}});
async function attempt(what, f) {{
  try {{ const r = await f(); await report(what, "status " + r.status + " " + r.type); }}
  catch (e) {{ await report(what, "error " + e.name); }}
}}
(async () => {{
  await attempt("text/plain", () => fetch(gw + "/v1/chat/completions",
    {{method: "POST", body}}));
  await attempt("no-cors", () => fetch(gw + "/v1/chat/completions",
    {{method: "POST", mode: "no-cors", body}}));
  await attempt("urlencoded", () => fetch(gw + "/v1/chat/completions",
    {{method: "POST", mode: "no-cors", body: new URLSearchParams({{payload: body}})}}));
  const form = new FormData(); form.append("payload", body);
  await attempt("multipart", () => fetch(gw + "/v1/chat/completions",
    {{method: "POST", mode: "no-cors", body: form}}));
  await attempt("json", () => fetch(gw + "/v1/chat/completions",
    {{method: "POST", headers: {{"Content-Type": "application/json"}}, body}}));
  await attempt("read health", () => fetch(gw + "/health"));
  await attempt("rebound", () => fetch("{rebound}/v1/chat/completions",
    {{method: "POST", mode: "no-cors", body}}));
  await report("beacon", String(navigator.sendBeacon(gw + "/v1/chat/completions", body)));
  await report("done", "");
}})();
</script></body>"""

APP_PAGE = """<!doctype html><title>my chat UI</title><script>
(async () => {{
  let result;
  try {{
    const r = await fetch("{gateway}/v1/chat/completions", {{method: "POST",
      headers: {{"Content-Type": "application/json", "X-Conversation-Id": "chromium-app"}},
      body: JSON.stringify({chat})}});
    const j = await r.json();
    result = r.status + " " + r.headers.get("X-Conversation-Id") + " "
      + j.choices[0].message.content;
  }} catch (e) {{ result = "error " + e; }}
  await fetch("/report", {{method: "POST", body: JSON.stringify({{what: "app", result}})}});
}})();
</script>"""


@asynccontextmanager
async def page_server(pages: dict[str, str], reports: list[dict[str, str]]) -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        if request.match_info["name"] not in pages:  # /favicon.ico
            raise web.HTTPNotFound()
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        reports.append(json.loads(await request.text()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{name}", page)
    app.router.add_post("/report", report)
    async with serve(app) as url:
        yield url


async def test_headless_chromium_pages_of_other_origins(
    make_gateway: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A page from one loopback origin tries every fetch() it can against the gateway; the
    owner's allowed app, in an iframe from another origin, uses it with CORS."""
    chromium = system_binary("chromium", "chromium")
    caplog.set_level(logging.WARNING, logger="gateway.api.guard")
    reports: list[dict[str, str]] = []
    pages: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        app_url = await stack.enter_async_context(page_server(pages, reports))
        attack_url = await stack.enter_async_context(page_server(pages, reports))
        gw = await make_gateway(allowed_origins=(app_url,))
        port = port_of(gw)
        app_chat = json.dumps({**CHAT, "messages": [{"role": "user", "content": "hi from app"}]})
        pages["app.html"] = APP_PAGE.format(gateway=gw.url, chat=app_chat)
        pages["attack.html"] = ATTACK_PAGE.format(
            app=app_url, gateway=gw.url, chat=CHAT_JSON, rebound=f"http://attacker.example:{port}")
        started = time.monotonic()
        browser_proc = await asyncio.create_subprocess_exec(
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--host-resolver-rules=MAP attacker.example 127.0.0.1",
            f"{attack_url}/attack.html",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not ({"done", "app"} <= {r["what"] for r in reports}):
                assert time.monotonic() < deadline, f"the pages did not finish: {reports}"
                assert browser_proc.returncode is None, "chromium exited"
                await asyncio.sleep(0.05)
            while sum("POST /v1/chat/completions from Origin" in r.getMessage()
                      for r in caplog.records) < 5:  # the beacon goes out in the background
                assert time.monotonic() < deadline, "the beacon never came"
                await asyncio.sleep(0.05)
        finally:
            if browser_proc.returncode is None:
                browser_proc.kill()
            await browser_proc.wait()
        seconds = time.monotonic() - started
    got = {r["what"]: r["result"] for r in reports}
    # the attacker read nothing: CORS errors, or opaque (unreadable) responses
    for what in ("text/plain", "json", "read health"):
        assert got[what] == "error TypeError", (what, got)
    for what in ("no-cors", "urlencoded", "multipart", "rebound"):
        assert got[what] == "status 0 opaque", (what, got)
    # ... and the gateway refused every request that Chromium did send, the preflight of
    # the JSON attempt included (Chromium sends none for the others)
    refusals = [r.getMessage() for r in caplog.records if r.name == "gateway.api.guard"]
    evil = [m for m in refusals if attack_url.split("//")[1] in m or "Host" in m]
    assert sum("POST /v1/chat/completions" in m for m in evil) >= 5, refusals
    assert any("OPTIONS /v1/chat/completions" in m for m in evil), refusals
    assert any("GET /health" in m for m in evil), refusals
    assert any("attacker.example" in m for m in evil), refusals
    # the allowed app worked through its preflight, and read the exposed header
    assert got["app"] == "200 h:chromium-app echo: hi from app", got
    texts = [r["last_user_text"] for r in gw.fake.requests()]
    assert texts == ["hi from app"], "only the allowed app's turn reached the model"
    print(f"\nchromium: pages loaded, {len(reports)} reports in {seconds:.1f} s")

