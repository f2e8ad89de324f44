"""The studies page's rows and a study's live progress, from what lineage answers
(``ListStudyListings``, ``GetStudySummary``): plain JSON data, the same for the HTML
page, its refreshes and the live endpoint."""

from __future__ import annotations

import math
from typing import Any

from ladder.cli_format import duration, progress_of, scheduler_text
from ladder.lifecycle import state_name
from ladder.schedulers.spec import SCHEDULER_KINDS
from ladder.study import ALGORITHMS, DIRECTIONS
from ladder.v1 import lineage_pb2, study_pb2

# The progress bar's segments, in order (the rest of the budget is not handed out yet,
# or waits: suggested, paused, resumable).
SEGMENTS = ("completed", "pruned", "failed", "running")


def maximizes(study: study_pb2.Study) -> bool:
    return DIRECTIONS.parse(study.config.direction).value == "maximize"


def progress(study: study_pb2.Study, summary: lineage_pb2.StudySummary) -> dict[str, Any]:
    """Counts of the study's trials against its budget (``max_trials``; the trials
    handed out when it has none), its state and best value, and each segment's share
    of the bar in percent."""
    found = progress_of(study, summary, None).as_dict()
    found.pop("trials_per_minute")
    whole = found["max_trials"] or found["suggested"]
    found["whole"] = whole
    found["percent"] = {k: (100.0 * found[k] / whole if whole else 0.0) for k in SEGMENTS}
    found["metric_points"] = summary.metric_points
    found["decisions"] = summary.decisions
    return found


def age(created_ms: int, now_ms: int) -> str:
    """``3m05s`` since the study was created; "-" when unknown."""
    if created_ms <= 0:
        return "-"
    return duration(max(0.0, (now_ms - created_ms) / 1000))


def study_row(listing: lineage_pb2.StudyListing, now_ms: int) -> dict[str, Any]:
    study = listing.study
    config = study.config
    best = listing.summary.best_value if listing.summary.has_best else None
    return {
        "study_id": study.study_id,
        "name": config.name,
        "state": state_name(study.state),
        "algorithm": ALGORITHMS.parse(config.algorithm).value,
        "scheduler": SCHEDULER_KINDS.parse(config.scheduler.kind).value,
        "scheduler_detail": scheduler_text(config.scheduler),
        "metric": config.metric,
        "direction": "max" if maximizes(study) else "min",
        "labels": dict(sorted(config.labels.items())),
        "created_ms": study.created_unix_ms,
        "age": age(study.created_unix_ms, now_ms),
        "best_value": best if best is None or math.isfinite(best) else None,
        "best_trial_id": listing.summary.best_trial_id if best is not None else "",
        "progress": progress(study, listing.summary),
    }
