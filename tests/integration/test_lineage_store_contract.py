"""The lineage store's contract, on every engine it runs on (SQLite and PostgreSQL):
exactly-once ingestion by offsets, idempotent replay of republished events, state
progression whatever the arrival order, every query the LineageService answers, run
environments, migrations from an empty database and from version 1, and both engines
storing the same rows for the same events. Parametrized over ``ENGINES``; PostgreSQL
runs on the session's server (``postgres`` fixture), one fresh schema per database."""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from ladder.params import fill_params
from ladder.testing.postgres import PostgresServer
from ladder.v1 import events_pb2, study_pb2, trial_pb2

from services.lineage.db import (
    POSTGRESQL,
    SQLITE,
    Database,
    Location,
    open_database,
    parse_location,
)
from services.lineage.ingest import Ingestor
from services.lineage.queries import LineageQueries
from services.lineage.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate, schema_version
from services.lineage.store import Ingest, LineageStore, Skipped, Source

pytestmark = pytest.mark.integration

ENGINES = (SQLITE, POSTGRESQL)
TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind
STUDY = "study-1"


class Databases:
    """Opens empty databases of one engine and closes them all at the end."""

    def __init__(self, engine: str, folder: Path, postgres: Callable[[], PostgresServer]) -> None:
        self.engine = engine
        self._folder = folder
        self._postgres = postgres
        self._numbers = itertools.count()
        self._opened: list[Database] = []

    def location(self) -> Location:
        if self.engine == SQLITE:
            return parse_location(self._folder / f"lineage-{next(self._numbers)}.sqlite3")
        return parse_location(self._postgres().fresh_url("lineage"))

    def open(self, location: Location | None = None, readonly: bool = False) -> Database:
        db = open_database(location or self.location(), readonly=readonly)
        self._opened.append(db)
        return db

    def store(self, location: Location | None = None) -> LineageStore:
        return LineageStore(self.open(location))

    def close(self) -> None:
        for db in self._opened:
            db.close()


def _databases(engine: str, request: pytest.FixtureRequest, folder: Path) -> Databases:
    # The PostgreSQL server is started only when a PostgreSQL test runs.
    return Databases(engine, folder, lambda: request.getfixturevalue("postgres"))


@pytest.fixture(params=ENGINES)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    found = _databases(request.param, request, tmp_path)
    yield found
    found.close()


@pytest.fixture
def store(databases: Databases) -> LineageStore:
    return databases.store()


def queries(store: LineageStore) -> LineageQueries:
    return LineageQueries(store.database)


def study_event(direction: str = "MINIMIZE", ts_ms: int = 1000) -> events_pb2.StudyEvent:
    config = study_pb2.StudyConfig(
        name="digits",
        direction=study_pb2.Direction.Value(direction),
        metric="val_loss",
        dataset_id="digits@v3",
        code_commit="abc123",
    )
    study = study_pb2.Study(study_id=STUDY, config=config, state=study_pb2.STUDY_ACTIVE)
    return events_pb2.StudyEvent(study=study, ts_ms=ts_ms)


def trial_event(
    trial_id: str,
    kind: str,
    ts_ms: int,
    attempt: int = 0,
    state: str | None = None,
    final: float | None = None,
    checkpoint: tuple[str, float] | None = None,
    **event_fields: object,
) -> events_pb2.TrialEvent:
    trial = trial_pb2.Trial(
        trial_id=trial_id,
        study_id=STUDY,
        seed=7,
        attempt_number=attempt,
        attempt_id=f"{trial_id}-a{attempt}" if attempt else "",
        worker_id=f"worker-{attempt}" if attempt else "",
    )
    fill_params(trial.params, {"lr": 0.01, "layers": 3, "act": "relu"})
    if state:
        trial.state = TS.Value(state)
    if final is not None:
        trial.has_final_value = True
        trial.final_value = final
    if checkpoint:
        trial.checkpoint_uri, trial.checkpoint_step = checkpoint
    return events_pb2.TrialEvent(kind=KIND.Value(kind), trial=trial, ts_ms=ts_ms, **event_fields)


