"""Early-stopping schedulers: pure code, no broker, no Faust.

| module          | what                                                             |
|-----------------|------------------------------------------------------------------|
| ``spec``        | ``SchedulerSpec``: a study's scheduler with its defaults and      |
|                 | validation; rungs, Hyperband brackets                            |
| ``smoothing``   | EMA / moving window / none; NaN and inf mean divergence          |
| ``rungs``       | ``RungCrossingDetector``: which milestones a report crossed      |
| ``curves``      | ``observe``: stage 1 per-trial state (smoothing + crossings)     |
| ``leaderboard`` | per study, per rung: trial -> value, idempotent recording        |
| ``rules``       | ASHA (stopping and promotion forms), median stopping, divergence, |
|                 | grace period, late-bloomer protection; with reasons              |
| ``engine``      | ``EarlyStopEngine``: stage 1 per report, stage 2 per crossing    |
|                 | (record on the bracket's board, decide, mark promotions)         |
| ``replay``      | recorded curves through a policy as N asynchronous workers       |

The early-stop service (``services/earlystop``) wires the engine to Kafka, the replay
of ``make bench-earlystop`` to boards in memory.
"""

from ladder.schedulers.curves import CurveState, Divergence, Observation, observe
from ladder.schedulers.leaderboard import Leaderboards, RungLeaderboard
from ladder.schedulers.rules import (
    Action,
    RungDecision,
    asha_decide,
    decide,
    decide_crossing,
    diverged_decision,
    kept_count,
    late_bloomer_note,
    mark_promoted,
    median_decide,
)
from ladder.schedulers.rungs import RungCrossed, RungCrossingDetector
from ladder.schedulers.smoothing import Ema, MovingWindow, NoSmoothing, is_divergent, make_smoother
from ladder.schedulers.spec import (
    AshaForm,
    BracketAllocation,
    SchedulerConfigError,
    SchedulerKind,
    SchedulerSpec,
    SmoothingKind,
)

__all__ = [
    "Action",
    "AshaForm",
    "BracketAllocation",
    "CurveState",
    "Divergence",
    "Ema",
    "Leaderboards",
    "MovingWindow",
    "NoSmoothing",
    "Observation",
    "RungCrossed",
    "RungCrossingDetector",
    "RungDecision",
    "RungLeaderboard",
    "SchedulerConfigError",
    "SchedulerKind",
    "SchedulerSpec",
    "SmoothingKind",
    "asha_decide",
    "decide",
    "decide_crossing",
    "diverged_decision",
    "is_divergent",
    "kept_count",
    "late_bloomer_note",
    "make_smoother",
    "mark_promoted",
    "median_decide",
    "observe",
]
