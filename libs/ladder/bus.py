"""The Kafka event bus for the services that are not Faust apps.

``EventProducer`` serialises protobuf events, stamps W3C trace context into the
record headers and wraps each send in a PRODUCER span. ``ConsumerLoop`` reads
topics in a thread, processes each record inside a CONSUMER span whose parent is
the producer's context, routes undecodable records to the dead-letter topic with
the reason, and commits offsets only after the handler returned (at-least-once;
every handler in Ladder is idempotent so a replay changes nothing).

No record stops a partition for good, and none stops another partition
(``RecordRetries``, with the failure policy of ``ladder.poison``): a record no retry can
fix (``BadRecord``, a value out of range, ...) is dead-lettered at once; one whose
handler fails because Redis or the broker is away is retried with back-off until they
are back, its partition paused meanwhile while the others flow; one whose handler fails
otherwise is retried ``LADDER_CONSUMER_MAX_ATTEMPTS`` times, then dead-lettered with the
exception. A record held longer than ``LADDER_CONSUMER_STUCK_SECONDS`` makes the
service's health NOT_SERVING, with the reason logged, until it moves on.

A dead letter carries at most ``DEAD_LETTER_PAYLOAD_BYTES`` (64 KiB) of the record and
``DEAD_LETTER_REASON_CHARS`` of the reason, the truncation stated in the reason.

Both sit on librdkafka (confluent-kafka): with kafka-python the per-record cost of
producing and consuming was most of what the evaluate, suggest and lineage services
spent under a 1,000-worker load.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import confluent_kafka
from google.protobuf.message import Message

from ladder import limits, signing, telemetry
from ladder.codec import BadRecord
from ladder.config import BrokerProfile, Settings
from ladder.gaps import GapGuard
from ladder.poison import PoisonPolicy, describe, gives_up, is_outage
from ladder.retry import backoff_delay
from ladder.v1 import events_pb2

if TYPE_CHECKING:
    from ladder.grpcserver import ServiceHost

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


# How long a consumer's start waits for a fetch to confirm a partition's end (per partition
# whose stored offset is beyond the ListOffsets answer); without one the partition is read
# again from its start, which loses nothing.
END_PROBE_TIMEOUT_S = 5.0


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
    if stored > high:
        high = max(high, _fetched_high_watermark(consumer, topic, partition, high))
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


def _fetched_high_watermark(
    consumer: confluent_kafka.Consumer, topic: str, partition: int, listed: int
) -> int:
    """The partition's end as a fetch response gives it, or -1 without an answer within
    ``END_PROBE_TIMEOUT_S``. tansu 0.6 answers ListOffsets with the base offset of the
    partition's last batch + 1 (and with 1 after a restart), so a stored offset inside
    that batch looks past the end and every restart would read the partition again
    from its start; the high watermark of its Fetch responses is right."""
    consumer.assign([confluent_kafka.TopicPartition(topic, partition, max(listed - 1, 0))])
    tp = confluent_kafka.TopicPartition(topic, partition)
    try:
        deadline = time.monotonic() + END_PROBE_TIMEOUT_S
        while time.monotonic() < deadline:
            consumer.poll(0.1)  # what it returns is read again after the real assign
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                return high
        return -1
    finally:
        consumer.unassign()


def _partition_ids(consumer: confluent_kafka.Consumer, topic: str) -> list[int]:
    """The topic's partition ids, [] while the broker does not know it."""
    metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def now_ms() -> int:
    return int(time.time() * 1000)


# A dead letter must stay publishable: a record near the broker's maximum message size
# (1 MiB by default) plus its reason would not be, and its partition would stop there.
DEAD_LETTER_PAYLOAD_BYTES = limits.DEAD_LETTER_PAYLOAD  # 64 KiB
DEAD_LETTER_REASON_CHARS = limits.REASON  # 4096


def dead_letter_record(
    service: str,
    source_topic: str,
    reason: str,
    payload: bytes | None,
    partition: int = -1,
    offset: int = -1,
) -> events_pb2.DeadLetter:
    """The dead letter of one record: its source, the reason (at most
    ``DEAD_LETTER_REASON_CHARS``) and the first ``DEAD_LETTER_PAYLOAD_BYTES`` of it."""
    payload = payload or b""
    # A reason quoting the bad input can hold lone surrogates, which a protobuf string
    # refuses.
    reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    notes = ""
    if len(payload) > DEAD_LETTER_PAYLOAD_BYTES:
        notes = f" [payload truncated to {DEAD_LETTER_PAYLOAD_BYTES} of {len(payload)} bytes]"
        payload = payload[:DEAD_LETTER_PAYLOAD_BYTES]
    # Cut last, the notes counted: the whole reason, notes included, must fit its limit.
    if len(reason) + len(notes) > DEAD_LETTER_REASON_CHARS:
        notes = f" [+{len(reason)} chars]{notes}"
        reason = reason[: DEAD_LETTER_REASON_CHARS - len(notes)]
    reason += notes
    return events_pb2.DeadLetter(
        source_topic=source_topic,
        source_partition=partition,
        source_offset=offset,
        reason=reason,
        payload=payload,
        service=service,
        ts_ms=now_ms(),
    )


