"""What ending an attempt does to its trial: ``ladder.failures`` (does a failure count?
is the trial retried? is an interruption one too many?) applied to what the trial
counted so far (``Counts``) and the study's ``max_failures`` / ``max_interruptions``,
with the reason the TrialEvent carries. The Lua scripts only check that the counts are
still what was read and write the result (``ladder.state.scripts``), so the rules live
in one place.

| the attempt                       | the trial           | failures | interrupts | attempt end   |
|-----------------------------------|---------------------|----------|------------|---------------|
| PREEMPTED (SIGTERM hand-back)     | RESUMABLE           | same     | +1         | PREEMPTED     |
| lease expired                     | RESUMABLE           | same     | +1         | LEASE_EXPIRED |
| stalled (no step progress)        | RESUMABLE           | same     | +1         | STALLED       |
| one of these three, interrupts    | FAILED (kind        | same     | +1         | as above      |
| now beyond max_interruptions      | INFRASTRUCTURE)     |          |            |               |
| counts, retried, failures left    | RESUMABLE           | +1       | same       | FAILED        |
| counts, retried, none left        | FAILED              | +1       | same       | FAILED        |
| counts, not retried               | FAILED              | +1       | same       | FAILED        |
| TIMEOUT (running time ran out)    | FAILED              | +1       | same       | TIMED_OUT     |

(attempt ends are ``trial_pb2.AttemptEnd`` names without ``ATTEMPT_``.)
Pauses and promotions are neither failures nor interruptions.

Pure code (no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ladder.failures import (
    INTERRUPTED_TOO_OFTEN,
    Disposition,
    FailureKind,
    disposition,
    interruption,
)
from ladder.study import OomPolicy
from ladder.v1 import trial_pb2

AttemptEnd = int  # a trial_pb2.AttemptEnd number


@dataclass(frozen=True)
class Counts:
    """What a trial counted over its attempts (its hash fields ``COUNT_FIELDS``)."""

    failures: int = 0  # failures that counted toward max_failures
    failure_kind: FailureKind = 0  # of the last counted failure (or why it is FAILED)
    oom_failures: int = 0  # counted OUT_OF_MEMORY failures
    interruptions: int = 0  # attempts preempted, lease expired or stalled

    def values(self) -> list[int]:
        """The counts in ``COUNT_FIELDS`` order."""
        return [self.failures, self.failure_kind, self.oom_failures, self.interruptions]


# The trial hash fields of ``Counts``, in its order (the scripts check and write them).
COUNT_FIELDS = ("failures", "failure_kind", "oom_failures", "interruptions")


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
    ``after`` as its counts."""

    counts: bool  # the failure used up one of max_failures
    final: bool
    after: Counts
    attempt_end: AttemptEnd
    reason: str


def fail_outcome(
    kind: FailureKind,
    reason: str,
    *,
    oom: OomPolicy,
    counted: Counts,
    max_failures: int,
    max_interruptions: int | None,
    attempt_number: int,
) -> FailOutcome:
    """The outcome of attempt ``attempt_number`` failing with ``kind`` on a trial that
    counted ``counted`` so far.

    A failure that does not count (preemption) never makes the trial FAILED, whatever
    ``max_failures`` says: no trial is FAILED by preemption alone, only by being
    interrupted more than ``max_interruptions`` times."""
    rule = disposition(kind, oom, counted.oom_failures > 0)
    end = _ATTEMPT_END.get(kind, trial_pb2.ATTEMPT_FAILED)
    if not rule.counts:
        interrupted = interrupt_outcome(counted, max_interruptions)
        note = (
            interrupted.note
            if interrupted.final
            else f"not counted ({counted.failures} of {max_failures} failures used)"
        )
        return FailOutcome(
            counts=False,
            final=interrupted.final,
            after=interrupted.after,
            attempt_end=end,
            reason=f"{end_name(end)}: {reason}; {note}",
        )
    used = counted.failures + 1
    exhausted = used >= max_failures
    tally = f"{used} of {max_failures} failures used"
    if not rule.retry:
        text = f"attempt {attempt_number} failed ({_not_retried(kind, oom, counted)}): {reason}"
    elif exhausted:
        text = (
            f"attempt {attempt_number} failed ({kind_name(kind)}; all {max_failures} "
            f"failures used): {reason}"
        )
    else:
        text = f"attempt {attempt_number} failed ({kind_name(kind)}, retried; {tally}): {reason}"
    oom_failed = int(kind == trial_pb2.OUT_OF_MEMORY)
    return FailOutcome(
        counts=True,
        final=not rule.retry or exhausted,
        after=replace(
            counted,
            failures=used,
            failure_kind=kind,
            oom_failures=counted.oom_failures + oom_failed,
        ),
        attempt_end=end,
        reason=text,
    )


@dataclass(frozen=True)
class InterruptOutcome:
    """What one interruption does: the trial is FAILED (``final``) or RESUMABLE, with
    ``after`` as its counts; ``note`` ends the reason its event gives."""

    final: bool
    after: Counts
    note: str


def interrupt_outcome(counted: Counts, max_interruptions: int | None) -> InterruptOutcome:
    """The outcome of one more interruption (preempted, lease expired, stalled) of a
    trial that counted ``counted`` so far (``ladder.failures.interruption``)."""
    rule = interruption(counted.interruptions, max_interruptions)
    after = replace(counted, interruptions=rule.interruptions)
    if not rule.final:
        return InterruptOutcome(final=False, after=after, note="resumable, not counted")
    return InterruptOutcome(
        final=True,
        after=replace(after, failure_kind=INTERRUPTED_TOO_OFTEN),
        note=(
            f"FAILED ({kind_name(INTERRUPTED_TOO_OFTEN)}): interrupted {rule.interruptions} "
            f"times, more than max_interruptions ({max_interruptions})"
        ),
    )


def timeout_disposition() -> Disposition:
    """What running out of max_trial_seconds does (the scripts time a trial out
    themselves, so they are told whether it counts and whether it is retried)."""
    return disposition(trial_pb2.TIMEOUT, OomPolicy.RETRY_ONCE, oom_before=False)


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


def _not_retried(kind: FailureKind, oom: OomPolicy, counted: Counts) -> str:
    name = kind_name(kind)
    if kind == trial_pb2.OUT_OF_MEMORY:
        if oom is OomPolicy.INFEASIBLE:
            return f"{name}: infeasible, not retried"
        if counted.oom_failures:
            return f"{name} again, not retried"
    return f"{name}, not retried"
