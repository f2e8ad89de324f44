"""Loopback addresses and free ports for the embedded stack."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets are held open until every port is chosen, so the kernel cannot hand
    out the same ephemeral port twice within one call. The ports are released before
    returning (the child processes must bind them), so a race with another program is
    possible; the launcher notices a child that dies at start and retries.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = LOOPBACK) -> int:
    """One free port on ``host`` (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def host_port(port: int, host: str = LOOPBACK) -> str:
    """``host:port`` as used by Kafka bootstrap lists and gRPC targets."""
    return f"{host}:{port}"


def split_host_port(addr: str) -> tuple[str, int]:
    """Inverse of :func:`host_port`; accepts ``[v6]:port`` too."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def redis_url(port: int, host: str = LOOPBACK, db: int = 0, password: str = "") -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (for what is printed)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
