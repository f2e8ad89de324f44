"""Signed events: decisions, rung crossings, study events and trial events carry an
HMAC-SHA256 of their topic, key and value, made by the service that produced them,
and every consumer of those topics checks it before the record changes anything.

Anyone who can reach the broker can publish to any topic (tansu has no SASL or ACLs,
docs/bus-security.md), so a record on ``decisions`` proves nothing about its origin.
A consumer here accepts a record of a signed topic only when its ``ladder-sig``
header is the HMAC, under the key its ``ladder-kid`` header names, of::

    len(topic) topic len(key) key value     (lengths: 4-byte big-endian)

so a signature cannot be moved to another topic or key. Anything else (no header,
an unknown key id, a wrong MAC) is refused with a reason, which its consumer
dead-letters; the record changes nothing.

Keys (``Keyring``): ``LADDER_BUS_SIGNING_KEYS`` = ``kid:hexsecret,kid:hexsecret``
(the first one signs, all of them verify: a rotation adds the new key first, waits
until every process runs with it, then drops the old one), or
``LADDER_BUS_SIGNING_KEY`` = one hex secret (key id ``default``); else the state
folder's ``bus-signing-keys.json`` that ``ladder up`` writes (``ensure_keyring``).
No key anywhere: nothing is signed and nothing is checked (a warning says so once),
which is what a deployment on a broker with its own ACLs may choose.

HMAC is symmetric: every process that verifies could also sign, so the keys are
shared by the trusted services (per-producer keys would not stop a verifier from
forging); the point is that a client of the broker without the key cannot.
Metrics stay unsigned (other teams publish them); early-stop checks each report's
trial against the trial store instead (``ladder.trialcheck``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ladder.signing")

KID_HEADER = "ladder-kid"
SIG_HEADER = "ladder-sig"
KEYS_FILE = "bus-signing-keys.json"
DEFAULT_KID = "default"
# The short names (``Topics.name``) of the topics whose records must be signed.
SIGNED_TOPICS = ("decisions", "rungs", "studies", "trials")
SECRET_BYTES = 32

Headers = Sequence[tuple[str, bytes | str | None]]


def signed_topics(topics: object) -> frozenset[str]:
    """The full names of the signed topics (attributes of ``ladder.config.Topics``)."""
    return frozenset(str(getattr(topics, short)) for short in SIGNED_TOPICS)


class KeyError_(ValueError):  # noqa: N801 - not the builtin KeyError
    """A signing-key setting that cannot be used."""


def _message(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    t = topic.encode()
    k = key or b""
    return b"".join((struct.pack(">I", len(t)), t, struct.pack(">I", len(k)), k, value or b""))


@dataclass(frozen=True)
class Keyring:
    """Secrets by key id; ``current`` signs, every key verifies."""

    keys: Mapping[str, bytes] = field(default_factory=dict)
    current: str = ""

    def __post_init__(self) -> None:
        if self.keys and self.current not in self.keys:
            raise KeyError_(f"signing key id {self.current!r} is not among the keys")
        for kid, secret in self.keys.items():
            if not kid or ":" in kid or "," in kid:
                raise KeyError_(f"bad key id {kid!r}: non-empty, without ':' or ','")
            if len(secret) < 16:
                raise KeyError_(f"key {kid!r} is {len(secret)} bytes; at least 16 needed")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def mac(self, kid: str, topic: str, key: bytes | None, value: bytes | None) -> bytes:
        # hmac.digest: OpenSSL's one-shot HMAC, a few times cheaper than hmac.new.
        return hmac.digest(self.keys[kid], _message(topic, key, value), "sha256")

    def sign(self, topic: str, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """The headers that sign the record (none when there is no key)."""
        if not self.keys:
            return []
        return [
            (KID_HEADER, self.current.encode()),
            (SIG_HEADER, self.mac(self.current, topic, key, value)),
        ]

    def problem(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> str | None:
        """Why the record is not signed by a key of this ring (None: it is, or there
        is no key to check against)."""
        if not self.keys:
            return None
        kid = sig = None
        for name, raw in headers or ():
            if name == KID_HEADER:
                kid = raw
            elif name == SIG_HEADER:
                sig = raw
        if kid is None or sig is None:
            return f"unsigned record on {topic}: no {KID_HEADER}/{SIG_HEADER} header"
        kid_text = kid.decode("utf-8", "replace") if isinstance(kid, bytes) else str(kid)
        secret_kid = kid_text if kid_text in self.keys else None
        if secret_kid is None:
            return f"record on {topic} signed with unknown key id {kid_text[:64]!r}"
        sig_bytes = sig.encode() if isinstance(sig, str) else sig
        if not hmac.compare_digest(self.mac(secret_kid, topic, key, value), sig_bytes):
            return f"bad signature on {topic} record (key id {kid_text!r})"
        return None


def parse_keys(spec: str) -> Keyring:
    """``kid:hexsecret,kid:hexsecret`` (first signs) as a Keyring."""
    keys: dict[str, bytes] = {}
    first = ""
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kid, sep, secret = part.partition(":")
        if not sep:
            raise KeyError_("LADDER_BUS_SIGNING_KEYS entries are kid:hexsecret")
        try:
            keys[kid.strip()] = bytes.fromhex(secret.strip())
        except ValueError as exc:
            raise KeyError_(f"key {kid!r} is not hex") from exc
        first = first or kid.strip()
    return Keyring(keys, first)


def _from_file(path: Path) -> Keyring:
    data = json.loads(path.read_text())
    return Keyring({k: bytes.fromhex(v) for k, v in data["keys"].items()}, data["current"])


_cache: dict[tuple[str, str, str], Keyring] = {}
_warned = False


def keyring(state_dir: Path | str | None = None, env: Mapping[str, str] | None = None) -> Keyring:
    """The keyring from the environment, else from ``state_dir``'s keys file (cached:
    rotation restarts the processes)."""
    global _warned
    env = os.environ if env is None else env
    path = Path(state_dir) / KEYS_FILE if state_dir is not None else None
    cache_key = (
        env.get("LADDER_BUS_SIGNING_KEYS", ""),
        env.get("LADDER_BUS_SIGNING_KEY", ""),
        str(path or ""),
    )
    ring = _cache.get(cache_key)
    if ring is not None:
        return ring
    if cache_key[0]:
        ring = parse_keys(cache_key[0])
    elif cache_key[1]:
        ring = parse_keys(f"{DEFAULT_KID}:{cache_key[1]}")
    elif path is not None and path.exists():
        ring = _from_file(path)
    else:
        ring = Keyring()
        if not _warned:
            _warned = True
            log.warning(
                "no bus signing key (LADDER_BUS_SIGNING_KEY(S) or %s): decisions, study "
                "and trial events are neither signed nor checked",
                path or KEYS_FILE,
            )
    _cache[cache_key] = ring
    return ring


def ensure_secret_file(path: Path, body: Callable[[], str]) -> str:
    """The text of ``path``, written first with ``body()`` (owner-only permissions)
    when it does not exist; the one way the embedded stack keeps its secrets."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another launcher made it meanwhile
        else:
            with os.fdopen(fd, "w") as out:
                out.write(body())
    return path.read_text().strip()


def _fresh_keys() -> str:
    kid = f"k{secrets.token_hex(4)}"
    return json.dumps({"current": kid, "keys": {kid: secrets.token_hex(SECRET_BYTES)}})


def ensure_keyring(state_dir: Path) -> str:
    """The ``LADDER_BUS_SIGNING_KEYS`` value of the state folder's keys file, created
    with one fresh key if missing; ``ladder up`` passes it to the services it starts."""
    data = json.loads(ensure_secret_file(state_dir / KEYS_FILE, _fresh_keys))
    current = data["current"]
    others = [f"{kid}:{secret}" for kid, secret in data["keys"].items() if kid != current]
    return ",".join([f"{current}:{data['keys'][current]}", *others])
