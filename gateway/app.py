"""Builds everything from Settings, and starts and stops it in one place."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridges.common.schedule_commands import setup_schedules
from gateway.api import api_config_from_settings, create_app
from gateway.api.conversation import KEY_PREFIX as API_KEY_PREFIX
from gateway.api.routes import HEALTH_CHECKS, STATUS_PROVIDERS
from gateway.api.status import SOURCES as STATUS_SOURCES
from gateway.config import Settings
from gateway.engine import Alert, Engine, EngineConfig
from gateway.engine.process import cli_auth_status, cli_environment
from gateway.errors import ConfigError, ErrorKind, GatewayError
from gateway.ports import busy_port_message, port_problem
from gateway.scheduler import Scheduler, SchedulerConfig, config_jobs
from gateway.store import Store
from gateway.voice import VoiceService

if TYPE_CHECKING:
    from bridges.discord import DiscordBridge
    from bridges.telegram import TelegramBridge

log = logging.getLogger(__name__)

#: How long a shutdown waits for running turns before their processes are killed.
SHUTDOWN_GRACE = 5.0
#: seconds before the first and at most between later tries to start a bridge whose platform
#: was unreachable at start-up
BRIDGE_RETRY_FIRST = 2.0
BRIDGE_RETRY_MAX = 60.0


@dataclass
class Gateway:
    """The running process: engine, HTTP server, chat bridges and the scheduler."""

    settings: Settings
    engine: Engine
    voice: VoiceService | None = None
    runner: web.AppRunner | None = None
    #: chat frontends, started after the engine and the HTTP server, stopped before them
    bridges: list[TelegramBridge | DiscordBridge] = field(default_factory=list)
    #: scheduled prompts: started after the bridges (it delivers through them), stopped first
    scheduler: Scheduler | None = None
    #: whether the CLI is logged in, found out once at start-up (``/health`` shows it)
    login: LoginCheck = field(default_factory=lambda: LoginCheck())
    #: bridges whose platform was unreachable at start-up, tried again in the background
    #: (bridge title -> why); the HTTP API and the other bridges serve meanwhile
    unreachable: dict[str, str] = field(default_factory=dict)
    _retries: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        api_config_from_settings(settings)  # a bad [server] stops start-up before any work
        engine = Engine(EngineConfig.from_settings(settings), Store(settings.storage.db_path))
        # Cheap: the voice engines import their packages and load models on first use.
        return cls(settings, engine, VoiceService(settings.voice))

    async def start(self) -> None:
        host, port = self.settings.server.host, self.settings.server.port
        problem = port_problem(host, port)  # before any CLI process is started
        if problem is not None:
            raise ConfigError(busy_port_message(host, port, problem))
        await self.engine.start()
        self.engine.add_alert_handler(_log_alert)
        self.login.start(self.engine)
        app = create_app(self.engine, api_config_from_settings(self.settings), self.voice)
        self.scheduler = build_scheduler(self.engine, self.settings)
        app[STATUS_PROVIDERS] = {"scheduler": self.scheduler.status}
        app[HEALTH_CHECKS] = [self.login.problem, self._unreachable_problem]
        sources = app[STATUS_SOURCES]  # the status page's view of the rest
        sources.scheduler = self.scheduler
        sources.login = lambda: self.login.status
        sources.config_file = str(self.settings.config_file) if self.settings.config_file else None
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.server.host, self.settings.server.port)
        try:
            await site.start()
        except OSError as exc:  # taken between the check and now
            await self.stop()
            raise ConfigError(busy_port_message(host, port, exc.strerror or str(exc))) from exc
        log.info("listening on http://%s:%d", self.settings.server.host,
                 self.settings.server.port)
        try:
            await self._start_bridges()
            await self.scheduler.start()
        except BaseException:
            await self.stop()
            raise

    async def _start_bridges(self) -> None:
        for bridge in self._configured_bridges():
            core = bridge.core
            self.engine.register_file_sink(core.key_prefix, core.deliver_file)
            self.engine.add_alert_handler(core.on_alert)
            self.engine.add_usage_warning_handler(core.on_usage_warning)
            self.bridges.append(bridge)
            if core.settings.notify_key:  # the HTTP API's approval requests go to that chat
                self.engine.register_permissions(API_KEY_PREFIX, approver=bridge.approvals)
            if self.scheduler is not None:
                setup_schedules(core, self.scheduler)
            try:
                await bridge.start()
            except GatewayError as exc:
                if exc.kind is not ErrorKind.PLATFORM_UNAVAILABLE:
                    raise
                self._start_later(bridge, exc)

    def _start_later(self, bridge: TelegramBridge | DiscordBridge, exc: GatewayError) -> None:
        """A platform that is down must not take the gateway down with it: the API and the
        other bridges serve, and this one is started as soon as its platform answers (its
        outbox then delivers what was due, in order)."""
        title = bridge.core.title
        self.unreachable[title] = exc.message
        log.warning("%s: %s; the gateway runs without it and tries again every %.0f s at most",
                    title, exc.message, BRIDGE_RETRY_MAX)

        async def retry() -> None:
            delay = BRIDGE_RETRY_FIRST
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BRIDGE_RETRY_MAX)
                try:
                    await bridge.start()
                except GatewayError as again:
                    if again.kind is not ErrorKind.PLATFORM_UNAVAILABLE:
                        log.error("%s could not start: %s", title, again.message)
                        self.unreachable[title] = again.message
                        return
                    log.info("%s: still unreachable (%s)", title, again.message)
                    self.unreachable[title] = again.message
                    continue
                self.unreachable.pop(title, None)
                log.warning("%s: reachable again; the bot is running", title)
                return

        task = asyncio.create_task(retry(), name=f"start {title}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _unreachable_problem(self) -> str | None:
        if not self.unreachable:
            return None
        return "; ".join(f"{title}: {why} (retrying)" for title, why in self.unreachable.items())

    def _configured_bridges(self) -> Iterator[TelegramBridge | DiscordBridge]:
        """The bots whose token is set. A bot library is imported only when its bot runs:
        python-telegram-bot and discord.py are ~25 MB of an otherwise ~88 MB idle gateway."""
        if self.settings.telegram.enabled:
            from bridges.telegram import TelegramBridge

            telegram = TelegramBridge.from_settings(self.engine, self.settings, voice=self.voice)
            if telegram is not None:
                yield telegram
        if self.settings.discord.enabled:
            if self.settings.discord.api_base_url:
                from discord import http as discord_http

                discord_http.Route.BASE = self.settings.discord.api_base_url
            from bridges.discord import DiscordBridge

            discord = DiscordBridge.from_settings(self.engine, self.settings, voice=self.voice)
            if discord is not None:
                yield discord

    async def stop(self) -> None:
        for task in list(self._retries):
            task.cancel()
        if self._retries:
            await asyncio.gather(*self._retries, return_exceptions=True)
        if self.scheduler is not None:
            try:
                await self.scheduler.stop()
            except Exception:
                log.exception("stopping the scheduler failed")
        for bridge in reversed(self.bridges):
            try:
                await bridge.stop()
            except Exception:
                log.exception("stopping a chat bridge failed")
        self.bridges.clear()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.login.stop()
        await self.engine.stop(grace=SHUTDOWN_GRACE)
        if self.voice is not None:
            self.voice.close()


NOT_LOGGED_IN_FIX = (
    "Claude Code is not logged in, so every turn will fail: run `claude` and then /login"
    " (as the user the gateway runs as), or set CLAUDE_CODE_OAUTH_TOKEN (from"
    " `claude setup-token`) in the environment or the env file, then restart the gateway"
)


class LoginCheck:
    """``claude auth status`` once at start-up, in a subprocess (the event loop goes on);
    a missing login is logged as a WARNING with the fix and makes ``/health`` degraded."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, engine: Engine) -> None:
        if engine.cli is not None:
            env = cli_environment(engine.config)
            self._task = asyncio.create_task(self._check(engine.cli.path, env))

    async def _check(self, path: str, env: dict[str, str]) -> None:
        status = await cli_auth_status(path, env)
        self.status = status
        if status.get("loggedIn"):
            log.info("Claude Code is logged in (%s)",
                     status.get("authMethod") or status.get("apiKeySource") or "?")
        else:
            detail = f" ({status['error']})" if status.get("error") else ""
            log.warning("%s%s", NOT_LOGGED_IN_FIX, detail)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def problem(self) -> str | None:
        if self.status is None or self.status.get("loggedIn"):
            return None
        return NOT_LOGGED_IN_FIX


