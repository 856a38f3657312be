"""What the engine needs from the configuration, built from ``[claude]`` and ``[models]`` in
one place (:meth:`EngineConfig.from_settings`).

Each setting is declared once, in :class:`gateway.config.ClaudeSettings` (type, bounds,
default, description); the defaults here are read from it. The fields that are no setting
(``interrupt_grace``, ``secret_env_vars``, ``runtime_dir``) are the engine's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.config import (
    DEFAULT_PROJECT,
    ClaudeSettings,
    Settings,
    UsageSettings,
    is_secret_env_var,
    secret_env_var_names,
)

#: ``[claude]`` and ``[usage]`` with nothing set: the declared defaults.
_CLAUDE = ClaudeSettings.model_construct()
_USAGE = UsageSettings.model_construct()


@dataclass(frozen=True)
class Project:
    """A folder conversations work in (``[[projects]]``; ``default`` is claude.workspace)."""

    name: str
    path: Path
    default_model: str = ""
    #: a CLI --permission-mode name; "" = the frontend's default
    permission_mode: str = ""
    append_system_prompt: str = ""
    worktree: bool = False


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from the configuration (see :meth:`from_settings`)."""

    workspace: Path
    cli_path: str = _CLAUDE.cli_path
    permission_mode: str = _CLAUDE.permission_mode
    default_model: str = _CLAUDE.default_model
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    append_system_prompt: str = _CLAUDE.append_system_prompt
    activity_timeout: float = _CLAUDE.activity_timeout
    bash_max_timeout: float = _CLAUDE.bash_max_timeout
    max_live_sessions: int = _CLAUDE.max_live_sessions
    idle_timeout: float = _CLAUDE.idle_timeout
    max_parallel_turns: int = _CLAUDE.max_parallel_turns
    max_queued_per_conversation: int = _CLAUDE.max_queued_per_conversation
    #: seconds an interrupted turn may take to wind down before its process is killed
    interrupt_grace: float = 1.0
    env: Mapping[str, str] = field(default_factory=dict)
    #: names of environment variables that hold gateway secrets; never passed to the CLI
    secret_env_vars: frozenset[str] = frozenset()
    #: folders besides the workspace that send_file may send from
    send_file_dirs: tuple[Path, ...] = ()
    #: processes started ahead of time for the next new conversation (0 = none)
    spare_processes: int = _CLAUDE.spare_processes
    #: seconds a turn waits, suspended, for the client's results of its tool calls
    client_tool_timeout: float = _CLAUDE.client_tool_timeout
    #: seconds a permission request waits for a person before it is denied
    approval_timeout: float = _CLAUDE.approval_timeout
    #: built-in tools hidden in hybrid tool mode (e.g. ones the client's tools duplicate)
    hybrid_hidden_tools: tuple[str, ...] = ()
    #: private folder for files handed to CLI processes (system prompts); None = one in the
    #: system's temp folder (see :class:`gateway.engine.process.PromptFiles`)
    runtime_dir: Path | None = None
    #: a turn stops when its API-equivalent cost passes this (the CLI's --max-budget-usd);
    #: 0 = no limit
    max_turn_cost_usd: float = _CLAUDE.max_turn_cost_usd
    #: the owner's zone for usage reports ("" = the machine's), and the fractions of a
    #: usage-limit window at which the owner is warned
    usage_timezone: str = _USAGE.timezone
    usage_warn_at: tuple[float, ...] = tuple(_USAGE.warn_at)
    #: scheduler.max_daily_cost_usd, shown in usage reports (the scheduler enforces it)
    scheduled_daily_cost_cap_usd: float = 0.0
    #: the projects besides the default one (claude.workspace)
    projects: tuple[Project, ...] = ()
    worktrees_dir: Path = _CLAUDE.worktrees_dir

    def project_table(self) -> dict[str, Project]:
        """Every project by name, ``default`` (the workspace) first."""
        table = {DEFAULT_PROJECT: Project(DEFAULT_PROJECT, self.workspace)}
        table.update((p.name, p) for p in self.projects)
        return table

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> EngineConfig:
        """The engine's config: every ``[claude]`` key of the same name as a field, the
        ``[models]`` aliases, and the CLI's environment (``claude.env`` over the env file's
        variables meant for the CLI). ``environ`` is the real environment (default
        ``os.environ``): the secrets named there are kept from the CLI."""
        environ = os.environ if environ is None else environ
        claude = settings.claude
        declared = ClaudeSettings.model_fields
        same: dict[str, Any] = {
            f.name: getattr(claude, f.name) for f in fields(cls) if f.name in declared
        }
        return cls(**{
            **same,
            "send_file_dirs": tuple(claude.send_file_dirs),
            "hybrid_hidden_tools": tuple(claude.hybrid_hidden_tools),
            "model_aliases": dict(settings.models.aliases),
            "env": {**cli_env_from_file(settings, environ), **claude.env},
            "secret_env_vars": secret_env_var_names(environ),
            "usage_timezone": settings.usage.timezone,
            "usage_warn_at": tuple(settings.usage.warn_at),
            "scheduled_daily_cost_cap_usd": settings.scheduler.max_daily_cost_usd,
            "projects": tuple(
                Project(p.name, p.path, p.default_model, p.permission_mode,
                        p.append_system_prompt, p.worktree)
                for p in settings.projects
            ),
        })


def cli_env_from_file(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The env file's variables meant for the CLI (``CLAUDE_CODE_OAUTH_TOKEN``, proxies...):
    all but the gateway's own secrets, and none the real environment already sets."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in settings.env_file_values().items()
        if not is_secret_env_var(name) and name not in environ
    }
