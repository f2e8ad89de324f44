"""What ending an attempt with a failure does to its trial: ``ladder.failures.disposition``
(does the failure count? is the trial retried?) applied to the trial's failure count and
the study's ``max_failures``, with the reason the TrialEvent carries. The Lua scripts only
write the result (``ladder.state.scripts``), so the rule lives in one place.

| the failure                        | the trial          | failures | attempt end         |
|------------------------------------|--------------------|----------|---------------------|
| PREEMPTED (SIGTERM hand-back)      | RESUMABLE          | same     | ATTEMPT_PREEMPTED   |
| counts, retried, failures left     | RESUMABLE          | +1       | ATTEMPT_FAILED      |
| counts, retried, none left         | FAILED             | +1       | ATTEMPT_FAILED      |
| counts, not retried                | FAILED             | +1       | ATTEMPT_FAILED      |
| TIMEOUT (wall clock ran out)       | FAILED             | +1       | ATTEMPT_TIMED_OUT   |

Lease expiries, stalls, pauses and promotions are no failures: they never reach this
module and never count.

Pure code (no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

from ladder.failures import FailureKind, disposition
from ladder.study import OomPolicy
from ladder.v1 import trial_pb2

AttemptEnd = int  # a trial_pb2.AttemptEnd number


def kind_name(kind: FailureKind) -> str:
    return trial_pb2.FailureKind.Name(kind) if kind in trial_pb2.FailureKind.values() else "?"


def end_name(end: AttemptEnd) -> str:
    """``ATTEMPT_PREEMPTED`` -> ``preempted`` (what lineage calls an attempt's outcome)."""
    if end not in trial_pb2.AttemptEnd.values():
        return "?"
    return trial_pb2.AttemptEnd.Name(end).removeprefix("ATTEMPT_").lower()


@dataclass(frozen=True)
class FailOutcome:
    """What one failed attempt does: the trial is FAILED (``final``) or RESUMABLE, with
    ``failures`` counted failures and ``failure_kind`` as its last counted one."""

    counts: bool
    final: bool
    failures: int
    failure_kind: FailureKind
    attempt_end: AttemptEnd
    reason: str


def fail_outcome(
    kind: FailureKind,
    reason: str,
    *,
    oom: OomPolicy,
    failures: int,
    previous: FailureKind,
    max_failures: int,
    attempt_number: int,
) -> FailOutcome:
    """The outcome of attempt ``attempt_number`` failing with ``kind`` on a trial that
    counted ``failures`` failures so far, the last of kind ``previous`` (0 if none).

    A failure that does not count (preemption) never makes the trial FAILED, whatever
    ``max_failures`` says: no trial is FAILED by preemption alone."""
    rule = disposition(kind, oom, previous)
    used = failures + int(rule.counts)
    exhausted = rule.counts and used >= max_failures
    final = not rule.retry or exhausted
    end = _ATTEMPT_END.get(kind, trial_pb2.ATTEMPT_FAILED)
    tally = f"{used} of {max_failures} failures used"
    if not rule.counts:
        text = f"{end_name(end)}: {reason}; not counted ({tally})"
    elif not rule.retry:
        text = f"attempt {attempt_number} failed ({_not_retried(kind, oom, previous)}): {reason}"
    elif exhausted:
        text = (
            f"attempt {attempt_number} failed ({kind_name(kind)}; all {max_failures} "
            f"failures used): {reason}"
        )
    else:
        text = f"attempt {attempt_number} failed ({kind_name(kind)}, retried; {tally}): {reason}"
    return FailOutcome(
        counts=rule.counts,
        final=final,
        failures=used,
        failure_kind=kind if rule.counts else previous,
        attempt_end=end,
        reason=text,
    )


def timeout_counts() -> bool:
    """Does running out of the wall clock count toward max_failures (the scripts time a
    trial out themselves, so they are told)?"""
    return disposition(trial_pb2.TIMEOUT, OomPolicy.RETRY_ONCE, 0).counts


_ATTEMPT_END = {
    trial_pb2.PREEMPTED: trial_pb2.ATTEMPT_PREEMPTED,
    trial_pb2.TIMEOUT: trial_pb2.ATTEMPT_TIMED_OUT,
}


def failure_of_end(end: AttemptEnd, trial_failure_kind: FailureKind) -> FailureKind:
    """The failure class that ended an attempt, from the event that ended it: PREEMPTED
    never counts (the trial keeps its last counted kind), a FAILED or TIMED_OUT attempt's
    failure counted, so it is the trial's failure_kind then; other ends are no failure."""
    if end == trial_pb2.ATTEMPT_PREEMPTED:
        return trial_pb2.PREEMPTED
    if end in (trial_pb2.ATTEMPT_FAILED, trial_pb2.ATTEMPT_TIMED_OUT):
        return trial_failure_kind
    return 0


def _not_retried(kind: FailureKind, oom: OomPolicy, previous: FailureKind) -> str:
    name = kind_name(kind)
    if kind == trial_pb2.OUT_OF_MEMORY:
        if oom is OomPolicy.INFEASIBLE:
            return f"{name}: infeasible, not retried"
        if previous == trial_pb2.OUT_OF_MEMORY:
            return f"{name} again, not retried"
    return f"{name}, not retried"
