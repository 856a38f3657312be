"""The engine builds each CLI process's SDK client through an injectable factory: here it
wraps the real ClaudeSDKClient (real CLI, fake Anthropic API) to make one start fail."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, CLIConnectionError

from gateway.engine import Engine, EngineConfig, TurnError, TurnResult
from gateway.errors import ErrorKind
from gateway.store import Store
from tests.conftest import collect

pytestmark = pytest.mark.cli


async def test_a_failed_start_through_the_client_factory_frees_the_only_slot(
    engine_config: EngineConfig, tmp_path: Path
) -> None:
    built: list[ClaudeAgentOptions] = []

    class FirstStartFails(ClaudeSDKClient):
        async def connect(
            self, prompt: str | AsyncIterable[dict[str, Any]] | None = None
        ) -> None:
            if len(built) == 1:
                raise CLIConnectionError("injected: the first start fails")
            await super().connect(prompt)

    def factory(options: ClaudeAgentOptions) -> ClaudeSDKClient:
        built.append(options)
        return FirstStartFails(options)

    config = replace(engine_config, max_live_sessions=1, spare_processes=0)
    engine = Engine(config, Store(tmp_path / "gateway.sqlite3"), client_factory=factory)
    await engine.start()
    try:
        failed = await collect(engine, "f:1", "hello")
        assert isinstance(failed[-1], TurnError) and failed[-1].kind is ErrorKind.CRASHED
        assert "failed to start" in failed[-1].message
        # the one process slot came back: the next turn gets a process
        ok = await collect(engine, "f:1", "again")
        assert isinstance(ok[-1], TurnResult) and ok[-1].text == "echo: again"
        assert len(built) == 2, "one client per process start"
    finally:
        await engine.stop()
