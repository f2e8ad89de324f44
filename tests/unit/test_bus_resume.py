"""Where a ConsumerLoop without a group starts a partition (``ladder.bus._resume_offset``):
pure logic against a consumer that answers like tansu 0.6."""

from __future__ import annotations

from typing import Any

import confluent_kafka
import pytest
from ladder import bus
from ladder.bus import _resume_offset

INVALID = confluent_kafka.OFFSET_INVALID


class TansuLikeConsumer:
    """ListOffsets answers ``listed``; a fetch's cached high watermark is ``fetched``
    (None: the broker never answers the fetch)."""

    def __init__(self, low: int, listed: int, fetched: int | None) -> None:
        self.low, self.listed, self.fetched = low, listed, fetched
        self.assigned: list[Any] = []
        self.polled = 0

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False
                              ) -> tuple[int, int]:
        if not cached:
            return self.low, self.listed
        if self.fetched is None or not self.polled:
            return INVALID, INVALID
        return self.low, self.fetched

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def unassign(self) -> None:
        self.assigned = []

    def poll(self, timeout: float) -> None:
        self.polled += 1


def test_an_offset_the_listed_end_covers_is_resumed_without_a_fetch() -> None:
    consumer = TansuLikeConsumer(low=0, listed=20, fetched=20)
    assert _resume_offset(consumer, "t", 0, 12, -2) == 12
    assert consumer.polled == 0


def test_an_offset_inside_the_last_batch_is_resumed_once_a_fetch_confirms_the_end() -> None:
    consumer = TansuLikeConsumer(low=0, listed=1, fetched=10)
    assert _resume_offset(consumer, "t", 0, 8, -2) == 8
    assert consumer.assigned == []  # the probe's assignment is undone


def test_an_offset_past_the_fetched_end_reads_the_recreated_partition_from_its_start() -> None:
    consumer = TansuLikeConsumer(low=0, listed=1, fetched=3)
    assert _resume_offset(consumer, "t", 0, 50, -2) == 0


def test_without_a_fetch_answer_the_listed_end_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "END_PROBE_TIMEOUT_S", 0.05)
    consumer = TansuLikeConsumer(low=0, listed=1, fetched=None)
    assert _resume_offset(consumer, "t", 0, 8, -2) == 0  # read again: nothing skipped
    assert consumer.polled > 0 and consumer.assigned == []


def test_no_stored_offset_starts_where_a_fresh_consumer_does() -> None:
    consumer = TansuLikeConsumer(low=0, listed=1, fetched=10)
    assert _resume_offset(consumer, "t", 0, None, -2) == -2
