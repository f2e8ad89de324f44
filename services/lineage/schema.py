"""The lineage store's SQLite schema, connections and migrations.

One writer connection (the ingest thread) and any number of read connections
(one per gRPC worker thread). WAL mode lets readers see a consistent snapshot
while the writer commits.

Idempotency lives in the schema: every table that records history has a
natural key, so a record that is delivered twice, or published twice by its
producer, is ignored by ``INSERT OR IGNORE``; ``consumer_offsets`` is written in
the same transaction as the rows, so Kafka redelivery is skipped before that.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);

-- Next offset to read per partition, committed together with the rows the
-- records before it produced (exactly-once ingestion across restarts).
CREATE TABLE IF NOT EXISTS consumer_offsets (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Records consumed but not stored (e.g. undecodable metric reports, which
-- early-stop dead-letters; undecodable records of other topics, which lineage
-- dead-letters itself). Counted once per record thanks to consumer_offsets.
CREATE TABLE IF NOT EXISTS ingest_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Latest StudyEvent per study (newest ts_ms wins; the topic is compacted).
CREATE TABLE IF NOT EXISTS studies (
    study_id    TEXT PRIMARY KEY,
    name        TEXT    NOT NULL,
    direction   INTEGER NOT NULL,  -- ladder.v1.Direction
    metric      TEXT    NOT NULL,
    dataset_id  TEXT    NOT NULL,
    code_commit TEXT    NOT NULL,
    version_key TEXT    NOT NULL,  -- ts_ms | trials_suggested | state, fixed width
    study_pb    BLOB    NOT NULL   -- serialized ladder.v1.Study
);

-- Every distinct TrialEvent, as published. digest = sha256 of the canonical
-- serialization: the same event published twice is stored once.
CREATE TABLE IF NOT EXISTS trial_events (
    id             INTEGER PRIMARY KEY,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       INTEGER NOT NULL,
    digest         BLOB    NOT NULL UNIQUE,
    trial_id       TEXT    NOT NULL,
    study_id       TEXT    NOT NULL,
    kind           INTEGER NOT NULL,  -- ladder.v1.TrialEventKind
    state          INTEGER NOT NULL,  -- ladder.v1.TrialState carried by the event
    attempt_id     TEXT    NOT NULL,
    attempt_number INTEGER NOT NULL,
    ts_ms          INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    event_pb       BLOB    NOT NULL,  -- serialized ladder.v1.TrialEvent
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS trial_events_by_trial ON trial_events (trial_id, ts_ms);

-- Projection of trial_events, one row per trial. Every column is merged by an
-- order-independent rule (services/lineage/projection.py), so replaying any
-- event, in any order, yields the same row.
CREATE TABLE IF NOT EXISTS trials (
    trial_id        TEXT PRIMARY KEY,
    study_id        TEXT    NOT NULL,
    params_pb       BLOB,              -- ladder.v1.Trial holding only params
    seed            INTEGER NOT NULL,
    state           INTEGER NOT NULL,  -- ladder.v1.TrialState of the newest event
    state_key       TEXT    NOT NULL,  -- progress key of that event
    has_final_value INTEGER NOT NULL,
    final_value     REAL,              -- NULL with has_final_value = 1: NaN (diverged)
    final_key       TEXT    NOT NULL,
    checkpoint_uri  TEXT    NOT NULL,
    checkpoint_key  TEXT    NOT NULL,
    last_step       REAL    NOT NULL,
    algorithm       TEXT    NOT NULL,  -- from the TRIAL_SUGGESTED event
    predicted_mean  REAL,              -- NULL: NaN
    predicted_std   REAL,
    suggested_ts_ms INTEGER,           -- NULL until a TRIAL_SUGGESTED event is seen
    first_ts_ms     INTEGER NOT NULL,
    terminal_ts_ms  INTEGER NOT NULL,  -- ts of the newest event when terminal, else 0
    failures        INTEGER NOT NULL DEFAULT 0,  -- counted failures (max over events)
    failure_kind    INTEGER NOT NULL DEFAULT 0,  -- ladder.v1.FailureKind of the last one
    checkpoint_seconds REAL NOT NULL DEFAULT 0,  -- checkpoint overhead, all attempts
    train_seconds   REAL    NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trials_by_study ON trials (study_id, state);

-- One row per attempt (a worker holding the trial's lease), merged like trials.
CREATE TABLE IF NOT EXISTS attempts (
    trial_id       TEXT    NOT NULL,
    attempt_id     TEXT    NOT NULL,
    attempt_number INTEGER NOT NULL,
    worker_id      TEXT    NOT NULL,
    hostname       TEXT    NOT NULL,
    environment    TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,  -- running, or attempt_end in words (preempted, ...)
    outcome_key    TEXT    NOT NULL,
    started_ms     INTEGER NOT NULL,
    ended_ms       INTEGER NOT NULL,
    checkpoint_uri TEXT    NOT NULL,
    checkpoint_key TEXT    NOT NULL,
    attempt_end    INTEGER NOT NULL DEFAULT 0,   -- ladder.v1.AttemptEnd (0: running)
    end_reason     TEXT    NOT NULL DEFAULT '',  -- reason of the event that ended it
    failure_kind   INTEGER NOT NULL DEFAULT 0,   -- ladder.v1.FailureKind that ended it
    PRIMARY KEY (trial_id, attempt_id)
);

-- The learning curve: one point per (trial, attempt, step); first write wins.
CREATE TABLE IF NOT EXISTS metric_points (
    trial_id   TEXT    NOT NULL,
    attempt_id TEXT    NOT NULL,
    step       REAL    NOT NULL,
    value      REAL,              -- NULL: NaN (diverged); +-inf stored as is
    study_id   TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    worker_id  TEXT    NOT NULL,
    ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (trial_id, attempt_id, step)
);
CREATE INDEX IF NOT EXISTS metric_points_by_study ON metric_points (study_id);

-- Early-stop decisions. digest = sha256 of the decision without ts_ms, so the
-- same decision re-emitted by a replaying early-stop is stored once.
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    digest      BLOB    NOT NULL UNIQUE,
    trial_id    TEXT    NOT NULL,
    study_id    TEXT    NOT NULL,
    action      INTEGER NOT NULL,  -- ladder.v1.Action
    rung        INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    decision_pb BLOB    NOT NULL,  -- serialized ladder.v1.Decision
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS decisions_by_trial ON decisions (trial_id, ts_ms);
CREATE INDEX IF NOT EXISTS decisions_by_study ON decisions (study_id);

-- Rung milestones crossed (early-stop stage 1), first crossing per rung wins.
CREATE TABLE IF NOT EXISTS rung_crossings (
    trial_id       TEXT    NOT NULL,
    rung           INTEGER NOT NULL,
    study_id       TEXT    NOT NULL,
    resource       REAL,
    smoothed_value REAL,
    raw_value      REAL,
    diverged       INTEGER NOT NULL,
    ts_ms          INTEGER NOT NULL,
    PRIMARY KEY (trial_id, rung)
);

-- Dead-letter records seen on the dead-letter topic. source_key is NULL when
-- the source offset is unknown (SQLite treats NULLs as distinct), otherwise a
-- re-sent dead letter for the same source record is stored once.
CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY,
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    "offset"     INTEGER NOT NULL,
    source_topic TEXT    NOT NULL,
    source_key   TEXT,             -- "partition:offset:service:reason"
    reason       TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    ts_ms        INTEGER NOT NULL,
    UNIQUE (topic, partition, "offset"),
    UNIQUE (source_topic, source_key)
);
"""


