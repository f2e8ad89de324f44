"""A study's lifecycle: ACTIVE, STOPPED, PAUSED, CANCELLED, COMPLETED, and when a study
is finished.

| action   | from                      | to        | refused (FAILED_PRECONDITION) |
|----------|---------------------------|-----------|-------------------------------|
| stop     | ACTIVE, STOPPED, PAUSED   | STOPPED   | COMPLETED, CANCELLED          |
| resume   | ACTIVE, STOPPED, PAUSED   | ACTIVE    | COMPLETED, CANCELLED          |
| pause    | ACTIVE, STOPPED, PAUSED   | PAUSED    | COMPLETED, CANCELLED          |
| cancel   | all but COMPLETED         | CANCELLED | COMPLETED                     |
| complete | ACTIVE, STOPPED           | COMPLETED | (never asked twice)           |
| breaker  | ACTIVE                    | STOPPED   | (nothing to do otherwise)     |

Every action but complete is idempotent (the target state answers unchanged).
COMPLETED and CANCELLED are final. What a state hands out (``refusal_to_suggest``):
ACTIVE everything; STOPPED resumable trials only; PAUSED, CANCELLED and COMPLETED
nothing. What it tells a running trial's heartbeat (``verdict``): PAUSED answers PAUSE
(the trial checkpoints and waits PAUSED, *held*, until the study leaves PAUSED, then is
RESUMABLE); a stop with ``stop_running_trials`` and a cancel store a STOP for each
unfinished trial instead (``stop_reason``), which a heartbeat answers like any STOP.

A study is *finished* (``finished``) when its ``max_trials`` are all handed out and
none of them is unfinished (suggested, running or resumable: the pending set). A
PAUSED trial (ASHA's promotion form) is promoted only by a decision about another
trial's rung crossing, which travels on another partition of the decisions topic than
that trial's own; so while the study has paused trials it is finished only once no
trial event of it was seen for ``settle_seconds`` (a PROMOTE under way would have
arrived). Trials still paused then stay at their rung.

The live limits (``max_trials``, ``max_parallel_trials``) and budgets may change while
the study runs (UpdateStudy); ``check_update`` is the one rule for new values.

Budgets beyond max_trials (``Budgets``; 0 = unbounded): ``max_wall_clock_seconds``
since CreateStudy, ``max_trial_hours``, the running time of all the study's attempts
(ended and running), and ``max_gpu_hours``, that time times the GPUs each trial declares
(``gpu_hours``: every trial of a study declares the same ``trial_resources``, so the
one clock serves both). A GPU-hours budget on trials that declare no GPU could never
be spent: ``check_budgets`` refuses it. When one is spent (``budget_exceeded``) the
circuit breaker STOPS an ACTIVE study (Action.BREAK) and records why in
``Study.state_reason`` (also in its StudyEvent, so lineage shows it). STOPPED, not a
final state: the operator may raise the budget (UpdateStudy) and resume it, and the
trials still running finish and report (their results are already paid for).
Suggest checks the budgets before handing out anything (a spent budget hands out
nothing, not even a resumable trial) and a sweep of the suggest service trips studies
nobody asks trials of.

Pure code (no I/O): the suggest service reads the counts from Redis and applies the
state change atomically (``ladder.state.StudyStore.transition``).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from ladder.errors import AtCapacity, Conflict, InvalidArgument, LadderError, StudyPaused
from ladder.v1 import events_pb2, study_pb2

ACTIVE = study_pb2.STUDY_ACTIVE
STOPPED = study_pb2.STUDY_STOPPED
COMPLETED = study_pb2.STUDY_COMPLETED
PAUSED = study_pb2.STUDY_PAUSED
CANCELLED = study_pb2.STUDY_CANCELLED
# A study stored without the lifecycle field was created ACTIVE and never changed.
INITIAL = ACTIVE
DEFAULT_SETTLE_SECONDS = 10.0


class Action(StrEnum):
    STOP = "stop"
    RESUME = "resume"
    PAUSE = "pause"
    CANCEL = "cancel"
    COMPLETE = "complete"
    BREAK = "break"  # the circuit breaker: a budget is spent


# What each action makes of a study, in the refusal's words.
_DONE = {
    Action.STOP: "stopped",
    Action.RESUME: "resumed",
    Action.PAUSE: "paused",
    Action.CANCEL: "cancelled",
    Action.COMPLETE: "completed",
    Action.BREAK: "stopped by its budget",
}


@dataclass(frozen=True)
class Rule:
    target: int
    allowed_from: frozenset[int]


_LIVE = frozenset({ACTIVE, STOPPED, PAUSED})
RULES: dict[Action, Rule] = {
    Action.STOP: Rule(STOPPED, _LIVE),
    Action.RESUME: Rule(ACTIVE, _LIVE),
    Action.PAUSE: Rule(PAUSED, _LIVE),
    Action.CANCEL: Rule(CANCELLED, _LIVE | {CANCELLED}),
    Action.COMPLETE: Rule(COMPLETED, frozenset({ACTIVE, STOPPED})),
    Action.BREAK: Rule(STOPPED, frozenset({ACTIVE})),
}
# States whose limits (max_trials, max_parallel_trials) may still change.
UPDATABLE = _LIVE


def state_name(state: int) -> str:
    """``active`` / ``stopped`` / ``completed`` (the number when unknown)."""
    if state in study_pb2.StudyState.values():
        return study_pb2.StudyState.Name(state).removeprefix("STUDY_").lower()
    return str(state)


def refusal(action: Action, study_id: str, current: int) -> Conflict:
    """The error a refused ``action`` answers with."""
    return Conflict(
        f"study {study_id!r} is {state_name(current)}: it cannot be {_DONE[action]}"
        + _FINAL.get(current, "")
    )


_FINAL = {
    COMPLETED: " (its budget is spent and every trial ended)",
    CANCELLED: " (cancelled for good)",
}


def stopped(study_id: str) -> Conflict:
    """What Suggest answers for a stopped study with no resumable trial."""
    return Conflict(
        f"study {study_id!r} is stopped: it hands out no new trials until "
        f"`ladder study resume {study_id}` (ResumeStudy)"
    )


_PAUSED = "is paused: it hands out no trials until"


def refusal_to_suggest(study_id: str, state: int) -> LadderError | None:
    """What Suggest answers before handing out anything, by the study's state: None
    when it may hand out trials (ACTIVE; STOPPED hands out resumable ones, then
    ``stopped``). COMPLETED is the budget's refusal (BudgetExhausted), not this one."""
    if state == PAUSED:
        return StudyPaused(
            None, f"study {study_id!r} {_PAUSED} `ladder study resume {study_id}` (ResumeStudy)"
        )
    if state == CANCELLED:
        return Conflict(f"study {study_id!r} is cancelled: it hands out no trials (for good)")
    return None


