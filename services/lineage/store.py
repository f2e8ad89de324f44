"""The lineage store: applies decoded events to SQLite or PostgreSQL, exactly once.

``LineageStore.apply`` takes a batch of events with their Kafka position and, in
ONE transaction, skips those at or behind the stored offset of their partition
(Kafka redelivery after a restart), inserts the rest under their natural keys
(a record published twice changes nothing) and advances the offsets. Metric points,
most of the traffic, depend on no other row: a batch's points go in one
``executemany`` (one round trip on PostgreSQL, in pipeline mode), in arrival order
so the first write of a point still wins, and each touched trial's curve end
(``curve_ends``: its point count and last point) is updated with them. A crash
before the commit loses both the rows and the offsets, so the records are read
again; after the commit, never.

Reads live in ``services.lineage.queries``; the schema in ``schema.py``; the
connection and the SQL both engines accept in ``db.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

from google.protobuf.message import Message
from ladder.runenv import packages_hash as packages_hash_of
from ladder.v1 import events_pb2, study_pb2, trial_pb2
from opentelemetry import context as otel_context

from services.lineage import curve_ends, projection
from services.lineage.db import Database
from services.lineage.projection import AttemptRow, TrialRow
from services.lineage.schema import migrate

log = logging.getLogger("ladder.lineage.store")


@dataclass(frozen=True)
class Source:
    """Where a record was read: topic, partition, offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Skipped:
    """A consumed record that is not stored, only counted under ``counter``."""

    counter: str
    reason: str


Event = (
    events_pb2.StudyEvent
    | events_pb2.TrialEvent
    | events_pb2.MetricReport
    | events_pb2.Decision
    | events_pb2.RungCrossing
    | events_pb2.DeadLetter
    | Skipped
)


@dataclass(frozen=True)
class Ingest:
    source: Source
    event: Event
    payload: bytes | None = None  # the raw record, kept for dead-lettering
    # The record's CONSUMER span context, so logs written while storing it
    # (on the writer thread) carry its trace id.
    trace_context: otel_context.Context | None = None


def _digest(message: Message) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def _real(value: float) -> float | None:
    """NaN is stored as NULL (SQLite would turn it into NULL anyway; both engines
    then agree)."""
    return None if math.isnan(value) else value


def _column(value: object) -> object:
    """A row value as both engines store it: NaN as NULL, booleans as 0 / 1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return _real(value)
    return value


def _from_real(value: float | None) -> float:
    return math.nan if value is None else value


def _upsert(table: str, columns: list[str], key: tuple[str, ...]) -> str:
    """Insert a whole row, or replace the one with the same ``key``."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_TRIAL_COLUMNS = [f.name for f in fields(TrialRow)]
_ATTEMPT_COLUMNS = [f.name for f in fields(AttemptRow)]
_SAVE_TRIAL = _upsert("trials", _TRIAL_COLUMNS, ("trial_id",))
_SAVE_ATTEMPT = _upsert("attempts", _ATTEMPT_COLUMNS, ("trial_id", "attempt_id"))
_SAVE_STUDY = _upsert(
    "studies",
    ["study_id", "name", "direction", "metric", "dataset_id", "code_commit", "version_key",
     "study_pb"],
    ("study_id",),
)
_INSERT_METRIC = (
    "INSERT INTO metric_points (trial_id, attempt_id, step, value, study_id, "
    "metric, worker_id, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_ENVIRONMENT_COLUMNS = [
    "python", "os", "hostname", "cpu_model", "cpu_count", "gpu_model", "gpu_count",
    "code_commit", "code_dirty", "packages_hash", "dataset_id", "entry_point",
]


