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

A leaf package (it imports nothing of the gateway but :mod:`gateway.errors`, and the
scheduler's own job checks when a ``[[schedules]]`` entry is validated):

* :mod:`~gateway.config.paths`: environment variable names, file locations, data directory;
* :mod:`~gateway.config.hosts`: host names, origins, loopback, and the bind rule;
* :mod:`~gateway.config.sections`: the ``[section]`` models, every setting declared once;
* :mod:`~gateway.config.settings`: :class:`Settings` and its sources;
* :mod:`~gateway.config.loading`: :func:`load_settings` and the files it reads;
* :mod:`~gateway.config.report`: the one-line-per-problem error report.

Logging set-up is :mod:`gateway.logs`.
"""

from gateway.config.hosts import (
    DEFAULT_PORTS,
    is_loopback_host,
    normalize_host,
    normalize_origin,
    open_bind_problem,
    split_host_port,
)
from gateway.config.loading import load_settings, read_env_file, resolve_config_path
from gateway.config.paths import (
    API_KEYS_ENV_VAR,
    APP_NAME,
    CONFIG_PATH_ENV_VAR,
    DISCORD_TOKEN_ENV_VAR,
    ENV_FILE_NAME,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    SECRET_ENV_VARS,
    TELEGRAM_NOTIFY_ENV_VAR,
    TELEGRAM_TOKEN_ENV_VAR,
    config_dir,
    default_config_path,
    default_data_dir,
    default_env_file,
    is_secret_env_var,
    secret_env_var_names,
)
from gateway.config.sections import (
    FASTER_WHISPER_MODELS,
    MAX_JITTER_SECONDS,
    OPENAI_WHISPER_MODELS,
    ClaudeSettings,
    DiscordSettings,
    LoggingSettings,
    ModelsSettings,
    NotifySettings,
    ProjectSettings,
    SchedulerSettings,
    ScheduleSettings,
    ServerSettings,
    StorageSettings,
    TelegramSettings,
    UsageSettings,
    VoiceSettings,
)
from gateway.config.settings import Settings
from gateway.errors import ConfigError
from gateway.keys import DEFAULT_PROJECT

__all__ = [
    "API_KEYS_ENV_VAR",
    "APP_NAME",
    "CONFIG_PATH_ENV_VAR",
    "DEFAULT_PORTS",
    "DEFAULT_PROJECT",
    "DISCORD_TOKEN_ENV_VAR",
    "ENV_FILE_NAME",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "FASTER_WHISPER_MODELS",
    "MAX_JITTER_SECONDS",
    "OPENAI_WHISPER_MODELS",
    "SECRET_ENV_VARS",
    "TELEGRAM_NOTIFY_ENV_VAR",
    "TELEGRAM_TOKEN_ENV_VAR",
    "ClaudeSettings",
    "ConfigError",
    "DiscordSettings",
    "LoggingSettings",
    "ModelsSettings",
    "NotifySettings",
    "ProjectSettings",
    "ScheduleSettings",
    "SchedulerSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "TelegramSettings",
    "UsageSettings",
    "VoiceSettings",
    "config_dir",
    "default_config_path",
    "default_data_dir",
    "default_env_file",
    "is_loopback_host",
    "is_secret_env_var",
    "load_settings",
    "normalize_host",
    "normalize_origin",
    "open_bind_problem",
    "read_env_file",
    "resolve_config_path",
    "secret_env_var_names",
    "split_host_port",
]
