"""Read side of the lineage store: builds the LineageService replies.

Each gRPC worker thread owns one read connection; ``snapshot()`` wraps the
several SELECTs of one reply in a read transaction so they see one consistent
state even while the ingest thread commits (SQLite WAL, PostgreSQL REPEATABLE READ).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ladder.v1 import events_pb2, lineage_pb2, trial_pb2

from services.lineage import curve_reads, study_reads, trial_table
from services.lineage.answer_cache import AnswerCache
from services.lineage.db import Database, Row
from services.lineage.study_reads import from_real as _from_real

TS = trial_pb2.TrialState


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
        return study_reads.best_trials(self._db, study_id).get(study_id)

    def study_summary(self, study_id: str) -> lineage_pb2.StudySummary | None:
        if not self.study_known(study_id):
            return None
        found = study_reads.summaries(self._db, study_id).get(study_id)
        return found or lineage_pb2.StudySummary(study_id=study_id)

    def study_listings(self) -> list[lineage_pb2.StudyListing]:
        """Every study of the studies table with its summary, newest first."""
        return study_reads.listings(self._db)

    def study_curves(
        self, study_id: str, max_points: int, max_trials: int, cache: AnswerCache
    ) -> lineage_pb2.StudyCurves | None:
        if not self.study_known(study_id):
            return None
        return curve_reads.study_curves(self._db, study_id, max_points, max_trials, cache)

    def study_rungs(self, study_id: str) -> lineage_pb2.StudyRungs | None:
        if not self.study_known(study_id):
            return None
        return study_reads.study_rungs(self._db, study_id)

    # -- trials ------------------------------------------------------------

    def list_trials(self, study_id: str) -> Sequence[lineage_pb2.TrialSummary] | None:
        found = self.list_trials_response(study_id)
        return None if found is None else found.trials

    def list_trials_response(
        self, study_id: str, cache: AnswerCache | None = None
    ) -> lineage_pb2.ListTrialsResponse | None:
        """ListTrials' answer; ``cache`` keeps the summaries for the next request."""
        if not self.study_known(study_id):
            return None
        if cache is None:
            cache = AnswerCache(0)  # keeps nothing
        return trial_table.trial_summaries(self._db, study_id, cache)

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
