"""``[scheduler]`` and ``[[schedules]]`` in config.toml: every bad value is one line naming the
file, the job and the field; a good configuration runs in the real gateway (``/health``)."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway, build_scheduler
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.scheduler import SessionMode
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env

JOB = """
[[schedules]]
name = "morning"
cron = "0 8 * * 1-5"
prompt = "Summarize the news"
target = "log"
"""


def load(tmp_path: Path, text: str, **env: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path, env={"HOME": str(tmp_path), **env})


def problems(tmp_path: Path, text: str, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **env)
    label = str(tmp_path / "config.toml")
    lines = str(caught.value).splitlines()
    assert all(line.startswith(label + ": ") for line in lines), lines
    return [line[len(label) + 2 :] for line in lines]


def test_defaults_protect_the_account(tmp_path: Path) -> None:
    settings = load_settings(None, env={"HOME": str(tmp_path)})
    assert settings.scheduler.model == "haiku"
    assert settings.scheduler.jitter == 60
    assert settings.scheduler.misfire_grace == 3600
    assert settings.schedules == ()


def test_a_good_job_with_every_field(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[scheduler]
model = "sonnet"
jitter = 10
misfire_grace = 600
timezone = "Europe/Berlin"

[[schedules]]
name = "standup"
cron = "30  8 * * mon-fri"
timezone = "America/New_York"
prompt = "  What is on my calendar?  "
model = "opus"
target = "telegram:-100123:7"
session = "continue"
jitter = 0
enabled = false
""" + JOB)
    assert settings.scheduler.timezone == "Europe/Berlin"  # type: ignore[attr-defined]
    first, second = settings.schedules  # type: ignore[attr-defined]
    assert first.cron == "30 8 * * mon-fri" and first.prompt == "What is on my calendar?"
    assert first.target == "telegram:-100123:7" and first.session == "continue"
    assert first.jitter == 0 and not first.enabled
    assert second.name == "morning" and second.jitter is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("cron", '"0 25 * * *"', 'schedules.0.cron: schedule "job": \'0 25 * * *\': hour'
                                 " '25': the last value (25) is higher than the maximum value"
                                 " (23)"),
        ("cron", '"0 8 * *"', "schedules.0.cron: schedule \"job\": '0 8 * *' has 4 field(s)"),
        ("cron", '"*/5 * * * * *"', "schedules.0.cron: schedule \"job\": '*/5 * * * * *' has"
                                    " 6 field(s)"),
        ("cron", '"0 9 30 2 *"', "schedules.0.cron: schedule \"job\": '0 9 30 2 *' never"
                                 " fires"),
        ("cron", '"@often"', "schedules.0.cron: schedule \"job\": unknown shortcut '@often'"),
        ("target", '"slack:general"', "schedules.0.target: schedule \"job\": unknown target"
                                      " 'slack:general'"),
        ("target", '"telegram:@me"', "schedules.0.target: schedule \"job\": 'telegram:@me'"
                                     " is not a valid telegram target"),
        ("timezone", '"Mars/Base"', "schedules.0.timezone: schedule \"job\": unknown time zone"
                                    " 'Mars/Base'"),
        ("prompt", '" "', 'schedules.0.prompt: schedule "job": the prompt is empty'),
        ("session", '"sometimes"', 'schedules.0.session: schedule "job": expected "fresh" or'
                                   ' "continue", got "sometimes"'),
        ("jitter", "-5", 'schedules.0.jitter: schedule "job": expected seconds from 0 to 3600,'
                         " got -5"),
        ("enabled", '"yes"', 'schedules.0.enabled: schedule "job": expected true or false'),
        ("promt", '"typo"', 'schedules.0.promt: schedule "job": unknown key (did you mean'
                            " prompt?)"),
        ("name", '"two words"', "schedules.0.name: 'two words' is not a valid job name"),
    ],
)
def test_a_bad_field_names_the_job_and_the_field(
    tmp_path: Path, field: str, value: str, expected: str
) -> None:
    entry = {"name": '"job"', "cron": '"0 8 * * *"', "prompt": '"p"', "target": '"log"'}
    entry[field] = value
    text = "[[schedules]]\n" + "\n".join(f"{k} = {v}" for k, v in entry.items())
    found = problems(tmp_path, text)
    assert any(line.startswith(expected) for line in found), found


