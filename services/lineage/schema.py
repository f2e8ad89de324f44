"""The lineage store's schema and its migrations, one path for SQLite and PostgreSQL.

The schema is a list of numbered steps (``MIGRATIONS``); ``schema_version`` holds the
last step applied. ``migrate`` applies the missing steps in order, each with its
version bump, in one transaction (DDL is transactional on both engines), under the
writer lock, so two services starting at once migrate once. An empty database goes
through every step, a database written by an older version through the steps it
lacks: there is no second "create the latest schema" path to keep in line with the
upgrades. Statements are written in SQLite's words; ``Database.ddl`` renders them for
PostgreSQL (``services.lineage.db``).

Idempotency lives in the schema: every table that records history has a natural key,
so a record that is delivered twice, or published twice by its producer, is ignored
by ``INSERT ... ON CONFLICT DO NOTHING``; ``consumer_offsets`` is written in the same
transaction as the rows, so Kafka redelivery is skipped before that.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from services.lineage import curve_ends
from services.lineage.db import Database


@dataclass(frozen=True)
class Migration:
    version: int
    why: str
    statements: str  # SQL statements separated by ';', SQLite's type words


_TABLES = """
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
    terminal_ts_ms  INTEGER NOT NULL   -- ts of the newest event when terminal, else 0
    -- (step 2 adds failures, failure_kind, checkpoint_seconds, train_seconds)
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
    -- (step 2 adds attempt_end, end_reason, failure_kind)
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
-- the source offset is unknown (NULLs are distinct in a UNIQUE key), otherwise a
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

# Where each attempt ran and with what (ladder.v1.RunEnvironment, from its TRIAL_STARTED
# event). The package list is the large part and is the same for most attempts of a
# study: it is kept once per packages_hash.
_RUN_ENVIRONMENTS = """
CREATE TABLE run_packages (
    packages_hash TEXT PRIMARY KEY,
    packages      TEXT NOT NULL     -- JSON array of "name==version", sorted
);

-- First environment recorded per attempt wins (one StartTrial per attempt).
CREATE TABLE attempt_environments (
    trial_id      TEXT    NOT NULL,
    attempt_id    TEXT    NOT NULL,
    python        TEXT    NOT NULL,
    os            TEXT    NOT NULL,
    hostname      TEXT    NOT NULL,
    cpu_model     TEXT    NOT NULL,
    cpu_count     INTEGER NOT NULL,
    gpu_model     TEXT    NOT NULL,
    gpu_count     INTEGER NOT NULL,
    code_commit   TEXT    NOT NULL,
    code_dirty    INTEGER NOT NULL,
    packages_hash TEXT    NOT NULL,  -- run_packages row ('' for none)
    dataset_id    TEXT    NOT NULL,
    entry_point   TEXT    NOT NULL,
    PRIMARY KEY (trial_id, attempt_id)
);
"""

# One row per trial with metric points: how many it has and its last one, kept by the
# writer with the points (services/lineage/curve_ends.py), so a study-wide read reads a
# row per trial instead of grouping every point of the study. Filled from the points
# already stored; the step-4 index it replaces slowed every metric insert.
_TRIAL_CURVES = f"""
CREATE TABLE trial_curves (
    trial_id        TEXT PRIMARY KEY,
    study_id        TEXT    NOT NULL,  -- the smallest study id its points name
    points          INTEGER NOT NULL,  -- its rows in metric_points
    last_step       REAL    NOT NULL,  -- the last point: largest step, then ts, then attempt
    last_ts_ms      INTEGER NOT NULL,
    last_attempt_id TEXT    NOT NULL,
    last_value      REAL               -- NULL: NaN
);
CREATE INDEX trial_curves_by_study ON trial_curves (study_id);
{curve_ends.BACKFILL};
DROP INDEX metric_points_by_study_trial;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "every topic into the store, exactly once", _TABLES),
    Migration(
        2,
        "attempt ends and checkpoint overhead (preemption is not failure)",
        """
        ALTER TABLE trials ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE trials ADD COLUMN failure_kind INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE trials ADD COLUMN checkpoint_seconds REAL NOT NULL DEFAULT 0;
        ALTER TABLE trials ADD COLUMN train_seconds REAL NOT NULL DEFAULT 0;
        ALTER TABLE attempts ADD COLUMN attempt_end INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE attempts ADD COLUMN end_reason TEXT NOT NULL DEFAULT '';
        ALTER TABLE attempts ADD COLUMN failure_kind INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    Migration(3, "run environments per attempt, package lists once per hash", _RUN_ENVIRONMENTS),
    Migration(
        4,
        "a study's curves per trial from one index (the dashboard's reads)",
        # Each trial's point count, last step and the value there is a scan of this
        # index alone (no table row read), and it still serves the per-study counts.
        """
        CREATE INDEX metric_points_by_study_trial
            ON metric_points (study_id, trial_id, step, value);
        DROP INDEX metric_points_by_study;
        """,
    ),
    Migration(5, "per-trial curve ends kept by the writer (the dashboard's reads)", _TRIAL_CURVES),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaError(RuntimeError):
    """The database was written by a newer, incompatible version."""


def schema_version(db: Database) -> int:
    """The last step applied (0: an empty database)."""
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(db: Database, target: int = SCHEMA_VERSION) -> int:
    """Apply the steps up to ``target`` that ``db`` lacks; returns the version now in place."""
    with db.write():
        db.execute(db.ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"lineage database has schema version {current}, newer than this "
                f"service's {SCHEMA_VERSION}"
            )
        for step in MIGRATIONS:
            if current < step.version <= target:
                for statement in statements(step.statements):
                    db.execute(db.ddl(statement))
                if current == 0:
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (step.version,))
                else:
                    db.execute("UPDATE schema_version SET version = ?", (step.version,))
                current = step.version
    return current


def statements(script: str) -> list[str]:
    """Split a script into statements, comments dropped (the schema's strings hold no
    ``--``; a script run whole would commit the migration's transaction on SQLite)."""
    found, buffer = [], []
    for line in script.splitlines():
        code = line.split("--", 1)[0].rstrip()
        if not code.strip():
            continue
        buffer.append(code)
        if code.endswith(";") and sqlite3.complete_statement("\n".join(buffer)):
            found.append("\n".join(buffer).strip().rstrip(";"))
            buffer = []
    if buffer:
        found.append("\n".join(buffer).strip().rstrip(";"))
    return found