def metric(trial_id: str, step: float, value: float, attempt: int = 1) -> events_pb2.MetricReport:
    return events_pb2.MetricReport(
        study_id=STUDY,
        trial_id=trial_id,
        attempt_id=f"{trial_id}-a{attempt}",
        worker_id=f"worker-{attempt}",
        metric="val_loss",
        step=step,
        value=value,
        ts_ms=2000 + int(step),
    )


def decision(trial_id: str, action: str, rung: int, ts_ms: int) -> events_pb2.Decision:
    return events_pb2.Decision(
        study_id=STUDY,
        trial_id=trial_id,
        action=events_pb2.Action.Value(action),
        rung=rung,
        resource=3.0 ** rung,
        cutoff=0.5,
        rank=2,
        population=4,
        reason=f"rung {rung}: rank 2 of 4",
        scheduler="asha",
        ts_ms=ts_ms,
        report_ts_ms=ts_ms - 1,
    )


def history() -> list[events_pb2.StudyEvent | events_pb2.TrialEvent | object]:
    """Two trials: t1 completes on its first attempt; t2 loses its lease,
    resumes on a second attempt and is pruned."""
    return [
        study_event(),
        trial_event(
            "t1", "TRIAL_SUGGESTED", 1100, state="SUGGESTED",
            algorithm="gp", predicted_mean=0.3, predicted_std=0.05,
        ),
        trial_event(
            "t1", "TRIAL_STARTED", 1200, attempt=1, state="RUNNING",
            hostname="gpu-7", environment="python=3.11 torch=2.13.0",
        ),
        metric("t1", 1, 0.9),
        metric("t1", 2, 0.5),
        decision("t1", "CONTINUE", 0, 2100),
        trial_event(
            "t1", "TRIAL_CHECKPOINTED", 2150, attempt=1, state="RUNNING",
            checkpoint=("file:///ckpt/t1-2", 2.0),
        ),
        metric("t1", 3, 0.25),
        trial_event(
            "t1", "TRIAL_COMPLETED", 2300, attempt=1, state="COMPLETED",
            final=0.25, checkpoint=("file:///ckpt/t1-2", 2.0),
        ),
        trial_event("t2", "TRIAL_SUGGESTED", 1150, state="SUGGESTED", algorithm="sobol"),
        trial_event("t2", "TRIAL_STARTED", 1250, attempt=1, state="RUNNING"),
        metric("t2", 1, 1.2),
        trial_event("t2", "TRIAL_LEASE_EXPIRED", 1500, attempt=1, state="RESUMABLE"),
        trial_event("t2", "TRIAL_STARTED", 1600, attempt=2, state="RUNNING"),
        metric("t2", 1, 1.1, attempt=2),
        metric("t2", 3, math.nan, attempt=2),
        decision("t2", "STOP", 1, 2200),
        trial_event("t2", "TRIAL_PRUNED", 2250, attempt=2, state="PRUNED"),
        events_pb2.RungCrossing(study_id=STUDY, trial_id="t2", rung=1, resource=3.0),
        events_pb2.DeadLetter(
            source_topic="u.trials", source_partition=0, source_offset=99,
            reason="not a ladder.v1.TrialEvent", service="evaluate",
        ),
        Skipped("metrics_undecodable", "metric JSON does not parse"),
    ]


def at_offsets(events: list, first_offset: int = 0, partition: int = 0) -> list[Ingest]:
    return [
        Ingest(Source("u.all", partition, first_offset + i), event)
        for i, event in enumerate(events)
    ]


def apply_one_by_one(
    store: LineageStore, trial_id: str, steps: list[tuple[events_pb2.TrialEvent, str]]
) -> list[tuple[int, str]]:
    """Apply each (event, state expected after it) at its own offset, checking the
    trial's state after each; returns the attempts' (number, outcome) at the end."""
    for offset, (event, expected) in enumerate(steps):
        store.apply(at_offsets([event], first_offset=offset))
        assert queries(store).trial_lineage(trial_id).state == expected
    return [(a.attempt_number, a.outcome) for a in queries(store).trial_lineage(trial_id).attempts]


