"""Per-trial curve tracking: the pure core of early-stop stage 1.

``observe`` folds one metric report into a trial's ``CurveState`` and says what to
emit: nothing (most reports), the rungs the report crossed, or a divergence. The
state is a plain dict round trip (``to_dict`` / ``from_dict``) so a stream
processor can keep it in a changelog-backed table.

Idempotent by construction: a report whose step is not beyond the last step folded
in (a replayed event, a resumed attempt re-running steps it already reported) is
ignored, so it is neither averaged in twice nor emitted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ladder.schedulers.rungs import RungCrossed, RungCrossingDetector
from ladder.schedulers.smoothing import is_divergent, make_smoother
from ladder.schedulers.spec import SchedulerSpec


@dataclass
class CurveState:
    study_id: str = ""
    smoother: dict[str, Any] = field(default_factory=dict)
    last_step: float | None = None
    last_rung: int = -1  # highest rung emitted, -1 before the first
    smoothed: float | None = None
    reports: int = 0
    diverged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "smoother": self.smoother,
            "last_step": self.last_step,
            "last_rung": self.last_rung,
            "smoothed": self.smoothed,
            "reports": self.reports,
            "diverged": self.diverged,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CurveState:
        if not data:
            return cls()
        return cls(
            study_id=data.get("study_id", ""),
            smoother=dict(data.get("smoother") or {}),
            last_step=data.get("last_step"),
            last_rung=int(data.get("last_rung", -1)),
            smoothed=data.get("smoothed"),
            reports=int(data.get("reports", 0)),
            diverged=bool(data.get("diverged", False)),
        )


@dataclass(frozen=True)
class Divergence:
    rung: int  # highest rung the step reached (0 if below the first)
    step: float
    raw_value: float


@dataclass(frozen=True)
class Observation:
    state: CurveState
    crossings: list[RungCrossed]
    divergence: Divergence | None = None
    ignored: str = ""  # why the report changed nothing, if it did not

    @property
    def changed(self) -> bool:
        return not self.ignored


def observe(
    spec: SchedulerSpec, state: CurveState, step: float, value: float, first_rung: int = 0
) -> Observation:
    """Fold the report (step, value) into ``state`` (returns a new state).

    ``first_rung`` is the trial's Hyperband bracket (``spec.bracket_of``), 0 otherwise.
    """
    if state.diverged:
        return Observation(state, [], ignored="trial already diverged")
    if state.last_step is not None and step <= state.last_step:
        return Observation(
            state, [], ignored=f"step {step:g} not after last step {state.last_step:g}"
        )
    detector = RungCrossingDetector(spec)
    if is_divergent(value):
        diverged = CurveState(
            study_id=state.study_id,
            smoother=state.smoother,
            last_step=step,
            last_rung=state.last_rung,
            smoothed=state.smoothed,
            reports=state.reports + 1,
            diverged=True,
        )
        rung = max(detector.rung_at(step), 0)
        return Observation(diverged, [], Divergence(rung, step, value))
    smoother_state, smoothed = make_smoother(spec).update(state.smoother, value)
    crossings = detector.crossed(state.last_rung, step, smoothed, first_rung)
    new = CurveState(
        study_id=state.study_id,
        smoother=smoother_state,
        last_step=step,
        last_rung=crossings[-1].rung if crossings else state.last_rung,
        smoothed=smoothed,
        reports=state.reports + 1,
    )
    return Observation(new, crossings)
