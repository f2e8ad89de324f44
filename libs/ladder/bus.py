"""The Kafka event bus for the services that are not Faust apps.

``EventProducer`` serialises protobuf events, stamps W3C trace context into the
record headers and wraps each send in a PRODUCER span. ``ConsumerLoop`` reads
topics in a thread, processes each record inside a CONSUMER span whose parent is
the producer's context, routes undecodable records to the dead-letter topic with
the reason, and commits offsets only after the handler returned (at-least-once;
every handler in Ladder is idempotent so a replay changes nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from ladder import telemetry
from ladder.codec import BadRecord
from ladder.config import Settings
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.bus")

# tansu (the embedded broker) needs short group timeouts or a group's first
# join waits for the default rebalance timeout of minutes.
GROUP_TIMEOUTS = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 5000,
}


def now_ms() -> int:
    return int(time.time() * 1000)


class EventProducer:
    def __init__(self, settings: Settings, service: str, **overrides: object) -> None:
        self.settings = settings
        self.service = service
        options: dict[str, object] = {
            "bootstrap_servers": settings.kafka_bootstrap.split(","),
            "acks": "all",
            "linger_ms": 2,
            "retries": 5,
            "client_id": f"ladder-{service}",
        }
        options.update(overrides)
        self._producer = KafkaProducer(**options)

    def send(
        self,
        topic: str,
        key: str,
        message: Message | bytes,
        headers: telemetry.Headers | None = None,
        wait: bool = False,
    ) -> FutureRecordMetadata:
        """Send one record; ``wait`` blocks until the broker acknowledged it. The
        returned future lets a caller act on the acknowledgement without blocking."""
        value = message if isinstance(message, bytes) else message.SerializeToString()
        with telemetry.kafka_producer_span(topic, key):
            future = self._producer.send(
                topic,
                key=key.encode(),
                value=value,
                headers=telemetry.inject_headers(headers),
            )
        if wait:
            future.get(timeout=30)
        return future

    def dead_letter(
        self,
        source_topic: str,
        reason: str,
        payload: bytes | None,
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        record = events_pb2.DeadLetter(
            source_topic=source_topic,
            source_partition=partition,
            source_offset=offset,
            reason=reason,
            payload=payload or b"",
            service=self.service,
            ts_ms=now_ms(),
        )
        log.warning(
            "dead-lettered record from %s@%s: %s",
            source_topic,
            offset,
            reason,
            extra={"topic": source_topic},
        )
        self.send(self.settings.topics.dead_letter, source_topic, record, wait=True)

    def flush(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.flush(timeout=10)
        self._producer.close(timeout=10)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


Handler = Callable[[Record], None]


class ConsumerLoop:
    """Consume ``topics`` in a background thread and call ``handler`` per record.

    ``group_id`` set: partitions are shared across the processes of a group and
    offsets committed there. ``group_id`` None: every partition is read from the
    beginning by this process alone (used where each process must see all).
    A handler raising ``BadRecord`` sends the record to dead-letter; any other
    exception is logged and the record is retried after a short back-off, so a
    transient outage (Redis restarting) never skips an event.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        topics: Sequence[str],
        handler: Handler,
        producer: EventProducer,
        group_id: str | None,
        from_beginning: bool = True,
        start_offsets: Callable[[], Mapping[tuple[str, int], int]] | None = None,
        untraced_topics: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.service = service
        self.topics = list(topics)
        self.handler = handler
        self.producer = producer
        self.group_id = group_id
        self.from_beginning = from_beginning
        # Group-less consumers whose handler stores offsets with its own state
        # (exactly-once) resume from there: {(topic, partition): next offset}.
        self.start_offsets = start_offsets
        # Records of these topics get no CONSUMER span: a span per metric point cost a
        # consumer more than storing the point, and would flood the trace backend.
        self.untraced_topics = frozenset(untraced_topics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"consume-{service}", daemon=True)
        self.processed = 0
        self.ready = threading.Event()

    def start(self) -> ConsumerLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _consumer(self) -> KafkaConsumer:
        options: dict[str, object] = {
            "bootstrap_servers": self.settings.kafka_bootstrap.split(","),
            "client_id": f"ladder-{self.service}",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if self.from_beginning else "latest",
            "max_poll_records": 500,
            "fetch_max_wait_ms": 100,
        }
        if self.group_id:
            options["group_id"] = self.group_id
            options.update(GROUP_TIMEOUTS)
            consumer = KafkaConsumer(**options)
            consumer.subscribe(self.topics)
            return consumer
        consumer = KafkaConsumer(**options)
        partitions = []
        from kafka import TopicPartition

        deadline = time.monotonic() + 60
        for topic in self.topics:
            ids = consumer.partitions_for_topic(topic)
            while not ids and time.monotonic() < deadline and not self._stop.is_set():
                self._stop.wait(0.2)
                ids = consumer.partitions_for_topic(topic)
            partitions.extend(TopicPartition(topic, p) for p in sorted(ids or ()))
        if not partitions:
            consumer.close()
            # Same outcome as before: the loop logs it and reconnects.
            raise RuntimeError(f"no partitions found for topics {self.topics}")
        consumer.assign(partitions)
        resume = dict(self.start_offsets()) if self.start_offsets else {}
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in resume]
        # Guarded: seek_to_*() without arguments would move every partition.
        if fresh and self.from_beginning:
            consumer.seek_to_beginning(*fresh)
        elif fresh:
            consumer.seek_to_end(*fresh)
        for tp in partitions:
            if (tp.topic, tp.partition) in resume:
                consumer.seek(tp, resume[(tp.topic, tp.partition)])
        return consumer

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                batches = consumer.poll(timeout_ms=200)
                self.ready.set()
                for records in batches.values():
                    for raw in records:
                        self._process(raw)
                if batches and self.group_id:
                    consumer.commit()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("consumer loop error; reconnecting")
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # noqa: BLE001
                        pass
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _process(self, raw: object) -> None:
        record = Record(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=raw.value,
            headers=list(raw.headers or []),
            timestamp_ms=raw.timestamp,
        )
        traced = record.topic not in self.untraced_topics
        parent = telemetry.extract_context(record.headers) if traced else None
        attempt = 0
        while not self._stop.is_set():
            with (
                telemetry.kafka_consumer_span(record.topic, record.partition, record.offset, parent)
                if parent is not None
                else nullcontext()
            ):
                try:
                    self.handler(record)
                    self.processed += 1
                    return
                except BadRecord as exc:
                    self.producer.dead_letter(
                        record.topic, str(exc), record.value, record.partition, record.offset
                    )
                    self.processed += 1
                    return
                except Exception:  # noqa: BLE001
                    attempt += 1
                    log.exception(
                        "handler failed on %s@%d (attempt %d); retrying",
                        record.topic,
                        record.offset,
                        attempt,
                    )
            self._stop.wait(min(5.0, 0.2 * 2**attempt))
