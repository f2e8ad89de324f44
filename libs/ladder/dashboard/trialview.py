"""The trial page's data from one trial's lineage (``GetTrialLineage``): params, what
the surrogate predicted when it suggested them, every attempt with how it ended and
its checkpoint, the decisions, the lineage (seed, dataset, code, environment) and how
to find its trace."""

from __future__ import annotations

import math
from typing import Any

from ladder.cli_format import plain
from ladder.dashboard.curves import action_name, trial_curve
from ladder.dashboard.trials import failure_kind_name
from ladder.params import params_to_dict
from ladder.v1 import lineage_pb2, trial_pb2

# The span attribute every Ladder service sets on a trial's spans (ladder.grpcserver,
# the early-stop agents): lineage stores no trace id, so this is how a trace is found.
TRACE_ATTRIBUTE = "ladder.trial_id"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _environment(env: trial_pb2.RunEnvironment) -> dict[str, Any] | None:
    data = plain(env)
    data["packages"] = len(env.packages)  # the count: the list is long and on the API
    return data if env.ByteSize() else None


def attempt_row(a: lineage_pb2.AttemptRecord) -> dict[str, Any]:
    return {
        "attempt_id": a.attempt_id,
        "number": a.attempt_number,
        "worker_id": a.worker_id,
        "hostname": a.hostname or a.run_environment.hostname,
        "outcome": a.outcome,
        "started_ms": a.started_ms,
        "ended_ms": a.ended_ms,
        "end_reason": a.end_reason,
        "failure_kind": failure_kind_name(a.failure_kind),
        "checkpoint_uri": a.checkpoint_uri,
        "environment": a.environment,
        "run_environment": _environment(a.run_environment),
    }


def decision_row(d: Any) -> dict[str, Any]:
    return {
        "action": action_name(d.action), "rung": d.rung, "step": d.resource,
        "smoothed_value": _finite(d.smoothed_value), "cutoff": _finite(d.cutoff),
        "rank": d.rank, "population": d.population, "reason": d.reason,
        "scheduler": d.scheduler, "ts_ms": d.ts_ms,
    }


def stop_decision(lineage: lineage_pb2.TrialLineage) -> dict[str, Any] | None:
    """The last STOP or PAUSE decision taken on the trial, if any."""
    stops = [d for d in lineage.decisions if action_name(d.action) in ("STOP", "PAUSE")]
    return decision_row(max(stops, key=lambda d: (d.ts_ms, d.resource))) if stops else None


def trial_view(lineage: lineage_pb2.TrialLineage) -> dict[str, Any]:
    predicted = bool(lineage.predicted_mean or lineage.predicted_std)
    return {
        "trial_id": lineage.trial_id,
        "study_id": lineage.study_id,
        "state": lineage.state,
        "metric": lineage.metric,
        "value": _finite(lineage.final_value) if lineage.has_final_value else None,
        "params": params_to_dict(lineage.params),
        "algorithm": lineage.algorithm,
        "predicted": ({"mean": _finite(lineage.predicted_mean),
                       "std": _finite(lineage.predicted_std)} if predicted else None),
        "attempts": [attempt_row(a) for a in lineage.attempts],
        "decisions": [decision_row(d) for d in lineage.decisions],
        "stop": stop_decision(lineage),
        "failure_kind": failure_kind_name(lineage.failure_kind),
        "lineage": {
            "seed": lineage.seed,
            "dataset_id": lineage.dataset_id,
            "code_commit": lineage.code_commit,
            "checkpoint_uri": lineage.checkpoint_uri,
            "train_seconds": lineage.train_seconds,
            "checkpoint_seconds": lineage.checkpoint_seconds,
        },
        "trace": {
            "trace_id": None,
            "attribute": TRACE_ATTRIBUTE,
            "value": lineage.trial_id,
            "note": "lineage records no trace id: every span of this trial carries this "
                    "attribute; search your tracing backend for it",
        },
        "metric_points": len(lineage.metrics),
        "curve": trial_curve(lineage),
    }
