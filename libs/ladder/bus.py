"""The Kafka event bus for the services that are not Faust apps.

``EventProducer`` serialises protobuf events, stamps W3C trace context into the
record headers and wraps each send in a PRODUCER span. ``ConsumerLoop`` reads
topics in a thread, processes each record inside a CONSUMER span whose parent is
the producer's context, routes undecodable records to the dead-letter topic with
the reason, and commits offsets only after the handler returned (at-least-once;
every handler in Ladder is idempotent so a replay changes nothing).

Both sit on librdkafka (confluent-kafka): with kafka-python the per-record cost of
producing and consuming was most of what the evaluate, suggest and lineage services
spent under a 1,000-worker load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import confluent_kafka
from google.protobuf.message import Message

from ladder import telemetry
from ladder.codec import BadRecord
from ladder.config import BrokerProfile, Settings
from ladder.gaps import GapGuard
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.bus")


def group_timeouts(broker: BrokerProfile) -> dict[str, int]:
    """librdkafka's consumer-group timeouts for ``broker`` (short ones on tansu, whose
    first join of a group otherwise waits minutes for the rebalance timeout)."""
    return {
        "session.timeout.ms": broker.session_timeout_ms,
        "heartbeat.interval.ms": broker.heartbeat_interval_ms,
        "max.poll.interval.ms": broker.max_poll_interval_ms,
    }


# Records handed over per consume() call.
MAX_POLL_RECORDS = 500
# A paced consumer's librdkafka stops fetching a partition once it holds this many
# records, for the pace interval (fetch.queue.backoff.ms).
PACED_PREFETCH = 1


def _next_records(consumer: confluent_kafka.Consumer) -> list[confluent_kafka.Message]:
    """What arrived, up to ``MAX_POLL_RECORDS``, waiting at most 0.2 s for the first.

    ``consume(n, timeout)`` alone waits for n records or the whole timeout, which held
    a lone decision back ~100 ms on average; ``poll`` returns with the first one.
    """
    first = consumer.poll(0.2)
    if first is None:
        return []
    return [first, *consumer.consume(MAX_POLL_RECORDS - 1, 0)]


def _resume_offset(
    consumer: confluent_kafka.Consumer, topic: str, partition: int, stored: int | None, fresh: int
) -> int:
    """Where to start reading a partition: the stored offset while the partition holds
    it, else from its beginning.

    A stored offset past the partition's end means the topic was recreated (the
    embedded broker keeps topics in memory, while Redis and SQLite keep the offsets):
    waiting there would skip every record of the new topic up to that offset.
    """
    if stored is None:
        return fresh
    low, high = consumer.get_watermark_offsets(
        confluent_kafka.TopicPartition(topic, partition), timeout=10
    )
    if low <= stored <= high:
        return stored
    log.warning(
        "stored offset %d of %s[%d] is outside the partition (%d..%d): reading it from %d",
        stored,
        topic,
        partition,
        low,
        high,
        low,
        extra={"topic": topic},
    )
    return low


def _partition_ids(consumer: confluent_kafka.Consumer, topic: str) -> list[int]:
    """The topic's partition ids, [] while the broker does not know it."""
    metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def now_ms() -> int:
    return int(time.time() * 1000)


class SendResult:
    """The acknowledgement of one produced record, as a small future.

    ``add_callback(fn(metadata))`` / ``add_errback(fn(exc))`` run on the producer's
    delivery thread (at once when the outcome is already known); ``get`` blocks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._metadata: object = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[object], object]] = []
        self._errbacks: list[Callable[[BaseException], object]] = []

    def add_callback(self, fn: Callable[[object], object]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        if self._error is None:
            fn(self._metadata)

    def add_errback(self, fn: Callable[[BaseException], object]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._errbacks.append(fn)
                return
        if self._error is not None:
            fn(self._error)

    def get(self, timeout: float) -> object:
        """The record's metadata once acknowledged; raises the delivery error, or
        TimeoutError."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no acknowledgement within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._metadata

    def resolve(self, error: BaseException | None, metadata: object) -> None:
        with self._lock:
            self._error, self._metadata = error, metadata
            self._done.set()
            callbacks, errbacks = self._callbacks, self._errbacks
            self._callbacks, self._errbacks = [], []
        for fn in errbacks if error is not None else callbacks:
            try:
                fn(error if error is not None else metadata)
            except Exception:  # noqa: BLE001 - a callback must not stop deliveries
                log.exception("producer delivery callback failed")