@dataclass
class Held:
    """A record whose partition waits for it to be handled."""

    offset: int
    since: float
    attempts: int = 0
    retry_at: float = math.inf
    error: str = ""
    paused: bool = False  # its partition is paused until ``retry_at``
    # Given up on: the dead letter's reason, while sending it (or ``on_done`` after it)
    # still fails. The handler is not run again for it.
    dead_letter: str | None = None
    lettered: bool = False  # the dead letter is on its topic; only ``on_done`` is left


@dataclass(frozen=True)
class Verdict:
    """What to do with a record the handler failed on: dead-letter it now
    (``retry_at`` None), or read its partition again from it at ``retry_at``."""

    attempts: int
    retry_at: float | None


@dataclass
class RecordRetries:
    """Per partition, the record it is held at and how often it failed (pure: the
    clock is passed in)."""

    policy: PoisonPolicy = field(default_factory=PoisonPolicy)
    _held: dict[Hashable, Held] = field(default_factory=dict)

    def failed(self, tp: Hashable, offset: int, exc: BaseException, now: float) -> Verdict:
        held = self._held.get(tp)
        if held is None or held.offset != offset:
            held = self._held[tp] = Held(offset, since=now)
        held.attempts += 1
        held.error = describe(exc)
        if gives_up(exc, held.attempts, self.policy.max_attempts):
            del self._held[tp]
            return Verdict(held.attempts, None)
        held.retry_at = now + backoff_delay(held.attempts)
        held.paused = True
        return Verdict(held.attempts, held.retry_at)

    def finish_failed(
        self,
        tp: Hashable,
        offset: int,
        reason: str,
        lettered: bool,
        exc: BaseException,
        now: float,
    ) -> Verdict:
        """Sending the dead letter of a record given up on (``lettered``: the
        ``on_done`` after it) failed with ``exc``: only that step is tried again, after
        a back-off, whatever ``exc`` is. Never given up on: the record has already had
        its attempts, and the partition must not move on without its dead letter."""
        held = self._held.get(tp)
        if held is None or held.offset != offset:
            held = self._held[tp] = Held(offset, since=now)
        held.attempts += 1
        held.error = f"dead letter not sent: {describe(exc)}"
        held.dead_letter = reason
        held.lettered = held.lettered or lettered
        held.retry_at = now + backoff_delay(held.attempts)
        held.paused = True
        return Verdict(held.attempts, held.retry_at)

    def finishing(self, tp: Hashable, offset: int) -> tuple[str, bool] | None:
        """For the held record at ``offset`` when what is left of it is its dead
        letter: the letter's reason and whether it was sent already."""
        held = self._held.get(tp)
        if held is None or held.offset != offset or held.dead_letter is None:
            return None
        return held.dead_letter, held.lettered

    def succeeded(self, tp: Hashable) -> None:
        self._held.pop(tp, None)

    def paused(self, tp: Hashable) -> bool:
        """True while ``tp``'s records are not handed on (waiting out a back-off)."""
        held = self._held.get(tp)
        return held is not None and held.paused

    def due(self, now: float) -> list[tuple[Hashable, int]]:
        """The paused partitions whose back-off is over, with the offset to read them
        again from; they count as resumed."""
        due = []
        for tp, held in self._held.items():
            if held.paused and held.retry_at <= now:
                held.paused = False
                due.append((tp, held.offset))
        return due

    def unpause_all(self) -> None:
        """A new consumer fetches from the stored offsets, unpaused."""
        for held in self._held.values():
            held.paused = False

    def forget_all(self) -> None:
        """A group rebalance: every partition restarts from its committed offset, which
        no held record was committed past, so whoever owns it now reads it again; a
        record kept here for a partition that moved away would block commits for good."""
        self._held.clear()

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def stuck(self, now: float) -> str | None:
        """Why the consumer is stuck: the record held longest, once held longer than
        ``stuck_after_s``; None otherwise."""
        after = self.policy.stuck_after_s
        late = [(tp, h) for tp, h in self._held.items() if now - h.since > after]
        if not late:
            return None
        tp, held = min(late, key=lambda item: item[1].since)
        return (
            f"record {tp}@{held.offset} failed {held.attempts} times over "
            f"{now - held.since:.0f}s (last: {held.error})"
        )


