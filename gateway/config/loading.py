"""Reading the configuration: the file to read, the env file, TOML, and :func:`load_settings`."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)
from pydantic_settings import (
    DotEnvSettingsSource,
    SettingsError,
)

from gateway.config.paths import (
    _LOAD_INPUTS,
    CONFIG_PATH_ENV_VAR,
    _SourceInputs,
    default_config_path,
    default_env_file,
)
from gateway.config.report import _Report
from gateway.config.settings import Settings
from gateway.errors import ConfigError

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
