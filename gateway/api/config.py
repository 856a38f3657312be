"""The few settings the HTTP API needs, independent of the shape of ``gateway.config``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
            raise ConfigError("server.api_keys: a key is empty")


def check_bind(host: str, config: ApiConfig) -> None:
    """Refuse to serve a non-loopback address without gateway API keys."""
    if not is_loopback(host) and not config.api_keys:
        raise ConfigError(
            f"server.host = {host!r} makes the API reachable from other machines, and no "
            "server.api_keys are set, so anyone who can reach it could use your Claude "
            "subscription. Set server.api_keys (clients then send 'Authorization: Bearer "
            "<key>'), or bind 127.0.0.1."
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
    config = ApiConfig(
        api_keys=keys,
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
    host = getattr(server, "host", None)
    if host is not None:
        check_bind(str(host), config)
    return config
