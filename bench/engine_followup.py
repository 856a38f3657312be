"""Follow-up turn latency: the engine's warm session vs. one `claude -p --resume` per turn.

Runs the REAL Claude Code CLI (the one bundled with claude-agent-sdk, or --cli) against the
fake Anthropic API from tests/ at zero delay, so what is measured is the cost of the CLI and
of our engine, not of a model. Three systems, interleaved turn by turn in one run:

* floor:  one warm CLI process in streaming-input mode, driven directly over its pipes;
* engine: gateway.engine.Engine, follow-up turns of one conversation (a warm process);
* spawn:  a fresh `claude -p --resume <id>` process for every turn (what per-request
          proxies do).

Also reports the RSS of one live CLI process (with its children) after the run.

    .venv/bin/python bench/engine_followup.py [--turns 12]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from _common import WarmCli, spawn_turn  # also puts the repository root on sys.path

from gateway.engine import Engine, EngineConfig, Prompt, TurnResult
from gateway.engine.process import tree_rss
from gateway.store import Store
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env


async def engine_turn(engine: Engine, key: str, text: str) -> tuple[float, TurnResult]:
    started = time.perf_counter()
    last = None
    async for event in engine.turn(key, Prompt(text)):
        last = event
    elapsed = time.perf_counter() - started
    if not isinstance(last, TurnResult):
        raise RuntimeError(f"engine turn failed: {last!r}")
    return elapsed, last


def describe(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=20) if len(values) > 1 else values
    return (f"| {name:<28} | {statistics.median(values) * 1000:8.1f} | {min(values) * 1000:8.1f}"
            f" | {q[-1] * 1000:8.1f} | {len(values):3d} |")


async def main(turns: int, cli: str) -> None:
    with FakeAnthropic() as fake, tempfile.TemporaryDirectory() as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        home.mkdir()
        work.mkdir()
        env = cli_env(fake.base_url, str(home))
        config = EngineConfig(workspace=work, cli_path=cli, env={
            k: v for k, v in env.items() if k != "PATH"})
        engine = Engine(config, Store(Path(tmp) / "bench.sqlite3"))
        await engine.start()
        floor = WarmCli(cli, env, work)
        await floor.start()
        try:
            # first turns (not measured as follow-ups): create the sessions
            await floor.turn("warm up")
            _, first = await engine_turn(engine, "bench", "warm up")
            session = first.session_id
            await spawn_turn(cli, env, work, "warm up spawn", resume=session)
            results: dict[str, list[float]] = {"floor": [], "engine": [], "spawn": []}
            for i in range(turns):
                results["floor"].append((await floor.turn(f"floor turn {i}")).total)
                results["engine"].append((await engine_turn(engine, "bench", f"turn {i}"))[0])
                # the spawned process resumes the engine's own session (same cwd, same history)
                timing, _ = await spawn_turn(cli, env, work, f"spawn {i}", resume=session)
                results["spawn"].append(timing.total)
            rss = tree_rss(engine.live_pids().get("bench"))
        finally:
            await floor.stop()
            await engine.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"CLI {engine.cli.version if engine.cli else '?'} at {cli}; fake API, zero delay;"
          f" {turns} follow-up turns each, interleaved\n")
    print("| system                       | median ms |  min ms  |  p95 ms  |  n  |")
    print("|------------------------------|----------:|---------:|---------:|----:|")
    print(describe("floor: warm CLI, direct", results["floor"]))
    print(describe("engine: warm session", results["engine"]))
    print(describe("spawn: claude -p --resume", results["spawn"]))
    print()
    print(f"engine / spawn = {med['engine'] / med['spawn']:.3f}   (target <= 0.20)")
    print(f"floor  / spawn = {med['floor'] / med['spawn']:.3f}")
    print(f"engine overhead over the floor = {(med['engine'] - med['floor']) * 1000:+.1f} ms")
    print(f"RSS of one live CLI process tree: {rss / 2**20:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--cli", default="", help="CLI to measure (default: the bundled one)")
    args = parser.parse_args()
    asyncio.run(main(max(args.turns, 10), args.cli or bundled_cli()))
