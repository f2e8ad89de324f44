"""Failure classes of a trial's attempt: what the worker calls an exception, and what
the trial becomes for each class. The one place both rules live.

| kind            | the trial becomes                                  | counts |
|-----------------|----------------------------------------------------|--------|
| INFRASTRUCTURE  | RESUMABLE, FAILED once max_failures counted        | yes    |
| USER_ERROR      | FAILED                                             | yes    |
| DIVERGED        | FAILED                                             | yes    |
| OUT_OF_MEMORY   | RETRY_ONCE: RESUMABLE the first time, then FAILED; | yes    |
|                 | INFEASIBLE: FAILED                                 |        |
| TIMEOUT         | FAILED                                             | yes    |
| PREEMPTED       | RESUMABLE                                          | no     |

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
    if isinstance(exc, _USER_ERRORS):
        return USER_ERROR
    return INFRASTRUCTURE


def kind_of_request(kind: FailureKind, retryable: bool) -> FailureKind:
    """The kind a FailTrial means: its own, else (older clients) from ``retryable``."""
    if kind:
        return kind
    return INFRASTRUCTURE if retryable else USER_ERROR


@dataclass(frozen=True)
class Disposition:
    """What one failed attempt does to its trial."""

    counts: bool  # uses up one of max_failures
    retry: bool  # RESUMABLE (if failures left) rather than FAILED now


def disposition(kind: FailureKind, oom: OomPolicy, previous: FailureKind) -> Disposition:
    """The rule of the table above; ``previous`` is the kind of the trial's last counted
    failure (0 if none). Whether failures are left (``max_failures``) is the caller's."""
    if kind == PREEMPTED:
        return Disposition(counts=False, retry=True)
    if kind == INFRASTRUCTURE:
        return Disposition(counts=True, retry=True)
    if kind == OUT_OF_MEMORY:
        retry = oom is OomPolicy.RETRY_ONCE and previous != OUT_OF_MEMORY
        return Disposition(counts=True, retry=retry)
    return Disposition(counts=True, retry=False)
