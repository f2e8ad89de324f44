"""Owned suggestion partitions: a lease with a fencing token per (study, partition),
and the partition's ready suggestions in a Redis list any suggest replica pops from.

One suggest process at a time owns a (study, partition): it fits the partition's
model and fills its ready list; every replica (owner or not) hands suggestions out by
popping that list, so a request is served by whichever replica it reaches.

Lease. ``ACQUIRE`` takes a free lease (none, or expired) and numbers it with the
partition's fencing counter (INCR: every acquisition gets a larger token than any
before it); the lease value is ``member|token``. The owner renews it (``RENEW``,
which extends it only while the value is still its own) every ``renew`` seconds; a
lease not renewed for ``ttl`` seconds is gone and another live member takes it.
Defaults (``LeaseSettings``): ttl 3 s, renew every 1 s, so a dead owner's partitions
are owned again within ttl + one scan (about 4 s), under the 5 s the service
promises; two missed renewals in a row are tolerated.

Fencing. A push to the ready list (``PUSH``) runs only while the lease still holds the
pusher's ``member|token``: a deposed owner (paused past its ttl, then back) cannot
push, since its token is gone from the lease. Pops (``POP``) are atomic (LPOP), so
every point is handed out by exactly one replica; a popped point becomes a trial
through CREATE_TRIALS, whose trial id comes from the study's counter, so no two
replicas create the same trial.

Members. Each suggest process heartbeats into a zset (score: Redis time of its last
heartbeat); members silent for a ttl are dropped. The live count gives every member
its fair share of the partitions (``rebalance``): it takes free partitions up to
its share and releases what it holds beyond it, so partitions spread over replicas
and move to the survivors when one dies.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from ladder.state.keys import Keys

PartitionKey = tuple[str, int]  # (study id, partition)


@dataclass(frozen=True)
class LeaseSettings:
    """Lease timing (module docstring): ``ttl`` must stay under 4 s for the 5 s
    failover, ``renew`` well under ``ttl``."""

    ttl: float = 3.0
    renew: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.renew < self.ttl:
            raise ValueError(f"need 0 < renew < ttl (got renew {self.renew}, ttl {self.ttl})")

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)


_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: lease, fence counter. ARGV: member, ttl ms. -> new token, or 0 if held.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', tonumber(ARGV[2]))
return token
"""

# KEYS: lease. ARGV: member|token, ttl ms. -> 1 renewed, 0 not ours (any more).
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: lease. ARGV: member|token. -> 1 released, 0 not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lease, ready list. ARGV: member|token, '1' to replace the list, items...
# -> the list's length, or -1 when the pusher does not hold the lease (fenced).
PUSH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
for i = 3, #ARGV, 500 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return redis.call('LLEN', KEYS[2])
"""

# KEYS: ready list, asked counter. ARGV: count. -> {items left, the popped items
# (oldest first)}. The counter counts points asked, popped or not: the request rate.
POP = """
redis.call('INCRBY', KEYS[2], tonumber(ARGV[1]))
local items = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not items then items = {} end
return {redis.call('LLEN', KEYS[1]), items}
"""

# KEYS: members zset. ARGV: member, ttl ms. -> live members (this one included).
HEARTBEAT = _NOW_MS + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""


def lease_value(member: str, token: int) -> str:
    return f"{member}|{token}"


def parse_lease(raw: bytes | str | None) -> tuple[str, int] | None:
    """(member, token) of a lease value; None when there is no lease."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    member, _, token = text.rpartition("|")
    return member, int(token)


