"""Rung leaderboards: per study, per rung, the smoothed value of every trial that
reached the rung.

Recording is idempotent: a trial is counted once per rung, and a second report
(a replayed event, a resumed attempt crossing the rung again) keeps the value the
decision was made with, so population and ranks never drift on replays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass
class RungLeaderboard:
    maximize: bool = False
    values: dict[str, float] = field(default_factory=dict)

    def record(self, trial_id: str, value: float) -> bool:
        """Add ``trial_id``; False (and no change) when it is already on the board."""
        if trial_id in self.values:
            return False
        self.values[trial_id] = value
        return True

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self.values

    def __len__(self) -> int:
        return len(self.values)

    @property
    def population(self) -> int:
        return len(self.values)

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b`` in the study's direction."""
        return a > b if self.maximize else a < b

    def ordered(self) -> list[tuple[str, float]]:
        """Best first; ties broken by trial id so the order is deterministic."""
        sign = -1.0 if self.maximize else 1.0
        return sorted(self.values.items(), key=lambda item: (sign * item[1], item[0]))

    def rank_of(self, trial_id: str) -> int:
        """1-based rank: 1 + the number of trials strictly better (ties share a rank)."""
        value = self.values[trial_id]
        return 1 + sum(1 for other in self.values.values() if self.better(other, value))

    def others(self, trial_id: str) -> list[float]:
        return [v for t, v in self.values.items() if t != trial_id]


@dataclass
class Leaderboards:
    """All rung leaderboards of many studies, keyed by (study id, rung index)."""

    boards: dict[tuple[str, int], RungLeaderboard] = field(default_factory=dict)

    def board(self, study_id: str, rung: int, maximize: bool = False) -> RungLeaderboard:
        key = (study_id, rung)
        found = self.boards.get(key)
        if found is None:
            found = self.boards[key] = RungLeaderboard(maximize)
        found.maximize = maximize
        return found

    def record(
        self, study_id: str, rung: int, trial_id: str, value: float, maximize: bool = False
    ) -> bool:
        return self.board(study_id, rung, maximize).record(trial_id, value)

    def rungs_of(self, study_id: str) -> Iterator[tuple[int, RungLeaderboard]]:
        for (study, rung), board in sorted(self.boards.items()):
            if study == study_id:
                yield rung, board

    @classmethod
    def from_entries(cls, entries: Mapping[tuple[str, int, str], float]) -> Leaderboards:
        out = cls()
        for (study, rung, trial), value in entries.items():
            out.board(study, rung).record(trial, value)
        return out