def health_of(host: ServiceHost) -> Callable[[str | None], None]:
    """A ConsumerLoop ``on_health`` that makes ``host``'s health NOT_SERVING while the
    consumer is stuck (the reason logged) and SERVING again when it moves on."""

    def report(reason: str | None) -> None:
        if host.stopped.is_set():
            return  # stopping: health already says NOT_SERVING
        if reason is None:
            log.warning("%s: consumer moving again; health SERVING", host.name)
        else:
            log.error("%s: consumer stuck, health NOT_SERVING: %s", host.name, reason)
        host.set_serving(reason is None)

    return report


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


# How long past delivery.timeout.ms a waiting send expects librdkafka's delivery report
# (it scans for timed-out records about once a second).
DELIVERY_REPORT_GRACE_S = 5.0


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
        self.delivery_timeout_s = delivery_timeout_s
        # Records of the signed topics carry the service's HMAC (ladder.signing).
        self._keyring = signing.keyring(settings.state_dir)
        self._signed = signing.signed_topics(settings.topics)
        self._producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "client.id": f"ladder-{service}",
                "acks": "all",
                "linger.ms": settings.kafka_linger_ms if linger_ms is None else linger_ms,
                # Fail a record after this long instead of librdkafka's 5 minutes.
                "delivery.timeout.ms": int(delivery_timeout_s * 1000),
                "logger": logging.getLogger("ladder.kafka.producer"),
                **settings.kafka_security(service).confluent(),
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

        key_bytes = key.encode()
        with telemetry.kafka_producer_span(topic, key):
            record_headers = telemetry.inject_headers(headers)
            if topic in self._signed:
                record_headers.extend(self._keyring.sign(topic, key_bytes, value))
            while True:
                try:
                    self._producer.produce(
                        topic,
                        key=key_bytes,
                        value=value,
                        headers=record_headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
        if wait:
            # librdkafka keeps retrying a record until delivery.timeout.ms, then reports
            # it failed: wait for that report, not less (an SDK sets its timeout to its
            # retry budget so a broker restart loses no report), with a margin for the
            # report to arrive.
            result.get(timeout=self.delivery_timeout_s + DELIVERY_REPORT_GRACE_S)
        return result

    def dead_letter(
        self,
        source_topic: str,
        reason: str,
        payload: bytes | None,
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        record = dead_letter_record(self.service, source_topic, reason, payload, partition, offset)
        log.warning(
            "dead-lettered record from %s[%d]@%s: %s",
            source_topic,
            partition,
            offset,
            record.reason,
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
    A handler raising ``BadRecord`` sends the record to dead-letter; other failures
    are retried as the module docstring says, holding only the record's partition.
    ``on_done(record)`` runs once a record was handled or dead-lettered (a failure
    there retries the handled record; for a dead-lettered one, only what failed of the
    dead letter and ``on_done`` is retried, with back-off); ``on_health(reason |
    None)`` when the consumer gets stuck and when it moves again (``health_of``).
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
        on_done: Handler | None = None,
        on_health: Callable[[str | None], None] | None = None,
        policy: PoisonPolicy | None = None,
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
        self._retries = RecordRetries(policy or PoisonPolicy.from_env())
        # Records of the signed topics change nothing unless their producer signed
        # them (ladder.signing): anyone reaching the broker can publish.
        self._keyring = signing.keyring(settings.state_dir)
        self._signed = signing.signed_topics(settings.topics)
        self.on_done = on_done
        self.on_health = on_health
        self._stuck: str | None = None  # what on_health was last told
        self.dead_lettered = 0
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
            **self.settings.kafka_security(self.service).confluent(),
        }
        if self.pace_s > 0:
            options["queued.min.messages"] = PACED_PREFETCH
            options["fetch.queue.backoff.ms"] = int(self.pace_s * 1000)
        self._gaps.forget()  # a new consumer: positions come from the offsets again
        self._retries.unpause_all()
        if self.group_id:
            options.update(group_timeouts(self.settings.broker))
            consumer = confluent_kafka.Consumer(options)
            consumer.subscribe(self.topics, on_assign=lambda *_: self._reassigned())
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

    def _reassigned(self) -> None:
        self._gaps.forget()
        self._retries.forget_all()

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                started = time.monotonic()
                self._resume_due(consumer, started)
                messages = _next_records(consumer)
                self.ready.set()
                self._handle_batch(consumer, messages)
                self._report_health(time.monotonic())
                if (
                    messages
                    and self.group_id
                    and not self._gaps.rereading
                    and not self._retries.holding  # no commit past a held record
                ):
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
            tp = (topic, raw.partition())
            if self._retries.paused(tp):
                continue  # read again from the held record once its back-off is over
            if topic in self._contiguous and not self._gaps.admit(tp, raw.offset()):
                continue
            if not self._process(raw):
                # Held: nothing after it in its partition is handed on before it.
                partition = confluent_kafka.TopicPartition(topic, raw.partition(), raw.offset())
                consumer.pause([partition])
                consumer.seek(partition)
        for (topic, partition), offset in self._gaps.end_batch():
            consumer.seek(confluent_kafka.TopicPartition(topic, partition, offset))

    def _resume_due(self, consumer: confluent_kafka.Consumer, now: float) -> None:
        for (topic, partition), offset in self._retries.due(now):  # type: ignore[misc]
            tp = confluent_kafka.TopicPartition(topic, partition, offset)
            consumer.resume([tp])
            consumer.seek(tp)

    def _report_health(self, now: float) -> None:
        stuck, was = self._retries.stuck(now), self._stuck
        self._stuck = stuck
        if (stuck is None) != (was is None) and self.on_health is not None:
            self.on_health(stuck)

    @property
    def stuck(self) -> str | None:
        """Why the consumer is stuck (a record held past ``stuck_after_s``), else None."""
        return self._stuck

    def _process(self, raw: confluent_kafka.Message) -> bool:
        """Handle one record; False when it failed and is held for a retry."""
        record = Record(
            topic=raw.topic(),
            partition=raw.partition(),
            offset=raw.offset(),
            key=raw.key(),
            value=raw.value(),
            headers=list(raw.headers() or []),
            timestamp_ms=raw.timestamp()[1],
        )
        finishing = self._retries.finishing((record.topic, record.partition), record.offset)
        if finishing is not None:  # given up on before: the handler does not run again
            return self._finish(record, *finishing)
        if record.topic in self._signed:
            forged = self._keyring.problem(record.topic, record.key, record.value, record.headers)
            if forged is not None:
                return self._finish(record, forged, lettered=False)
        traced = record.topic not in self.untraced_topics
        parent = telemetry.extract_context(record.headers) if traced else None
        with (
            telemetry.kafka_consumer_span(record.topic, record.partition, record.offset, parent)
            if parent is not None
            else nullcontext()
        ):
            try:
                self.handler(record)
                if self.on_done is not None:
                    self.on_done(record)
            except Exception as exc:  # noqa: BLE001 - sorted by RecordRetries
                return self._failed(record, exc)
        self._retries.succeeded((record.topic, record.partition))
        self.processed += 1
        return True

    def _failed(self, record: Record, exc: Exception) -> bool:
        """Dead-letter ``record`` or hold it for a retry, as ``RecordRetries`` says."""
        tp = (record.topic, record.partition)
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        verdict = self._retries.failed(tp, record.offset, exc, time.monotonic())
        if verdict.retry_at is not None:
            log.warning(
                "handler failed on %s (attempt %d, %s); retrying in %.1fs",
                where,
                verdict.attempts,
                "outage" if is_outage(exc) else "error",
                verdict.retry_at - time.monotonic(),
                exc_info=not is_outage(exc),
                extra={"topic": record.topic},
            )
            return False
        reason = (
            str(exc)
            if isinstance(exc, BadRecord)
            else f"{self.service} failed {verdict.attempts} times on it: "
            f"{type(exc).__name__}: {exc}"
        )
        if not isinstance(exc, BadRecord):
            log.error("giving up on %s", where, exc_info=exc, extra={"topic": record.topic})
        return self._finish(record, reason, lettered=False)

    def _finish(self, record: Record, reason: str, lettered: bool) -> bool:
        """Dead-letter a record given up on, then ``on_done``; False when that failed
        and the record is held to retry this step alone (``lettered``: the dead
        letter was sent before, so only ``on_done`` is left)."""
        tp = (record.topic, record.partition)
        try:
            if not lettered:
                self.producer.dead_letter(
                    record.topic, reason, record.value, record.partition, record.offset
                )
                lettered = True
                self.dead_lettered += 1
            if self.on_done is not None:
                self.on_done(record)
        except Exception as exc:  # noqa: BLE001 - the broker away: hold it
            verdict = self._retries.finish_failed(
                tp, record.offset, reason, lettered, exc, time.monotonic()
            )
            log.exception(
                "cannot %s %s[%d]@%d; retrying in %.1fs",
                "finish dead-lettered" if lettered else "dead-letter",
                record.topic,
                record.partition,
                record.offset,
                (verdict.retry_at or 0.0) - time.monotonic(),
                extra={"topic": record.topic},
            )
            return False
        self._retries.succeeded(tp)
        self.processed += 1
        return True
