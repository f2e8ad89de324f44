"""The early-stop engine: the one place that turns a trial's reports into decisions.

Stage 1 (``observe``) folds a metric report into the trial's curve with the trial's
Hyperband bracket and says which rung crossings (or divergence) it caused. Stage 2
(``judge``) records a crossing on its (study, bracket, rung) leaderboard and decides:
the crossing trial first, then, in ASHA's promotion form, a PROMOTE for each paused
trial the grown rung now ranks high enough.

The early-stop service calls it with boards backed by its Faust table, the replay of
``make bench-earlystop`` with boards in memory: both run this code, so a benchmark
figure is a figure of the service's rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from ladder.schedulers.curves import CurveState, observe
from ladder.schedulers.leaderboard import RungLeaderboard
from ladder.schedulers.rules import (
    Action,
    RungDecision,
    decide_crossing,
    diverged_decision,
    mark_promoted,
)
from ladder.schedulers.spec import SchedulerSpec

# Divergences are kept on their own pseudo-rung so a replayed one is recognised.
DIVERGED_RUNG = -1


class BoardSource(Protocol):
    """Where the leaderboards live: one per (study, bracket, rung), created on demand."""

    def board(
        self, study_id: str, rung: int, maximize: bool = False, bracket: int = 0
    ) -> RungLeaderboard: ...


@dataclass(frozen=True)
class Crossing:
    """A trial reached rung ``rung`` (resource ``resource``) with ``value`` smoothed,
    or, when ``diverged``, reported a NaN / inf ``raw_value`` near that rung."""

    study_id: str
    trial_id: str
    rung: int
    resource: float
    value: float
    raw_value: float = math.nan  # the value of the report that crossed
    diverged: bool = False

    @property
    def board_rung(self) -> int:
        """The leaderboard the crossing is recorded on."""
        return DIVERGED_RUNG if self.diverged else self.rung


@dataclass(frozen=True)
class Observed:
    """What one report did: the trial's new curve state and the crossings to judge."""

    state: CurveState
    crossings: list[Crossing]
    ignored: str = ""  # why the report changed nothing, if it did not


class EarlyStopEngine:
    def __init__(self, boards: BoardSource) -> None:
        self.boards = boards

    def observe(
        self,
        spec: SchedulerSpec,
        state: CurveState,
        study_id: str,
        trial_id: str,
        step: float,
        value: float,
    ) -> Observed:
        """Stage 1: fold the report (step, value) into ``state`` (a new state back)."""
        observed = observe(spec, state, step, value, spec.bracket_of(trial_id))
        crossings = [
            Crossing(study_id, trial_id, c.rung, c.resource, c.value, value)
            for c in observed.crossings
        ]
        if observed.divergence is not None:
            d = observed.divergence
            crossings.append(Crossing(study_id, trial_id, d.rung, d.step, value, value, True))
        return Observed(observed.state, crossings, observed.ignored)

    def judge(self, spec: SchedulerSpec, crossing: Crossing) -> list[RungDecision]:
        """Stage 2: record ``crossing`` and return its decisions, the crossing trial's
        first; none when the crossing was judged already (a replayed event). Promotions
        are marked at once, so the next crossing decides on this board; ``undo`` takes
        it all back when the decisions could not be sent."""
        bracket = spec.bracket_of(crossing.trial_id)
        board = self._board(spec, crossing, crossing.board_rung, bracket)
        if not board.record(crossing.trial_id, crossing.value):
            return []
        try:
            decisions = self._decide(spec, crossing, board, bracket)
        except BaseException:
            board.discard(crossing.trial_id)
            raise
        mark_promoted(board, decisions)
        return decisions

    def undo(self, spec: SchedulerSpec, crossing: Crossing, decisions: list[RungDecision]) -> None:
        """Take back ``judge``: the retry then decides on the same board."""
        bracket = spec.bracket_of(crossing.trial_id)
        board = self._board(spec, crossing, crossing.board_rung, bracket)
        board.discard(crossing.trial_id)
        board.promoted.difference_update(
            d.trial_id for d in decisions if d.action is Action.PROMOTE
        )

    def _board(
        self, spec: SchedulerSpec, crossing: Crossing, rung: int, bracket: int
    ) -> RungLeaderboard:
        return self.boards.board(crossing.study_id, rung, spec.maximize, bracket)

    def _decide(
        self, spec: SchedulerSpec, crossing: Crossing, board: RungLeaderboard, bracket: int
    ) -> list[RungDecision]:
        trial_id, rung = crossing.trial_id, crossing.rung
        if crossing.diverged:
            decision = diverged_decision(spec, rung, crossing.resource, crossing.raw_value)
            return [replace(decision, trial_id=trial_id)]
        return decide_crossing(
            spec,
            board,
            trial_id,
            rung,
            crossing.resource,
            previous=self._board(spec, crossing, rung - 1, bracket) if rung > 0 else None,
            next_board=self._board(spec, crossing, rung + 1, bracket),
        )
