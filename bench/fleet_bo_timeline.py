"""bench-fleet-bo over time: early stopping's latency and backlog next to the CPU the
early-stop process and the suggest service's refit processes got, per stretch of the run.

``CpuSampler`` reads each process's CPU seconds and runnable-but-waiting seconds every
few seconds in a thread (``fleet_bo`` gives it the readers); ``buckets`` joins them
with the simulator's per-decision timeline (``workers.loadsim --timeline``: report time,
latency) and the early-stop group's progress samples (committed and end offsets).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

# (unix seconds, {name: CPU seconds so far}, {name: runnable-waiting seconds so far})
Sample = tuple[float, dict[str, float], dict[str, float]]


class CpuSampler:
    """Samples ``cpu()`` and ``waited()`` every ``every`` seconds until ``stop``."""

    def __init__(self, cpu: Callable[[], dict[str, float]],
                 waited: Callable[[], dict[str, float]], every: float = 5.0) -> None:
        self.samples: list[Sample] = []
        self._cpu, self._waited, self._every = cpu, waited, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), self._cpu(), self._waited()))
            if self._stop.wait(self._every):
                return

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _at(samples: Sequence[Sample], t: float) -> Sample | None:
    """The last sample taken at or before ``t``."""
    last = None
    for sample in samples:
        if sample[0] > t:
            break
        last = sample
    return last


def _group(values: dict[str, float], prefix: str) -> float:
    return sum(v for name, v in values.items() if name.startswith(prefix))


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def buckets(
    start_unix: float,
    end_s: float,
    width_s: float,
    decisions: Sequence[tuple[float, float]],
    cpu: Sequence[Sample],
    progress: Sequence[tuple[float, int, int]],
) -> list[dict[str, Any]]:
    """Per ``width_s`` seconds of the run, from its start to ``end_s``: the decisions on
    reports sent then (``decisions``: (report time from the start, latency ms)), their
    latency p50 / p99, the cores early-stop and the refit processes ("suggest-refit-*")
    used and the share of a core early-stop's threads waited runnable (from ``cpu``),
    and early-stop's backlog at the stretch's end (``progress``: (time from the start,
    committed, end offset))."""
    out: list[dict[str, Any]] = []
    t = 0.0
    while t < end_s:
        hi = min(end_s, t + width_s)
        lat = [ms for sent, ms in decisions if t <= sent < hi]
        row: dict[str, Any] = {
            "from_s": t,
            "to_s": hi,
            "decisions": len(lat),
            "decision_p50_ms": _quantile(lat, 0.5),
            "decision_p99_ms": _quantile(lat, 0.99),
        }
        first, last = _at(cpu, start_unix + t), _at(cpu, start_unix + hi)
        if first is not None and last is not None and last[0] > first[0]:
            span = last[0] - first[0]
            row["earlystop_cores"] = round(
                (last[1].get("earlystop", 0.0) - first[1].get("earlystop", 0.0)) / span, 3)
            row["refit_cores"] = round(
                (_group(last[1], "suggest-refit-") - _group(first[1], "suggest-refit-")) / span, 3)
            row["earlystop_waiting_cores"] = round(
                (last[2].get("earlystop", 0.0) - first[2].get("earlystop", 0.0)) / span, 3)
        behind = [end - done for at, done, end in progress if at <= hi]
        row["earlystop_backlog"] = behind[-1] if behind else None
        out.append(row)
        t = hi
    return out
