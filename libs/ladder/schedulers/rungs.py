"""Rung milestones and the detection of a trial crossing them.

Reports arrive every few steps and need not land on a milestone: with rungs
1, 3, 9 a first report at step 10 crosses all three. Every rung is reported once,
in order, with the smoothed value of the report that crossed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ladder.schedulers.spec import SchedulerSpec, reached


@dataclass(frozen=True)
class RungCrossed:
    rung: int  # 0-based rung index
    resource: float  # the milestone, not the report's step
    value: float  # smoothed value at the crossing


class RungCrossingDetector:
    def __init__(self, spec: SchedulerSpec) -> None:
        self.spec = spec

    def crossed(
        self, last_rung: int, step: float, value: float, first_rung: int = 0
    ) -> list[RungCrossed]:
        """Rungs above ``last_rung`` (-1: none yet) that ``step`` reaches.

        ``first_rung`` skips the lower rungs (a Hyperband bracket starting higher).
        """
        if not self.spec.enabled:
            return []
        out: list[RungCrossed] = []
        index = max(last_rung + 1, first_rung, 0)
        while self.spec.is_rung(index):
            resource = self.spec.rung_resource(index)
            if not reached(step, resource):
                break
            out.append(RungCrossed(index, resource, value))
            index += 1
        return out

    def rung_at(self, step: float) -> int:
        """Index of the highest rung ``step`` reached, -1 below the first rung."""
        index = -1
        while self.spec.is_rung(index + 1) and reached(step, self.spec.rung_resource(index + 1)):
            index += 1
        return index
