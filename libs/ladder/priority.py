"""Lowering a background process's CPU priority below the process that started it.

Niceness stops at 19, so "nice +5 relative to the parent" means nothing when the
parent already runs at 15 or more: the suggest service's refit child (``LADDER_REFIT_
NICE``, +5) ran at the same nice 19 as the service's request threads whenever the
stack was started under ``nice -n 19`` (every benchmark on the shared host). Where
the increment cannot be had in full, the process switches to ``SCHED_IDLE`` (Linux),
which any process may do to itself: a scheduling weight of 3 against nice 19's 15, so
it still runs whenever a CPU is free but yields to its nice-19 siblings about as
nice +7 would to nice 0.

Both act within the process's autogroup (Linux, ``kernel.sched_autogroup_enabled``:
each session is one group, and groups share the CPUs equally before nice orders the
threads inside one): a child that stays in its parent's session is ordered against
the parent's threads, not against other services started in sessions of their own.
That is what the refit child wants (the request path first); it does not make room
for other services (at 1,000 paced GP workers the refit child used 0.23-0.30 of a
core throughout a run with nice +5 lost or with SCHED_IDLE alike,
``bench/results/fleet-bo-2026-12-03-same-run-1000w-gp-180s-memory-sametrials.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

NICE_MAX = 19


@dataclass(frozen=True)
class Lowering:
    nice_increment: int  # what ``os.nice`` is given (clamped so it reaches NICE_MAX at most)
    idle: bool  # also switch to SCHED_IDLE: the increment could not be had in full


def lowering(current_nice: int, increment: int) -> Lowering:
    """How a process at ``current_nice`` gets ``increment`` steps below it."""
    if increment <= 0:
        return Lowering(0, False)
    room = max(0, NICE_MAX - current_nice)
    return Lowering(min(increment, room), increment > room)


def lower_priority(increment: int) -> str:
    """Lower this process's CPU priority by ``increment`` nice steps, with SCHED_IDLE
    where niceness runs out (module docstring); says what it did, for the log."""
    plan = lowering(os.nice(0), increment)
    nice = os.nice(plan.nice_increment) if plan.nice_increment else os.nice(0)
    idle_policy = getattr(os, "SCHED_IDLE", None)
    if plan.idle and idle_policy is not None:
        try:
            os.sched_setscheduler(0, idle_policy, os.sched_param(0))
        except OSError:
            return f"nice {nice} (SCHED_IDLE refused)"
        return f"nice {nice}, SCHED_IDLE"
    return f"nice {nice}"