class LineageStore:
    """The single writer. Not thread-safe: one ingest thread owns it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._metric_rows: list[tuple[object, ...]] = []
        migrate(db)

    @property
    def database(self) -> Database:
        return self._db

    def apply(self, items: Sequence[Ingest]) -> int:
        """Apply ``items`` in one transaction; returns how many were not yet applied."""
        self._metric_rows.clear()
        with self._db.write() as db:
            next_offsets: dict[tuple[str, int], int] = {}
            applied = 0
            for item in items:
                position = (item.source.topic, item.source.partition)
                if position not in next_offsets:
                    next_offsets[position] = self._stored_offset(position)
                if item.source.offset < next_offsets[position]:
                    continue  # already in the store: a redelivery
                token = otel_context.attach(item.trace_context) if item.trace_context else None
                try:
                    self._apply_one(item)
                finally:
                    if token is not None:
                        otel_context.detach(token)
                next_offsets[position] = item.source.offset + 1
                applied += 1
            if self._metric_rows:
                inserted = db.executemany(_INSERT_METRIC, self._metric_rows)
                curve_ends.record(db, self._metric_rows, inserted)
            db.executemany(
                "INSERT INTO consumer_offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, part, nxt) for (topic, part), nxt in next_offsets.items()],
            )
        return applied

    def _stored_offset(self, position: tuple[str, int]) -> int:
        row = self._db.execute(
            "SELECT next_offset FROM consumer_offsets WHERE topic = ? AND partition = ?",
            position,
        ).fetchone()
        return row[0] if row else -1

    def _apply_one(self, item: Ingest) -> None:
        event, source = item.event, item.source
        if isinstance(event, events_pb2.MetricReport):
            self._metric(event)
        elif isinstance(event, events_pb2.TrialEvent):
            self._trial_event(event, source)
        elif isinstance(event, events_pb2.Decision):
            self._decision(event, source)
        elif isinstance(event, events_pb2.StudyEvent):
            self._study(event)
        elif isinstance(event, events_pb2.RungCrossing):
            self._rung(event)
        elif isinstance(event, events_pb2.DeadLetter):
            self._dead_letter(event, source)
        elif isinstance(event, Skipped):
            self._count(event.counter)
        else:
            raise TypeError(f"cannot store {type(event).__name__}")

    def _count(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO ingest_counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = ingest_counters.value + 1",
            (name,),
        )

    def _metric(self, report: events_pb2.MetricReport) -> None:
        self._metric_rows.append(
            (
                report.trial_id,
                report.attempt_id,
                report.step,
                _real(report.value),
                report.study_id,
                report.metric,
                report.worker_id,
                report.ts_ms,
            ),
        )

    def _study(self, event: events_pb2.StudyEvent) -> None:
        study = event.study
        # Newest wins; equal timestamps fall back to the more advanced snapshot.
        version_key = (
            f"{max(event.ts_ms, 0):020d}{max(study.trials_suggested, 0):020d}{study.state:03d}"
        )
        row = self._db.execute(
            "SELECT version_key FROM studies WHERE study_id = ?", (study.study_id,)
        ).fetchone()
        if row is not None and row[0] >= version_key:
            return
        config = study.config
        self._db.execute(
            _SAVE_STUDY,
            (
                study.study_id,
                config.name,
                config.direction,
                config.metric,
                config.dataset_id,
                config.code_commit,
                version_key,
                study.SerializeToString(deterministic=True),
            ),
        )
        log.info(
            "study %s (%s) recorded", study.study_id, study_pb2.StudyState.Name(study.state),
            extra={"study_id": study.study_id},
        )

    def _trial_event(self, event: events_pb2.TrialEvent, source: Source) -> None:
        trial = event.trial
        inserted = self._db.execute(
            "INSERT INTO trial_events (topic, partition, \"offset\", digest, trial_id, "
            "study_id, kind, state, attempt_id, attempt_number, ts_ms, reason, event_pb) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                source.topic,
                source.partition,
                source.offset,
                _digest(event),
                trial.trial_id,
                trial.study_id,
                event.kind,
                projection.event_state(event),
                trial.attempt_id,
                trial.attempt_number,
                event.ts_ms,
                event.reason,
                event.SerializeToString(deterministic=True),
            ),
        ).rowcount
        if not inserted:
            return  # the same event published again
        current = self._load_trial(trial.trial_id)
        merged = projection.merge_trial(current, event)
        if merged != current:
            self._save(_SAVE_TRIAL, merged)
        attempt = self._load_attempt(trial.trial_id, trial.attempt_id)
        merged_attempt = projection.merge_attempt(attempt, event)
        if merged_attempt is not None and merged_attempt != attempt:
            self._save(_SAVE_ATTEMPT, merged_attempt)
        if event.HasField("run_environment") and trial.attempt_id:
            self._run_environment(trial.trial_id, trial.attempt_id, event.run_environment)
        if merged.state != (current.state if current else None):
            log.info(
                "trial %s is %s", trial.trial_id, projection.TS.Name(merged.state),
                extra={"trial_id": trial.trial_id, "study_id": trial.study_id},
            )

    def _load_trial(self, trial_id: str) -> TrialRow | None:
        row = self._db.execute("SELECT * FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        if row is None:
            return None
        values = {name: row[name] for name in _TRIAL_COLUMNS}
        values["has_final_value"] = bool(values["has_final_value"])
        for name in ("final_value", "predicted_mean", "predicted_std"):
            values[name] = _from_real(values[name])
        return TrialRow(**values)

    def _load_attempt(self, trial_id: str, attempt_id: str) -> AttemptRow | None:
        if not attempt_id:
            return None
        row = self._db.execute(
            "SELECT * FROM attempts WHERE trial_id = ? AND attempt_id = ?", (trial_id, attempt_id)
        ).fetchone()
        return AttemptRow(**{name: row[name] for name in _ATTEMPT_COLUMNS}) if row else None

    def _save(self, upsert: str, row: TrialRow | AttemptRow) -> None:
        self._db.execute(upsert, [_column(v) for v in astuple(row)])

    def _run_environment(
        self, trial_id: str, attempt_id: str, environment: trial_pb2.RunEnvironment
    ) -> None:
        # A list sent without its hash is keyed as the worker would have keyed it.
        packages_hash = environment.packages_hash or (
            packages_hash_of(environment.packages) if environment.packages else ""
        )
        if environment.packages:
            self._db.execute(
                "INSERT INTO run_packages (packages_hash, packages) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (packages_hash, json.dumps(list(environment.packages))),
            )
        values = {name: getattr(environment, name) for name in _ENVIRONMENT_COLUMNS}
        values.update(packages_hash=packages_hash, code_dirty=int(environment.code_dirty))
        self._db.execute(
            f"INSERT INTO attempt_environments (trial_id, attempt_id, "
            f"{', '.join(_ENVIRONMENT_COLUMNS)}) VALUES (?, ?, "
            f"{', '.join('?' for _ in _ENVIRONMENT_COLUMNS)}) ON CONFLICT DO NOTHING",
            (trial_id, attempt_id, *values.values()),
        )

    def _decision(self, decision: events_pb2.Decision, source: Source) -> None:
        # ts_ms is when early-stop emitted it: a replaying early-stop re-emits
        # the same decision later, which is still the same decision.
        identity = events_pb2.Decision()
        identity.CopyFrom(decision)
        identity.ClearField("ts_ms")
        self._db.execute(
            "INSERT INTO decisions (topic, partition, \"offset\", digest, trial_id, "
            "study_id, action, rung, ts_ms, decision_pb) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                source.topic,
                source.partition,
                source.offset,
                _digest(identity),
                decision.trial_id,
                decision.study_id,
                decision.action,
                decision.rung,
                decision.ts_ms,
                decision.SerializeToString(deterministic=True),
            ),
        )

    def _rung(self, crossing: events_pb2.RungCrossing) -> None:
        self._db.execute(
            "INSERT INTO rung_crossings (trial_id, rung, study_id, resource, "
            "smoothed_value, raw_value, diverged, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                crossing.trial_id,
                crossing.rung,
                crossing.study_id,
                _real(crossing.resource),
                _real(crossing.smoothed_value),
                _real(crossing.raw_value),
                int(crossing.diverged),
                crossing.ts_ms,
            ),
        )

    def _dead_letter(self, letter: events_pb2.DeadLetter, source: Source) -> None:
        source_key = None
        if letter.source_offset >= 0:
            source_key = (
                f"{letter.source_partition}:{letter.source_offset}:{letter.service}:"
                f"{letter.reason}"
            )
        inserted = self._db.execute(
            "INSERT INTO dead_letters (topic, partition, \"offset\", source_topic, "
            "source_key, reason, service, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                source.topic,
                source.partition,
                source.offset,
                letter.source_topic,
                source_key,
                letter.reason,
                letter.service,
                letter.ts_ms,
            ),
        ).rowcount
        if inserted:
            log.warning(
                "dead letter from %s (service %s): %s",
                letter.source_topic, letter.service or "?", letter.reason,
                extra={"topic": letter.source_topic},
            )
