"""Shared consumer progress in a real Redis (ladder.state.offsets)."""

from __future__ import annotations

import uuid

import redis
from ladder.config import Settings
from ladder.state import ConsumerOffsets, Keys


def test_offsets_only_move_forward_and_round_trip(infra: Settings) -> None:
    client = redis.Redis.from_url(infra.redis_url)
    keys = Keys.for_prefix(f"offsets-{uuid.uuid4().hex[:6]}.")
    fast = ConsumerOffsets(client, keys, "evaluate-decisions")
    slow = ConsumerOffsets(client, keys, "evaluate-decisions")
    assert fast.load() == {}
    fast.advance("t1.ladder.decisions", 0, 42)
    fast.advance("t1.ladder.decisions", 3, 7)
    # A slower process finishing an older record never rewinds the shared progress.
    slow.advance("t1.ladder.decisions", 0, 40)
    slow.advance("t1.ladder.decisions", 3, 8)
    assert slow.load() == {("t1.ladder.decisions", 0): 42, ("t1.ladder.decisions", 3): 8}
    # Another consumer name keeps its own progress.
    assert ConsumerOffsets(client, keys, "other").load() == {}
    client.close()
