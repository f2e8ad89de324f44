"""Tenants and their API tokens.

A tenant is a name (the owner recorded on each study it creates) with an ``admin`` flag
(an admin sees and touches every tenant's studies). A token is
``ladder_<token id>.<secret>``: the token id names it (so a tenant may hold several and
one can be revoked), the secret is 32 random bytes. Only the SHA-256 of the secret is
stored; a presented token is checked by comparing digests with ``hmac.compare_digest``
(constant time), so neither the store nor a timing side channel gives a usable token.

The store is Redis, under the stack's key root (``ladder:<topic prefix>:``):

| key                     | type | contents                                        |
|-------------------------|------|-------------------------------------------------|
| ``{root}tenants``       | hash | tenant name -> JSON {admin, created_ms, quotas} |
| ``{root}tokens``        | hash | token id -> JSON {tenant, sha256, created_ms}   |

Why Redis: it is already the shared hot state every gRPC service reaches (suggest and
evaluate keep their studies and trials there, lineage's ownership checks read the study
records there too), so one write by the admin CLI is seen by every service and replica
at once; a token check is one HGET, cached for ``LADDER_AUTH_CACHE_S`` seconds (default
2), which bounds how long a revoked token still works. The lineage store would serve only
one service, and files would not reach replicas on other hosts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from ladder import quotas
from ladder.errors import AlreadyExists, InvalidArgument, NotFound
from ladder.state.keys import Keys

TOKEN_PREFIX = "ladder_"
# Tenant names: what a study records as its owner and what the CLI takes.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """Who a call comes from: its tenant and whether that tenant is an admin."""

    tenant: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        """Whether a study owned by ``owner`` is this caller's to see and touch."""
        return self.admin or owner == self.tenant


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: bool
    created_ms: int
    token_ids: tuple[str, ...] = ()
    quota: quotas.Quota = quotas.Quota()


@dataclass(frozen=True)
class IssuedToken:
    tenant: str
    token_id: str
    token: str  # shown once: only its digest is stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token; None otherwise."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, dot, secret = token[len(TOKEN_PREFIX):].partition(".")
    if not dot or not token_id or not secret or len(token) > 256:
        return None
    return token_id, secret


