"""A study's lifecycle: ACTIVE, STOPPED, COMPLETED, and when a study is finished.

| action   | from              | to        | refused (FAILED_PRECONDITION) |
|----------|-------------------|-----------|-------------------------------|
| stop     | ACTIVE, STOPPED   | STOPPED   | COMPLETED                     |
| resume   | ACTIVE, STOPPED   | ACTIVE    | COMPLETED                     |
| complete | ACTIVE, STOPPED   | COMPLETED | (never asked twice)           |

Stop and resume are idempotent (the target state answers unchanged). COMPLETED is
final: the budget is spent and nothing is left to run. A study is *finished*
(``finished``) when its ``max_trials`` are all handed out and none of them is
unfinished (suggested, running or resumable: the pending set). A PAUSED trial (ASHA's
promotion form) is promoted only by a decision about another trial's rung crossing,
which travels on another partition of the decisions topic than that trial's own; so
while the study has paused trials it is finished only once no trial event of it was
seen for ``settle_seconds`` (a PROMOTE under way would have arrived). Trials still
paused then stay at their rung.

Pure code (no I/O): the suggest service reads the counts from Redis and applies the
state change atomically (``ladder.state.StudyStore.transition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ladder.errors import Conflict
from ladder.v1 import study_pb2

ACTIVE = study_pb2.STUDY_ACTIVE
STOPPED = study_pb2.STUDY_STOPPED
COMPLETED = study_pb2.STUDY_COMPLETED
# A study stored without the lifecycle field was created ACTIVE and never changed.
INITIAL = ACTIVE
DEFAULT_SETTLE_SECONDS = 10.0


class Action(StrEnum):
    STOP = "stop"
    RESUME = "resume"
    COMPLETE = "complete"


@dataclass(frozen=True)
class Rule:
    target: int
    allowed_from: frozenset[int]


RULES: dict[Action, Rule] = {
    Action.STOP: Rule(STOPPED, frozenset({ACTIVE, STOPPED})),
    Action.RESUME: Rule(ACTIVE, frozenset({ACTIVE, STOPPED})),
    Action.COMPLETE: Rule(COMPLETED, frozenset({ACTIVE, STOPPED})),
}


def state_name(state: int) -> str:
    """``active`` / ``stopped`` / ``completed`` (the number when unknown)."""
    if state in study_pb2.StudyState.values():
        return study_pb2.StudyState.Name(state).removeprefix("STUDY_").lower()
    return str(state)


def refusal(action: Action, study_id: str, current: int) -> Conflict:
    """The error a refused ``action`` answers with."""
    return Conflict(
        f"study {study_id!r} is {state_name(current)}: it cannot be "
        f"{'stopped' if action is Action.STOP else 'resumed'}"
        + (" (its budget is spent and every trial ended)" if current == COMPLETED else "")
    )


def stopped(study_id: str) -> Conflict:
    """What Suggest answers for a stopped study with no resumable trial."""
    return Conflict(
        f"study {study_id!r} is stopped: it hands out no new trials until "
        f"`ladder study resume {study_id}` (ResumeStudy)"
    )


@dataclass(frozen=True)
class Progress:
    """How far a study's budget went, as Redis holds it."""

    state: int
    max_trials: int  # 0 = unbounded
    suggested: int
    unfinished: int  # suggested, running or resumable
    paused: int


def finished(progress: Progress, quiet_seconds: float, settle_seconds: float) -> bool:
    """Whether the study is done and should become COMPLETED; ``quiet_seconds``: how
    long since the last trial event of the study was seen."""
    if progress.state not in RULES[Action.COMPLETE].allowed_from:
        return False
    if not progress.max_trials or progress.suggested < progress.max_trials:
        return False
    if progress.unfinished:
        return False
    return not progress.paused or quiet_seconds >= settle_seconds
