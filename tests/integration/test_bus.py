"""ConsumerLoop and EventProducer against the real broker (ladder.bus)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer
from ladder.bus import ConsumerLoop, EventProducer, Record
from ladder.config import Settings
from ladder.testing import wait_for


def new_topic(settings: Settings) -> str:
    name = f"{settings.topics.prefix}bus-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(30)
    return name


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[Record] = []

    def __call__(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def offsets(self) -> list[int]:
        with self.lock:
            return [r.offset for r in self.records]


@contextmanager
def consuming(
    settings: Settings, topic: str, producer: EventProducer, **options: Any
) -> Iterator[tuple[ConsumerLoop, Seen]]:
    """A started ConsumerLoop on ``topic`` recording what it handles; stopped after."""
    seen = Seen()
    options.setdefault("group_id", None)
    loop = ConsumerLoop(settings, "bus-test", [topic], seen, producer, **options).start()
    try:
        yield loop, seen
    finally:
        loop.stop()


def produce(producer: EventProducer, topic: str, count: int) -> None:
    for i in range(count):
        producer.send(topic, f"k{i}", f"v{i}".encode(), wait=True)


def test_a_stored_offset_inside_the_partition_is_resumed(infra: Settings) -> None:
    topic = new_topic(infra)
    producer = EventProducer(infra, "bus-test")
    produce(producer, topic, 5)
    try:
        with consuming(infra, topic, producer, start_offsets=lambda: {(topic, 0): 3}) as (
            _loop,
            seen,
        ):
            wait_for(lambda: seen.offsets() == [3, 4], 30, "records 3 and 4 only")
            produce(producer, topic, 1)
            wait_for(lambda: seen.offsets() == [3, 4, 5], 30, "the record produced after")
            assert seen.records[-1].value == b"v0" and seen.records[-1].key == b"k0"
    finally:
        producer.close()


def test_a_stored_offset_inside_the_last_batch_is_resumed(infra: Settings) -> None:
    # Ten records in one batch: tansu 0.6 answers ListOffsets with the batch's base
    # offset + 1, so offset 8 looks past the end unless a fetch confirms it.
    topic = new_topic(infra)
    batch = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap, linger_ms=200)
    for i in range(10):
        batch.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
    batch.flush(30)
    batch.close()
    producer = EventProducer(infra, "bus-test")
    try:
        with consuming(infra, topic, producer, start_offsets=lambda: {(topic, 0): 8}) as (
            loop,
            seen,
        ):
            assert loop.ready.wait(30)
            produce(producer, topic, 1)
            wait_for(lambda: seen.offsets()[-1:] == [10], 30, "the record produced after")
            assert seen.offsets() == [8, 9, 10]
    finally:
        producer.close()


def test_a_stored_offset_past_the_end_reads_the_recreated_topic_from_its_start(
    infra: Settings,
) -> None:
    # The embedded broker keeps topics in memory while Redis keeps the offsets: after
    # a restart the stored offset can point past the end of the (new, empty) topic.
    topic = new_topic(infra)
    producer = EventProducer(infra, "bus-test")
    try:
        with consuming(infra, topic, producer, start_offsets=lambda: {(topic, 0): 50}) as (
            loop,
            seen,
        ):
            assert loop.ready.wait(30)
            produce(producer, topic, 3)
            wait_for(lambda: seen.offsets() == [0, 1, 2], 30, "every record of the new topic")
    finally:
        producer.close()


def test_a_group_consumer_commits_what_it_handled(infra: Settings) -> None:
    topic = new_topic(infra)
    group = f"bus-test-{uuid.uuid4().hex[:6]}"
    producer = EventProducer(infra, "bus-test")
    try:
        with consuming(infra, topic, producer, group_id=group) as (_loop, first):
            produce(producer, topic, 3)
            wait_for(lambda: first.offsets() == [0, 1, 2], 60, "the first three records")
        # The next member of the group resumes after what the first one handled.
        with consuming(infra, topic, producer, group_id=group) as (_loop, second):
            produce(producer, topic, 1)
            wait_for(lambda: second.offsets() == [3], 60, "only the record produced after")
    finally:
        producer.close()


def test_a_paced_consumer_reads_a_backlog_and_later_records_exactly_once(
    infra: Settings,
) -> None:
    # Paced (lineage, suggest, evaluate): once caught up it reads at most every
    # pace_s, while librdkafka holds its fetches back; a backlog larger than one poll
    # is still read through, in order, each record once.
    topic = new_topic(infra)
    producer = EventProducer(infra, "bus-test")
    try:
        sent = [producer.send(topic, f"k{i}", f"v{i}".encode()) for i in range(1200)]
        sent[-1].get(30)
        with consuming(infra, topic, producer, pace_s=0.3) as (_loop, seen):
            wait_for(lambda: len(seen.offsets()) >= 1200, 60, "the backlog of 1,200")
            produce(producer, topic, 2)
            wait_for(lambda: len(seen.offsets()) >= 1202, 30, "the two records after")
            assert seen.offsets() == list(range(1202))
    finally:
        producer.close()