def build_scheduler(engine: Engine, settings: Settings) -> Scheduler:
    """The scheduler with the ``[scheduler]`` defaults and the ``[[schedules]]`` jobs."""
    return Scheduler(
        engine, SchedulerConfig.from_settings(settings.scheduler), config_jobs(settings.schedules)
    )


async def _log_alert(alert: Alert) -> None:
    log.warning("turn of %s (%s) ended: %s: %s", alert.key, alert.origin or "?",
                alert.error.kind.value, alert.error.message)


#: gen-0 threshold of the running gateway (Python's default: 700 allocations)
GC_GEN0_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """A process-wide decision, made once the gateway serves (its modules, app and engine
    built): a client resending ~1 MB of history allocates some 10^5 containers per request
    (its parsed JSON, the messages), which with the default thresholds set off ~10 ms of
    collections a turn that found nothing (they are freed by reference counting) and, now
    and then, a full collection of ~80 ms walking every object of the start-up (pydantic's
    schemas, aiohttp, the SDK). ``gc.freeze()`` moves what exists now out of the collected
    generations (it lives as long as the process anyway), and a larger gen-0 threshold
    lets a request's temporaries die before a collection looks at them. Cycles are still
    collected (bench/memory.py: +3.9 MB after 100 conversations). bench/history_cost.py,
    gateway CPU per 1 MB turn before -> after: Responses 62 -> 44 ms, Chat and Messages
    ~44 ms either way; 1 MB / tiny wall: Chat 1.40 -> 1.06x, Responses 1.42 -> 1.13x."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    gateway = Gateway.build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # At once, not when the engine's turn to stop comes: a signal sent to the whole
        # process group or service (a terminal, systemd's default KillMode) has reached the
        # CLI processes too, and their exits are then the gateway's doing, not errors.
        gateway.engine.expect_shutdown()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    await gateway.start()
    tune_garbage_collector()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await gateway.stop()
