"""The ``claude-max-api`` command.

    claude-max-api [--config FILE]                  start the gateway (same as `run`)
    claude-max-api doctor [--json]                  what is found, enabled and in effect
    claude-max-api service install [--dry-run]      start at login (launchd / systemd --user)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
                         help="print the file instead of writing it")
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
    from gateway.config import load_settings, setup_logging

    settings = load_settings(config)
    setup_logging(settings)
    return settings


def _run(config: str | None) -> int:
    from gateway.app import serve

    settings = _load(config)
    asyncio.run(serve(settings))
    return 0


async def _doctor(config: str | None, *, as_json: bool) -> int:
    from gateway.app import engine_config
    from gateway.config import load_settings
    from gateway.engine.process import cli_auth_status, cli_environment, cli_version, find_cli

    report: dict[str, Any] = {"gateway": __version__, "problems": []}
    problems: list[str] = report["problems"]
    try:
        settings = load_settings(config)
    except GatewayError as exc:
        problems.append(exc.message)
        return _print_doctor(report, as_json)
    report["config_file"] = str(settings.config_file) if settings.config_file else None
    report["config"] = settings.describe()
    econf = engine_config(settings)
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
        problems.append(f"storage.data_dir {data_dir} cannot be created or written")
    report["workspace"] = {"path": str(econf.workspace), "writable": _writable(econf.workspace)}
    if not report["workspace"]["writable"]:
        problems.append(f"claude.workspace {econf.workspace} cannot be created or written")
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
        voice = report["voice"]
        missing = voice.get("problems") or []
        print(f"  voice       : {'ready' if not missing else 'not ready'}")
        for line in missing:
            print(f"                {line}")
        print("  effective configuration:")
        for line in json.dumps(report["config"], indent=2, default=str).splitlines():
            print(f"    {line}")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}")
    print("  all good" if ok else f"  {len(report['problems'])} problem(s)")
    return 0 if ok else 1


def _service(args: argparse.Namespace) -> int:
    from gateway.service import detect_kind, install_service, render_service

    exe = shutil.which("claude-max-api") or str(Path(sys.argv[0]).resolve())
    config = args.config or os.environ.get("CLAUDE_MAX_GATEWAY_CONFIG")
    run_args = ["--config", str(Path(config).expanduser().resolve())] if config else []
    home = Path.home()
    if args.dry_run:
        kind = args.kind or detect_kind()
        path, contents, command = render_service(kind, exe=exe, args=run_args, home=home)
        print(f"# would write {path}\n{contents}\n# then run: {command}")
        return 0
    for path, command in install_service(args.kind, exe=exe, args=run_args, home=home,
                                         dry_run=False):
        print(f"wrote {path}\nnow run: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