# Upgrades of a database written by an older version, by the version they bring it to
# (the tables above already have these columns when a database is created).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Attempt ends and checkpoint overhead (preemption is not failure).
    2: (
        "ALTER TABLE trials ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE trials ADD COLUMN failure_kind INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE trials ADD COLUMN checkpoint_seconds REAL NOT NULL DEFAULT 0",
        "ALTER TABLE trials ADD COLUMN train_seconds REAL NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN attempt_end INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN end_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE attempts ADD COLUMN failure_kind INTEGER NOT NULL DEFAULT 0",
    ),
}


class SchemaError(RuntimeError):
    """The database was written by a newer, incompatible version."""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the store. ``:memory:`` gives a private in-memory database (tests).

    Connections are in autocommit mode; the store opens transactions itself.
    """
    if str(path) == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    else:
        mode = "ro" if readonly else "rwc"
        uri = f"{Path(path).resolve().as_uri()}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives a process crash; only an OS crash
            # can lose the last commits, and then their offsets go with them.
            conn.execute("PRAGMA synchronous = NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Create or upgrade the schema; returns the version now in place."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0]
        if current is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            current = SCHEMA_VERSION
        elif current > SCHEMA_VERSION:
            raise SchemaError(
                f"lineage database has schema version {current}, newer than this "
                f"service's {SCHEMA_VERSION}"
            )
        for version, statements in MIGRATIONS.items():
            if current < version:
                for statement in statements:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (version,))
                current = version
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


def _statements(script: str) -> list[str]:
    """Split the schema script (executescript would commit our transaction)."""
    statements, buffer = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buffer.append(line)
        if line.rstrip().endswith(";") and sqlite3.complete_statement("\n".join(buffer)):
            statements.append("\n".join(buffer))
            buffer = []
    return [s for s in statements if s.strip()]
