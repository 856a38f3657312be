"""The gateway's names in the environment and on disk: variables, the config and env
files' locations, the data directory, and the inputs of the load in progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

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



@dataclass(frozen=True)
class _SourceInputs:
    """What one :func:`load_settings` call reads: a TOML file (or none) and an environment."""

    toml_file: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


#: The inputs of the :func:`load_settings` call in progress. pydantic-settings builds its
#: sources in a classmethod, so the call hands them over here for exactly that call.
_LOAD_INPUTS: ContextVar[_SourceInputs | None] = ContextVar("_LOAD_INPUTS", default=None)
