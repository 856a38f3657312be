"""Starting Claude Code processes: the CLI found at start-up, its environment, the private
system-prompt files, the tools a process offers (``send_file`` for chat frontends, a client's
tools) and the host tasks that connect and disconnect each process.

The :class:`~gateway.engine.pool.ProcessPool` decides *when* a process may start (slots);
the :class:`Launcher` knows *how*. The conversation runner
(:mod:`gateway.engine.runner`) asks the pool, which calls :meth:`Launcher.launch`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeSDKClient, PermissionResult, ToolPermissionContext

from gateway.engine.client_tools import CallBroker, ToolMode, client_tools_server
from gateway.engine.conversation import ToolSet, text_hash
from gateway.engine.process import (
    CliInfo,
    EngineConfig,
    PromptFiles,
    appended_system_text,
    build_options,
    cli_environment,
    cli_version,
    find_cli,
)
from gateway.engine.session import (
    STDERR_TAIL_LINES,
    ClientFactory,
    CliSession,
    ExitWatch,
    host_cli,
)
from gateway.engine.tools import SEND_FILE, SERVER_NAME, FileSink, send_file_server
from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

#: The permission callback every process gets: (the process's owner, tool, input, context)
PermissionCallback = Callable[
    [dict[str, str], str, dict[str, Any], ToolPermissionContext], Awaitable[PermissionResult]
]


@dataclass
class RunState:
    """Whether the engine is ending, shared by the launcher and the runner."""

    #: :meth:`Engine.stop` was called: nothing new starts
    stopping: bool = False
    #: the gateway got SIGTERM/SIGINT and will stop: a CLI that ends now is no error
    shutdown_expected: bool = False

    @property
    def winding_down(self) -> bool:
        return self.stopping or self.shutdown_expected


class Launcher:
    """Builds, connects and hosts one CLI process per :meth:`launch`."""

    def __init__(
        self,
        config: EngineConfig,
        state: RunState,
        *,
        base_env: dict[str, str] | None,
        client_factory: ClientFactory,
    ) -> None:
        self.config = config
        self._state = state
        self._base_env = base_env
        self._client_factory = client_factory
        self._env: dict[str, str] = {}
        self.cli: CliInfo | None = None
        self.file_sinks: dict[str, FileSink] = {}
        self.prompt_files = PromptFiles(config.runtime_dir)
        self._hosts: set[asyncio.Task[None]] = set()
        #: asked by each process before a tool runs (the runner's permission gate)
        self.permissions: PermissionCallback | None = None

    async def find(self) -> CliInfo:
        """Find the CLI and check it runs."""
        path, source = find_cli(self.config.cli_path)
        self._env = cli_environment(self.config, self._base_env)
        version = await cli_version(path)
        self.cli = CliInfo(path=path, version=version, source=source)
        return self.cli

    async def close(self, grace: float) -> None:
        """Wait for processes still starting (they close themselves once connected)."""
        if self._hosts:
            await asyncio.wait(list(self._hosts), timeout=grace + 10)
        self.prompt_files.close()

    def profile(self, key: str) -> str:
        """Which tool set a conversation gets: the prefix of its file sink, or ""."""
        return next((p for p in self.file_sinks if key.startswith(p)), "")

    async def launch(
        self, model: str | None, system: str, toolset: ToolSet, resume: str | None,
        profile: str, config: EngineConfig | None = None, fork_at: str | None = None,
    ) -> CliSession:
        """Start and connect a CLI process in a slot already taken (given back on failure).
        ``config``: its project's (folder, appended prompt), default the engine's.
        ``fork_at``: a message of ``resume`` to fork that session at (see build_options)."""
        assert self.cli is not None
        config = config or self.config
        stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        said = asyncio.Event()  # the CLI wrote to stderr

        def on_stderr(line: str) -> None:
            stderr.append(line)
            said.set()

        owner: dict[str, str] = {}
        broker = CallBroker()
        prompt_file = await self._write_prompt_file(appended_system_text(config, system))
        options = build_options(
            config, cli_path=self.cli.path, model=model,
            system_file=str(prompt_file) if prompt_file else None, resume=resume,
            fork_at=fork_at, env=self._env, stderr=on_stderr,
            extra={**self._tools(profile, owner, toolset, broker, config.workspace),
                   **self._permission_callback(owner)},
        )
        ready: asyncio.Future[tuple[ClaudeSDKClient, int | None]] = (
            asyncio.get_running_loop().create_future()
        )
        close_event = asyncio.Event()
        watch = ExitWatch(lambda: self._state.winding_down)
        host = asyncio.create_task(host_cli(
            options, self._client_factory, (stderr, said), ready, close_event, watch=watch,
            unwanted=lambda: self._state.stopping,
            on_end=lambda: self.prompt_files.remove(prompt_file),
        ))
        self._hosts.add(host)
        host.add_done_callback(self._hosts.discard)
        client, pid = await ready
        return CliSession(client, pid, model, text_hash(system), profile, toolset.fingerprint,
                          broker, stderr, close_event, host, owner, exit_watch=watch,
                          permission_mode=self.config.permission_mode)

    def _permission_callback(self, owner: dict[str, str]) -> dict[str, Any]:
        """The SDK's ``can_use_tool`` option of one process (the CLI then sends its
        permission requests over the control protocol; in bypassPermissions it sends none)."""
        permissions = self.permissions
        if permissions is None:
            return {}

        async def can_use_tool(
            tool: str, tool_input: dict[str, Any], context: ToolPermissionContext
        ) -> PermissionResult:
            return await permissions(owner, tool, tool_input, context)

        return {"can_use_tool": can_use_tool}

    def _tools(
        self, profile: str, owner: dict[str, str], toolset: ToolSet, broker: CallBroker,
        workspace: Path,
    ) -> dict[str, Any]:
        """Extra process options: the send_file tool for chat frontends, the client's tools."""
        extra: dict[str, Any] = {}
        servers: dict[str, Any] = {}
        sink = self.file_sinks.get(profile) if profile else None
        if sink is not None:
            # confined to the project's folder (a worktree: its own) and send_file_dirs
            roots = (workspace, *self.config.send_file_dirs)
            servers[SERVER_NAME] = {**send_file_server(
                lambda: owner.get("key", ""), sink, cwd=workspace, roots=roots
            ), "alwaysLoad": True}
            extra["allowed_tools"] = [SEND_FILE]
        if toolset.fingerprint:
            servers["client"] = client_tools_server(toolset.tools, broker)
            if toolset.mode is ToolMode.CLIENT:
                extra["tools"] = []  # Claude Code's built-in tools off
            elif self.config.hybrid_hidden_tools:
                extra["disallowed_tools"] = list(self.config.hybrid_hidden_tools)
        if servers:
            extra["mcp_servers"] = servers
        return extra

    async def _write_prompt_file(self, text: str) -> Path | None:
        """The private file that carries the appended system text to a new process."""
        if not text:
            return None
        try:
            return await asyncio.to_thread(self.prompt_files.write, text)
        except (OSError, GatewayError) as exc:
            log.warning("cannot write the system prompt file for Claude Code: %s", exc)
            raise GatewayError(
                ErrorKind.CRASHED,
                f"Claude Code could not be started: the system prompt file could not be"
                f" written ({exc}).",
            ) from exc
