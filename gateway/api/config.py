"""The few settings the HTTP API needs, built from ``[server]`` by :func:`api_config_from_settings`
(or by hand in tests); its defaults are those the sections declare."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.config import (
    API_KEYS_ENV_VAR,
    LoggingSettings,
    ServerSettings,
    Settings,
    normalize_host,
    normalize_origin,
    open_bind_problem,
)
from gateway.config import is_loopback_host as is_loopback
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import StreamMode
from gateway.errors import ConfigError

OnDisconnect = Literal["interrupt", "finish"]

#: The declared defaults of ``[server]`` and ``[logging]``: ApiConfig's defaults are theirs.
_SERVER = ServerSettings.model_construct()
_LOGGING = LoggingSettings.model_construct()
_STREAM_MODE = StreamMode(_SERVER.stream_mode)
_TOOL_MODE = ToolMode(_SERVER.tool_mode)


@dataclass(frozen=True)
class ApiConfig:
    """What :func:`gateway.api.create_app` needs to know.

    * ``api_keys``: accepted gateway keys (``Authorization: Bearer <key>``); empty = no auth.
    * ``allowed_origins``: web origins (``scheme://host[:port]``) besides the gateway's own
      whose browser requests are served, with CORS headers; any other ``Origin`` gets 403.
    * ``allowed_hosts``: ``Host`` names besides loopback that requests may be addressed to;
      any other gets 421 (see :mod:`gateway.api.guard`).
    * ``max_body_bytes``: the largest request body accepted (413 above it).
    * ``max_concurrent_requests``: chat completions served at once (503 ``server_busy`` above).
    * ``keepalive_seconds``: an empty delta is streamed after this long without output.
    * ``stream_mode``: the default :class:`StreamMode` when a request names none.
    * ``on_disconnect``: ``interrupt`` the turn when the HTTP client goes away, or let it
      ``finish`` (the conversation then continues from the full answer).
    * ``tool_mode``: the default for a client's ``tools`` (``agent`` ignores them, ``client``
      and ``hybrid`` offer them to Claude as real tools).
    * ``access_log``: one INFO line per HTTP request (``logging.access_log``; see
      :mod:`gateway.api.access`).
    """

    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = _SERVER.max_body_bytes
    max_concurrent_requests: int = _SERVER.max_concurrent_requests
    keepalive_seconds: float = _SERVER.keepalive_seconds
    stream_mode: StreamMode = _STREAM_MODE
    on_disconnect: OnDisconnect = _SERVER.on_disconnect
    tool_mode: ToolMode = _TOOL_MODE
    access_log: bool = _LOGGING.access_log

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ConfigError("server.max_body_mb: must be positive")
        if self.max_concurrent_requests <= 0:
            raise ConfigError("server.max_concurrent_requests: must be at least 1")
        if self.keepalive_seconds <= 0:
            raise ConfigError("server.keepalive_seconds: must be positive")
        if self.on_disconnect not in ("interrupt", "finish"):
            raise ConfigError(
                f"server.on_disconnect: {self.on_disconnect!r} is not 'interrupt' or 'finish'"
            )
        if any(not k.strip() for k in self.api_keys):
            raise ConfigError(f"{API_KEYS_ENV_VAR}: a key is empty")
        object.__setattr__(
            self, "allowed_origins", _normalized("allowed_origins", self.allowed_origins,
                                                 normalize_origin)
        )
        object.__setattr__(
            self, "allowed_hosts", _normalized("allowed_hosts", self.allowed_hosts,
                                               normalize_host)
        )


def _normalized(
    name: str, values: tuple[str, ...], normalize: Callable[[str], str]
) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            item = normalize(value)
        except ValueError as exc:
            raise ConfigError(f"server.{name}: {value!r} {exc}") from None
        if item not in out:
            out.append(item)
    return tuple(out)


def check_bind(host: str, config: ApiConfig) -> None:
    """Refuse to serve a non-loopback address without gateway API keys: the rule of
    :func:`gateway.config.open_bind_problem`, which ``[server]`` already checks when the
    settings load; this is the same check for a config built by hand."""
    problem = open_bind_problem(host, bool(config.api_keys))
    if problem is not None:
        raise ConfigError(f"server.host: {problem}")


def api_config_from_settings(settings: Settings) -> ApiConfig:
    """The :class:`ApiConfig` of ``settings.server`` (and ``logging.access_log``), the bind
    address checked."""
    server = settings.server
    config = ApiConfig(
        api_keys=tuple(server.api_keys),
        allowed_origins=tuple(server.allowed_origins),
        allowed_hosts=(*server.allowed_hosts, *_bind_name(server.host)),
        max_body_bytes=server.max_body_bytes,
        max_concurrent_requests=server.max_concurrent_requests,
        keepalive_seconds=server.keepalive_seconds,
        stream_mode=StreamMode(server.stream_mode),
        on_disconnect=server.on_disconnect,
        tool_mode=ToolMode(server.tool_mode),
        access_log=settings.logging.access_log,
    )
    check_bind(server.host, config)
    return config


def _bind_name(host: str) -> tuple[str, ...]:
    """The address the server is bound to, as a ``Host`` clients may use: a specific address
    (``192.168.1.5``) or name, not a wildcard (``0.0.0.0``, ``::``) nor loopback (always
    allowed). A page cannot make a browser send it as the ``Host`` of an attacker's origin,
    so accepting it opens no DNS-rebinding hole."""
    try:
        name = normalize_host(host)
    except ValueError:
        return ()
    if is_loopback(name):
        return ()
    try:
        if ipaddress.ip_address(name).is_unspecified:
            return ()
    except ValueError:
        pass
    return (name,)
