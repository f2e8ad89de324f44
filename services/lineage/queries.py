"""Read side of the lineage store: builds the LineageService replies.

Each gRPC worker thread owns one read connection; ``snapshot()`` wraps the
several SELECTs of one reply in a read transaction so they see one consistent
state even while the ingest thread commits (SQLite WAL, PostgreSQL REPEATABLE READ).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

from ladder.v1 import events_pb2, lineage_pb2, study_pb2, trial_pb2

from services.lineage.db import Database, Row

TS = trial_pb2.TrialState
_MAXIMIZE = study_pb2.Direction.Value("MAXIMIZE")
# Best-trial candidates: completed with a finite final value (NaN is stored as
# NULL, and +-inf fall outside this range).
_FINITE_FINAL = (
    "state = {completed} AND has_final_value = 1 AND final_value IS NOT NULL "
    "AND final_value BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"
).format(completed=TS.Value("COMPLETED"))


def _from_real(value: float | None) -> float:
    return math.nan if value is None else value


class LineageQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    @contextmanager
    def snapshot(self) -> Iterator[LineageQueries]:
        with self._db.snapshot():
            yield self

    def close(self) -> None:
        self._db.close()

    # -- studies -----------------------------------------------------------

    def study_known(self, study_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM studies WHERE study_id = ? "
            "UNION ALL SELECT 1 FROM trials WHERE study_id = ? LIMIT 1",
            (study_id, study_id),
        ).fetchone()
        return row is not None

    def _study(self, study_id: str) -> Row | None:
        return self._db.execute(
            "SELECT direction, metric, dataset_id, code_commit FROM studies WHERE study_id = ?",
            (study_id,),
        ).fetchone()

    def best_trial_id(self, study_id: str) -> tuple[str, float] | None:
        """The completed trial with the best final value, direction aware (ties:
        the one that completed first)."""
        study = self._study(study_id)
        maximize = study is not None and study["direction"] == _MAXIMIZE
        order = "DESC" if maximize else "ASC"
        row = self._db.execute(
            f"SELECT trial_id, final_value FROM trials WHERE study_id = ? AND {_FINITE_FINAL} "
            f"ORDER BY final_value {order}, terminal_ts_ms ASC, trial_id ASC LIMIT 1",
            (study_id,),
        ).fetchone()
        return (row["trial_id"], row["final_value"]) if row else None

    def study_summary(self, study_id: str) -> lineage_pb2.StudySummary | None:
        if not self.study_known(study_id):
            return None
        summary = lineage_pb2.StudySummary(study_id=study_id)
        counts = dict(
            self._db.execute(
                "SELECT state, COUNT(*) FROM trials WHERE study_id = ? GROUP BY state",
                (study_id,),
            ).fetchall()
        )
        summary.suggested = counts.get(TS.Value("SUGGESTED"), 0)
        # A resumable trial is still in flight: it has run and will run again.
        summary.running = counts.get(TS.Value("RUNNING"), 0) + counts.get(TS.Value("RESUMABLE"), 0)
        summary.completed = counts.get(TS.Value("COMPLETED"), 0)
        summary.pruned = counts.get(TS.Value("PRUNED"), 0)
        summary.failed = counts.get(TS.Value("FAILED"), 0)
        best = self.best_trial_id(study_id)
        if best is not None:
            summary.has_best = True
            summary.best_trial_id, summary.best_value = best
        summary.metric_points = self._db.execute(
            "SELECT COUNT(*) FROM metric_points WHERE study_id = ?", (study_id,)
        ).fetchone()[0]
        summary.decisions = self._db.execute(
            "SELECT COUNT(*) FROM decisions WHERE study_id = ?", (study_id,)
        ).fetchone()[0]
        summary.checkpoint_seconds, summary.train_seconds = self._db.execute(
            "SELECT COALESCE(SUM(checkpoint_seconds), 0), COALESCE(SUM(train_seconds), 0) "
            "FROM trials WHERE study_id = ?",
            (study_id,),
        ).fetchone()
        return summary

    # -- trials ------------------------------------------------------------

    def list_trials(self, study_id: str) -> list[lineage_pb2.TrialSummary] | None:
        if not self.study_known(study_id):
            return None
        rows = self._db.execute(
            "SELECT t.trial_id, t.state, t.has_final_value, t.final_value, t.last_step, "
            "COALESCE((SELECT MAX(m.step) FROM metric_points m "
            "WHERE m.trial_id = t.trial_id), 0) AS last_reported "
            "FROM trials t WHERE t.study_id = ? ORDER BY t.first_ts_ms, t.trial_id",
            (study_id,),
        ).fetchall()
        return [
            lineage_pb2.TrialSummary(
                trial_id=row["trial_id"],
                state=TS.Name(row["state"]),
                has_final_value=bool(row["has_final_value"]),
                final_value=_from_real(row["final_value"]) if row["has_final_value"] else 0.0,
                last_step=max(row["last_step"], row["last_reported"]),
            )
            for row in rows
        ]

    def trial_lineage(self, trial_id: str) -> lineage_pb2.TrialLineage | None:
        """Everything recorded about one trial; None if no record mentions it."""
        trial = self._db.execute(
            "SELECT * FROM trials WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        lineage = lineage_pb2.TrialLineage(trial_id=trial_id)
        if trial is not None:
            self._fill_from_trial(lineage, trial)
        else:
            # Metrics or decisions can arrive before the first trial event.
            row = self._db.execute(
                "SELECT study_id FROM metric_points WHERE trial_id = ? "
                "UNION ALL SELECT study_id FROM decisions WHERE trial_id = ? LIMIT 1",
                (trial_id, trial_id),
            ).fetchone()
            if row is None:
                return None
            lineage.study_id = row["study_id"]
            lineage.state = TS.Name(TS.Value("TRIAL_STATE_UNSPECIFIED"))
        study = self._study(lineage.study_id)
        if study is not None:
            lineage.dataset_id = study["dataset_id"]
            lineage.code_commit = study["code_commit"]
            lineage.metric = study["metric"]
        if not lineage.metric:
            row = self._db.execute(
                "SELECT metric FROM metric_points WHERE trial_id = ? AND metric != '' LIMIT 1",
                (trial_id,),
            ).fetchone()
            lineage.metric = row["metric"] if row else ""
        self._fill_attempts(lineage)
        self._fill_metrics(lineage)
        self._fill_decisions(lineage)
        return lineage

    def _fill_from_trial(self, lineage: lineage_pb2.TrialLineage, trial: Row) -> None:
        lineage.study_id = trial["study_id"]
        if trial["params_pb"]:
            for name, value in trial_pb2.Trial.FromString(trial["params_pb"]).params.items():
                lineage.params[name].CopyFrom(value)
        lineage.seed = trial["seed"]
        lineage.state = TS.Name(trial["state"])
        if trial["has_final_value"]:
            lineage.has_final_value = True
            lineage.final_value = _from_real(trial["final_value"])
        lineage.algorithm = trial["algorithm"]
        lineage.predicted_mean = _from_real(trial["predicted_mean"])
        lineage.predicted_std = _from_real(trial["predicted_std"])
        lineage.checkpoint_uri = trial["checkpoint_uri"]
        lineage.failures = trial["failures"]
        lineage.failure_kind = trial["failure_kind"]
        lineage.checkpoint_seconds = trial["checkpoint_seconds"]
        lineage.train_seconds = trial["train_seconds"]

    def _fill_attempts(self, lineage: lineage_pb2.TrialLineage) -> None:
        environments = self._run_environments(lineage.trial_id)
        for row in self._db.execute(
            "SELECT * FROM attempts WHERE trial_id = ? "
            "ORDER BY attempt_number, started_ms, attempt_id",
            (lineage.trial_id,),
        ):
            attempt = lineage.attempts.add(
                attempt_id=row["attempt_id"],
                attempt_number=row["attempt_number"],
                worker_id=row["worker_id"],
                hostname=row["hostname"],
                environment=row["environment"],
                outcome=row["outcome"],
                started_ms=row["started_ms"],
                ended_ms=row["ended_ms"],
                checkpoint_uri=row["checkpoint_uri"],
                attempt_end=row["attempt_end"],
                end_reason=row["end_reason"],
                failure_kind=row["failure_kind"],
            )
            if row["attempt_id"] in environments:
                attempt.run_environment.CopyFrom(environments[row["attempt_id"]])

    def _run_environments(self, trial_id: str) -> dict[str, trial_pb2.RunEnvironment]:
        """The trial's run environments by attempt id."""
        found = {}
        for row in self._db.execute(
            "SELECT e.*, p.packages FROM attempt_environments e "
            "LEFT JOIN run_packages p ON p.packages_hash = e.packages_hash "
            "WHERE e.trial_id = ?",
            (trial_id,),
        ):
            found[row["attempt_id"]] = trial_pb2.RunEnvironment(
                python=row["python"],
                os=row["os"],
                hostname=row["hostname"],
                cpu_model=row["cpu_model"],
                cpu_count=row["cpu_count"],
                gpu_model=row["gpu_model"],
                gpu_count=row["gpu_count"],
                code_commit=row["code_commit"],
                code_dirty=bool(row["code_dirty"]),
                packages_hash=row["packages_hash"],
                packages=json.loads(row["packages"]) if row["packages"] else [],
                dataset_id=row["dataset_id"],
                entry_point=row["entry_point"],
            )
        return found

    def _fill_metrics(self, lineage: lineage_pb2.TrialLineage) -> None:
        for row in self._db.execute(
            "SELECT attempt_id, step, value, ts_ms FROM metric_points WHERE trial_id = ? "
            "ORDER BY step, ts_ms, attempt_id",
            (lineage.trial_id,),
        ):
            lineage.metrics.add(
                step=row["step"],
                value=_from_real(row["value"]),
                ts_ms=row["ts_ms"],
                attempt_id=row["attempt_id"],
            )

    def _fill_decisions(self, lineage: lineage_pb2.TrialLineage) -> None:
        for row in self._db.execute(
            "SELECT decision_pb FROM decisions WHERE trial_id = ? ORDER BY ts_ms, rung, id",
            (lineage.trial_id,),
        ):
            lineage.decisions.append(events_pb2.Decision.FromString(row["decision_pb"]))

    # -- operations --------------------------------------------------------

    def offsets(self) -> dict[tuple[str, int], int]:
        """Where ingestion resumes: {(topic, partition): next offset}."""
        return {
            (row["topic"], row["partition"]): row["next_offset"]
            for row in self._db.execute(
                "SELECT topic, partition, next_offset FROM consumer_offsets"
            )
        }

    def counters(self) -> dict[str, int]:
        counts = dict(self._db.execute("SELECT name, value FROM ingest_counters").fetchall())
        for topic, count in self._db.execute(
            "SELECT source_topic, COUNT(*) FROM dead_letters GROUP BY source_topic"
        ).fetchall():
            counts[f"dead_letters:{topic}"] = count
        return counts
