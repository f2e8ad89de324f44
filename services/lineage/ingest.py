"""From Kafka records to store transactions.

``to_ingest`` decodes one record (pure). ``RecordHandler`` is the ConsumerLoop
handler: it decodes and hands the result to the ``Ingestor``, the single writer
thread, which commits batches of records (rows and offsets together) so the
store keeps up with per-step metric traffic.

Undecodable records are never silently dropped:

- metrics: skipped and counted (``metrics_undecodable``) with a warning;
  early-stop owns dead-lettering the metrics topic, a second copy would be noise;
- dead-letter topic: skipped and counted (dead-lettering a dead letter loops);
- every other topic: dead-lettered here with the reason, then counted
  (``dead_lettered:<topic>``) so the record's offset is passed exactly once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import replace

from ladder.bus import EventProducer, Record
from ladder.codec import BadRecord, decode, parse_metric_report
from ladder.config import Topics
from ladder.v1 import events_pb2
from opentelemetry import context as otel_context

from services.lineage.db import TRANSIENT
from services.lineage.store import Event, Ingest, LineageStore, Skipped, Source

log = logging.getLogger("ladder.lineage.ingest")


def _short(topics: Topics, topic: str) -> str:
    return topic[len(topics.prefix):] if topic.startswith(topics.prefix) else topic


def _decode_strict(topics: Topics, record: Record) -> Event:
    """Decode a studies / trials / decisions / rungs record or raise BadRecord."""
    if record.topic == topics.studies:
        study = decode(events_pb2.StudyEvent, record.value)
        if not study.study.study_id:
            raise BadRecord("study event lacks study.study_id")
        return study
    if record.topic == topics.trials:
        event = decode(events_pb2.TrialEvent, record.value)
        if not event.trial.trial_id or not event.trial.study_id:
            raise BadRecord("trial event lacks trial.trial_id or trial.study_id")
        if event.kind == events_pb2.TrialEventKind.Value("TRIAL_EVENT_KIND_UNSPECIFIED"):
            raise BadRecord(f"trial event for {event.trial.trial_id!r} has no kind")
        return event
    if record.topic == topics.decisions:
        decision = decode(events_pb2.Decision, record.value)
        if not decision.trial_id or not decision.study_id:
            raise BadRecord("decision lacks trial_id or study_id")
        return decision
    if record.topic == topics.rungs:
        crossing = decode(events_pb2.RungCrossing, record.value)
        if not crossing.trial_id or not crossing.study_id:
            raise BadRecord("rung crossing lacks trial_id or study_id")
        return crossing
    raise BadRecord(f"lineage does not consume topic {record.topic!r}")


def _decode_or_skip(
    record: Record, parse: Callable[[bytes], Event], what: str, counter: str
) -> Event:
    """Decode a record of a topic whose unreadable records lineage only counts (under
    ``counter``) and logs, never dead-letters."""
    try:
        return parse(record.value)
    except BadRecord as exc:
        log.warning(
            "skipping undecodable %s %s[%d]@%d: %s",
            what, record.topic, record.partition, record.offset, exc,
            extra={"topic": record.topic},
        )
        return Skipped(counter, str(exc))


def _dead_letter(value: bytes) -> events_pb2.DeadLetter:
    return decode(events_pb2.DeadLetter, value)


def to_ingest(topics: Topics, record: Record) -> Ingest:
    """Decode ``record``; raises BadRecord only for records that must be dead-lettered."""
    source = Source(record.topic, record.partition, record.offset)
    if record.topic == topics.metrics:
        event = _decode_or_skip(
            record, parse_metric_report, "metric record", "metrics_undecodable"
        )
    elif record.topic == topics.dead_letter:
        event = _decode_or_skip(record, _dead_letter, "dead letter", "dead_letter_undecodable")
    else:
        event = _decode_strict(topics, record)
    return Ingest(source, event, record.value)


class Ingestor:
    """The writer thread: applies submitted records in batched transactions.

    Transient store errors (SQLite locked or I/O; PostgreSQL unreachable, restarted,
    a serialization failure) retry the batch after a back-off, on a new connection
    when the old one broke. A record that fails on its own (a bug or a value the
    store cannot hold, e.g. a NUL character in a PostgreSQL text) would
    block ingestion forever, so it is handed to ``on_poison`` (dead-letter)
    and counted instead; the rest of its batch is applied normally.
    """

    def __init__(
        self,
        store: LineageStore,
        on_poison: Callable[[Ingest, Exception], None],
        max_batch: int = 500,
        queue_size: int = 5000,
    ) -> None:
        self._store = store
        self._on_poison = on_poison
        self._max_batch = max_batch
        self._queue: queue.Queue[Ingest] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lineage-writer", daemon=True)
        self.applied = 0

    def start(self) -> Ingestor:
        self._thread.start()
        return self

    def submit(self, item: Ingest) -> None:
        """Queue ``item``; blocks while the writer is behind (back-pressure)."""
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._stop.is_set():
                    # Not stored, offset not advanced: read again after restart.
                    raise RuntimeError("lineage writer stopped") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Apply what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._apply(batch)

    def _apply(self, batch: list[Ingest]) -> None:
        attempt = 0
        while True:
            try:
                self.applied += self._store.apply(batch)
                return
            except TRANSIENT:
                attempt += 1
                log.exception("lineage store busy or failing (attempt %d); retrying", attempt)
                if self._stop.wait(min(5.0, 0.2 * 2**attempt)) and attempt >= 3:
                    log.error("giving up on %d records at shutdown; re-read on restart", len(batch))
                    return
            except Exception as exc:  # noqa: BLE001 - isolate the record that cannot be stored
                if len(batch) == 1:
                    self._poison(batch[0], exc)
                    return
                log.exception("lineage batch failed; applying its %d one by one", len(batch))
                for item in batch:
                    self._apply([item])
                return

    def _poison(self, item: Ingest, error: Exception) -> None:
        log.error(
            "cannot store %s[%d]@%d: %s", item.source.topic, item.source.partition,
            item.source.offset, error, extra={"topic": item.source.topic},
        )
        attempt = 0
        while True:
            try:
                self._on_poison(item, error)
                break
            except Exception:  # noqa: BLE001 - Kafka down: keep the offset, retry
                attempt += 1
                log.exception("cannot dead-letter the unstorable record (attempt %d)", attempt)
                if self._stop.wait(min(5.0, 0.2 * 2**attempt)) and attempt >= 3:
                    return
        self._apply([Ingest(item.source, Skipped(f"unstorable:{item.source.topic}", str(error)))])


def dead_letter_unstorable(producer: EventProducer) -> Callable[[Ingest, Exception], None]:
    """The ``Ingestor`` poison hook: the record decoded but the store refused it."""

    def send(item: Ingest, error: Exception) -> None:
        producer.dead_letter(
            item.source.topic,
            f"lineage store cannot hold it: {error}",
            item.payload,
            item.source.partition,
            item.source.offset,
        )

    return send


class RecordHandler:
    """The ConsumerLoop handler: decode, dead-letter what cannot be, queue the rest."""

    def __init__(self, topics: Topics, ingestor: Ingestor, producer: EventProducer) -> None:
        self._topics = topics
        self._ingestor = ingestor
        self._producer = producer

    def __call__(self, record: Record) -> None:
        try:
            item = to_ingest(self._topics, record)
        except BadRecord as exc:
            # Dead-letter first, then record that the offset was dealt with: a
            # crash in between dead-letters it twice, never zero times.
            self._producer.dead_letter(
                record.topic, str(exc), record.value, record.partition, record.offset
            )
            item = Ingest(
                Source(record.topic, record.partition, record.offset),
                Skipped(f"dead_lettered:{_short(self._topics, record.topic)}", str(exc)),
            )
        self._ingestor.submit(replace(item, trace_context=otel_context.get_current()))
