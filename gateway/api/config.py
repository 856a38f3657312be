"""The few settings the HTTP API needs, independent of the shape of ``gateway.config``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import API_KEYS_ENV_VAR, normalize_host, normalize_origin
from gateway.config import is_loopback_host as is_loopback
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import StreamMode
from gateway.errors import ConfigError

OnDisconnect = Literal["interrupt", "finish"]

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrent_requests: int = 16
    keepalive_seconds: float = 10.0
    stream_mode: StreamMode = StreamMode.SMART
    on_disconnect: OnDisconnect = "interrupt"
    tool_mode: ToolMode = ToolMode.AGENT
    access_log: bool = True

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
    """Refuse to serve a non-loopback address without gateway API keys."""
    if not is_loopback(host) and not config.api_keys:
        raise ConfigError(
            f"server.host = {host!r} makes the API reachable from other machines, and no "
            f"{API_KEYS_ENV_VAR} are set, so anyone who can reach it could use your Claude "
            f"subscription. Set {API_KEYS_ENV_VAR}=<key>[,<key>...] in the environment (clients "
            "then send 'Authorization: Bearer <key>'), or bind 127.0.0.1."
        )


def api_config_from_settings(settings: Any) -> ApiConfig:
    """Build an :class:`ApiConfig` from ``settings.server`` and check the bind address.

    Missing attributes fall back to the defaults, so this works with any settings object
    that has a ``server`` section with the documented names.
    """
    server = getattr(settings, "server", settings)
    raw_keys = getattr(server, "api_keys", None) or ()
    keys = tuple(
        k.get_secret_value() if hasattr(k, "get_secret_value") else str(k) for k in raw_keys
    )
    max_body_mb = getattr(server, "max_body_mb", None)
    max_body = (
        int(float(max_body_mb) * 1024 * 1024) if max_body_mb is not None else DEFAULT_MAX_BODY_BYTES
    )
    mode = getattr(server, "stream_mode", None) or StreamMode.SMART
    try:
        stream_mode = StreamMode(str(getattr(mode, "value", mode)))
    except ValueError:
        raise ConfigError(
            f"server.stream_mode: {mode!r} is not one of smart, final, verbose"
        ) from None
    on_disconnect = str(getattr(server, "on_disconnect", None) or "interrupt")
    host = getattr(server, "host", None)
    allowed_hosts = tuple(str(h) for h in getattr(server, "allowed_hosts", None) or ())
    if host is not None:
        allowed_hosts += _bind_name(str(host))
    config = ApiConfig(
        api_keys=keys,
        allowed_origins=tuple(str(o) for o in getattr(server, "allowed_origins", None) or ()),
        allowed_hosts=allowed_hosts,
        max_body_bytes=max_body,
        max_concurrent_requests=int(getattr(server, "max_concurrent_requests", None) or 16),
        keepalive_seconds=float(getattr(server, "keepalive_seconds", None) or 10.0),
        stream_mode=stream_mode,
        on_disconnect="finish" if on_disconnect == "finish" else "interrupt",
        tool_mode=ToolMode(str(getattr(server, "tool_mode", None) or "agent")),
        access_log=bool(getattr(getattr(settings, "logging", None), "access_log", True)),
    )
    if on_disconnect not in ("interrupt", "finish"):
        raise ConfigError(f"server.on_disconnect: {on_disconnect!r} is not 'interrupt' or 'finish'")
    if host is not None:
        check_bind(str(host), config)
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
