"""The batch a suggestion policy's refit asks for (ladder.samplers.sizing): the busiest
stretch of one refit cycle times the headroom, so a buffer refilled back to back serves
bursts of requests that a batch sized to the mean rate leaves to the fallback."""

from __future__ import annotations

import math

from ladder.samplers.sizing import (
    ESTIMATE_DECAY,
    HEADROOM,
    PEAK_WINDOW,
    TakeLog,
    batch_size,
    least_batch,
    next_estimate,
)
from ladder.samplers.tpe import POINT_BY_POINT_MAX
from ladder.study import Algorithm


def test_the_busiest_stretch_not_the_mean() -> None:
    takes = TakeLog()
    for i in range(10):  # a quiet spell: one point a second
        takes.record(100.0 + i, 1)
    for i in range(30):  # then a burst: 30 points within 0.3 s
        takes.record(110.0 + i * 0.01, 1)
    now = 110.3
    assert takes.rate(now) < 4.0  # the mean over ten seconds hides the burst
    assert takes.busiest(now, 1.0) == 30
    assert takes.busiest(now, 0.1) == 11  # 110.00 .. 110.10 inclusive
    assert takes.busiest(now, 20.0) == 40  # everything within the window
    assert takes.busiest(now, 0.0) == 1  # one request at a time


def test_a_request_for_several_points_counts_them_all() -> None:
    takes = TakeLog()
    takes.record(5.0, 7)
    takes.record(5.5, 2)
    assert takes.busiest(6.0, 1.0) == 9
    assert takes.busiest(6.0, 0.2) == 7


def test_stretches_older_than_the_window_are_forgotten() -> None:
    takes = TakeLog()
    takes.record(0.0, 500)  # the start: every worker asks at once
    takes.record(PEAK_WINDOW - 1, 3)
    assert takes.busiest(PEAK_WINDOW - 1, 2.0) == 500
    takes.record(PEAK_WINDOW + 1, 4)  # the start is more than a window ago
    assert takes.busiest(PEAK_WINDOW + 1, 2.0) == 4 + 3
    assert takes.busiest(3 * PEAK_WINDOW, 2.0) == 0  # nothing taken for a window
    assert TakeLog().busiest(1.0, 1.0) == 0 and TakeLog().rate(1.0) == 0.0


def test_the_batch_is_the_busiest_stretch_times_the_headroom_within_bounds() -> None:
    assert batch_size(10, 8, 1024) == math.ceil(10 * HEADROOM)
    assert batch_size(0, 8, 1024) == 8
    assert batch_size(1, 8, 1024) == 8
    assert batch_size(10_000, 8, 1024) == 1024


def test_the_cycle_estimate_decays_from_the_longest_recent_cycle() -> None:
    assert next_estimate(2.0, 0.0) == 2.0
    assert next_estimate(0.5, 2.0) == 2.0 * ESTIMATE_DECAY
    assert next_estimate(3.0, 2.0) == 3.0
    estimate = 4.0
    for _ in range(20):
        estimate = next_estimate(0.5, estimate)
    assert estimate == 0.5  # short cycles bring it down, one at a time


def test_a_tpe_batch_is_at_least_one_pool() -> None:
    assert least_batch(Algorithm.TPE, 8) == POINT_BY_POINT_MAX + 1
    assert least_batch(Algorithm.TPE, 64) == 64
    assert least_batch(Algorithm.GP, 8) == 8
    assert least_batch(Algorithm.AUTO, 3) == 3


def served_fraction(size: object, bursts: int = 12, burst: int = 40, cycle: float = 1.5) -> float:
    """A policy refitting back to back (new observations all the time), each batch
    replacing the buffer, under ``burst`` requests every ten seconds within 0.2 s:
    the share of requests the buffer served. ``size(takes, now)`` is the batch a
    refit starting at ``now`` asks for."""
    requests = sorted(10.0 * b + 0.005 * i for b in range(bursts) for i in range(burst))
    takes = TakeLog()
    buffer = served = 0
    landing, target = cycle, size(takes, 0.0)  # type: ignore[operator]
    for t in requests:
        while landing <= t:  # every refit that landed before this request
            buffer = target
            target = size(takes, landing)  # type: ignore[operator]
            landing += cycle
        takes.record(t, 1)
        if buffer:
            buffer -= 1
            served += 1
    return served / len(requests)


def test_bursts_are_served_by_the_busiest_stretch_rule_and_not_by_the_mean_rate() -> None:
    cycle = 1.5

    def busiest_rule(takes: TakeLog, now: float) -> int:
        return batch_size(takes.busiest(now, cycle), 8, 1024)

    def mean_rate_rule(takes: TakeLog, now: float) -> int:  # the rule it replaced
        return min(1024, max(8, math.ceil(takes.rate(now) * cycle * 3.0)))

    # Only the first burst (nothing taken yet: the least batch) meets a small buffer.
    assert served_fraction(busiest_rule, cycle=cycle) >= 0.9
    assert served_fraction(mean_rate_rule, cycle=cycle) < 0.5