def new_token() -> tuple[str, str, str]:
    """(token id, secret, token) freshly drawn from ``secrets``."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return token_id, secret, f"{TOKEN_PREFIX}{token_id}.{secret}"


def check_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise InvalidArgument(
            f"tenant name {name!r} must match {TENANT_NAME.pattern} "
            "(letters, digits, '.', '_', '-'; at most 64)"
        )
    return name


class TenantStore:
    """Tenants and token digests in Redis (module docstring). ``root`` is the stack's
    key root, ``ladder.state.keys.Keys.root``."""

    def __init__(self, client: redis.Redis, root: str) -> None:
        self.r = client
        self.root = root
        self.tenants_key = Keys(root).tenants
        self.tokens_key = Keys(root).tokens

    def create(self, name: str, admin: bool = False) -> IssuedToken:
        """A new tenant with its first token; AlreadyExists when the name is taken."""
        record = json.dumps({"admin": admin, "created_ms": int(time.time() * 1000)})
        if not self.r.hsetnx(self.tenants_key, check_name(name), record):
            raise AlreadyExists(f"tenant {name!r} already exists")
        return self.issue(name)

    def ensure(self, name: str, admin: bool = False) -> bool:
        """Create ``name`` without a token unless it exists; whether it was created."""
        record = json.dumps({"admin": admin, "created_ms": int(time.time() * 1000)})
        return bool(self.r.hsetnx(self.tenants_key, check_name(name), record))

    def issue(self, name: str) -> IssuedToken:
        """A new token for an existing tenant (its other tokens stay valid)."""
        if not self.r.hexists(self.tenants_key, name):
            raise NotFound(f"tenant {name!r} not found")
        token_id, secret, token = new_token()
        record = {"tenant": name, "sha256": _digest(secret),
                  "created_ms": int(time.time() * 1000)}
        self.r.hset(self.tokens_key, token_id, json.dumps(record))
        return IssuedToken(name, token_id, token)

    def revoke(self, name: str, token_id: str | None = None) -> list[str]:
        """Revoke ``token_id`` of tenant ``name``, or all its tokens when None; the ids
        revoked. NotFound for an unknown tenant or a token id it does not hold."""
        tenant = self.get(name)
        if tenant is None:
            raise NotFound(f"tenant {name!r} not found")
        ids = list(tenant.token_ids) if token_id is None else [token_id]
        if token_id is not None and token_id not in tenant.token_ids:
            raise NotFound(f"tenant {name!r} holds no token {token_id!r}")
        if ids:
            self.r.hdel(self.tokens_key, *ids)
        return ids

    def _tokens(self) -> dict[str, dict]:
        return {
            key.decode(): json.loads(value)
            for key, value in self.r.hgetall(self.tokens_key).items()
        }

    def list(self) -> list[Tenant]:
        tokens = self._tokens()
        out = []
        for key, value in sorted(self.r.hgetall(self.tenants_key).items()):
            name = key.decode()
            record = json.loads(value)
            ids = tuple(sorted(t for t, rec in tokens.items() if rec.get("tenant") == name))
            out.append(Tenant(name, bool(record.get("admin")), int(record["created_ms"]), ids,
                              quotas.Quota.from_record(record)))
        return out

    def set_quota(
        self, name: str, max_studies: int | None, max_trials_running: int | None,
        max_gpus: int | None = None, weight: float | None = None,
    ) -> quotas.Quota:
        """Change the tenant's quotas (None: unchanged; 0: unbounded; ``ladder.quotas``)
        in its record, atomically with any other change to it; the quota now. The
        stored studies are indexed by tenant first, so studies created before count."""
        quotas.index_studies(self.r, Keys(self.root))
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.tenants_key)
                    raw = pipe.hget(self.tenants_key, name)
                    if raw is None:
                        raise NotFound(f"tenant {name!r} not found")
                    record = json.loads(raw)
                    quota = quotas.updated(
                        quotas.Quota.from_record(record), max_studies, max_trials_running,
                        max_gpus, weight,
                    )
                    record.update(vars(quota))
                    pipe.multi()
                    pipe.hset(self.tenants_key, name, json.dumps(record))
                    pipe.execute()
                    return quota
                except redis.WatchError:
                    continue

    def get(self, name: str) -> Tenant | None:
        return next((t for t in self.list() if t.name == name), None)

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to; None for a malformed, unknown or revoked
        token (or a tenant that no longer exists)."""
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        raw = self.r.hget(self.tokens_key, token_id)
        if raw is None:
            return None
        record = json.loads(raw)
        if not hmac.compare_digest(_digest(secret), str(record.get("sha256", ""))):
            return None
        tenant = self.r.hget(self.tenants_key, record["tenant"])
        if tenant is None:
            return None
        return Principal(record["tenant"], bool(json.loads(tenant).get("admin")))


class TokenCache:
    """``authenticate`` answers remembered for ``ttl`` seconds (Settings.auth_cache_s:
    how long a revoked token may still work), keyed by the token's
    SHA-256 (a token is never kept in memory as a key). Bounded: cleared when full."""

    def __init__(
        self,
        authenticate: Callable[[str], Principal | None],
        ttl: float,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authenticate = authenticate
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def __call__(self, token: str) -> Principal | None:
        key = _digest(token)
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = self._authenticate(token)
        with self._lock:
            if len(self._entries) >= self.capacity:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, principal)
        return principal


def provision(store: TenantStore, path: Path, name: str = DEFAULT_TENANT) -> bool:
    """Make sure tenant ``name`` exists and ``path`` holds a valid token of it (mode
    0600): what the embedded stack does so a client beside it needs no setup. A token
    file that still authenticates is kept; whether a new token was written."""
    store.ensure(name)
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    found = store.authenticate(current) if current else None
    if found is not None and found.tenant == name:
        return False
    issued = store.issue(name)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(issued.token + "\n")
    tmp.replace(path)
    return True
