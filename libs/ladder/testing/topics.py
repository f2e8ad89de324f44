"""Reading the stack's topics in a test: from the beginning of every partition, without
a consumer group (a group would rebalance on the shared broker between tests), keeping
only the records that decode (other tests put garbage on the shared topics on purpose)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition

from ladder import signing
from ladder.codec import BadRecord, decode
from ladder.config import Settings
from ladder.testing.waiting import wait_for
from ladder.v1 import events_pb2

M = TypeVar("M", bound=Message)


class TopicReader:
    """Reads every partition of a topic from the beginning, without a group."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
            # a fetch that finds nothing new answers (with its high watermark) within
            # one poll; tansu holds it for the whole wait (kafka-python: 500 ms)
            fetch_max_wait_ms=100,
            **settings.kafka_security().kafka_python(),
        )
        parts = wait_for(lambda: self.consumer.partitions_for_topic(topic), 30, topic)
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.records: list[Any] = []

    def close(self) -> None:
        self.consumer.close()

    def poll(self) -> list[Any]:
        """Every record read so far, after one more poll."""
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.records.extend(batch)
        return self.records

    def read_to_end(self, timeout: float) -> list[Any]:
        """Every record up to the partitions' ends as they are now.

        An end is the larger of the ListOffsets answer and the high watermark of a
        fetch response: tansu 0.6 answers ListOffsets with the base offset of the
        partition's last batch + 1, and after a restart with 1, so a reader trusting it
        stopped after its first poll (at most 500 records) and missed the rest."""
        end = self.consumer.end_offsets(self.partitions)
        unconfirmed = set(self.partitions)
        deadline = time.monotonic() + timeout
        while True:
            for tp in list(unconfirmed):
                highwater = self.consumer.highwater(tp)  # None until a fetch answered
                if highwater is not None:
                    end[tp] = max(end[tp], highwater)
                    unconfirmed.discard(tp)
            if not unconfirmed and all(
                self.consumer.position(tp) >= end[tp] for tp in self.partitions
            ):
                return self.records
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {self.topic} to its end within {timeout}s")
            self.poll()


def read_topic(settings: Settings, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every record currently in ``topic`` (reads up to the end offsets)."""
    reader = TopicReader(settings, topic)
    try:
        return reader.read_to_end(timeout)
    finally:
        reader.close()


def decoded_records(cls: type[M], records: Iterable[Any]) -> list[tuple[Any, M]]:
    """(record, message) of each record whose value decodes as ``cls``."""
    out = []
    for record in records:
        try:
            out.append((record, decode(cls, record.value)))
        except BadRecord:
            continue
    return out


def decoded(cls: type[M], records: Iterable[Any]) -> list[M]:
    """The messages of the records whose value decodes as ``cls``."""
    return [message for _, message in decoded_records(cls, records)]


def trial_events(settings: Settings, trial_id: str) -> list[events_pb2.TrialEvent]:
    """The events of ``trial_id`` on the trials topic, in topic order."""
    events = decoded(events_pb2.TrialEvent, read_topic(settings, settings.topics.trials))
    return [event for event in events if event.trial.trial_id == trial_id]


def signed_headers(topic: str, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """The headers that sign a record as the stack's services sign theirs (the keys
    of LADDER_BUS_SIGNING_KEYS, which the integration tests' ``infra_env`` sets): for
    a test that publishes a study event, trial event or decision as its owner would."""
    return signing.keyring().sign(topic, key, value)
