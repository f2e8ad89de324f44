"""A service address, or a list of replicas' addresses, as a gRPC channel target.

LADDER_SUGGEST_ADDR (and the other service addresses) may name several replicas:
``"h1:p1,h2:p2"``. One channel then balances over them with gRPC's ``round_robin``
policy: it keeps a connection to every replica, sends each call to the next READY
one, and stops picking a replica the moment its connection breaks (a killed replica
is skipped from the next call on; the client's retry of an UNAVAILABLE call lands on
a live one, so a worker sees no error). A single name that resolves to several
addresses (a Kubernetes headless service: one A record per pod) is balanced the same
way, through gRPC's DNS resolver, which follows the pods as they come and go. A list
is resolved to IPv4 addresses once, when the channel is made (a client re-reads the
addresses while calls keep failing: ``LadderClient.refresh_addresses``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")
_SCHEMES = frozenset({"ipv4", "ipv6", "dns", "unix", "unix-abstract"})


def split(addr: str) -> list[str]:
    """The ``host:port`` entries of an address list (spaces and empty entries dropped)."""
    return [part.strip() for part in addr.split(",") if part.strip()]


def _ipv4(entry: str) -> str:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {entry!r} is not host:port")
    found = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    if not found:
        raise ValueError(f"address {entry!r}: no IPv4 address for {host!r}")
    return f"{found[0][4][0]}:{port}"


def target(addr: str) -> str:
    """The gRPC target of ``addr``: itself for one address, an ``ipv4:`` list for
    several (module docstring)."""
    if addr.partition(":")[0] in _SCHEMES:
        return addr  # already a gRPC target (ipv4:..., dns:///...)
    entries = split(addr)
    if len(entries) <= 1:
        return entries[0] if entries else addr
    return "ipv4:" + ",".join(_ipv4(entry) for entry in entries)


def channel_options(options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """``options`` plus the round_robin policy (harmless for a single replica)."""
    return [*options, ROUND_ROBIN]


def first(addr: str) -> str:
    """The first replica's address (for what talks to one process: health probes)."""
    entries = split(addr)
    return entries[0] if entries else addr
