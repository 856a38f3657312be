"""The README's set-up, as a newcomer runs it: a fresh clone, `make run`, `/health`.

The clone gets its own ``.venv`` with only the runtime packages (``pip install -e .``). pip uses
whatever index, mirror and cache this machine is configured with (pip.conf, ``PIP_*``), so the
test works offline wherever ``make run`` itself would. It is the slowest test of the suite
(about a minute: most of it is pip unpacking the claude-agent-sdk wheel with its CLI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.fake_anthropic import FakeAnthropic, cli_env
from tests.test_cli import free_port, write_config

pytestmark = pytest.mark.cli

def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


_PROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
#: What the gateway cannot run without (pyproject's dependencies).
RUNTIME = {_name(r) for r in _PROJECT["dependencies"]}
#: The test stack and the optional extras (torch, openai-whisper, schemathesis, pytest...):
#: none belongs in a `make run` venv (requests is left out: many libraries depend on it).
NOT_RUNTIME = {
    _name(r) for extra in _PROJECT["optional-dependencies"].values() for r in extra
} - RUNTIME - {"claude-max-gateway", "requests"}


def repo_root() -> Path:
    out = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=Path(__file__).parent,
        capture_output=True, text=True, check=True, timeout=30,
    )
    return Path(out.stdout.strip())


def pip_cache_dir() -> str:
    """This user's pip cache, so the clone's install reuses it although HOME is a scratch one."""
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else ""


def get_health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


@pytest.mark.timeout(600)
def test_make_run_in_a_fresh_clone_installs_only_the_runtime_and_serves_health(
    tmp_path: Path, fake_api: FakeAnthropic, cli_home: Path
) -> None:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed to follow the README's set-up")
    started = time.monotonic()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root()), str(clone)],
                   check=True, timeout=120)
    assert not (clone / ".venv").exists()

    env = cli_env(fake_api.base_url, str(cli_home))
    for name in list(env):  # nothing of this test run's own venv may leak into the clone's
        if name in {"VIRTUAL_ENV", "PYTHONPATH", "CLAUDE_MAX_GATEWAY_CONFIG"} or (
            name.startswith("CMG_")
        ):
            del env[name]
    env["XDG_CONFIG_HOME"] = str(cli_home / ".config")
    env["XDG_DATA_HOME"] = str(cli_home / ".local" / "share")
    env["PIP_NO_COMPILE"] = "1"  # the gateway compiles what it imports; pip would do all
    cache = pip_cache_dir()
    if cache:
        env["PIP_CACHE_DIR"] = cache
    port = free_port()
    config = write_config(tmp_path, port)
    log_path = tmp_path / "make-run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["make", "run", f"PYTHON={sys.executable}", f"ARGS=--config {config}"],
            cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        health: dict[str, object] | None = None
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = get_health(port)
                break
            except OSError:
                time.sleep(0.5)
        output = log_path.read_text(errors="replace")
        assert health is not None, f"make run never answered /health:\n{output[-3000:]}"
        took = time.monotonic() - started
        assert health["status"] == "ok", health
        assert health["cli_version"], health
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(f"fresh clone -> /health in {took:.0f} s")

    listed = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True, text=True, check=True, timeout=120, env=env,
    )
    installed = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert not installed & NOT_RUNTIME, sorted(installed & NOT_RUNTIME)
    assert RUNTIME <= installed, sorted(RUNTIME - installed)
    assert (clone / ".venv" / ".installed-base").exists()
    assert not (clone / ".venv" / ".installed-test").exists()
    # the stamp knows what is installed: `make run` again installs nothing, a switch of
    # EXTRAS (or `make test`) installs its set (shown by make -n: nothing is run)
    def planned(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=clone, env=env, capture_output=True,
                              text=True, check=True, timeout=60).stdout

    assert "pip install" not in planned("run")
    assert "pip install --quiet -e '.[voice]'" in planned("run", "EXTRAS=voice")
    assert "pip install --quiet -e '.[voice,whisper]'" in planned("run", "EXTRAS=voice, whisper")
    assert "pip install --quiet -e '.[test]'" in planned("test")


def test_install_hints_name_a_command_that_works_for_this_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import install
    from gateway.voice import VOICE_EXTRA, WHISPER_EXTRA

    root = repo_root()
    # this checkout's venv: pip -e of the checkout, with this interpreter (the package is
    # not on PyPI, so `pip install 'claude-max-gateway[voice]'` would not find it)
    assert VOICE_EXTRA == f"{sys.executable} -m pip install -e '{root}[voice]'"
    assert WHISPER_EXTRA.startswith(f"{sys.executable} -m pip install torch==2.13.0 && ")
    assert "pip install 'claude-max-gateway" not in VOICE_EXTRA + WHISPER_EXTRA
    # installed by pipx or uv from a URL (not a checkout): the same tool again, with the extra
    monkeypatch.setattr(install, "checkout_root", lambda: None)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    url = "git+https://example.org/me/claude-max-gateway"
    # the direct_url.json that `pipx install 'claude-max-gateway @ git+<url>'` records
    recorded = {"url": url.removeprefix("git+"), "vcs_info": {"commit_id": "3ff90d5", "vcs": "git"}}
    monkeypatch.setattr(install, "_direct_url", lambda: recorded)
    (tmp_path / "pipx_metadata.json").write_text("{}")
    assert install.install_command("voice") == (
        f"pipx install --force 'claude-max-gateway[voice] @ {url}'")
    assert install.install_command("whisper", first="torch==2.13.0").startswith(
        "pipx install --force --preinstall torch==2.13.0 ")
    (tmp_path / "pipx_metadata.json").unlink()
    (tmp_path / "uv-receipt.toml").write_text("")
    assert install.install_command("voice") == (
        f"uv tool install --force 'claude-max-gateway[voice] @ {url}'")
