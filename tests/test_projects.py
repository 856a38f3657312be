"""Projects and worktrees end to end: the REAL Telegram bridge (python-telegram-bot against
the fake Bot API), the REAL Discord bridge (discord.py against the fake Discord), the REAL
HTTP API and the REAL Claude Code CLI against the fake Anthropic API; worktrees are real git
worktrees of a test repository."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from gateway.api import ApiConfig, create_app
from gateway.config import load_settings
from gateway.engine import Engine, EngineConfig, OutgoingFile, Pref, Project, TurnResult
from gateway.engine.tools import SEND_FILE
from gateway.errors import ConfigError, ErrorKind, GatewayError
from gateway.scheduler import JobSpec, Scheduler, SchedulerConfig
from gateway.store import Store
from tests.clock import noon_zone
from tests.conftest import EngineFactory, collect, file_sink, system_binary
from tests.fake_anthropic import FakeAnthropic
from tests.fake_telegram import FakeTelegram
from tests.telegram_support import (
    OWNER,
    STRANGER,
    BridgeFactory,
    answer,
    idle,
    status_messages,
    texts,
)
from tests.test_api_routes import serve
from tests.test_discord import BridgeFactory as DiscordFactory
from tests.test_discord import answer as discord_answer
from tests.test_discord import idle as discord_idle
from tests.test_discord import make_bridge as make_discord_bridge  # noqa: F401 (fixture)

pytest_plugins = ["tests.telegram_support"]

RULES = "WEBAPP-RULES: run the webapp's linters."


def cli_folder(home: Path, cwd: Path) -> Path:
    """Where the CLI keeps the transcripts of sessions started in ``cwd``."""
    return home / ".claude" / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(cwd))


@pytest.fixture
def webapp(tmp_path: Path) -> Project:
    folder = tmp_path / "src" / "webapp"
    folder.mkdir(parents=True)
    return Project("webapp", folder, append_system_prompt=RULES, permission_mode="plan")


@pytest.fixture
def repo(tmp_path: Path) -> Project:
    """A git repository with one commit, as a worktree = true project."""
    git = system_binary("git", "git")
    folder = tmp_path / "src" / "repo"
    folder.mkdir(parents=True)
    (folder / "README").write_text("the repo\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first"]):
        subprocess.run([git, "-C", str(folder), *args], check=True)
    return Project("repo", folder, worktree=True)


def present(path: Path) -> bool:
    return path.is_dir()


def git_out(folder: Path, *args: str) -> str:
    git = system_binary("git", "git")
    return subprocess.run([git, "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout


# ----------------------------------------------------------------------------- config


def test_projects_in_the_config_are_checked(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    good = tmp_path / "good.toml"
    good.write_text('[[projects]]\nname = "web-app_2.0"\npath = "~/w"\nworktree = true\n')
    settings = load_settings(good, env=env)
    (project,) = settings.projects
    assert project.name == "web-app_2.0" and project.path == tmp_path / "w" and project.worktree
    for body, wanted in (
        ('[[projects]]\nname = "a"\npath = "/x"\n[[projects]]\nname = "A"\npath = "/y"\n',
         'project "A": name: already used by projects.0'),
        ('[[projects]]\nname = "../etc"\npath = "/x"\n', "is not a project name"),
        ('[[projects]]\nname = "default"\npath = "/x"\n', "name of claude.workspace"),
        ('[[projects]]\nname = "a"\n', "path"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(ConfigError) as caught:
            load_settings(bad, env=env)
        assert wanted in str(caught.value), str(caught.value)


async def test_a_missing_or_file_project_path_stops_start_up_with_one_line(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for path, problem, tree in (
        (tmp_path / "gone", "does not exist", False),
        (a_file, "is not a directory", False),
        (tmp_path, "is no git repository (worktree = true needs one)", True),
    ):
        with pytest.raises(GatewayError) as caught:
            await make_engine(projects=(Project("web", path, worktree=tree),))
        assert caught.value.kind is ErrorKind.CONFIG
        assert str(caught.value) == f"project 'web': path {path} {problem}"


# ----------------------------------------------------------------------------- Telegram

@pytest.mark.cli
async def test_telegram_each_project_is_its_own_session_in_its_own_folder(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic, cli_home: Path, webapp: Project, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = await make_engine(projects=(webapp,), spare_processes=0)
    bridge = await make_bridge(engine=engine)
    assert "project" in [c["command"] for c in tg.commands]
    tg.user_text(OWNER, "hello default")
    await answer(tg, OWNER, "echo: hello default")
    await idle(bridge, OWNER)

    tg.user_text(OWNER, "/project")
    listing = await tg.wait_for(lambda: next(
        (t for t in texts(tg, OWNER) if t.startswith("Projects:")), None))
    assert f"▶️ default — {engine.workspace}" in listing and f"• webapp — {webapp.path}" in listing
    tg.user_text(OWNER, "/project nope")
    refused = await tg.wait_for(lambda: [t for t in texts(tg, OWNER) if "nope" in t])
    assert "default, webapp" in refused[0]
    # a stranger can neither switch the owner's chat nor their own
    tg.user_text(STRANGER, "/project webapp")
    await tg.wait_for(lambda: tg.sent(STRANGER))
    assert "allow-list" in tg.sent(STRANGER)[0].text
    assert Pref.PROJECT not in await engine.preferences.get(f"telegram:{STRANGER}")

    tg.user_text(OWNER, "/project webapp")
    await tg.wait_for(lambda: any("now works in webapp" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "SLOW hello webapp")  # slow: the status message shows
    await answer(tg, OWNER, "echo: SLOW hello webapp")
    await idle(bridge, OWNER)
    shown = [line for m in status_messages(tg, OWNER) for line in m.history]
    assert any("📁 webapp" in line for line in shown), shown
    web_request = fake_api.requests()[-1]
    assert RULES in web_request["system_text"] and str(webapp.path) in web_request["system_text"]
    default = await engine.describe(f"telegram:{OWNER}")
    web = await engine.describe(f"telegram:{OWNER}|webapp")
    assert default is not None and web is not None
    assert (default.project, default.cwd) == ("default", str(engine.workspace))
    assert (web.project, web.cwd) == ("webapp", str(webapp.path))
    assert web.session_id and default.session_id and web.session_id != default.session_id
    assert (cli_folder(cli_home, webapp.path) / f"{web.session_id}.jsonl").is_file()
    assert (cli_folder(cli_home, engine.workspace) / f"{default.session_id}.jsonl").is_file()
    assert (await engine.permission_mode(f"telegram:{OWNER}|webapp")).value == "plan"

    tg.user_text(OWNER, "/status")
    status = await tg.wait_for(lambda: next(
        (t for t in texts(tg, OWNER) if t.startswith("Session:")), None))
    assert f"Project: webapp ({webapp.path})" in status and web.session_id in status
    monkeypatch.setenv("HOME", str(cli_home))  # where /sessions reads the transcripts
    tg.user_text(OWNER, "/sessions")
    sessions = await tg.wait_for(lambda: next(
        (t for t in texts(tg, OWNER) if "Recent Claude Code" in t), None))
    assert web.session_id in sessions and default.session_id not in sessions

    # back in the default project the first conversation goes on where it was
    tg.user_text(OWNER, "/project default")
    await tg.wait_for(lambda: any("now works in default" in t and "continues" in t
                                  for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "default again")
    await answer(tg, OWNER, "echo: default again")
    await idle(bridge, OWNER)
    again = await engine.describe(f"telegram:{OWNER}")
    assert again is not None and again.session_id == default.session_id and again.turns == 2

    # the chat's choice survives a restart
    tg.user_text(OWNER, "/project webapp")
    await tg.wait_for(lambda: len([t for t in texts(tg, OWNER) if "now works in webapp" in t])
                      == 2)
    await bridge.stop()
    await engine.stop()
    restarted = await make_engine(projects=(webapp,), spare_processes=0)
    bridge = await make_bridge(engine=restarted)
    chat = bridge.platform.chat_for_key(f"telegram:{OWNER}")
    assert chat is not None
    assert await bridge.core.conversation_key(chat) == f"telegram:{OWNER}|webapp"


@pytest.mark.cli
async def test_worktree_projects_give_each_conversation_a_git_worktree(
    make_engine: EngineFactory, make_bridge: BridgeFactory, tg: FakeTelegram,
    fake_api: FakeAnthropic, repo: Project, tmp_path: Path,
) -> None:
    trees = tmp_path / "worktrees"
    engine = await make_engine(projects=(repo,), worktrees_dir=trees, spare_processes=0)
    bridge = await make_bridge(engine=engine)
    tg.user_text(OWNER, "/project repo")
    await tg.wait_for(lambda: any("own git worktree" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "work on a branch")
    await answer(tg, OWNER, "echo: work on a branch")
    await idle(bridge, OWNER)
    info = await engine.describe(f"telegram:{OWNER}|repo")
    assert info is not None and info.branch
    folder = Path(info.cwd)
    assert folder.parent == trees / "repo" and folder.name.startswith(f"telegram-{OWNER}-")
    assert str(folder) in fake_api.requests()[-1]["system_text"]
    listing = git_out(repo.path, "worktree", "list", "--porcelain")
    assert f"worktree {folder}\n" in listing and f"branch refs/heads/{info.branch}" in listing
    assert (folder / "README").read_text() == "the repo\n"
    tg.user_text(OWNER, "/project")
    await tg.wait_for(lambda: any(f"branch {info.branch}" in t and t.startswith("Projects:")
                                  for t in texts(tg, OWNER)))

    tg.user_text(OWNER, "/worktrees")
    await tg.wait_for(lambda: any("1 in use" in t and "(none of a finished" in t
                                  for t in texts(tg, OWNER)))
    tg.user_text(OWNER, f"/worktrees remove {folder.name}")
    await tg.wait_for(lambda: any("still open" in t for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "/new")
    await tg.wait_for(lambda: any(t.startswith("🆕") for t in texts(tg, OWNER)))
    tg.user_text(OWNER, "/worktrees")
    await tg.wait_for(lambda: any(f"• {folder.name} — repo, branch {info.branch}" in t
                                  for t in texts(tg, OWNER)))
    (folder / "draft.txt").write_text("unsaved work")  # git refuses: nothing goes silently
    tg.user_text(OWNER, f"/worktrees remove {folder.name}")
    await tg.wait_for(lambda: any("git worktree remove failed" in t for t in texts(tg, OWNER)))
    assert present(folder)
    (folder / "draft.txt").unlink()
    tg.user_text(OWNER, f"/worktrees remove {folder.name}")
    await tg.wait_for(lambda: any(t.startswith("🗑 Removed worktree") for t in texts(tg, OWNER)))
    assert not present(folder)
    assert info.branch in git_out(repo.path, "branch", "--list")


# ----------------------------------------------------------------------------- Discord


@pytest.mark.cli
async def test_discord_switches_projects_with_separate_sessions(
    make_engine: EngineFactory, make_discord_bridge: DiscordFactory,  # noqa: F811
    cli_home: Path, webapp: Project,
) -> None:
    engine = await make_engine(projects=(webapp,), spare_processes=0)
    bridge, fake = await make_discord_bridge(engine=engine)
    dm = fake.dm(fake.owner)
    await fake.message(dm, fake.owner, "in default")
    await discord_answer(fake, dm.id, "echo: in default")
    await discord_idle(bridge, dm.id)
    await fake.slash(dm, fake.owner, "project", name="webapp")
    await fake.wait_for(lambda: any("now works in webapp" in t for t in fake.texts(dm.id)),
                        what="the switch")
    await fake.message(dm, fake.owner, "in webapp")
    await discord_answer(fake, dm.id, "echo: in webapp")
    await discord_idle(bridge, dm.id)
    default = await engine.describe(f"discord:{dm.id}")
    web = await engine.describe(f"discord:{dm.id}|webapp")
    assert default is not None and web is not None and web.cwd == str(webapp.path)
    assert default.session_id != web.session_id
    assert (cli_folder(cli_home, webapp.path) / f"{web.session_id}.jsonl").is_file()
    stranger = fake.dm(fake.stranger)
    await fake.message(stranger, fake.stranger, "/project webapp")
    await fake.wait_for(lambda: fake.texts(stranger.id), what="the refusal")
    assert "allow-list" in fake.texts(stranger.id)[0]
    assert Pref.PROJECT not in await engine.preferences.get(f"discord:{stranger.id}")


# ----------------------------------------------------------------------------- HTTP


@pytest.mark.cli
async def test_x_project_chooses_the_folder_of_every_dialect_and_unknown_is_a_400(
    tmp_path: Path, engine_config: EngineConfig, webapp: Project, fake_api: FakeAnthropic,
) -> None:
    engine = Engine(replace(engine_config, projects=(webapp,), spare_processes=0),
                    Store(tmp_path / "api.sqlite3"))
    await engine.start()
    headers = {"Authorization": "Bearer k"}
    body = {"model": "sonnet", "messages": [{"role": "user", "content": "api in webapp"}]}
    try:
        async with serve(create_app(engine, ApiConfig(api_keys=("k",)))) as url, \
                aiohttp.ClientSession() as http:
            for path, extra in (("/v1/chat/completions", {}),
                                ("/v1/messages", {"max_tokens": 50})):
                async with http.post(url + path, json={**body, **extra},
                                     headers={**headers, "X-Project": "nope"}) as bad:
                    assert bad.status == 400
                    text = await bad.text()
                    assert "X-Project" in text and "default, webapp" in text
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={**headers, "X-Project": "webapp",
                                          "X-Conversation-Id": "c1"}) as ok:
                assert ok.status == 200, await ok.text()
                assert ok.headers["X-Conversation-Id"] == "h:c1"  # no project in it
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={"X-Project": "webapp"}) as anonymous:
                assert anonymous.status == 401  # the key check comes first
        info = await engine.describe("openai:h:c1|webapp")
        assert info is not None and info.cwd == str(webapp.path) and info.project == "webapp"
        assert await engine.describe("openai:h:c1") is None
        assert RULES in fake_api.requests()[-1]["system_text"]
    finally:
        await engine.stop()


# ----------------------------------------------------------------------------- scheduler


@pytest.mark.cli
async def test_a_scheduled_job_works_in_its_project_and_an_unknown_one_is_held(
    make_engine: EngineFactory, webapp: Project, fake_api: FakeAnthropic,
) -> None:
    engine = await make_engine(projects=(webapp,), spare_processes=0)
    jobs = (JobSpec("lint", "@daily", "nightly lint", "log", project="webapp"),
            JobSpec("lost", "@daily", "nowhere", "log", project="gone"))
    # about noon there: in UTC "@daily" fired itself at 00:00 next to run_now
    scheduler = Scheduler(engine, SchedulerConfig(jitter=0, timezone=noon_zone()), jobs)
    await scheduler.start()
    try:
        views = {v.spec.name: v for v in scheduler.jobs()}
        assert views["lost"].problem is not None
        assert views["lost"].problem.startswith("project: unknown project 'gone'")
        assert views["lint"].problem is None and scheduler.run_now(views["lint"].spec)
        await scheduler.wait_idle("lint")
    finally:
        await scheduler.stop()
    info = await engine.describe("cron:lint|webapp")
    assert info is not None and info.cwd == str(webapp.path) and info.turns == 1
    assert RULES in fake_api.requests()[-1]["system_text"]


# ----------------------------------------------------------------------------- send_file


@pytest.mark.cli
async def test_send_file_is_confined_to_the_project_folder(
    make_engine: EngineFactory, fake_api: FakeAnthropic, webapp: Project,
) -> None:
    # (not in plan mode, which lets Claude read only)
    engine = await make_engine(projects=(replace(webapp, permission_mode=""),),
                               spare_processes=0)
    sent = file_sink(engine, "chat:")
    (webapp.path / "build.log").write_text("ok")
    engine.workspace.mkdir(parents=True, exist_ok=True)
    (engine.workspace / "private.txt").write_text("the default project's file")
    fake_api.script({"tool_use": {"name": SEND_FILE, "input": {"path": "build.log"}}},
                    match="send the log")
    fake_api.script({"tool_use": {"name": SEND_FILE,
                                  "input": {"path": str(engine.workspace / "private.txt")}}},
                    match="send the other")
    events = await collect(engine, "chat:1|webapp", "send the log")
    assert isinstance(events[-1], TurnResult)
    assert sent == [OutgoingFile("chat:1|webapp", (webapp.path / "build.log").resolve(), "",
                                 "file")]
    await collect(engine, "chat:1|webapp", "send the other")
    assert len(sent) == 1
    result = fake_api.requests()[-1]["tool_results"][0]
    assert result["is_error"] and "outside the folders" in result["content"]