def _tables(db: Database) -> list[str]:
    if db.engine == SQLITE:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()"
        )
    return sorted(row[0] for row in db.execute(sql))


def _columns(db: Database, table: str) -> list[str]:
    if db.engine == SQLITE:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    return [
        row[0]
        for row in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    ]


def snapshot(db: Database, skip: tuple[str, ...] = ()) -> dict[str, list[tuple]]:
    """Every row of every table; surrogate row ids depend on arrival order, so left out."""

    def content(table: str) -> list[tuple]:
        quoted = ", ".join(f'"{c}"' for c in _columns(db, table) if c != "id")
        return sorted((tuple(row) for row in db.execute(f"SELECT {quoted} FROM {table}")), key=repr)

    return {table: content(table) for table in _tables(db) if table not in skip}


# ------------------------------------------------------------------ migrations


def test_an_empty_database_gets_every_step_and_migrating_again_changes_nothing(
    databases: Databases,
) -> None:
    db = databases.open()
    assert _tables(db) == []
    assert migrate(db) == SCHEMA_VERSION == MIGRATIONS[-1].version
    assert [tuple(r) for r in db.execute("SELECT version FROM schema_version")] == [
        (SCHEMA_VERSION,)
    ]
    assert set(_tables(db)) == {
        "schema_version", "consumer_offsets", "ingest_counters", "studies", "trial_events",
        "trials", "attempts", "metric_points", "decisions", "rung_crossings", "dead_letters",
        "run_packages", "attempt_environments", "trial_curves",
    }
    before = snapshot(db)
    assert migrate(db) == SCHEMA_VERSION
    LineageStore(db)  # the service's start-up on an existing database
    assert snapshot(db) == before


def test_a_newer_database_is_refused(databases: Databases) -> None:
    db = databases.open()
    migrate(db)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer"):
        migrate(db)