class EventProducer:
    """Produces with librdkafka (confluent-kafka), whose C sender costs a fraction of
    a pure-Python producer's CPU per record (bench/README.md).

    A daemon thread serves delivery reports (``poll``), so ``SendResult`` callbacks
    fire without further sends.

    Linger (``Settings.kafka_linger_ms``, from the broker profile: 20 ms on tansu):
    the embedded broker's fetch cost grows with the number of record batches a
    partition holds, so a record per batch (librdkafka's 5 ms linger at a few hundred
    trial events/s) made every consumer of the trials topic slower as a run went on
    (bench/README.md, "Early-stop scale").
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        linger_ms: int | None = None,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.service = service
        self._producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "client.id": f"ladder-{service}",
                "acks": "all",
                "linger.ms": settings.kafka_linger_ms if linger_ms is None else linger_ms,
                # Fail a record after this long instead of librdkafka's 5 minutes.
                "delivery.timeout.ms": int(delivery_timeout_s * 1000),
                "logger": logging.getLogger("ladder.kafka.producer"),
            }
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_deliveries, name=f"produce-{service}", daemon=True
        )
        self._poller.start()

    def _serve_deliveries(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(
        self,
        topic: str,
        key: str,
        message: Message | bytes,
        headers: telemetry.Headers | None = None,
        wait: bool = False,
    ) -> SendResult:
        """Send one record; ``wait`` blocks until the broker acknowledged it. The
        returned ``SendResult`` lets a caller act on the acknowledgement without
        blocking."""
        value = message if isinstance(message, bytes) else message.SerializeToString()
        result = SendResult()

        def delivered(error: object, record: object) -> None:
            result.resolve(confluent_kafka.KafkaException(error) if error else None, record)

        with telemetry.kafka_producer_span(topic, key):
            record_headers = telemetry.inject_headers(headers)
            while True:
                try:
                    self._producer.produce(
                        topic,
                        key=key.encode(),
                        value=value,
                        headers=record_headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
        if wait:
            result.get(timeout=30)
        return result

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
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.flush(10)
        self._closed.set()
        self._poller.join(5)


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
        pace_s: float = 0.0,
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
        # A consumer that can lag by a fraction of a second reads at most every
        # ``pace_s`` seconds once caught up, and librdkafka stops fetching meanwhile:
        # fewer, fuller fetches. The embedded broker charges each fetch in proportion to
        # the batches the partition holds; six consumers re-fetching the decisions
        # topic on every new batch made it the busiest process of a 1,000-worker run
        # (deploy/local/README.md). Only where the broker profile asks for it.
        self.pace_s = pace_s if settings.broker.pace_consumers else 0.0
        # Where a fetch skipped offsets, the partition is read again (ladder.gaps); no
        # commit until it was, or a restart would resume past the skipped records.
        self._contiguous = settings.gap_guarded_topics
        self._gaps = GapGuard()
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

    def _consumer(self) -> confluent_kafka.Consumer:
        options: dict[str, object] = {
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "client.id": f"ladder-{self.service}",
            # librdkafka wants a group id even for assigned partitions; without
            # subscribe() it never joins the group, and this loop never commits there.
            "group.id": self.group_id or f"ladder-{self.service}-unjoined",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if self.from_beginning else "latest",
            "fetch.wait.max.ms": self.settings.broker.fetch_max_wait_ms,
            "logger": logging.getLogger("ladder.kafka.consumer"),
        }
        if self.pace_s > 0:
            options["queued.min.messages"] = PACED_PREFETCH
            options["fetch.queue.backoff.ms"] = int(self.pace_s * 1000)
        self._gaps.forget()  # a new consumer: positions come from the offsets again
        if self.group_id:
            options.update(group_timeouts(self.settings.broker))
            consumer = confluent_kafka.Consumer(options)
            consumer.subscribe(self.topics, on_assign=lambda *_: self._gaps.forget())
            return consumer
        consumer = confluent_kafka.Consumer(options)
        partitions: list[tuple[str, int]] = []
        deadline = time.monotonic() + 60
        for topic in self.topics:
            ids = _partition_ids(consumer, topic)
            while not ids and time.monotonic() < deadline and not self._stop.is_set():
                self._stop.wait(0.2)
                ids = _partition_ids(consumer, topic)
            partitions.extend((topic, p) for p in ids)
        if not partitions:
            consumer.close()
            # Same outcome as before: the loop logs it and reconnects.
            raise RuntimeError(f"no partitions found for topics {self.topics}")
        resume = dict(self.start_offsets()) if self.start_offsets else {}
        fresh = (
            confluent_kafka.OFFSET_BEGINNING if self.from_beginning else confluent_kafka.OFFSET_END
        )
        consumer.assign(
            [
                confluent_kafka.TopicPartition(
                    topic, p, _resume_offset(consumer, topic, p, resume.get((topic, p)), fresh)
                )
                for topic, p in partitions
            ]
        )
        return consumer

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                started = time.monotonic()
                messages = _next_records(consumer)
                self.ready.set()
                self._handle_batch(consumer, messages)
                if messages and self.group_id and not self._gaps.rereading:
                    consumer.commit(asynchronous=False)
                if 0 < len(messages) < MAX_POLL_RECORDS and self.pace_s > 0:
                    # Caught up: wait for more to gather (behind, it reads on at once).
                    self._stop.wait(self.pace_s - (time.monotonic() - started))
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

    def _handle_batch(
        self, consumer: confluent_kafka.Consumer, messages: list[confluent_kafka.Message]
    ) -> None:
        """Handle the batch's records, except those after offsets a fetch skipped on a
        contiguous topic: that partition is sought back and read again."""
        for raw in messages:
            error = raw.error()
            if error is not None:
                if error.fatal():
                    raise confluent_kafka.KafkaException(error)
                log.warning("consumer: %s", error)  # librdkafka retries these
                continue
            topic = raw.topic()
            if topic in self._contiguous and not self._gaps.admit(
                (topic, raw.partition()), raw.offset()
            ):
                continue
            self._process(raw)
        for (topic, partition), offset in self._gaps.end_batch():
            consumer.seek(confluent_kafka.TopicPartition(topic, partition, offset))

    def _process(self, raw: confluent_kafka.Message) -> None:
        record = Record(
            topic=raw.topic(),
            partition=raw.partition(),
            offset=raw.offset(),
            key=raw.key(),
            value=raw.value(),
            headers=list(raw.headers() or []),
            timestamp_ms=raw.timestamp()[1],
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
