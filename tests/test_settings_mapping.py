"""The engine's and the scheduler's configs are built from the pydantic sections in one place
(EngineConfig.from_settings, SchedulerConfig.from_settings), with the sections' defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.config import ClaudeSettings, load_settings
from gateway.engine import EngineConfig, Project
from gateway.scheduler import JobSpec, SchedulerConfig, SessionMode, config_jobs

CLAUDE = """
[claude]
cli_path = "/bin/sh"
workspace = "~/ws"
permission_mode = "acceptEdits"
default_model = "sonnet"
append_system_prompt = "Be brief."
activity_timeout = 900
bash_max_timeout = 300
max_live_sessions = 7
idle_timeout = 60
max_parallel_turns = 3
max_queued_per_conversation = 2
spare_processes = 0
send_file_dirs = ["~/out"]
client_tool_timeout = 30
hybrid_hidden_tools = ["WebFetch"]
env = { HTTPS_PROXY = "http://proxy:3128" }
max_turn_cost_usd = 0.5
approval_timeout = 45
worktrees_dir = "~/trees"

[[projects]]
name = "web"
path = "~/src/web"
default_model = "opus"
permission_mode = "plan"
append_system_prompt = "Lint first."
worktree = true

[models]
aliases = { fast = "haiku" }

[usage]
timezone = "Europe/Berlin"
warn_at = [0.9, 0.5]

[scheduler]
max_daily_cost_usd = 2.0
"""


def test_engine_config_takes_every_claude_setting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env_file = home / ".config" / "claude-max-gateway" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(
        "CLAUDE_CODE_OAUTH_TOKEN=from-file\nGATEWAY_API_KEYS=k\nNO_PROXY=from-file\n"
    )
    path = tmp_path / "config.toml"
    path.write_text(CLAUDE)
    real = {"HOME": str(home), "NO_PROXY": "real", "CMG_LOGGING__LEVEL": "INFO"}
    settings = load_settings(path, env=real)

    config = EngineConfig.from_settings(settings, environ=real)

    assert config == EngineConfig(
        workspace=home / "ws",
        cli_path="/bin/sh",
        permission_mode="acceptEdits",
        default_model="sonnet",
        model_aliases={"fast": "haiku"},
        append_system_prompt="Be brief.",
        activity_timeout=900,
        bash_max_timeout=300,
        max_live_sessions=7,
        idle_timeout=60,
        max_parallel_turns=3,
        max_queued_per_conversation=2,
        # the env file's CLI variables, but no gateway secret and none the real env sets
        env={"CLAUDE_CODE_OAUTH_TOKEN": "from-file", "HTTPS_PROXY": "http://proxy:3128"},
        secret_env_vars=frozenset(
            {"GATEWAY_API_KEYS", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "CMG_LOGGING__LEVEL"}
        ),
        send_file_dirs=(home / "out",),
        spare_processes=0,
        client_tool_timeout=30,
        hybrid_hidden_tools=("WebFetch",),
        max_turn_cost_usd=0.5,
        approval_timeout=45,
        usage_timezone="Europe/Berlin",
        usage_warn_at=(0.5, 0.9),
        scheduled_daily_cost_cap_usd=2.0,
        worktrees_dir=home / "trees",
        projects=(Project("web", home / "src" / "web", "opus", "plan", "Lint first.", True),),
    )
    # every [claude] key the engine has a field for is one this test sets to a non-default
    shared = {f.name for f in dataclasses.fields(EngineConfig)} & set(ClaudeSettings.model_fields)
    written = {line.split(" =")[0] for line in CLAUDE.splitlines() if " = " in line}
    assert shared <= written


def test_engine_config_defaults_are_the_sections(tmp_path: Path) -> None:
    settings = load_settings(None, env={"HOME": str(tmp_path)}, env_file=tmp_path / "none")
    built = EngineConfig.from_settings(settings, environ={})
    # (paths are expanded against the settings' HOME)
    by_hand = EngineConfig(workspace=settings.claude.workspace,
                           worktrees_dir=settings.claude.worktrees_dir)
    assert dataclasses.replace(built, secret_env_vars=frozenset()) == by_hand


def test_scheduler_config_and_jobs_take_every_setting(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[scheduler]\nenabled = false\nmodel = "sonnet"\njitter = 5\nmisfire_grace = 10\n'
        'timezone = "Europe/Paris"\nmax_daily_cost_usd = 1.5\n\n'
        '[[schedules]]\nname = "morning"\ncron = "0 8 * * 1-5"\n'
        'prompt = "News"\ntarget = "log"\ntimezone = "UTC"\nmodel = "opus"\n'
        'session = "continue"\njitter = 3\nenabled = false\nproject = "web"\n'
        '\n[[schedules]]\nname = "plain"\ncron = "0 9 * * *"\nprompt = "Hi"\ntarget = "log"\n'
    )
    settings = load_settings(path, env={"HOME": str(tmp_path)}, env_file=tmp_path / "none")
    assert SchedulerConfig.from_settings(settings.scheduler) == SchedulerConfig(
        enabled=False, model="sonnet", jitter=5, misfire_grace=10, timezone="Europe/Paris",
        max_daily_cost_usd=1.5,
    )
    assert config_jobs(settings.schedules) == [
        JobSpec(name="morning", cron="0 8 * * 1-5", prompt="News", target="log",
                timezone="UTC", model="opus", session=SessionMode.CONTINUE, jitter=3,
                enabled=False, project="web"),
        JobSpec(name="plain", cron="0 9 * * *", prompt="Hi", target="log"),
    ]
    defaults = load_settings(None, env={"HOME": str(tmp_path)}, env_file=tmp_path / "none")
    assert SchedulerConfig.from_settings(defaults.scheduler) == SchedulerConfig()
