"""Consumer progress kept in Redis beside the state the consumer writes.

Used by group-less consumers whose handler is idempotent and whose effects live in
this Redis (evaluate applying decisions): every process of the service reads every
partition, so no consumer-group rebalance ever delays a decision, and all of them
share one progress record. Any process's progress is everyone's, because the
effects it stands for are already in the shared state; an offset only moves
forward (a slower process never rewinds a faster one).

The offset is advanced after the handler returns, so a crash in between replays
the record once, which the idempotent handler absorbs.
"""

from __future__ import annotations

import redis

from ladder.state.keys import Keys

# KEYS: offsets hash   ARGV: field, next offset
_ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local proposed = tonumber(ARGV[2])
if proposed > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


class ConsumerOffsets:
    """Next offset to read per (topic, partition) for one consumer name."""

    def __init__(self, client: redis.Redis, keys: Keys, consumer: str) -> None:
        self.r = client
        self.key = keys.offsets(consumer)
        self._advance = client.register_script(_ADVANCE)

    def load(self) -> dict[tuple[str, int], int]:
        stored = self.r.hgetall(self.key)
        offsets: dict[tuple[str, int], int] = {}
        for field, value in stored.items():
            topic, _, partition = _text(field).rpartition(":")
            offsets[(topic, int(partition))] = int(value)
        return offsets

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        self._advance(keys=[self.key], args=[f"{topic}:{partition}", next_offset])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