class PartitionLeases:
    """The leases and ready lists of suggestion partitions, as seen by ``member``."""

    def __init__(
        self, client: redis.Redis, keys: Keys, member: str, settings: LeaseSettings
    ) -> None:
        self.r = client
        self.keys = keys
        self.member = member
        self.settings = settings
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._push = client.register_script(PUSH)
        self._pop = client.register_script(POP)
        self._heartbeat = client.register_script(HEARTBEAT)

    # -- membership

    def heartbeat(self) -> int:
        """Record this member alive; how many members are (this one included)."""
        return int(self._heartbeat([self.keys.suggest_members],
                                   [self.member, self.settings.ttl_ms]))

    def leave(self) -> None:
        self.r.zrem(self.keys.suggest_members, self.member)

    # -- leases

    def acquire(self, key: PartitionKey) -> int:
        """Take the partition's lease if it is free: its fencing token, else 0."""
        study_id, partition = key
        return int(self._acquire(
            [self.keys.partition_lease(study_id, partition),
             self.keys.partition_fence(study_id, partition)],
            [self.member, self.settings.ttl_ms],
        ))

    def renew(self, key: PartitionKey, token: int) -> bool:
        """Extend our lease by a ttl; False when it is no longer ours."""
        return bool(self._renew([self.keys.partition_lease(*key)],
                                [lease_value(self.member, token), self.settings.ttl_ms]))

    def renew_many(self, held: Sequence[tuple[PartitionKey, int]]) -> list[bool]:
        """``renew`` of every (partition, token), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for key, token in held:
            self._renew([self.keys.partition_lease(*key)],
                        [lease_value(self.member, token), self.settings.ttl_ms], client=pipe)
        return [bool(ok) for ok in pipe.execute()]

    def release(self, key: PartitionKey, token: int) -> bool:
        return bool(self._release([self.keys.partition_lease(*key)],
                                  [lease_value(self.member, token)]))

    def owners(self, keys: Sequence[PartitionKey]) -> list[tuple[str, int] | None]:
        """The (member, token) holding each partition's lease; None where free."""
        if not keys:
            return []
        raw = self.r.mget([self.keys.partition_lease(*key) for key in keys])
        return [parse_lease(value) for value in raw]

    # -- ready suggestions

    def push(self, key: PartitionKey, token: int, items: Sequence[bytes | str],
             replace: bool = False) -> int:
        """Append ``items`` to the partition's ready list (``replace``: instead of what
        it holds) if we still hold the lease with ``token``: the list's length, or -1
        when fenced off (the lease is gone or another member's)."""
        return int(self._push(
            [self.keys.partition_lease(*key), self.keys.partition_ready(*key)],
            [lease_value(self.member, token), "1" if replace else "0", *items],
        ))

    def pop(self, key: PartitionKey, count: int) -> tuple[list[bytes], int]:
        """Up to ``count`` ready items, atomically (no two callers get the same one),
        and how many are left; ``count`` is added to the partition's asked counter."""
        if count <= 0:
            return [], 0
        left, items = self._pop(
            [self.keys.partition_ready(*key), self.keys.partition_taken(*key)], [count]
        )
        return list(items), int(left)

    def peek(self, key: PartitionKey) -> list[bytes]:
        """Every ready item, left in place."""
        return list(self.r.lrange(self.keys.partition_ready(*key), 0, -1))

    def poll(self, key: PartitionKey) -> tuple[int, int]:
        """(items ready, items ever asked) of the partition, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.keys.partition_ready(*key))
        pipe.get(self.keys.partition_taken(*key))
        size, taken = pipe.execute()
        return int(size), int(taken or 0)


def _affinity(member: str, key: PartitionKey) -> int:
    """Rendezvous hash: each member prefers a different order of the partitions, so
    members scanning at once mostly try different free ones."""
    return zlib.crc32(f"{member}/{key[0]}/{key[1]}".encode())


def fair_share(partitions: int, live: int) -> int:
    """The most partitions one of ``live`` members should own."""
    return math.ceil(partitions / max(1, live))


def rebalance(
    member: str,
    partitions: Sequence[PartitionKey],
    owners: Sequence[str | None],
    live: int,
) -> tuple[list[PartitionKey], list[PartitionKey]]:
    """What ``member`` should (acquire, release) now: free partitions up to its fair
    share, and what it owns beyond that share. ``owners[i]`` is the member owning
    ``partitions[i]`` (None: free). Both lists in ``member``'s preference order."""
    share = fair_share(len(partitions), live)
    mine = [key for key, owner in zip(partitions, owners, strict=True) if owner == member]
    free = [key for key, owner in zip(partitions, owners, strict=True) if owner is None]
    mine.sort(key=lambda k: _affinity(member, k), reverse=True)
    free.sort(key=lambda k: _affinity(member, k), reverse=True)
    if len(mine) > share:
        return [], mine[share:]
    return free[: share - len(mine)], []
