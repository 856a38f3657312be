"""What the Responses API tests share: one gateway (the API over a real engine and the
real CLI, the fake Anthropic API behind it) and the checks of what it sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.api import ApiConfig, create_app
from gateway.engine import Engine, EngineConfig
from gateway.store import Store
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env
from tests.test_api_routes import check_openapi, serve

KEY = "sk-responses-test"
OTHER_KEY = "sk-someone-else"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


class Api:
    def __init__(self, url: str, engine: Engine, fake: FakeAnthropic) -> None:
        self.url = url
        self.engine = engine
        self.fake = fake
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)

    async def raw(self, method: str, path: str, key: str | None = KEY,
                  **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, headers=headers,
                                       **kwargs) as resp:
                return resp.status, dict(resp.headers), await resp.read()

    async def post(self, body: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, data = await self.raw("POST", "/v1/responses", json=body, **kwargs)
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            events = sse_events(data)
            check_openapi("POST", "/v1/responses", status, events, "text/event-stream")
            return status, headers, events
        parsed = json.loads(data)
        check_openapi("POST", "/v1/responses", status, parsed)
        return status, headers, parsed

    def seen(self, text: str) -> dict[str, Any]:
        hits = [r for r in self.fake.requests() if text in r["last_user_text"]]
        assert hits, f"the model never saw {text!r}"
        return hits[-1]

    async def session_of(self, conversation_id: str) -> str | None:
        info = await self.engine.describe(f"openai:{conversation_id}")
        assert info is not None
        return info.session_id


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON of each event; every ``event:`` line names its data's type."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][len("data: "):])
        assert data["type"] == lines[0][len("event: "):]
        EVENTS.validate_python(data)  # the openai SDK's own event models
        events.append(data)
    return events


@asynccontextmanager
async def serve_api(root: Path, **api_config: Any) -> AsyncIterator[Api]:
    """The API over a real engine (no spare processes), the fake Anthropic API behind it,
    keys KEY and OTHER_KEY, keepalive after 0.3 s."""
    home = root / "home"
    home.mkdir()
    with FakeAnthropic() as fake:
        env = cli_env(fake.base_url, str(home), inherit=False)
        env.pop("PATH", None)
        config = EngineConfig(workspace=root / "ws", cli_path=bundled_cli(), env=env,
                              activity_timeout=60.0, bash_max_timeout=60.0, idle_timeout=300.0,
                              spare_processes=0)
        engine = Engine(config, Store(root / "gateway.sqlite3"))
        await engine.start()
        try:
            app = create_app(engine, ApiConfig(**{"api_keys": (KEY, OTHER_KEY),
                                                  "keepalive_seconds": 0.3, **api_config}))
            async with serve(app) as url:
                gateway = Api(url, engine, fake)
                yield gateway
                await gateway.client.close()
        finally:
            await engine.stop()