def test_missing_fields_and_duplicate_names(tmp_path: Path) -> None:
    found = problems(tmp_path, '[[schedules]]\nname = "a"\ncron = "@daily"\ntarget = "log"\n')
    assert found == ['schedules.0.prompt: schedule "a": prompt is missing (what Claude is asked'
                     " on each run)"]
    found = problems(tmp_path, JOB + JOB)
    assert found == ['schedules.1: schedule "morning": name: already used by schedules.0;'
                     " every job needs its own name"]


def test_scheduler_section_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, '[scheduler]\njitter = 7200\ntimezone = "Nowhere"\n'
                               'misfire_grace = -1\n')
    assert any(line.startswith("scheduler.jitter: expected a number from 0 to 3600, got 7200")
               for line in found), found
    assert any(line.startswith("scheduler.timezone: unknown time zone 'Nowhere'")
               for line in found), found
    assert any(line.startswith("scheduler.misfire_grace:") for line in found), found


def test_an_environment_override(tmp_path: Path) -> None:
    settings = load(tmp_path, JOB, CMG_SCHEDULER__JITTER="0", CMG_SCHEDULER__MODEL="sonnet")
    assert settings.scheduler.jitter == 0  # type: ignore[attr-defined]
    assert settings.scheduler.model == "sonnet"  # type: ignore[attr-defined]


@pytest.mark.cli
async def test_the_gateway_runs_config_jobs_and_reports_them_in_health(
    tmp_path: Path, fake_api: FakeAnthropic,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(fake_api.base_url, str(home), inherit=False)
    env_lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in env.items()
                          if k != "PATH")
    settings = load_settings(_write(tmp_path, f"""
[server]
port = {port}
[claude]
cli_path = "{bundled_cli()}"
workspace = "{tmp_path / 'ws'}"
spare_processes = 0
[claude.env]
{env_lines}
[storage]
data_dir = "{tmp_path / 'data'}"
[scheduler]
jitter = 0
[[schedules]]
name = "digest"
cron = "0 7 * * *"
prompt = "daily digest"
target = "log"
session = "continue"
[[schedules]]
name = "to-telegram"
cron = "0 7 * * *"
prompt = "never runs here"
target = "telegram:42"
"""), env={"HOME": str(tmp_path)})
    gateway = Gateway.build(settings)
    await gateway.start()
    try:
        assert gateway.scheduler is not None
        digest = gateway.scheduler.get("digest")
        assert digest is not None and digest.session is SessionMode.CONTINUE
        assert gateway.scheduler.run_now(digest)
        await gateway.scheduler.wait_idle("digest")
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/health"
        ) as response:
            body = await response.json()
        assert response.status == 200 and body["status"] == "ok"
        jobs = {job["name"]: job for job in body["scheduler"]["jobs"]}
        assert body["scheduler"]["model"] == "haiku" and body["scheduler"]["running"]
        assert jobs["digest"]["next_run"] is not None and jobs["digest"]["problem"] is None
        assert jobs["digest"]["last_run"]["status"] == "ok"
        assert jobs["digest"]["last_run"]["cost_usd"] > 0
        assert jobs["to-telegram"]["problem"].startswith(
            "target: telegram:42 needs the Telegram bot, which is not running")
    finally:
        await gateway.stop()


def test_build_scheduler_maps_every_field(tmp_path: Path) -> None:
    settings = load(tmp_path, JOB.replace('target = "log"', 'target = "log"\nmodel = "opus"'))

    class NoEngine:
        def tables(self, group: object) -> None:
            return None

    scheduler = build_scheduler(NoEngine(), settings)  # type: ignore[arg-type]
    assert scheduler.config.model == "haiku" and scheduler.config.jitter == 60
    (job,) = scheduler._config_jobs
    assert (job.name, job.cron, job.model, job.target) == ("morning", "0 8 * * 1-5", "opus",
                                                           "log")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path
