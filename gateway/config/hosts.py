"""Host names, origins and loopback: what the server's bind address and its request guard
compare, and the one rule of where the API may listen (:func:`open_bind_problem`)."""

from __future__ import annotations

import ipaddress
import json
import re

from gateway.config.paths import API_KEYS_ENV_VAR


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``: addresses only this machine can reach."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def open_bind_problem(host: str, has_api_keys: bool) -> str | None:
    """Why the API may not listen on ``host``, or ``None`` when it may: anything but loopback
    can be reached from other machines, so it needs gateway API keys. The one place this rule
    is written (the ``[server]`` section checks it; :func:`gateway.api.check_bind` too)."""
    if has_api_keys or is_loopback_host(host):
        return None
    return (
        f"{json.dumps(host)} can be reached from other machines, but no API key is set, so"
        f" anyone who can reach it could use your Claude subscription: set {API_KEYS_ENV_VAR}="
        "<key>[,<key>...] in the environment (clients then send 'Authorization: Bearer <key>'),"
        ' or bind host = "127.0.0.1"'
    )


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