def test_steps_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_two_services_starting_at_once_migrate_once(databases: Databases) -> None:
    location = databases.location()
    dbs = [databases.open(location) for _ in range(2)]
    versions: list[int] = []
    threads = [threading.Thread(target=lambda d=db: versions.append(migrate(d))) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert versions == [SCHEMA_VERSION, SCHEMA_VERSION]
    assert [tuple(r) for r in dbs[0].execute("SELECT version FROM schema_version")] == [
        (SCHEMA_VERSION,)
    ]


# ------------------------------------------------------------------ exactly once


def test_redelivered_records_are_skipped_by_offset(store: LineageStore) -> None:
    items = at_offsets(history())
    assert store.apply(items) == len(items)
    before = snapshot(store.database)

    assert store.apply(items) == 0
    assert store.apply(items[5:9]) == 0
    assert snapshot(store.database) == before


def test_republished_records_change_nothing(store: LineageStore) -> None:
    events = [e for e in history() if not isinstance(e, Skipped)]
    store.apply(at_offsets(events))
    before = snapshot(store.database, skip=("consumer_offsets",))

    # The same payloads at new offsets: a producer that published twice, and
    # early-stop re-emitting its decisions later (new ts_ms).
    again = [events_pb2.Decision(**{**_fields(e), "ts_ms": e.ts_ms + 5000})
             if isinstance(e, events_pb2.Decision) else e for e in events]
    assert store.apply(at_offsets(again, first_offset=1000)) == len(events)
    assert snapshot(store.database, skip=("consumer_offsets",)) == before


def _fields(message: events_pb2.Decision) -> dict[str, object]:
    return {f.name: v for f, v in message.ListFields()}


@pytest.mark.parametrize(
    ("events", "seed"),
    [
        *((history, seed) for seed in (1, 2, 3)),
        # Attempt ends: an event that ends no attempt must not rewrite the last one's.
        *((lambda: interrupted_history(), seed) for seed in (4, 5)),
    ],
)
def test_arrival_order_does_not_matter(
    databases: Databases, events: Callable[[], list], seed: int
) -> None:
    # One partition per event keeps each event's position fixed while the
    # order of arrival changes.
    items = [Ingest(Source("u.all", i, 0), e) for i, e in enumerate(events())]
    ordered = databases.store()
    ordered.apply(items)
    shuffled = databases.store()
    random.Random(seed).shuffle(items)
    for item in items:
        shuffled.apply([item])
    assert snapshot(shuffled.database) == snapshot(ordered.database)


def test_old_events_replayed_do_not_regress_state(store: LineageStore) -> None:
    events = history()
    store.apply(at_offsets(events))
    stale = [e for e in events if isinstance(e, events_pb2.TrialEvent)
             and e.kind in (KIND.Value("TRIAL_STARTED"), KIND.Value("TRIAL_SUGGESTED"))]
    store.apply(at_offsets(stale, first_offset=500))
    # A stale copy with a later timestamp still cannot undo a terminal state.
    late = trial_event("t1", "TRIAL_STARTED", 9999, attempt=1, state="RUNNING")
    store.apply(at_offsets([late], first_offset=600))
    lineage = queries(store).trial_lineage("t1")
    assert lineage is not None and lineage.state == "COMPLETED"
    assert [a.outcome for a in lineage.attempts] == ["completed"]
    assert queries(store).trial_lineage("t2").state == "PRUNED"


def test_state_progresses_across_attempts(store: LineageStore) -> None:
    steps = [
        (trial_event("t3", "TRIAL_SUGGESTED", 100), "SUGGESTED"),
        (trial_event("t3", "TRIAL_STARTED", 200, attempt=1), "RUNNING"),
        (trial_event("t3", "TRIAL_LEASE_EXPIRED", 300, attempt=1), "RESUMABLE"),
        # An event of the expired attempt arriving late does not revive it.
        (trial_event("t3", "TRIAL_CHECKPOINTED", 250, attempt=1), "RESUMABLE"),
        (trial_event("t3", "TRIAL_STARTED", 400, attempt=2), "RUNNING"),
        (trial_event("t3", "TRIAL_FAILED", 500, attempt=2, state="FAILED"), "FAILED"),
    ]
    outcomes = apply_one_by_one(store, "t3", steps)
    assert outcomes == [(1, "lease_expired"), (2, "failed")]


def test_paused_trial_is_shown_paused_until_promoted(store: LineageStore) -> None:
    steps = [
        (trial_event("t4", "TRIAL_STARTED", 200, attempt=1), "RUNNING"),
        (trial_event("t4", "TRIAL_PAUSED", 300, attempt=1), "PAUSED"),
        # A checkpoint of the paused attempt arriving late does not make it RUNNING again.
        (trial_event("t4", "TRIAL_CHECKPOINTED", 250, attempt=1), "PAUSED"),
        (trial_event("t4", "TRIAL_PROMOTED", 400, attempt=1), "RESUMABLE"),
        (trial_event("t4", "TRIAL_STARTED", 500, attempt=2), "RUNNING"),
        (trial_event("t4", "TRIAL_COMPLETED", 600, attempt=2, final=0.1), "COMPLETED"),
    ]
    outcomes = apply_one_by_one(store, "t4", steps)
    assert outcomes == [(1, "paused"), (2, "completed")]


def test_trial_lineage_has_everything(store: LineageStore) -> None:
    store.apply(at_offsets(history()))
    lineage = queries(store).trial_lineage("t1")
    assert lineage is not None
    assert (lineage.study_id, lineage.seed, lineage.state) == (STUDY, 7, "COMPLETED")
    assert {k: v.WhichOneof("value") for k, v in lineage.params.items()} == {
        "lr": "float_value", "layers": "int_value", "act": "str_value",
    }
    assert lineage.params["lr"].float_value == 0.01
    assert (lineage.has_final_value, lineage.final_value) == (True, 0.25)
    assert (lineage.dataset_id, lineage.code_commit, lineage.metric) == (
        "digits@v3", "abc123", "val_loss",
    )
    assert (lineage.algorithm, lineage.predicted_mean, lineage.predicted_std) == ("gp", 0.3, 0.05)
    assert lineage.checkpoint_uri == "file:///ckpt/t1-2"
    [attempt] = lineage.attempts
    assert (attempt.attempt_id, attempt.attempt_number) == ("t1-a1", 1)
    assert attempt.worker_id == "worker-1"
    assert (attempt.hostname, attempt.environment) == ("gpu-7", "python=3.11 torch=2.13.0")
    assert (attempt.outcome, attempt.started_ms, attempt.ended_ms) == ("completed", 1200, 2300)
    assert attempt.checkpoint_uri == "file:///ckpt/t1-2"
    assert [(p.step, p.value, p.attempt_id) for p in lineage.metrics] == [
        (1, 0.9, "t1-a1"), (2, 0.5, "t1-a1"), (3, 0.25, "t1-a1"),
    ]
    [made] = lineage.decisions
    assert (made.action, made.rung, made.reason) == (events_pb2.CONTINUE, 0, "rung 0: rank 2 of 4")


def test_divergence_and_unknown_trials(store: LineageStore) -> None:
    store.apply(at_offsets(history()))
    t2 = queries(store).trial_lineage("t2")
    assert math.isnan(t2.metrics[-1].value)
    assert [a.attempt_id for a in t2.attempts] == ["t2-a1", "t2-a2"]
    assert queries(store).trial_lineage("nope") is None
    # Known only from its metrics so far: found, state not yet known.
    store.apply(at_offsets([metric("t9", 1, 0.4)], first_offset=100))
    assert queries(store).trial_lineage("t9").state == "TRIAL_STATE_UNSPECIFIED"


@pytest.mark.parametrize(("direction", "best"), [("MINIMIZE", "t4"), ("MAXIMIZE", "t5")])
def test_best_trial_follows_the_study_direction(
    store: LineageStore, direction: str, best: str
) -> None:
    events = [
        study_event(direction),
        trial_event("t4", "TRIAL_COMPLETED", 10, attempt=1, state="COMPLETED", final=0.1),
        trial_event("t5", "TRIAL_COMPLETED", 11, attempt=1, state="COMPLETED", final=0.9),
        trial_event("t6", "TRIAL_COMPLETED", 12, attempt=1, state="COMPLETED", final=math.nan),
        trial_event("t7", "TRIAL_COMPLETED", 13, attempt=1, state="COMPLETED", final=math.inf),
        # A pruned trial's last value never counts, however good.
        trial_event("t8", "TRIAL_PRUNED", 14, attempt=1, state="PRUNED", final=-5.0),
        trial_event("t8b", "TRIAL_PRUNED", 14, attempt=1, state="PRUNED", final=50.0),
    ]
    store.apply(at_offsets(events))
    assert queries(store).best_trial_id(STUDY)[0] == best


def test_no_best_trial_before_a_completion(store: LineageStore) -> None:
    store.apply(at_offsets([study_event(), trial_event("t1", "TRIAL_SUGGESTED", 1)]))
    assert queries(store).study_known(STUDY)
    assert queries(store).best_trial_id(STUDY) is None
    assert not queries(store).study_known("other")


def test_study_summary_and_listing(store: LineageStore) -> None:
    store.apply(at_offsets(history()))
    summary = queries(store).study_summary(STUDY)
    assert (summary.suggested, summary.running, summary.completed, summary.pruned) == (0, 0, 1, 1)
    assert (summary.has_best, summary.best_trial_id, summary.best_value) == (True, "t1", 0.25)
    assert (summary.metric_points, summary.decisions) == (6, 2)
    listed = {t.trial_id: t for t in queries(store).list_trials(STUDY)}
    assert listed["t1"].state == "COMPLETED" and listed["t1"].last_step == 3
    assert listed["t2"].state == "PRUNED" and not listed["t2"].has_final_value
    assert queries(store).study_summary("other") is None
    assert queries(store).counters() == {
        "metrics_undecodable": 1, "dead_letters:u.trials": 1,
    }


def test_newer_study_event_wins(store: LineageStore) -> None:
    store.apply(at_offsets([study_event("MAXIMIZE", ts_ms=2000), study_event("MINIMIZE", 1000)]))
    store.apply(at_offsets([
        trial_event("a", "TRIAL_COMPLETED", 1, attempt=1, state="COMPLETED", final=1.0),
        trial_event("b", "TRIAL_COMPLETED", 2, attempt=1, state="COMPLETED", final=2.0),
    ], first_offset=10))
    assert queries(store).best_trial_id(STUDY)[0] == "b"


def test_ingestor_isolates_a_record_the_store_cannot_hold(store: LineageStore) -> None:
    poisoned: list[Ingest] = []
    ingestor = Ingestor(store, on_poison=lambda item, _exc: poisoned.append(item))
    good = at_offsets([metric("t1", 1, 0.5), object(), metric("t1", 2, 0.4)])
    for item in good:  # queued before start: one batch
        ingestor.submit(item)
    ingestor.start()
    ingestor.stop()
    assert [p.source.offset for p in poisoned] == [1]
    assert len(queries(store).trial_lineage("t1").metrics) == 2
    assert queries(store).offsets() == {("u.all", 0): 3}
    assert queries(store).counters() == {"unstorable:u.all": 1}



# --------------------------------------------------- attempt ends, checkpoint overhead


def ending(
    trial_id: str,
    kind: str,
    ts_ms: int,
    attempt: int,
    end: int,
    state: str,
    reason: str,
    failures: int = 0,
    failure_kind: int = 0,
    overhead: tuple[float, float] = (0.0, 0.0),
) -> events_pb2.TrialEvent:
    """An event of an evaluate that records attempt ends: it names the attempt it ends
    (``end`` 0: it ends none) and the trial carries its failure count and overhead."""
    event = trial_event(trial_id, kind, ts_ms, attempt=attempt, state=state, reason=reason)
    if end:
        event.ended_attempt_id, event.attempt_end = event.trial.attempt_id, end
    event.trial.failures, event.trial.failure_kind = failures, failure_kind
    event.trial.checkpoint_seconds, event.trial.train_seconds = overhead
    event.trial.last_attempt_end = end or trial_pb2.ATTEMPT_STALLED
    return event


def interrupted_history() -> list[events_pb2.TrialEvent | events_pb2.StudyEvent]:
    """t10: preempted, stalled, its hand-out claim expires (ends no attempt), fails once
    (counted), then completes; t11 runs out of wall clock while it waits."""
    infra, timeout = trial_pb2.INFRASTRUCTURE, trial_pb2.TIMEOUT
    return [
        study_event(),
        trial_event("t10", "TRIAL_STARTED", 100, attempt=1, state="RUNNING"),
        ending("t10", "TRIAL_FAILED", 200, 1, trial_pb2.ATTEMPT_PREEMPTED, "RESUMABLE",
               "preempted: SIGTERM; not counted (0 of 3 failures used)", overhead=(0.5, 10)),
        trial_event("t10", "TRIAL_STARTED", 300, attempt=2, state="RUNNING"),
        ending("t10", "TRIAL_LEASE_EXPIRED", 400, 2, trial_pb2.ATTEMPT_STALLED, "RESUMABLE",
               "stalled: attempt t10-a2 made no step progress", overhead=(0.5, 10)),
        ending("t10", "TRIAL_LEASE_EXPIRED", 450, 2, 0, "RESUMABLE",
               "handed out but not started before the claim expired", overhead=(0.5, 10)),
        trial_event("t10", "TRIAL_STARTED", 500, attempt=3, state="RUNNING"),
        ending("t10", "TRIAL_FAILED", 600, 3, trial_pb2.ATTEMPT_FAILED, "RESUMABLE",
               "attempt 3 failed (INFRASTRUCTURE, retried; 1 of 3 failures used): disk",
               failures=1, failure_kind=infra, overhead=(1.0, 30)),
        trial_event("t10", "TRIAL_STARTED", 700, attempt=4, state="RUNNING"),
        ending("t10", "TRIAL_COMPLETED", 800, 4, trial_pb2.ATTEMPT_COMPLETED, "COMPLETED",
               "completed with value 0.5", failures=1, failure_kind=infra, overhead=(1.5, 50)),
        trial_event("t11", "TRIAL_STARTED", 100, attempt=1, state="RUNNING"),
        ending("t11", "TRIAL_FAILED", 150, 1, trial_pb2.ATTEMPT_PREEMPTED, "RESUMABLE",
               "preempted: SIGTERM; not counted (0 of 3 failures used)"),
        ending("t11", "TRIAL_FAILED", 900, 1, 0, "FAILED", "timed out: 60.0 s since the first "
               "start", failures=1, failure_kind=timeout),
    ]


def test_each_attempt_keeps_how_it_ended(store: LineageStore) -> None:
    store.apply(at_offsets(interrupted_history()))
    t10 = queries(store).trial_lineage("t10")
    assert [(a.attempt_number, a.outcome, a.attempt_end, a.failure_kind) for a in t10.attempts] == [
        (1, "preempted", trial_pb2.ATTEMPT_PREEMPTED, trial_pb2.PREEMPTED),
        (2, "stalled", trial_pb2.ATTEMPT_STALLED, 0),
        (3, "failed", trial_pb2.ATTEMPT_FAILED, trial_pb2.INFRASTRUCTURE),
        (4, "completed", trial_pb2.ATTEMPT_COMPLETED, 0),
    ]
    # The claim that expired later did not rewrite attempt 2's end.
    assert t10.attempts[1].end_reason.startswith("stalled: attempt t10-a2")
    assert t10.attempts[1].ended_ms == 400
    assert t10.attempts[0].end_reason.startswith("preempted: SIGTERM; not counted")
    assert (t10.failures, t10.failure_kind) == (1, trial_pb2.INFRASTRUCTURE)
    assert (t10.checkpoint_seconds, t10.train_seconds) == (1.5, 50)
    t11 = queries(store).trial_lineage("t11")
    assert (t11.state, t11.failure_kind) == ("FAILED", trial_pb2.TIMEOUT)
    # It waited when its wall clock ran out: its one attempt stays preempted.
    assert [a.outcome for a in t11.attempts] == ["preempted"]
    summary = queries(store).study_summary(STUDY)
    assert (summary.checkpoint_seconds, summary.train_seconds) == (1.5, 50)


# Rows as version 1 wrote them (no attempt ends, no overhead, no run environment).
_V1_ROWS = """
INSERT INTO trials VALUES ('old', 'study-1', NULL, 1, 6, '', 0, NULL, '', '', '', 3, 'gp',
    NULL, NULL, NULL, 10, 20);
INSERT INTO attempts VALUES ('old', 'old-a1', 1, 'w', 'h', 'e', 'failed', '1', 10, 20, '', '')
"""


def test_a_version_1_database_is_upgraded_in_place(databases: Databases) -> None:
    db = databases.open()
    assert migrate(db, target=1) == 1
    for statement in _V1_ROWS.strip().split(";\n"):
        db.execute(statement)
    store = LineageStore(db)  # the service's start-up: steps 2 and later
    assert schema_version(db) == SCHEMA_VERSION
    old = queries(store).trial_lineage("old")
    assert (old.state, old.failures, old.checkpoint_seconds) == ("FAILED", 0, 0)
    assert [(a.outcome, a.attempt_end, a.end_reason) for a in old.attempts] == [("failed", 0, "")]
    assert not old.attempts[0].HasField("run_environment")
    store.apply(at_offsets(interrupted_history()))
    assert queries(store).trial_lineage("t10").attempts[0].outcome == "preempted"


# ------------------------------------------------------------------ run environments


def run_environment(host: str, packages: list[str], **fields: object) -> trial_pb2.RunEnvironment:
    return trial_pb2.RunEnvironment(
        python="3.11.7", os="linux-6.1.0-x86_64", hostname=host, cpu_model="EPYC 7B13",
        cpu_count=8, gpu_model="NVIDIA A100-SXM4-40GB", gpu_count=2, code_commit="0123abcd",
        code_dirty=True, packages=packages, dataset_id="sha256:feed", entry_point="python x.py",
        **fields,
    )


def test_run_environments_per_attempt_with_each_package_list_stored_once(
    store: LineageStore,
) -> None:
    packages = ["numpy==2.4.6", "torch==2.13.0"]
    first = run_environment("gpu-1", packages, packages_hash="h-1")
    second = run_environment("gpu-2", packages, packages_hash="h-1")
    events = [
        study_event(),
        trial_event("t1", "TRIAL_STARTED", 100, attempt=1, run_environment=first),
        trial_event("t1", "TRIAL_LEASE_EXPIRED", 200, attempt=1),
        trial_event("t1", "TRIAL_STARTED", 300, attempt=2, run_environment=second),
        # Sent without its hash: the store keys the list itself.
        trial_event("t2", "TRIAL_STARTED", 100, attempt=1,
                    run_environment=run_environment("cpu-1", ["scipy==1.17.1"])),
        # A worker that captured nothing.
        trial_event("t3", "TRIAL_STARTED", 100, attempt=1),
    ]
    store.apply(at_offsets(events))
    # Replayed at new offsets (a producer publishing twice): nothing new.
    before = snapshot(store.database, skip=("consumer_offsets",))
    store.apply(at_offsets(events, first_offset=100))
    assert snapshot(store.database, skip=("consumer_offsets",)) == before

    t1 = queries(store).trial_lineage("t1")
    assert [a.run_environment for a in t1.attempts] == [first, second]
    t2_env = queries(store).trial_lineage("t2").attempts[0].run_environment
    assert list(t2_env.packages) == ["scipy==1.17.1"] and len(t2_env.packages_hash) == 64
    assert not queries(store).trial_lineage("t3").attempts[0].HasField("run_environment")
    stored = store.database.execute("SELECT packages_hash FROM run_packages").fetchall()
    assert sorted(row[0] for row in stored) == sorted(["h-1", t2_env.packages_hash])
    # The best trial's lineage is the same query.
    store.apply(at_offsets(
        [trial_event("t1", "TRIAL_COMPLETED", 400, attempt=2, state="COMPLETED", final=0.1)],
        first_offset=200,
    ))
    best = queries(store).best_trial_id(STUDY)
    assert best is not None
    assert queries(store).trial_lineage(best[0]).attempts[1].run_environment == second


# ------------------------------------------------------------------ engines and connections


def test_both_engines_store_the_same_rows(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    items = at_offsets([*history(), *interrupted_history()[1:]])
    rows = {}
    for engine in ENGINES:
        databases = _databases(engine, request, tmp_path)
        try:
            store = databases.store()
            store.apply(items)
            rows[engine] = snapshot(store.database)
        finally:
            databases.close()
    assert rows[SQLITE] == rows[POSTGRESQL]


def test_a_reader_sees_what_the_writer_committed(databases: Databases) -> None:
    location = databases.location()
    store = databases.store(location)
    read_only = databases.open(location, readonly=True)
    reader = LineageQueries(read_only)
    store.apply(at_offsets(history()))
    with reader.snapshot():
        summary = reader.study_summary(STUDY)
        offsets = reader.offsets()
    assert summary is not None and summary.completed == 1
    assert offsets == {("u.all", 0): len(history())}
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)):
        with read_only.snapshot():
            read_only.execute("DELETE FROM trials")


def test_concurrent_writers_apply_each_record_once(databases: Databases) -> None:
    location = databases.location()
    stores = [databases.store(location), databases.store(location)]
    items = at_offsets(history())
    applied: list[int] = []
    threads = [threading.Thread(target=lambda s=s: applied.append(s.apply(items))) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(applied) == [0, len(items)]


@pytest.mark.parametrize("databases", [POSTGRESQL], indirect=True)
def test_a_lost_postgresql_connection_is_opened_again(databases: Databases) -> None:
    store = databases.store()
    store.apply(at_offsets([study_event()]))
    pid = store.database.execute("SELECT pg_backend_pid()").fetchone()[0]
    admin = databases.open()
    admin.execute("SELECT pg_terminate_backend(?)", (pid,))
    # The Ingestor sees the transient error, backs off and retries on a new connection.
    ingestor = Ingestor(store, on_poison=lambda item, exc: pytest.fail(f"poisoned: {exc}"))
    for item in at_offsets(history()[1:], first_offset=1):
        ingestor.submit(item)
    ingestor.start()
    ingestor.stop(timeout=30)
    assert ingestor.applied == len(history()) - 1
    assert queries(store).trial_lineage("t1").state == "COMPLETED"
