"""Failure classes of a trial's attempt: what the worker calls an exception, and what
the trial becomes for each class. The one place both rules live.

| kind            | the trial becomes                                  | counts |
|-----------------|----------------------------------------------------|--------|
| INFRASTRUCTURE  | RESUMABLE, FAILED once max_failures counted        | yes    |
| USER_ERROR      | FAILED                                             | yes    |
| DIVERGED        | FAILED                                             | yes    |
| OUT_OF_MEMORY   | RETRY_ONCE: RESUMABLE unless an OOM failed the     | yes    |
|                 | trial before, then FAILED; INFEASIBLE: FAILED      |        |
| TIMEOUT         | FAILED                                             | yes    |
| PREEMPTED       | RESUMABLE (an interruption)                        | no     |

Interruptions: an attempt preempted (SIGTERM hand-back), whose lease expired (the worker
vanished) or that stalled (no step progress) never counts as a failure, so a spot fleet
fails no trial; but each counts as an interruption, and one beyond the study's
``max_interruptions`` fails the trial (kind INFRASTRUCTURE): a trial that kills its
worker every time (OOM killer, segfault, a step that always hangs) must end.

A FAILED trial is final and reaches the samplers (never silently dropped): a region
that crashes, diverges or does not fit is one they learn to avoid.

Pure code (no I/O).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ladder.study import OomPolicy
from ladder.v1 import trial_pb2

FailureKind = int  # a trial_pb2.FailureKind number

INFRASTRUCTURE = trial_pb2.INFRASTRUCTURE
USER_ERROR = trial_pb2.USER_ERROR
DIVERGED = trial_pb2.DIVERGED
OUT_OF_MEMORY = trial_pb2.OUT_OF_MEMORY
TIMEOUT = trial_pb2.TIMEOUT
PREEMPTED = trial_pb2.PREEMPTED


class TrialFailed(Exception):
    """Raise from training code to end the attempt with a failure class of your choice,
    e.g. ``raise TrialFailed(USER_ERROR, "bad batch size")``."""

    def __init__(self, kind: FailureKind, message: str = "") -> None:
        super().__init__(message or trial_pb2.FailureKind.Name(kind))
        self.kind = kind


# Exceptions that mean the training code itself is wrong: a retry runs the same code on
# the same params and fails the same way.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    NameError,
    AssertionError,
    ZeroDivisionError,
    ImportError,
    NotImplementedError,
    ArithmeticError,
)

# Whole words only: "room" or "zoom" in a message is not out-of-memory.
_OOM_MESSAGE = re.compile(r"out of memory|outofmemory|\boom\b")


def classify(exc: BaseException) -> FailureKind:
    """The failure class of an exception raised by training code.

    Out-of-memory is recognised by type (``MemoryError``, torch's ``OutOfMemoryError``)
    or message; programming errors are USER_ERROR; everything else (I/O, network,
    driver, an unknown exception) is INFRASTRUCTURE and retried.
    """
    if isinstance(exc, TrialFailed):
        return exc.kind
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return OUT_OF_MEMORY
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and _OOM_MESSAGE.search(text):
        return OUT_OF_MEMORY
    if isinstance(exc, FloatingPointError):
        return DIVERGED
    if type(exc).__name__ == "CheckpointStoreError":  # the object store, not the code
        return INFRASTRUCTURE
    if isinstance(exc, _USER_ERRORS):
        return USER_ERROR
    return INFRASTRUCTURE


def kind_of_request(kind: FailureKind, retryable: bool) -> FailureKind:
    """The kind a FailTrial means: its own, else (older clients) from ``retryable``."""
    if kind:
        return kind
    return INFRASTRUCTURE if retryable else USER_ERROR


# Counted failures before a trial is FAILED when its study sets no max_failures: the
# default of evaluate's --max-attempts (LADDER_MAX_ATTEMPTS).
MAX_FAILURES = 3


@dataclass(frozen=True)
class Disposition:
    """What one failed attempt does to its trial."""

    counts: bool  # uses up one of max_failures
    retry: bool  # RESUMABLE (if failures left) rather than FAILED now


def disposition(kind: FailureKind, oom: OomPolicy, oom_before: bool) -> Disposition:
    """The rule of the table above; ``oom_before``: an OUT_OF_MEMORY failure of the
    trial counted before (whatever failed in between). Whether failures are left
    (``max_failures``) is the caller's. A failure that does not count (PREEMPTED) is an
    interruption (``interruption``)."""
    if kind == PREEMPTED:
        return Disposition(counts=False, retry=True)
    if kind == INFRASTRUCTURE:
        return Disposition(counts=True, retry=True)
    if kind == OUT_OF_MEMORY:
        retry = oom is OomPolicy.RETRY_ONCE and not oom_before
        return Disposition(counts=True, retry=retry)
    return Disposition(counts=True, retry=False)


# The failure kind of a trial FAILED for its interruptions: whatever kills its worker
# (the OOM killer, a segfault, a hung step) is no fault the worker could report.
INTERRUPTED_TOO_OFTEN = INFRASTRUCTURE


@dataclass(frozen=True)
class Interruption:
    """What one interruption does to its trial."""

    interruptions: int  # the trial's interruptions, this one included
    final: bool  # beyond max_interruptions: FAILED with kind INTERRUPTED_TOO_OFTEN


def interruption(before: int, max_interruptions: int | None) -> Interruption:
    """The rule for an attempt preempted, whose lease expired or that stalled, on a trial
    interrupted ``before`` times so far: never a failure (max_failures is untouched);
    the trial is RESUMABLE unless this interruption is beyond ``max_interruptions``
    (None: unlimited), which fails it."""
    after = before + 1
    return Interruption(after, max_interruptions is not None and after > max_interruptions)
