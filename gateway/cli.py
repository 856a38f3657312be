"""The ``claude-max-api`` command.

    claude-max-api [--config FILE]                  start the gateway (same as `run`)
    claude-max-api doctor [--json]                  what is found, enabled and in effect
    claude-max-api service install [--dry-run]      start at login (launchd / systemd --user)
    claude-max-api service uninstall|status|logs    stop and remove it, show it, its log
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.errors import GatewayError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-max-api",
        description="Claude Max Gateway: your Claude Code subscription behind an"
        " OpenAI-compatible endpoint, chat bots and cron.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="config.toml to read (default: $CLAUDE_MAX_GATEWAY_CONFIG, then"
        " ~/.config/claude-max-gateway/config.toml if it exists)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="start the gateway (the default)")
    doctor = sub.add_parser("doctor", help="check the CLI, its login and the configuration")
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    service = sub.add_parser("service", help="run the gateway at login as a user service")
    service_sub = service.add_subparsers(dest="service_command", required=True)
    install = service_sub.add_parser("install", help="write the launchd agent / systemd unit")
    install.add_argument("--kind", choices=["launchd", "systemd"],
                         help="default: launchd on macOS, systemd elsewhere")
    install.add_argument("--dry-run", action="store_true",
                         help="print the file and the commands instead of writing and running")
    install.add_argument("--no-start", action="store_true",
                         help="write the file, print the commands that would start it")
    for name, text in (("uninstall", "stop the service and remove its file"),
                       ("status", "is it running (systemctl --user status / launchctl print)"),
                       ("logs", "the service's log (journalctl --user / the launchd log file)")):
        command = service_sub.add_parser(name, help=text)
        command.add_argument("--kind", choices=["launchd", "systemd"],
                             help="default: launchd on macOS, systemd elsewhere")
        if name == "logs":
            command.add_argument("-f", "--follow", action="store_true",
                                 help="keep printing new lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "doctor":
            return asyncio.run(_doctor(args.config, as_json=args.json))
        if args.command == "service":
            return _service(args)
        return _run(args.config)
    except GatewayError as exc:
        print(f"claude-max-api: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(config: str | None) -> Any:
    from gateway.config import load_settings
    from gateway.logs import setup_logging

    settings = load_settings(config)
    setup_logging(settings)
    return settings


def _run(config: str | None) -> int:
    from gateway.app import serve

    settings = _load(config)
    asyncio.run(serve(settings))
    return 0


async def _doctor(config: str | None, *, as_json: bool) -> int:
    from gateway.config import load_settings
    from gateway.engine import EngineConfig
    from gateway.engine.process import cli_auth_status, cli_environment, cli_version, find_cli

    report: dict[str, Any] = {"gateway": __version__, "problems": [], "warnings": []}
    problems: list[str] = report["problems"]
    warnings: list[str] = report["warnings"]
    try:
        settings = load_settings(config)
    except GatewayError as exc:
        problems.append(exc.message)
        return _print_doctor(report, as_json)
    report["config_file"] = str(settings.config_file) if settings.config_file else None
    report["config"] = settings.describe()
    econf = EngineConfig.from_settings(settings)
    try:
        path, source = find_cli(econf.cli_path)
        version = await cli_version(path)
        report["cli"] = {"path": path, "source": source, "version": version}
        auth = await cli_auth_status(path, cli_environment(econf))
        report["auth"] = auth
        if not auth.get("loggedIn"):
            problems.append(
                "Claude Code is not logged in: run `claude` and /login, or set"
                " CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`)."
                + (f" ({auth['error']})" if auth.get("error") else "")
            )
    except GatewayError as exc:
        problems.append(exc.message)
    data_dir = settings.storage.data_dir
    report["storage"] = {"db": str(settings.storage.db_path), "writable": _writable(data_dir)}
    if not report["storage"]["writable"]:
        problems.append(
            f"storage.data_dir {data_dir} cannot be created or written: set storage.data_dir"
            " to a folder you own, or fix its permissions"
        )
    report["workspace"] = {"path": str(econf.workspace), "writable": _writable(econf.workspace)}
    if not report["workspace"]["writable"]:
        problems.append(
            f"claude.workspace {econf.workspace} cannot be created or written: set"
            " claude.workspace to a folder you own, or fix its permissions"
        )
    report["env_file"] = _env_file_report(settings, warnings)
    report["port"] = _port_report(settings.server.host, settings.server.port, problems,
                                  warnings)
    report["command"] = _command_report(warnings)
    report["bots"] = await _bot_tokens_report(settings, problems)
    server = settings.server
    report["enabled"] = {
        "http_api": f"http://{server.host}:{server.port}/v1",
        "api_keys": len(server.api_keys),
        "telegram": settings.telegram.enabled,
        "discord": settings.discord.enabled,
        "notify_telegram_chat": settings.notify.telegram_chat_id,
    }
    # Voice is optional: what is missing is reported with its install command, not a problem.
    from gateway.voice import VoiceService

    voice = VoiceService(settings.voice)
    try:
        report["voice"] = voice.available()
    finally:
        voice.close()
    return _print_doctor(report, as_json)


def _env_file_report(settings: Any, warnings: list[str]) -> dict[str, Any]:
    from gateway.config import default_env_file

    path = settings.env_file or default_env_file()
    names = sorted(settings.env_file_values())
    if settings.env_file is not None and settings.env_file.stat().st_mode & 0o077:
        warnings.append(f"the env file {path} holds secrets but others may read it:"
                        f" chmod 600 {shlex.quote(str(path))}")
    return {"path": str(path), "exists": settings.env_file is not None, "variables": names}


def _port_report(host: str, port: int, problems: list[str], warnings: list[str]) -> dict[str, Any]:
    from gateway.ports import busy_port_message, port_owner, port_problem

    problem = port_problem(host, port)
    if problem is None:
        return {"address": f"{host}:{port}", "free": True}
    owner = port_owner(port)
    if owner is not None and owner.describe().startswith("another Claude Max Gateway"):
        warnings.append(f"{host}:{port} is taken by {owner.describe()}: this configuration"
                        " cannot start beside it (stop it first, or change server.port)")
    else:
        problems.append(busy_port_message(host, port, problem))
    return {"address": f"{host}:{port}", "free": False,
            "held_by": owner.describe() if owner else None}


def _command_report(warnings: list[str]) -> dict[str, Any]:
    """Which ``claude-max-api`` a shell runs; a warning when it is not this gateway (the npm
    claude-max-api-proxy installs a command of the same name)."""
    from gateway.service import COMMAND_NAME, entry_point

    ours = entry_point()
    first = shutil.which(COMMAND_NAME)
    info: dict[str, Any] = {"this": shlex.join(ours), "first_on_path": first}
    if first is None or _is_this_installation(first):
        return info
    real = os.path.realpath(first)
    what = ("the npm claude-max-api-proxy" if "node_modules" in real or "claude-max-api-proxy"
            in real else "another program")
    warnings.append(
        f"`{COMMAND_NAME}` on your PATH is {first} ({what}), not this gateway: run this one"
        f" as {shlex.join(ours)}, or put {os.path.dirname(ours[0])} first on PATH"
    )
    return info


def _is_this_installation(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            first = handle.readline().decode("utf-8", "replace").strip()
    except OSError:
        return False
    return first.startswith("#!") and first[2:].strip() in {
        sys.executable, os.path.abspath(sys.executable)
    }


async def _bot_tokens_report(settings: Any, problems: list[str]) -> dict[str, Any]:
    """Each configured bot token, tried against its platform (Telegram getMe, Discord
    /users/@me). The tokens never appear in what is printed."""
    import aiohttp

    found: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tg = settings.telegram
        if tg.token is not None:
            token = tg.token.get_secret_value()
            base = (tg.base_url or "https://api.telegram.org/bot").rstrip("/")
            base = base if base.endswith("/bot") else base + "/bot"
            found["telegram"] = await _try_token(
                session, f"{base}{token}/getMe", {}, token, "Telegram", "TELEGRAM_BOT_TOKEN",
                "copy it again from @BotFather (/mybots → your bot → API Token)", problems,
                lambda body: body.get("result", {}).get("username"),
            )
        dc = settings.discord
        if dc.token is not None:
            token = dc.token.get_secret_value()
            base = dc.api_base_url or "https://discord.com/api/v10"
            found["discord"] = await _try_token(
                session, f"{base}/users/@me", {"Authorization": f"Bot {token}"}, token,
                "Discord", "DISCORD_BOT_TOKEN",
                "Discord Developer Portal → your application → Bot → Reset Token, and set the"
                " new one", problems, lambda body: body.get("username"),
            )
    return found


async def _try_token(
    session: Any, url: str, headers: dict[str, str], token: str, platform: str, var: str,
    fix: str, problems: list[str], name_of: Any,
) -> dict[str, Any]:
    import aiohttp

    where = url.replace(token, "<token>")
    try:
        async with session.get(url, headers=headers) as response:
            status = response.status
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {}
    except (aiohttp.ClientError, TimeoutError) as exc:
        text = (str(exc) or type(exc).__name__).replace(token, "<token>")
        problems.append(f"{var}: cannot reach {platform} at {where} ({text}): check the"
                        " network (or the base URL setting)")
        return {"ok": False, "error": text}
    if status == 200 and isinstance(body, dict):
        return {"ok": True, "username": name_of(body)}
    if status in (401, 403, 404):
        problems.append(f"{var} was refused by {platform} (HTTP {status}): {fix}")
    else:
        problems.append(f"{var}: {platform} answered HTTP {status} at {where}; try again later")
    return {"ok": False, "status": status}


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _print_doctor(report: dict[str, Any], as_json: bool) -> int:
    ok = not report["problems"]
    if as_json:
        print(json.dumps({**report, "ok": ok}, indent=2, default=str))
        return 0 if ok else 1
    print(f"Claude Max Gateway {report['gateway']}")
    if "config" in report:
        print(f"  config file : {report['config_file'] or 'none (embedded defaults)'}")
    cli = report.get("cli")
    if cli:
        print(f"  Claude Code : {cli['version']} at {cli['path']} ({cli['source']})")
    auth = report.get("auth")
    if auth:
        state = "logged in" if auth.get("loggedIn") else "NOT logged in"
        method = auth.get("authMethod") or auth.get("apiKeySource") or ""
        print(f"  login       : {state}{f' ({method})' if method else ''}")
    if "storage" in report:
        print(f"  database    : {report['storage']['db']}")
        print(f"  workspace   : {report['workspace']['path']}")
        enabled = report["enabled"]
        keys = enabled["api_keys"]
        print(f"  HTTP API    : {enabled['http_api']}"
              f" ({f'{keys} API key(s)' if keys else 'no API keys'})")
        print(f"  telegram    : {'enabled' if enabled['telegram'] else 'off'};"
              f" discord: {'enabled' if enabled['discord'] else 'off'}")
        for platform, bot in report.get("bots", {}).items():
            state = f"token accepted (@{bot.get('username')})" if bot.get("ok") else "token FAILED"
            print(f"  {platform:<12}: {state}")
        env_file = report["env_file"]
        print(f"  env file    : {env_file['path']}"
              f" ({', '.join(env_file['variables']) or 'no variables'})"
              if env_file["exists"] else f"  env file    : {env_file['path']} (none)")
        port = report["port"]
        print(f"  port        : {port['address']} "
              f"{'free' if port['free'] else 'IN USE by ' + str(port.get('held_by'))}")
        print(f"  this command: {report['command']['this']}")
        voice = report["voice"]
        missing = voice.get("problems") or []
        print(f"  voice       : {'ready' if not missing else 'not ready'}")
        for line in missing:
            print(f"                {line}")
        print("  effective configuration:")
        for line in json.dumps(report["config"], indent=2, default=str).splitlines():
            print(f"    {line}")
    for warning in report.get("warnings", []):
        print(f"  WARNING: {warning}")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}")
    print("  all good" if ok else f"  {len(report['problems'])} problem(s)")
    return 0 if ok else 1


def _service(args: argparse.Namespace) -> int:
    from gateway.service import (
        detect_kind,
        entry_point,
        env_file_note,
        linger_enabled,
        linger_hint,
        plan,
        run_command,
        run_commands,
        write_service,
    )

    command = entry_point()  # this installation's, never `claude-max-api` from PATH
    config = args.config or os.environ.get("CLAUDE_MAX_GATEWAY_CONFIG")
    run_args = ["--config", str(Path(config).expanduser().resolve())] if config else []
    kind = args.kind or detect_kind()
    p = plan(kind, exe=command[0], args=[*command[1:], *run_args], home=Path.home())
    shown = [shlex.join(c) for c in p.start]
    if args.service_command == "install":
        if args.dry_run:
            print(f"# would write {p.path}\n{p.contents}\n# then run: {' && '.join(shown)}")
            return 0
        write_service(p)
        print(f"wrote {p.path}\n  it starts: {shlex.join(command)}\n  {env_file_note()}")
        if args.no_start:
            print(f"now run: {' && '.join(shown)}")
        else:
            if kind == "launchd":  # a loaded agent must be booted out before a new bootstrap
                _quiet(p.stop[0])
            code, failed = run_commands(p.start)
            if code != 0:
                print(f"claude-max-api: `{failed}` failed (exit {code}); the file is written,"
                      f" start it yourself with: {' && '.join(shown)}", file=sys.stderr)
                return 1
            print(f"started: {' && '.join(shown)}")
        _linger_note(kind, linger_enabled, linger_hint)
        return 0
    if args.service_command == "uninstall":
        if not p.path.exists():
            print(f"not installed: {p.path} does not exist")
            return 0
        for stop in p.stop:  # not running is fine: the file goes anyway
            _quiet(stop)
        p.path.unlink()
        run_commands(p.after_remove)
        print(f"stopped and removed {p.path}")
        return 0
    if not p.path.exists():
        print(f"claude-max-api: the service is not installed ({p.path} does not exist):"
              " run `claude-max-api service install`", file=sys.stderr)
        return 1
    if args.service_command == "status":
        code = run_command(p.status)
        _linger_note(kind, linger_enabled, linger_hint)
        return code
    # logs
    if isinstance(p.logs, Path):
        if not p.logs.exists():
            print(f"no log yet: {p.logs} does not exist")
            return 0
        return run_command(["tail", "-n", "200", *(["-f"] if args.follow else []), str(p.logs)])
    return run_command([*p.logs, *(["-f"] if args.follow else [])])


def _quiet(command: list[str]) -> None:
    import subprocess

    try:
        subprocess.run(command, capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass


def _linger_note(kind: str, linger_enabled: Any, linger_hint: Any) -> None:
    if kind != "systemd":
        return
    import getpass

    user = getpass.getuser()
    if linger_enabled(user) is False:
        print(f"note: {linger_hint(user)}")


if __name__ == "__main__":
    raise SystemExit(main())
