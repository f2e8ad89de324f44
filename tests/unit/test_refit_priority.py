"""Lowering the refit process's CPU priority (ladder.priority): nice where there is room,
SCHED_IDLE where niceness runs out at 19."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ladder.priority import NICE_MAX, Lowering, lowering


@pytest.mark.parametrize(
    ("current", "increment", "expected"),
    [
        (0, 5, Lowering(5, False)),  # a service at nice 0: plain nice +5
        (14, 5, Lowering(5, False)),  # exactly reaches 19
        (15, 5, Lowering(4, True)),  # one step short: as far as it goes, then SCHED_IDLE
        (NICE_MAX, 5, Lowering(0, True)),  # a stack under nice -n 19: nice is no use
        (NICE_MAX, 0, Lowering(0, False)),  # LADDER_REFIT_NICE=0: left as it is
        (3, -2, Lowering(0, False)),  # never raised above the parent
    ],
)
def test_lowering(current: int, increment: int, expected: Lowering) -> None:
    assert lowering(current, increment) == expected


def lowered_child(to_nice_max: bool) -> tuple[str, int, bool]:
    """A child process, started at nice 19 or at this process's niceness, lowers its
    priority by 5: (what it said, its niceness, whether it runs under SCHED_IDLE)."""
    code = (
        "import os; from ladder.priority import lower_priority; "
        "print(lower_priority(5)); print(os.nice(0), os.sched_getscheduler(0) == os.SCHED_IDLE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=(lambda: os.nice(NICE_MAX) and None) if to_nice_max else None,
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split("\n")
    nice, idle = out[1].split()
    return out[0], int(nice), idle == "True"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_a_child_of_a_process_at_nice_19_runs_under_sched_idle() -> None:
    said, nice, idle = lowered_child(to_nice_max=True)
    assert (nice, idle) == (NICE_MAX, True)
    assert "SCHED_IDLE" in said


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
@pytest.mark.skipif(os.nice(0) > NICE_MAX - 5, reason="this process leaves no room for +5")
def test_a_child_with_room_is_only_niced() -> None:
    said, nice, idle = lowered_child(to_nice_max=False)
    assert (nice, idle) == (os.nice(0) + 5, False)
    assert said == f"nice {nice}"
