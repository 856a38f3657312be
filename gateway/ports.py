"""Is the gateway's port free, and if not, which program holds it?

The npm ``claude-max-api-proxy`` (what many users migrate from) listens on the same port, 3456,
and installs a command of the same name, ``claude-max-api``: a clash is named, not guessed at.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

NODE_PROXY = "claude-max-api-proxy"


@dataclass(frozen=True)
class PortOwner:
    pid: int
    name: str
    cmdline: str

    def describe(self) -> str:
        """"the npm claude-max-api-proxy (pid 12, node .../server.js)" and the like."""
        if NODE_PROXY in self.cmdline:
            what = f"the npm {NODE_PROXY}"
        elif "gateway.cli" in self.cmdline or (
            "claude-max-api" in self.cmdline and "python" in self.cmdline
        ):
            what = "another Claude Max Gateway"
        else:
            what = self.name or "another program"
        command = " ".join(self.cmdline.split())  # one line, whatever the arguments hold
        command = command if len(command) <= 120 else command[:117] + "..."
        return f"{what} (pid {self.pid}: {command})" if command else f"{what} (pid {self.pid})"


def port_problem(host: str, port: int) -> str | None:
    """None when ``host:port`` can be listened on, else why not (an OS message)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # as aiohttp binds: SO_REUSEADDR, so a port in TIME_WAIT counts as free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the address is already in use"
                return exc.strerror or str(exc)
    return None


def port_owner(port: int) -> PortOwner | None:
    """The process listening on TCP ``port``, when this user may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        connections = []
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                continue
            try:
                proc = psutil.Process(conn.pid)
                return PortOwner(conn.pid, proc.name(), " ".join(proc.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return PortOwner(conn.pid, "", "")
    return None


def busy_port_message(host: str, port: int, problem: str) -> str:
    """One line: what holds the port and what to do about it."""
    owner = port_owner(port)
    held = f": it is held by {owner.describe()}" if owner is not None else f": {problem}"
    return (
        f"cannot listen on {host}:{port}{held}. Stop that program, or give the gateway another"
        f" port (server.port in config.toml, or CMG_SERVER__PORT={port + 1})"
    )
