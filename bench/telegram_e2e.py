"""Telegram end to end: from an update arriving at the Bot API to the first answer text the
person sees, against a warm CLI driven directly (the floor), side by side in one run.

* telegram: this gateway as its own process (``python -m gateway.cli``, a temporary config
  with ``[telegram] base_url`` pointing at ``tests/fake_telegram.py``), the real Telegram
  bridge (python-telegram-bot, long polling) and the real CLI against
  ``tests/fake_anthropic.py``. The fake Bot API answers every call in ``--latency`` seconds
  (100 ms by default, half before the call takes effect, half after: a round trip).
* relay: the floor of the Telegram path, :class:`RelayBot`: the way every bot must go and
  nothing else, over its own fake Bot API at the same latency. A bare aiohttp long poll,
  the text written to a warm CLI over its pipes, the first answer text sent as a draft the
  moment the CLI prints it. No python-telegram-bot, no inbox, no engine.
* floor: the same prompt to a warm streaming-input CLI driven over its pipes
  (``bench/_common.py`` ``WarmCli``): a pre-started one for a new conversation, the
  conversation's own one for a follow-up; its time to the first answer token.

When the clock starts and stops, honestly:

* **arrived**: the moment the fake makes the update available to ``getUpdates`` while the
  bridge's long poll waits there (the bench waits until it does), so python-telegram-bot
  gets it half a round trip later, as it would from Telegram;
* **visible**: the moment the fake *receives* the first call that carries answer text (a
  ``sendMessageDraft`` preview in a private chat, or a ``sendMessage``/``editMessageText``
  with the answer); that call's own response time is not the person's wait. The figure
  "applied" adds the half round trip until the fake applies it.

Also printed: when python-telegram-bot had the update (its next ``getUpdates`` arrives),
when the typing action arrived, and the end of the turn (the final ``sendMessage``).

Scenarios, in a rotating order, each turn after the machine's child processes are quiet:

* first: the first message of a new private chat (a new conversation: the gateway's spare
  CLI) against a pre-started CLI's first turn;
* followup: turns 2.. of a chat against turns 2.. of the floor's own warm CLI.

Target (issue #23): first visible answer text ≤ the floor's time to first token + 50 ms.
Half of the fake's 100 ms (the long poll's answer) lies between the update and any bot by
construction, so that target leaves a bot about nothing: the relay's own row shows what the
way alone costs. The second verdict table holds the gateway against the relay, pair by pair
(each round runs the floor, the relay and the gateway one after the other, in a rotating
order): what the bridge, python-telegram-bot and the engine add to the way itself.

The fake API answers at once by default; with ``--chunk-delay`` the answer streams, and
smart streaming holds a short answer back until its step ends (so the first text shows
with the last token, not the first: a policy, not a round trip).

    .venv/bin/python bench/telegram_e2e.py                    # ~2 minutes
    .venv/bin/python bench/telegram_e2e.py --first 4 --conversations 2 --turns 4   # quick
    .venv/bin/python bench/telegram_e2e.py --calls     # also every Bot API call of each turn
    git worktree add /tmp/before <commit>              # before/after, side by side:
    .venv/bin/python bench/telegram_e2e.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _common import ROOT, FakeApiProcess, WarmCli, load_average, ms, quiesce, summary
from compare import MODEL_CLI, Gateway, start_gateway

from tests.fake_anthropic import bundled_cli, cli_env
from tests.fake_telegram import Call, FakeTelegram

#: The calls that can carry answer text.
TEXT_METHODS = ("sendMessageDraft", "sendMessage", "editMessageText")
#: How the bridge's own messages start (status, notices): never answer text.
NOT_ANSWER = ("⚙️", "⏳", "⚠️", "✅", "💭")
FIRST_CHAT = 50_000
FOLLOW_CHAT = 60_000
TURN_TIMEOUT = 60.0


@dataclass
class Sample:
    scenario: str
    system: str
    #: seconds from the update (or the floor's write) to the first answer text
    first: float | None
    #: to the end of the reply
    total: float | None = None
    #: the telegram figures: PTB has the update, the typing action, first text applied
    got_update: float | None = None
    typing: float | None = None
    applied: float | None = None
    error: str | None = None
    calls: list[tuple[str, float]] = field(default_factory=list)


def _chat_of(call: Call) -> int | None:
    value = call.params.get("chat_id")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _answer_text(call: Call) -> str:
    text = call.params.get("text")
    if call.method not in TEXT_METHODS or not isinstance(text, str) or not text.strip():
        return ""
    return "" if text.startswith(NOT_ANSWER) else text


class RelayBot:
    """The floor of the Telegram path: the way every bot must go and nothing else.

    It long-polls its fake Bot API with a bare aiohttp client, writes a message's text to
    a warm CLI over its pipes (a pre-started one for a new chat, the chat's own after that),
    sends the first answer text as a ``sendMessageDraft`` the moment the CLI prints it and
    the answer as a ``sendMessage`` at the result. No python-telegram-bot, no inbox, no
    engine, no view: what a bot cannot do without.
    """

    def __init__(self, tg: FakeTelegram, cli: str, env: dict[str, str], cwd: Path) -> None:
        self.tg, self.cli, self.env, self.cwd = tg, cli, env, cwd
        self._chats: dict[int, WarmCli] = {}
        self._spare: WarmCli | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.errors: list[str] = []

    async def __aenter__(self) -> RelayBot:
        self._session = aiohttp.ClientSession()
        self._spawn(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for cli in [*self._chats.values(), *([self._spare] if self._spare else [])]:
            await cli.stop()
        if self._session is not None:
            await self._session.close()

    async def ready_for_new(self) -> None:
        """A pre-started CLI waits for the next new chat."""
        if self._spare is None:
            self._spare = await WarmCli(self.cli, self.env, self.cwd, MODEL_CLI).start()

    async def done_with(self, chat_id: int) -> None:
        """The chat's measurements are over: its CLI does not linger beside the next."""
        cli = self._chats.pop(chat_id, None)
        if cli is not None:
            await cli.stop()

    def _spawn(self, step: Any) -> None:
        task = asyncio.create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(f"relay: {task.exception()!r}")

    async def _call(self, method: str, **params: Any) -> Any:
        assert self._session is not None
        async with self._session.post(f"{self.tg.base_url}{self.tg.token}/{method}",
                                      json=params) as response:
            body = await response.json()
        if not body.get("ok"):
            raise RuntimeError(f"{method}: {body}")
        return body["result"]

    async def _poll(self) -> None:
        offset = 0
        while True:
            for update in await self._call("getUpdates", offset=offset, timeout=30):
                offset = update["update_id"] + 1
                message = update.get("message") or {}
                if message.get("text"):
                    self._spawn(self._answer(int(message["chat"]["id"]), message["text"]))

    async def _answer(self, chat_id: int, text: str) -> None:
        cli = self._chats.get(chat_id)
        if cli is None:
            await self.ready_for_new()
            cli, self._spare = self._spare, None
            assert cli is not None
            self._chats[chat_id] = cli

        def draft(first: str) -> None:
            self._spawn(self._call("sendMessageDraft", chat_id=chat_id, draft_id=1,
                                   text=first))

        _, answer = await cli.answer(text, draft)
        await self._call("sendMessage", chat_id=chat_id, text=answer)


class TelegramSide:
    def __init__(self, name: str, tg: FakeTelegram, bot: Gateway | RelayBot,
                 latency: float) -> None:
        self.name, self.tg, self.bot, self.latency = name, tg, bot, latency

    async def ready_for_new(self) -> None:
        await self.bot.ready_for_new()

    async def done_with(self, chat_id: int) -> None:
        if isinstance(self.bot, RelayBot):  # the gateway keeps its processes as it does
            await self.bot.done_with(chat_id)

    async def parked(self) -> None:
        """Wait until the bridge's long poll waits in the fake for the next update."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            polls = self.tg.calls_of("getUpdates")
            if polls and time.time() - polls[-1].at > self.latency / 2 + 0.03:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("the bridge's long poll never waited in the fake Bot API")

    async def turn(self, scenario: str, chat_id: int, text: str) -> Sample:
        await self.parked()
        start = len(self.tg.calls)
        arrived = time.time()
        self.tg.user_text(chat_id, text)
        deadline = time.monotonic() + TURN_TIMEOUT
        final: Call | None = None
        while final is None:
            if time.monotonic() > deadline:
                return Sample(scenario, self.name, None, error="no answer within"
                              f" {TURN_TIMEOUT:.0f} s")
            await asyncio.sleep(0.005)
            final = next((c for c in self.tg.calls[start:] if c.method == "sendMessage"
                          and _chat_of(c) == chat_id and _answer_text(c)), None)
        calls = self.tg.calls[start:]
        first = next(c for c in calls if _chat_of(c) == chat_id and _answer_text(c))
        poll = next((c for c in calls if c.method == "getUpdates"), None)
        typing = next((c for c in calls if c.method == "sendChatAction"
                       and _chat_of(c) == chat_id), None)
        return Sample(
            scenario, self.name, first.at - arrived, final.at - arrived,
            got_update=poll.at - arrived if poll else None,
            typing=typing.at - arrived if typing else None,
            applied=first.at - arrived + self.latency / 2,
            calls=[(c.method, round((c.at - arrived) * 1000, 1)) for c in calls],
        )


async def floor_turn(scenario: str, cli: WarmCli, text: str) -> Sample:
    timing = await cli.turn(text)
    return Sample(scenario, "floor", timing.ttft, timing.total)


def table(samples: list[Sample], systems: list[str]) -> list[str]:
    rows = ["| scenario | system | n | errors | first text p50 ms | p95 | min | max"
            " | end p50 ms |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for scenario in ("first", "followup"):
        for system in ["floor", *systems]:
            mine = [s for s in samples if s.scenario == scenario and s.system == system]
            if not mine:
                continue
            ok = [s for s in mine if s.error is None and s.first is not None]
            first = summary([s.first for s in ok if s.first is not None])
            end = summary([s.total for s in ok if s.total is not None])
            rows.append(f"| {scenario} | {system} | {len(mine)} | {len(mine) - len(ok)}"
                        f" | {ms(first['median'])} | {ms(first['p95'])} | {ms(first['min'])}"
                        f" | {ms(first['max'])} | {ms(end['median'])} |")
    return rows


def steps(samples: list[Sample], systems: list[str]) -> list[str]:
    rows = ["| scenario | system | PTB has the update p50 ms | typing arrives p50 ms"
            " | first text received p50 ms | first text applied p50 ms |",
            "|---|---|--:|--:|--:|--:|"]
    for scenario, system in ((sc, sy) for sc in ("first", "followup") for sy in systems):
        mine = [s for s in samples if s.scenario == scenario and s.system == system
                and s.error is None]
        if not mine:
            continue

        def p50(values: list[float | None]) -> str:
            got = [v for v in values if v is not None]
            return ms(statistics.median(got)) if got else "—"

        rows.append(f"| {scenario} | {system} | {p50([s.got_update for s in mine])}"
                    f" | {p50([s.typing for s in mine])} | {p50([s.first for s in mine])}"
                    f" | {p50([s.applied for s in mine])} |")
    return rows


def verdict(pairs: list[tuple[Sample, Sample]], systems: list[str],
            latency: float) -> list[str]:
    """The target's table. "Beyond the update's way" takes off the half round trip that
    lies between the update and the bridge by construction (``latency / 2``): what the
    bridge, python-telegram-bot and the engine add to the floor."""
    rows = ["| scenario | system | floor TTFT p50 | first text p50 | difference of p50s"
            " | per-pair difference p50 (min–max) | beyond the update's way"
            f" ({ms(latency / 2)} ms) | target ≤ +50 ms |",
            "|---|---|--:|--:|--:|--:|--:|:-:|"]
    for scenario, system in ((sc, sy) for sc in ("first", "followup") for sy in systems):
        mine = [(f, t) for f, t in pairs if f.scenario == scenario and t.system == system
                and f.first is not None and t.first is not None]
        if not mine:
            continue
        floor = statistics.median([f.first for f, _ in mine if f.first is not None])
        tele = statistics.median([t.first for _, t in mine if t.first is not None])
        diffs = [t.first - f.first for f, t in mine if t.first is not None
                 and f.first is not None]
        diff = tele - floor
        rows.append(f"| {scenario} | {system} | {ms(floor)} | {ms(tele)} | {ms(diff)}"
                    f" | {ms(statistics.median(diffs))} ({ms(min(diffs))}–{ms(max(diffs))})"
                    f" | {ms(diff - latency / 2)} | {'yes' if diff <= 0.050 else 'no'} |")
    return rows


def against_relay(rounds: list[dict[str, Sample]], systems: list[str]) -> list[str]:
    """Each gateway against the relay of the same round: what the bridge,
    python-telegram-bot and the engine add to the way any bot must go."""
    rows = ["| scenario | system | relay first text p50 | first text p50 | per-round difference"
            " p50 (min–max) | target ≤ +50 ms |", "|---|---|--:|--:|--:|:-:|"]
    for scenario, system in ((sc, sy) for sc in ("first", "followup") for sy in systems):
        mine = [(r["relay"].first, r[system].first) for r in rounds
                if r["relay"].scenario == scenario and r["relay"].first is not None
                and r[system].first is not None]
        if not mine:
            continue
        diffs = [t - f for f, t in mine if f is not None and t is not None]
        diff = statistics.median(diffs)
        rows.append(f"| {scenario} | {system} | {ms(statistics.median([f for f, _ in mine]))}"
                    f" | {ms(statistics.median([t for _, t in mine]))} | {ms(diff)}"
                    f" ({ms(min(diffs))}–{ms(max(diffs))}) | {'yes' if diff <= 0.050 else 'no'} |")
    return rows


async def main(args: argparse.Namespace) -> int:
    cli = args.cli or bundled_cli()
    load_before = load_average()
    samples: list[Sample] = []
    rounds: list[dict[str, Sample]] = []  # each measured round: system -> its sample
    users = [FIRST_CHAT + i for i in range(args.first + 1)] + \
        [FOLLOW_CHAT + c for c in range(args.conversations)]
    with tempfile.TemporaryDirectory(prefix="cmg-bench-tg-") as tmp_name, \
            FakeApiProcess(chunk_delay=args.chunk_delay) as fake:
        tmp = Path(tmp_name)
        (tmp / "home-floor").mkdir()
        (tmp / "work-floor").mkdir()
        env_floor = cli_env(fake.base_url, str(tmp / "home-floor"), api_timeout_ms=60000)
        gateways = ["telegram", *(["before"] if args.before else [])]
        names = ["relay", *gateways]
        roots: dict[str, Path] = {"telegram": ROOT, "before": args.before or ROOT}
        async with contextlib.AsyncExitStack() as stack:
            tg = await stack.enter_async_context(FakeTelegram(latency=args.latency))
            (tmp / "home-relay").mkdir()
            (tmp / "work-relay").mkdir()
            relay = await stack.enter_async_context(RelayBot(
                tg, cli, cli_env(fake.base_url, str(tmp / "home-relay"), api_timeout_ms=60000),
                tmp / "work-relay"))
            sides: list[TelegramSide] = [TelegramSide("relay", tg, relay, args.latency)]
            for name in gateways:
                tg = await stack.enter_async_context(FakeTelegram(latency=args.latency))
                extra = ("[telegram]\n"
                         f"base_url = {json.dumps(tg.base_url)}\n"
                         f"allowed_users = {json.dumps(users)}\n"
                         "poll_timeout = 30\n")
                (tmp / f"home-{name}").mkdir(exist_ok=True)
                env_gw = cli_env(fake.base_url, str(tmp / f"home-{name}"), api_timeout_ms=60000)
                gateway = await start_gateway(
                    tmp, cli, env_gw, max_live=args.first + args.conversations + 4,
                    parallel=4, name=name, extra_config=extra,
                    extra_env={"TELEGRAM_BOT_TOKEN": tg.token}, root=roots[name])
                stack.push_async_callback(gateway.stop)
                sides.append(TelegramSide(name, tg, gateway, args.latency))
            floor_spare: WarmCli | None = None
            live: list[WarmCli] = []
            try:
                for side in sides:
                    await side.parked()
                    # warm each once (page cache, first-run files in each HOME): not measured
                    await side.turn("warmup", FIRST_CHAT + args.first, "warm up")
                warm = await WarmCli(cli, env_floor, tmp / "work-floor", MODEL_CLI).start()
                await warm.turn("warm up")
                live.append(warm)

                async def spare() -> WarmCli:
                    return await WarmCli(cli, env_floor, tmp / "work-floor", MODEL_CLI).start()

                def rotate(k: int) -> list[TelegramSide | None]:
                    order: list[TelegramSide | None] = [None, *sides]  # None: the floor
                    k %= len(order)
                    return order[k:] + order[:k]

                print("… first turns", file=sys.stderr, flush=True)
                for i in range(args.first):
                    text = f"Hello! This is new conversation number {i}. Who are you?"
                    floor_spare = floor_spare or await spare()
                    for side in sides:
                        await side.ready_for_new()
                    got: dict[str, Sample] = {}
                    for who in rotate(i):
                        await quiesce()
                        if who is None:
                            proc, floor_spare = floor_spare, None
                            assert proc is not None
                            try:
                                got["floor"] = await floor_turn("first", proc, text)
                            finally:  # its process does not linger beside the next turn
                                await proc.stop()
                        else:
                            got[who.name] = await who.turn("first", FIRST_CHAT + i, text)
                            await who.done_with(FIRST_CHAT + i)
                    samples += got.values()
                    rounds.append(got)

                print("… follow-ups", file=sys.stderr, flush=True)
                for c in range(args.conversations):
                    chat = FOLLOW_CHAT + c
                    opening = f"Conversation {c}: let us talk about the weather in Lisbon."
                    conv = await spare()
                    live.append(conv)
                    await conv.turn(opening)
                    for side in sides:
                        await side.ready_for_new()
                        await quiesce()
                        await side.turn("setup", chat, opening)
                    for t in range(1, args.turns):
                        text = f"Turn {t + 1} of conversation {c}: and what about tomorrow?"
                        got = {}
                        for who in rotate(c + t):
                            await quiesce()
                            if who is None:
                                got["floor"] = await floor_turn("followup", conv, text)
                            else:
                                got[who.name] = await who.turn("followup", chat, text)
                        samples += got.values()
                        rounds.append(got)
                    await conv.stop()
                    live.remove(conv)
                    for side in sides:
                        await side.done_with(chat)
            finally:
                for proc in [*live, *([floor_spare] if floor_spare else [])]:
                    await proc.stop()
                relay_errors = relay.errors
    load_after = load_average()
    print(f"## Telegram end to end (fake Bot API at {args.latency * 1000:.0f} ms a call)\n")
    print(f"load average {load_before} before, {load_after} after;"
          f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if args.before:
        print(f"before: the gateway of {roots['before']}, side by side\n")
    print("\n".join(table(samples, names)) + "\n")
    print("\n".join(steps(samples, names)) + "\n")
    pairs = [(got["floor"], got[name]) for got in rounds for name in names]
    print("\n".join(verdict(pairs, names, args.latency)) + "\n")
    print("\n".join(against_relay(rounds, gateways)))
    errors = [s for s in samples if s.error]
    for s in errors:
        print(f"error: {s.scenario} {s.system}: {s.error}")
    for error in relay_errors:
        print(f"error: {error}")
    if args.calls:
        for s in samples:
            if s.system != "floor":
                print(s.scenario, s.system, s.calls)
    return 1 if errors or relay_errors else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=8, help="first turns of new chats")
    parser.add_argument("--conversations", type=int, default=3, help="chats with follow-ups")
    parser.add_argument("--turns", type=int, default=6, help="turns per chat (first unmeasured)")
    parser.add_argument("--latency", type=float, default=0.1,
                        help="seconds the fake Bot API takes per call")
    parser.add_argument("--chunk-delay", type=float, default=0.0,
                        help="seconds between the fake API's text deltas (the answer is then"
                        " held back until its step ends, as smart streaming does)")
    parser.add_argument("--cli", help="the Claude Code CLI (default: the bundled one)")
    parser.add_argument("--before", metavar="CHECKOUT", type=lambda p: Path(p).resolve(),
                        help="also run the gateway of another checkout (e.g. an older commit"
                        " from `git worktree add`), side by side, as system 'before'")
    parser.add_argument("--calls", action="store_true",
                        help="print every Bot API call of each measured turn, ms after arrival")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
