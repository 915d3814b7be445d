"""Listening ports: a one-line error naming the port and its setting when one is taken.

``explorank serve`` checks its ports before it loads (or builds) a bundle, so a port
conflict is reported at once; :class:`~explorank.engine.server.Server` turns a failed bind
into the same error, should the port be taken in between.
"""

from __future__ import annotations

import errno
import socket

from explorank.errors import ConfigError

__all__ = [
    "GRPC_PORT_SETTING",
    "METRICS_PORT_SETTING",
    "bind_error",
    "check_port",
    "free_port",
    "port_error",
]

GRPC_PORT_SETTING = "server.port / --port"
METRICS_PORT_SETTING = "server.metrics_port / --metrics-port"


def bind_error(host: str, port: int) -> OSError | None:
    """Try to bind ``host:port`` the way a listening server does (``SO_REUSEADDR``, like
    gRPC); return the error, or None when it can be bound (or cannot be checked here:
    port 0, or a host name that does not resolve, which the server itself reports)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                    continue  # no IPv6 on this machine; the IPv4 address decides
                return exc
    return None


def port_error(host: str, port: int, setting: str, exc: OSError) -> ConfigError:
    """The error for ``host:port``, which failed to bind with ``exc``."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} is already in use ({setting}); "
            "choose another port or stop the other process"
        )
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EACCES:
        reason += " (ports below 1024 need privileges)"
    return ConfigError(f"cannot listen on {host}:{port} ({setting}): {reason}")


def check_port(host: str, port: int, setting: str) -> None:
    """Raise :class:`ConfigError` naming ``setting`` when ``host:port`` cannot be bound."""
    exc = bind_error(host, port)
    if exc is not None:
        raise port_error(host, port, setting, exc)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
