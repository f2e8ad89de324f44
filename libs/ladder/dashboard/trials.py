"""A study's trials as the dashboard reads them: ``ListTrials``' summaries turned once
into plain values (params as a dict, a missing value as None), shared by every plot
and the trial table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ladder.dashboard.sampling import even_sample
from ladder.params import PlainValue
from ladder.v1 import lineage_pb2, space_pb2, trial_pb2

COMPLETED = "COMPLETED"
PRUNED = "PRUNED"
FAILED = "FAILED"
RUNNING = "RUNNING"
# Plot order and colour of each state (the rest are grey).
STATE_COLORS = {
    COMPLETED: "#1f77b4",
    PRUNED: "#ff7f0e",
    FAILED: "#d62728",
    RUNNING: "#2ca02c",
    "PAUSED": "#9467bd",
    "RESUMABLE": "#8c564b",
    "SUGGESTED": "#7f7f7f",
}
OTHER_COLOR = "#bbbbbb"
# Completed trials a scatter of parameters draws at most.
MAX_POINTS = 5000


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# Not frozen: a frozen dataclass's __init__ costs several times more, and a study page
# makes 20,000 of these. Nothing changes one after from_summary.
@dataclass(slots=True)
class Trial:
    trial_id: str
    state: str
    value: float | None
    last_step: float
    params: dict[str, PlainValue] = field(default_factory=dict)
    algorithm: str = ""
    first_ts_ms: int = 0
    terminal_ts_ms: int = 0
    attempts: int = 0
    train_seconds: float = 0.0
    stop_reason: str = ""
    stop_rung: int = 0
    stop_step: float = 0.0
    failure_kind: str = ""
    predicted_mean: float | None = None
    predicted_std: float | None = None

    @property
    def has_value(self) -> bool:
        return self.state == COMPLETED and self.value is not None


def failure_kind_name(kind: int) -> str:
    """``OUT_OF_MEMORY``; "" for the unset kind (no failure)."""
    if not kind:
        return ""
    try:
        return trial_pb2.FailureKind.Name(kind)
    except ValueError:
        return str(kind)


def plain_params(params: Mapping[str, space_pb2.ParamValue]) -> dict[str, PlainValue]:
    """``ladder.params.params_to_dict`` without its checks and sorting: a study page
    converts 20,000 of these, and a protobuf map is slow to walk."""
    return {k: getattr(v, v.WhichOneof("value") or "str_value") for k, v in params.items()}


def from_summary(s: lineage_pb2.TrialSummary,
                 params: dict[str, PlainValue] | None = None) -> Trial:
    """``params``: the trial's params when the caller has them already."""
    predicted = bool(s.predicted_mean or s.predicted_std)
    return Trial(
        trial_id=s.trial_id,
        state=s.state,
        value=_finite(s.final_value) if s.has_final_value else None,
        last_step=s.last_step,
        params=plain_params(s.params) if params is None else params,
        algorithm=s.algorithm,
        first_ts_ms=s.first_ts_ms,
        terminal_ts_ms=s.terminal_ts_ms,
        attempts=s.attempts,
        train_seconds=s.train_seconds,
        stop_reason=s.stop_reason,
        stop_rung=s.stop_rung,
        stop_step=s.stop_step,
        failure_kind=failure_kind_name(s.failure_kind),
        predicted_mean=s.predicted_mean if predicted else None,
        predicted_std=s.predicted_std if predicted else None,
    )


def from_summaries(
    summaries: Iterable[lineage_pb2.TrialSummary],
    known: dict[str, dict[str, PlainValue]] | None = None,
) -> list[Trial]:
    """The summaries as Trials. ``known``: params by trial id from an earlier read,
    reused and completed with the new trials' (a trial's params never change, and
    reading a protobuf map is most of the cost of 20,000 summaries)."""
    if known is None:
        return [from_summary(s) for s in summaries]
    out = []
    for s in summaries:
        params = known.get(s.trial_id)
        if params is None:
            params = known[s.trial_id] = plain_params(s.params)
        out.append(from_summary(s, params))
    return out


def completion_order(trials: Iterable[Trial]) -> list[Trial]:
    """The trials with a final value, in the order they completed (their first event,
    then their id, where lineage has no end time)."""
    done = [t for t in trials if t.has_value]
    return sorted(done, key=lambda t: (t.terminal_ts_ms or t.first_ts_ms, t.trial_id))


def better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def best_so_far(values: Sequence[float], maximize: bool) -> list[float]:
    out: list[float] = []
    for value in values:
        out.append(value if not out or better(value, out[-1], maximize) else out[-1])
    return out


def best_trial(trials: Iterable[Trial], maximize: bool) -> Trial | None:
    best: Trial | None = None
    for t in trials:
        if t.has_value and (best is None or better(t.value, best.value, maximize)):  # type: ignore[arg-type]
            best = t
    return best


def sampled_completed(trials: Sequence[Trial], maximize: bool,
                      limit: int = MAX_POINTS) -> list[Trial]:
    """The completed trials with a value, at most ``limit`` in their order: the best
    tenth of ``limit`` always, an even sample of the rest."""
    done = [t for t in trials if t.has_value]
    ranked = sorted(range(len(done)), key=lambda i: done[i].value, reverse=maximize)
    return [done[i] for i in even_sample(len(done), limit, keep=ranked[: limit // 10])]
