"""How many points a refit of a suggestion policy asks for (``policy.py``).

A batch must serve every request that comes before the next batch lands, i.e.
during one refit cycle: from the start of a refit (the read of the pending points
included, a Redis read of every running trial that took as long as the fit itself
at 1,000 workers) to its landing in the buffer. At fleet rates new observations come
all the time, so refits run back to back and each landing replaces the buffer: the
points of one batch are all a cycle gets.

Requests come in bursts, not at a mean rate. Trials stop at a rung in cohorts (the
workers started together, and early stopping decides crossings in batches), so
the suggest service saw ten quiet seconds, then tens of requests within a second;
a batch sized to the mean rate over the last ten seconds (the earlier rule) was
smallest just before each burst, and the TPE fallback answered up to 37 % of the
requests after warm-up at 1,000 paced workers. So the demand a batch must meet is
the **busiest** stretch of one cycle's length over the last ``PEAK_WINDOW`` seconds
(``TakeLog.busiest``), times ``HEADROOM`` (a burst larger than any before it, a
cycle longer than the estimate), within the policy's least and most points
(``batch_size``). The window spans a wave: at 1,000 workers (ASHA 4/12/36/108 at one
report a second) bursts came about a minute apart, with 20 s and more of quiet
between them, and a 30-s window sized the batch to the quiet (90 % served by the
model after warm-up, 2026-12-03). A larger batch takes longer to make, so its
points are older when handed out; replaying that run's requests against cycles
measured in it (0.4 s + 7 ms a point; twice that), a headroom of 2 served as many
from the model as 3 with points a third to a half younger.

The cycle estimate is a decaying maximum (``next_estimate``): cycles vary two- to
threefold from one to the next on a shared host, and one short cycle must not shrink
the next batch below what a long one needs.

The least batch of a TPE study is larger than the service's default (``least_batch``):
TPE makes a batch above ``POINT_BY_POINT_MAX`` points from one pool of candidates
(``tpe.py``, "Large batches"), so 17 points cost less than 8 (measured at 400
observations and 1,000 pending on a shared host: 86 ms against 154 ms).
"""

from __future__ import annotations

import math
from collections import deque

from ladder.samplers.tpe import POINT_BY_POINT_MAX
from ladder.study import Algorithm

# The mean take rate (stats, logs) is over this many seconds.
RATE_WINDOW = 10.0
# The busiest stretch is looked for over this many seconds: one wave of bursts
# (module docstring).
PEAK_WINDOW = 60.0
HEADROOM = 2.0
# The cycle estimate: the last cycle or, if longer, the previous estimate times this.
ESTIMATE_DECAY = 0.8


class TakeLog:
    """Points taken from a policy's buffer, by time (monotonic seconds); not
    thread-safe (the policy locks)."""

    def __init__(self) -> None:
        self._takes: deque[tuple[float, int]] = deque()
        self._first: float | None = None

    def record(self, now: float, count: int) -> None:
        if self._first is None:
            self._first = now
        self._takes.append((now, count))
        while self._takes and self._takes[0][0] < now - PEAK_WINDOW:
            self._takes.popleft()

    def rate(self, now: float) -> float:
        """Points taken per second over the last ``RATE_WINDOW`` seconds (since the
        first take when that is more recent, but at least over one second)."""
        if not self._takes or self._first is None:
            return 0.0
        span = min(RATE_WINDOW, max(1.0, now - self._first))
        return sum(n for t, n in self._takes if t >= now - RATE_WINDOW) / span

    def busiest(self, now: float, span: float) -> int:
        """The most points taken within any ``span`` seconds of the last
        ``PEAK_WINDOW`` seconds (a stretch still under way included)."""
        best = total = 0
        start = 0
        takes = [(t, n) for t, n in self._takes if t >= now - PEAK_WINDOW]
        for t, n in takes:
            total += n
            while takes[start][0] < t - span:
                total -= takes[start][1]
                start += 1
            best = max(best, total)
        return best


def next_estimate(last: float, previous: float) -> float:
    """The expected cycle after one of ``last`` seconds (module docstring)."""
    return max(last, previous * ESTIMATE_DECAY)


def batch_size(busiest: int, least: int, most: int) -> int:
    """The points a refit asks for when at most ``busiest`` points were taken within
    one cycle's length: ``busiest x HEADROOM`` within [least, most]."""
    return min(most, max(least, math.ceil(busiest * HEADROOM)))


def least_batch(algorithm: Algorithm, configured: int) -> int:
    """The fewest points a refit of a study of ``algorithm`` asks for, given the
    service's ``configured`` least (module docstring)."""
    if algorithm is Algorithm.TPE:
        return max(configured, POINT_BY_POINT_MAX + 1)
    return configured