def at_capacity(study_id: str, in_flight: int, max_parallel: int) -> AtCapacity:
    """What Suggest answers when the study's max_parallel_trials are all out."""
    return AtCapacity(
        f"study {study_id!r} has {in_flight} trials out (suggested or running), its "
        f"max_parallel_trials is {max_parallel}: retry once one ends, or raise it with "
        f"`ladder study update {study_id} --parallelism N` (UpdateStudy)"
    )


def paused_refusal(message: str) -> bool:
    """Whether Suggest's refusal (its message: the client sees no more) says the study
    is paused: a worker waits for it to resume instead of quitting."""
    return _PAUSED in message


def can_update(study_id: str, state: int) -> None:
    """Conflict when the study's limits may no longer change (COMPLETED, CANCELLED)."""
    if state not in UPDATABLE:
        raise Conflict(
            f"study {study_id!r} is {state_name(state)}: its limits cannot change"
            + _FINAL.get(state, "")
        )


def check_limit(name: str, value: int, error: type[InvalidArgument] = InvalidArgument) -> int:
    """A study limit (max_trials, max_parallel_trials): 0 = unbounded, never negative."""
    if value < 0:
        raise error(f"{name} must be >= 0 (0 = unbounded; got {value})")
    return value


class _HasFields(Protocol):
    def HasField(self, field_name: str) -> bool: ...  # noqa: N802 (protobuf's name)


@dataclass(frozen=True)
class Budgets:
    """A study's budgets beyond max_trials (0 = unbounded; None in an update:
    unchanged)."""

    wall_clock_seconds: float | None = None
    trial_hours: float | None = None
    gpu_hours: float | None = None
    # The StudyConfig / UpdateStudyRequest field of each, in the dataclass's order.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "max_wall_clock_seconds", "max_trial_hours", "max_gpu_hours")

    @classmethod
    def of(cls, config: study_pb2.StudyConfig) -> Budgets:
        return cls(*(getattr(config, name) for name in cls.FIELDS))

    @classmethod
    def given(cls, request: _HasFields) -> Budgets:
        """The budgets an UpdateStudyRequest sets (None: the field is not set)."""
        return cls(*(getattr(request, name) if request.HasField(name) else None
                     for name in cls.FIELDS))

    def over(self, config: study_pb2.StudyConfig) -> Budgets:
        """These budgets where set, else ``config``'s (UpdateStudy's over CreateStudy's)."""
        base = astuple(Budgets.of(config))
        return Budgets(*(b if mine is None else mine
                         for mine, b in zip(astuple(self), base, strict=True)))


UNCHANGED = Budgets()


