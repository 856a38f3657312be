"""gateway.config: config.toml + environment → Settings, and every way that can go wrong."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import (
    SECRET_ENV_VARS,
    Settings,
    default_data_dir,
    load_settings,
    secret_env_var_names,
)
from gateway.errors import ConfigError, ErrorKind
from gateway.logs import RedactSecrets, setup_logging

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """A clean environment: only HOME, pointing at an empty directory."""
    return {"HOME": str(home)}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env)
    assert caught.value.kind is ErrorKind.CONFIG
    return str(caught.value)


# --------------------------------------------------------------------------- loading


def test_defaults_without_a_file(env: dict[str, str], home: Path) -> None:
    s = load_settings(env=env)
    assert s.config_file is None
    assert (s.server.host, s.server.port) == ("127.0.0.1", 3456)
    assert s.server.max_body_mb == 20 and s.server.max_body_bytes == 20 * 1024 * 1024
    assert s.server.max_concurrent_requests == 16
    assert s.server.keepalive_seconds == 10.0
    assert (s.server.stream_mode, s.server.on_disconnect) == ("smart", "interrupt")
    assert s.server.api_keys == []
    assert s.claude.cli_path == ""
    assert s.claude.workspace == home / "claude-workspace"
    assert s.claude.permission_mode == "bypassPermissions"
    assert (s.claude.default_model, s.claude.append_system_prompt) == ("", "")
    assert (s.claude.activity_timeout, s.claude.bash_max_timeout) == (600.0, 600.0)
    assert s.claude.bash_max_timeout_ms == 600_000
    assert (s.claude.max_live_sessions, s.claude.idle_timeout) == (4, 1800.0)
    assert (s.claude.max_parallel_turns, s.claude.max_queued_per_conversation) == (4, 8)
    assert s.claude.env == {} and s.models.aliases == {}
    assert s.storage.data_dir == default_data_dir(env)
    assert s.storage.db_path == s.storage.data_dir / "gateway.sqlite3"
    assert (s.logging.level, s.logging.file, s.logging.file_path) == ("INFO", "", None)
    assert s.notify.telegram_chat_id is None
    assert not s.telegram.enabled and not s.discord.enabled
    assert s.secrets() == []


def test_platform_data_dir(home: Path, tmp_path: Path) -> None:
    linux = {"HOME": str(home)}
    assert default_data_dir(linux, "linux") == home / ".local/share/claude-max-gateway"
    xdg = {"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert default_data_dir(xdg, "linux") == tmp_path / "xdg/claude-max-gateway"
    mac = default_data_dir(linux, "darwin")
    assert mac == home / "Library/Application Support/claude-max-gateway"


def test_values_from_toml(tmp_path: Path, env: dict[str, str], home: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        """
        [server]
        port = 4000
        stream_mode = "final"
        [claude]
        workspace = "~/work"
        default_model = "sonnet"
        activity_timeout = 900
        env = { MAX_THINKING_TOKENS = "8000" }
        [models.aliases]
        fast = "haiku"
        [storage]
        data_dir = "~/state"
        [logging]
        level = "debug"
        file = "~/logs/gateway.log"
        [notify]
        telegram_chat_id = -100123
        """,
    )
    s = load_settings(path, env=env)
    assert s.config_file == path
    assert s.server.port == 4000 and s.server.stream_mode == "final"
    assert s.claude.workspace == home / "work"
    assert s.claude.default_model == "sonnet"
    assert s.claude.activity_timeout == 900.0
    assert s.claude.env == {"MAX_THINKING_TOKENS": "8000"}
    assert s.models.aliases == {"fast": "haiku"}
    assert s.storage.data_dir == home / "state"
    assert s.logging.level == "DEBUG"
    assert s.logging.file_path == home / "logs" / "gateway.log"
    assert s.notify.telegram_chat_id == -100123


def test_env_overrides_toml(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "c.toml", '[server]\nport = 4000\nhost = "localhost"\n')
    s = load_settings(path, env={**env, "CMG_SERVER__PORT": "5000"})
    assert s.server.port == 5000
    assert s.server.host == "localhost"  # the rest of the section still comes from the file


def test_nested_env_override(env: dict[str, str]) -> None:
    s = load_settings(
        env={
            **env,
            "CMG_CLAUDE__DEFAULT_MODEL": "sonnet",
            "CMG_CLAUDE__MAX_LIVE_SESSIONS": "2",
            "CMG_CLAUDE__ENV": '{"MAX_THINKING_TOKENS": "8000"}',
            "CMG_MODELS__ALIASES": '{"fast": "haiku"}',
            "CMG_LOGGING__LEVEL": "warning",
        }
    )
    assert s.claude.default_model == "sonnet"
    assert s.claude.max_live_sessions == 2
    assert s.claude.env == {"MAX_THINKING_TOKENS": "8000"}  # the JSON keeps the case
    assert s.models.aliases == {"fast": "haiku"}
    assert s.logging.level == "WARNING"


def test_config_path_resolution(tmp_path: Path, env: dict[str, str], home: Path) -> None:
    default = home / ".config" / "claude-max-gateway" / "config.toml"
    default.parent.mkdir(parents=True)
    write(default, "[server]\nport = 1111\n")
    from_env = write(tmp_path / "env.toml", "[server]\nport = 2222\n")
    explicit = write(tmp_path / "flag.toml", "[server]\nport = 3333\n")

    assert load_settings(env=env).server.port == 1111
    with_var = {**env, "CLAUDE_MAX_GATEWAY_CONFIG": str(from_env)}
    assert load_settings(env=with_var).server.port == 2222
    assert load_settings(explicit, env=with_var).server.port == 3333
    assert load_settings(str(explicit), env=with_var).config_file == explicit


def test_explicit_missing_path_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(missing, env)
    assert str(missing) in message and "not found" in message

    message = config_error(None, {**env, "CLAUDE_MAX_GATEWAY_CONFIG": str(missing)})
    assert str(missing) in message and "CLAUDE_MAX_GATEWAY_CONFIG" in message


def test_example_config_loads_and_is_all_defaults(env: dict[str, str]) -> None:
    example = load_settings(REPO / "config.example.toml", env=env)
    defaults = load_settings(env=env)
    assert {**example.describe(), "config_file": None} == defaults.describe()


def test_settings_are_frozen(env: dict[str, str]) -> None:
    s = load_settings(env=env)
    with pytest.raises(ValidationError):
        s.server.port = 1


# --------------------------------------------------------------------------- errors


def test_invalid_toml_names_file_line_and_column(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", '[server]\nport = 3456\nhost = "127.0.0.1\n')
    message = config_error(path, env)
    assert message.startswith(f"{path}: line 3, column ")
    assert "invalid TOML" in message


def test_port_out_of_range(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", "[server]\nport = 70000\n")
    assert config_error(path, env) == (
        f"{path}: server.port: expected an integer from 1 to 65535, got 70000"
    )


def test_wrong_types(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "config.toml",
        '[server]\nport = true\nstream_mode = "loud"\n[claude]\nenv = { A = 1 }\n',
    )
    lines = config_error(path, env).splitlines()
    assert f"{path}: server.port: expected an integer from 1 to 65535, got true" in lines
    assert (
        f'{path}: server.stream_mode: expected one of "smart", "final", "verbose", got "loud"'
        in lines
    )
    assert f"{path}: claude.env.A: expected a string, got 1" in lines
    assert len(lines) == 3  # one line per problem


def test_wrong_type_from_env(env: dict[str, str]) -> None:
    message = config_error(None, {**env, "CMG_SERVER__MAX_CONCURRENT_REQUESTS": "many"})
    assert message == (
        "CMG_SERVER__MAX_CONCURRENT_REQUESTS: server.max_concurrent_requests:"
        ' expected an integer of at least 1, got "many"'
    )


def test_unknown_key_in_toml_is_named(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", "[server]\nprot = 4000\n[sever]\nport = 1\n")
    lines = config_error(path, env).splitlines()
    assert f"{path}: server.prot: unknown key (did you mean server.port?)" in lines
    assert f"{path}: sever: unknown key (did you mean server?)" in lines


def test_unknown_key_in_env_is_named(env: dict[str, str]) -> None:
    message = config_error(
        None,
        {**env, "CMG_SERVRE__PORT": "1", "CMG_SERVER__PROT": "1", "CMG_SERVER_PORT": "1"},
    )
    lines = message.splitlines()
    assert "CMG_SERVRE__PORT: servre.port: unknown key (did you mean CMG_SERVER__PORT?)" in lines
    assert "CMG_SERVER__PROT: server.prot: unknown key (did you mean CMG_SERVER__PORT?)" in lines
    assert "CMG_SERVER_PORT: server_port: unknown key (did you mean CMG_SERVER__PORT?)" in lines


def test_env_table_keys_one_by_one_are_refused(env: dict[str, str]) -> None:
    # CMG_CLAUDE__ENV__FOO would arrive lowercased as "foo": refused with the JSON form instead.
    message = config_error(None, {**env, "CMG_CLAUDE__ENV__FOO": "1"})
    assert message.startswith("CMG_CLAUDE__ENV__FOO: claude.env.foo: ")
    assert "CMG_CLAUDE__ENV to a JSON object" in message


def test_activity_timeout_below_bash_timeout(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", "[claude]\nactivity_timeout = 300\n")
    message = config_error(path, env)
    assert message.startswith(f"{path}: claude.activity_timeout: ")
    assert "bash_max_timeout (600 s)" in message
    assert "silent Bash command may legitimately run that long" in message


def test_non_loopback_without_key_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", '[server]\nhost = "0.0.0.0"\n')
    message = config_error(path, env)
    assert message.startswith(f"{path}: server.host: ")
    assert "GATEWAY_API_KEYS" in message and '"127.0.0.1"' in message

    s = load_settings(path, env={**env, "GATEWAY_API_KEYS": " key-one, key-two ,"})
    assert s.server.host == "0.0.0.0"
    assert s.server.api_keys == ["key-one", "key-two"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key(host: str, env: dict[str, str]) -> None:
    assert load_settings(env={**env, "CMG_SERVER__HOST": host}).server.host == host


def test_secret_in_toml_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "config.toml",
        '[server]\napi_keys = "k"\n[telegram]\ntoken = "123:abc"\n[discord]\ntoken = "d"\n',
    )
    lines = config_error(path, env).splitlines()
    assert len(lines) == 3
    assert any(
        line.startswith(f"{path}: telegram.token: ") and "TELEGRAM_BOT_TOKEN" in line
        for line in lines
    )
    assert any(
        line.startswith(f"{path}: server.api_keys: ") and "GATEWAY_API_KEYS" in line
        for line in lines
    )
    assert any(
        line.startswith(f"{path}: discord.token: ") and "DISCORD_BOT_TOKEN" in line
        for line in lines
    )
    assert "123:abc" not in "\n".join(lines)


def test_secret_in_cmg_variable_is_refused(env: dict[str, str]) -> None:
    message = config_error(None, {**env, "CMG_TELEGRAM__TOKEN": "123:abc"})
    assert message.startswith("CMG_TELEGRAM__TOKEN: telegram.token: ")
    assert "TELEGRAM_BOT_TOKEN" in message and "123:abc" not in message


def test_all_problems_reported_at_once(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "config.toml", '[server]\nport = 0\n[logging]\nlevel = "LOUD"\n')
    lines = config_error(path, {**env, "CMG_CLAUDE__MAX_PARALLEL_TURNS": "0"}).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "server.port",
        "claude.max_parallel_turns",
        "logging.level",
    ]
    assert lines[1].startswith("CMG_CLAUDE__MAX_PARALLEL_TURNS: ")


# --------------------------------------------------------------------------- secrets


SECRET_ENV = {
    "GATEWAY_API_KEYS": "sk-gw-aaaa,sk-gw-bbbb",
    "TELEGRAM_BOT_TOKEN": "123456:tg-secret-token",
    "DISCORD_BOT_TOKEN": "discord-secret-token",
    "TELEGRAM_NOTIFY_ID": "424242",
}


def test_secrets_come_from_named_env_vars(env: dict[str, str]) -> None:
    s = load_settings(env={**env, **SECRET_ENV})
    assert s.server.api_keys == ["sk-gw-aaaa", "sk-gw-bbbb"]
    assert s.telegram.token is not None and s.telegram.enabled
    assert s.discord.token is not None and s.discord.enabled
    assert s.notify.telegram_chat_id == 424242
    assert sorted(s.secrets()) == sorted(
        ["sk-gw-aaaa", "sk-gw-bbbb", "123456:tg-secret-token", "discord-secret-token"]
    )
    assert "tg-secret" not in repr(s)


def test_secret_env_var_names() -> None:
    assert {"GATEWAY_API_KEYS", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"} == SECRET_ENV_VARS
    names = secret_env_var_names({"CMG_SERVER__PORT": "1", "PATH": "/bin", "HOME": "/h"})
    assert names == SECRET_ENV_VARS | {"CMG_SERVER__PORT"}
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in names


def test_describe_hides_secrets(env: dict[str, str]) -> None:
    described = load_settings(env={**env, **SECRET_ENV}).describe()
    text = json.dumps(described)  # JSON-able
    for secret in ("sk-gw-aaaa", "sk-gw-bbbb", "tg-secret-token", "discord-secret-token"):
        assert secret not in text
    assert described["server"]["api_keys"] == "set"
    assert described["telegram"]["token"] == "set"
    assert described["discord"]["token"] == "set"
    assert described["server"]["port"] == 3456
    assert described["storage"]["db_path"].endswith("gateway.sqlite3")

    plain = load_settings(env=env).describe()
    assert plain["server"]["api_keys"] == "not set"
    assert plain["telegram"]["token"] == "not set"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_logging_redacts_secrets(
    tmp_path: Path, env: dict[str, str], restore_root_logger: None
) -> None:
    log_file = tmp_path / "logs" / "gateway.log"
    s = load_settings(env={**env, **SECRET_ENV, "CMG_LOGGING__FILE": str(log_file)})
    setup_logging(s)
    setup_logging(s)  # idempotent: still one stderr and one file handler
    ours = [
        h for h in logging.getLogger().handlers if (h.get_name() or "").startswith("claude-max")
    ]
    assert len(ours) == 2

    log = logging.getLogger("gateway.test")
    log.info("bot token is %s, key %s", "123456:tg-secret-token", "sk-gw-bbbb")
    try:
        raise RuntimeError("discord-secret-token rejected")
    except RuntimeError:
        log.exception("login failed")
    for handler in ours:
        handler.flush()

    written = log_file.read_text(encoding="utf-8")
    assert "bot token is ***, key ***" in written
    assert "RuntimeError: *** rejected" in written
    for secret in ("tg-secret-token", "sk-gw-bbbb", "discord-secret-token"):
        assert secret not in written
    assert " INFO " in written and "gateway.test" in written


def test_redact_filter_on_a_record() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "auth %s then %s", ("sk-long-secret", "sk-long"), None
    )
    assert RedactSecrets(["sk-long", "sk-long-secret"]).filter(record)
    assert record.getMessage() == "auth *** then ***"


def test_direct_settings_construction() -> None:
    # Other code (and tests) may build Settings directly from keyword arguments.
    s = Settings(server={"port": 4321})  # type: ignore[arg-type]
    assert s.server.port == 4321


def test_env_table_must_be_json(env: dict[str, str]) -> None:
    message = config_error(None, {**env, "CMG_CLAUDE__ENV": "FOO=1"})
    assert message == 'CMG_CLAUDE__ENV: claude.env: expected a JSON object, got "FOO=1"'
    message = config_error(None, {**env, "CMG_CLAUDE__ENV": '{"A": 1}'})
    assert message == "CMG_CLAUDE__ENV: claude.env.A: expected a string, got 1"


def test_chat_allow_lists_from_env_and_toml(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load_settings(None, env={
        **env,
        "CMG_TELEGRAM__ALLOWED_CHATS": "-1001234, 77",
        "CMG_DISCORD__ALLOWED_USERS": '["123456789012345678"]',
        "CMG_DISCORD__ALLOWED_CHANNELS": "222222222222222222 333333333333333333",
    })
    assert settings.telegram.allowed_chats == [-1001234, 77]  # groups have negative ids
    assert settings.discord.allowed_users == [123456789012345678]
    assert settings.discord.allowed_channels == [222222222222222222, 333333333333333333]
    path = write(tmp_path / "config.toml",
                 '[discord]\nallowed_users = [-5]\nallowed_guilds = ["x1"]\n'
                 '[telegram]\nallowed_users = [true]\n')
    lines = config_error(path, env).splitlines()
    assert len(lines) == 3
    assert any(line.startswith(f"{path}: discord.allowed_users: expected a list of numeric"
                               " Discord ids") for line in lines)
    assert any("discord.allowed_guilds" in line and "Copy ID" in line for line in lines)
    assert any("telegram.allowed_users: expected a list of numeric Telegram ids" in line
               for line in lines)


def test_logging_file_rotates_by_size_and_keeps_backup_count(
    tmp_path: Path, env: dict[str, str], restore_root_logger: None
) -> None:
    log_file = tmp_path / "logs" / "gateway.log"
    s = load_settings(env={**env, "CMG_LOGGING__FILE": str(log_file),
                           "CMG_LOGGING__MAX_BYTES": "2000", "CMG_LOGGING__BACKUP_COUNT": "2"})
    assert (s.logging.max_bytes, s.logging.backup_count) == (2000, 2)
    setup_logging(s)
    log = logging.getLogger("gateway.test.rotation")
    for n in range(200):  # ~100 bytes a line: 20 kB, ten times the limit
        log.info("line %03d %s", n, "x" * 40)
    for handler in logging.getLogger().handlers:
        handler.flush()
    rotated = sorted(p.name for p in log_file.parent.iterdir())
    assert rotated == ["gateway.log", "gateway.log.1", "gateway.log.2"]  # older ones deleted
    for path in log_file.parent.iterdir():
        assert 0 < path.stat().st_size <= 2000
    assert "line 199" in log_file.read_text(encoding="utf-8")  # the newest is in the file
    assert "line 000" not in "".join(p.read_text() for p in log_file.parent.iterdir())


def test_logging_rotation_settings_are_checked(env: dict[str, str]) -> None:
    text = config_error(None, {**env, "CMG_LOGGING__MAX_BYTES": "-1"})
    assert "CMG_LOGGING__MAX_BYTES: logging.max_bytes" in text and "at least 0" in text


# --------------------------------------------------------------------------- env file, XDG


def test_the_env_file_is_read_and_the_real_environment_wins(
    env: dict[str, str], home: Path
) -> None:
    env_file = home / ".config" / "claude-max-gateway" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(
        "# secrets for the gateway\n"
        "export GATEWAY_API_KEYS='key-from-file'\n"
        'CMG_SERVER__PORT="4100"\n'
        "CMG_CLAUDE__DEFAULT_MODEL=haiku # a comment\n"
        "CLAUDE_CODE_OAUTH_TOKEN=oauth-from-file\n",
        encoding="utf-8",
    )
    s = load_settings(env={**env, "CMG_CLAUDE__DEFAULT_MODEL": "opus"})
    assert s.env_file == env_file
    assert s.server.api_keys == ["key-from-file"]
    assert s.server.port == 4100
    assert s.claude.default_model == "opus"  # the real environment over the file
    assert s.env_file_values()["CLAUDE_CODE_OAUTH_TOKEN"] == "oauth-from-file"
    assert "key-from-file" in s.secrets()  # redacted in logs like any secret


def test_a_bad_value_in_the_env_file_names_the_file(env: dict[str, str], home: Path) -> None:
    env_file = home / ".config" / "claude-max-gateway" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text("CMG_SERVER__PORT=70000\n", encoding="utf-8")
    text = config_error(None, env)
    assert f"{env_file}: CMG_SERVER__PORT: server.port: expected an integer from 1 to 65535" in (
        text
    ), text


def test_config_and_env_file_lookup_honour_xdg_config_home(
    env: dict[str, str], tmp_path: Path, home: Path
) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "claude-max-gateway").mkdir(parents=True)
    config = write(xdg / "claude-max-gateway" / "config.toml", "[server]\nport = 4200\n")
    write(xdg / "claude-max-gateway" / "env", "TELEGRAM_NOTIFY_ID=77\n")
    # the ~/.config copies are not read when XDG_CONFIG_HOME names another place
    (home / ".config" / "claude-max-gateway").mkdir(parents=True)
    write(home / ".config" / "claude-max-gateway" / "config.toml", "[server]\nport = 1\n")
    s = load_settings(env={**env, "XDG_CONFIG_HOME": str(xdg)})
    assert s.config_file == config and s.server.port == 4200
    assert s.env_file == xdg / "claude-max-gateway" / "env"
    assert s.notify.telegram_chat_id == 77
    # a relative XDG_CONFIG_HOME is ignored, as the XDG spec says
    assert load_settings(env={**env, "XDG_CONFIG_HOME": "rel"}).server.port == 1
