"""The whole :class:`Settings` and the sources pydantic-settings merges into it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.config.paths import (
    _LOAD_INPUTS,
    API_KEYS_ENV_VAR,
    DISCORD_TOKEN_ENV_VAR,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    TELEGRAM_NOTIFY_ENV_VAR,
    TELEGRAM_TOKEN_ENV_VAR,
    _SourceInputs,
    default_data_dir,
)
from gateway.config.sections import (
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
    _flatten,
    _unique_project_names,
    _unique_schedule_names,
)

# --------------------------------------------------------------------------- sources



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
    usage: UsageSettings = Field(
        default_factory=UsageSettings, description="Usage figures, limits and their warnings."
    )
    schedules: Annotated[
        tuple[ScheduleSettings, ...], AfterValidator(_unique_schedule_names)
    ] = Field(default=(), description="Scheduled prompts ([[schedules]] entries).")
    projects: Annotated[
        tuple[ProjectSettings, ...], AfterValidator(_unique_project_names)
    ] = Field(default=(), description="Projects besides claude.workspace ([[projects]]).")

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