def check_budget(
    name: str, value: float, error: type[InvalidArgument] = InvalidArgument
) -> float:
    """A budget (max_wall_clock_seconds, max_trial_hours, max_gpu_hours): finite,
    0 = unbounded."""
    if not math.isfinite(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0 (0 = unbounded; got {value})")
    return value


def check_budgets(
    budgets: Budgets, error: type[InvalidArgument] = InvalidArgument,
    gpus: int | None = None,
) -> None:
    """Each budget that is set; with ``gpus`` (what each of the study's trials needs)
    also that a GPU-hours budget is not set on trials that use no GPU."""
    for name, value in zip(Budgets.FIELDS, astuple(budgets), strict=True):
        if value is not None:
            check_budget(name, value, error)
    if gpus == 0 and budgets.gpu_hours:
        raise error(
            f"max_gpu_hours {budgets.gpu_hours:g} could never be spent: the study's trials "
            "declare no GPUs (trial_resources.gpus is 0); set max_gpu_hours 0 and limit "
            "their running time with max_trial_hours"
        )


def gpu_hours(trial_hours: float, gpus: int) -> float:
    """A study's GPU-hours: its attempts' running time times the GPUs each of its trials
    holds (a study's trials all declare the same trial_resources)."""
    return trial_hours * gpus


def budget_exceeded(
    budgets: Budgets, age_seconds: float, trial_hours: float, gpus: int = 0,
) -> str | None:
    """Why the circuit breaker stops the study (Study.state_reason), or None while
    every budget holds (``budgets``: the live ones, None or 0 = unbounded).
    ``age_seconds``: since CreateStudy; ``trial_hours``: the running time of its
    attempts, ended and running; ``gpus``: what each of its trials holds."""
    if budgets.wall_clock_seconds and age_seconds >= budgets.wall_clock_seconds:
        return (f"budget exceeded: {age_seconds:.1f} s since the study was created, "
                f"max_wall_clock_seconds is {budgets.wall_clock_seconds:g}")
    if budgets.trial_hours and trial_hours >= budgets.trial_hours:
        return (f"budget exceeded: its trials ran {trial_hours:.4g} trial-hours, "
                f"max_trial_hours is {budgets.trial_hours:g}")
    used = gpu_hours(trial_hours, gpus)
    if budgets.gpu_hours and used >= budgets.gpu_hours:
        return (f"budget exceeded: its trials ran {used:.4g} GPU-hours ({trial_hours:.4g} "
                f"trial-hours x {gpus} GPU{'s' if gpus != 1 else ''}), max_gpu_hours is "
                f"{budgets.gpu_hours:g}")
    return None


def budget_refusal(study_id: str, reason: str) -> Conflict:
    """What Suggest answers for a study whose budget is spent."""
    return Conflict(
        f"study {study_id!r} is stopped: {reason}; raise it with `ladder study update "
        f"{study_id}` (UpdateStudy), then `ladder study resume {study_id}`"
    )


def check_update(
    max_trials: int | None, max_parallel: int | None, suggested: int,
    budgets: Budgets = UNCHANGED, gpus: int | None = None,
) -> None:
    """UpdateStudy's values (None: unchanged), against the trials already handed out
    (``gpus``: what each of the study's trials needs, None: not checked)."""
    if max_trials is None and max_parallel is None and budgets == UNCHANGED:
        raise InvalidArgument(
            "set max_trials, max_parallel_trials, max_wall_clock_seconds, max_trial_hours "
            "and / or max_gpu_hours to change"
        )
    check_budgets(budgets, gpus=gpus)
    if max_parallel is not None:
        check_limit("max_parallel_trials", max_parallel)
    if max_trials is not None and check_limit("max_trials", max_trials):
        if max_trials < suggested:
            raise InvalidArgument(
                f"max_trials {max_trials} is below the {suggested} trials already handed "
                f"out (at least {suggested}, or 0 = unbounded)"
            )


def stop_reason(action: Action, given: str) -> str:
    """The reason recorded with each trial a stop or a cancel ends."""
    return given.strip() or f"study {_DONE[action]}"


def verdict(
    study_id: str, trial_id: str, state: int, decision: events_pb2.Decision | None
) -> events_pb2.Decision | None:
    """The decision a running trial's heartbeat answers with: the stored one, or while
    its study is PAUSED a PAUSE (due at once: resource 0) unless a STOP stands. The
    PAUSE names the stored decision's rung, so a scheduler PAUSE the trial was about to
    obey stays the scheduler's (it waits for its PROMOTE, not for the study)."""
    if state != PAUSED:
        return decision
    return _pause_now(study_id, trial_id, decision,
                      f"study {study_id} paused: checkpoint and wait until it resumes",
                      "lifecycle")


def preempted(
    study_id: str, trial_id: str, decision: events_pb2.Decision | None
) -> events_pb2.Decision | None:
    """The heartbeat's answer for a trial a preemption plan picked (RequestWork): a
    PAUSE due at once unless a STOP stands; the trial becomes RESUMABLE once it paused."""
    return _pause_now(study_id, trial_id, decision,
                      "preempted by the scheduler (priority or fair share): "
                      "checkpoint and hand back",
                      "preemption")


def _pause_now(study_id: str, trial_id: str, decision: events_pb2.Decision | None,
               reason: str, scheduler: str) -> events_pb2.Decision | None:
    """A PAUSE due at once (resource 0) unless a STOP stands. It names the stored
    decision's rung, so a scheduler PAUSE the trial was about to obey stays the
    scheduler's (it waits for its PROMOTE)."""
    if decision is not None and decision.action == events_pb2.STOP:
        return decision
    return events_pb2.Decision(
        study_id=study_id,
        trial_id=trial_id,
        action=events_pb2.PAUSE,
        rung=decision.rung if decision is not None else 0,
        reason=reason,
        scheduler=scheduler,
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
