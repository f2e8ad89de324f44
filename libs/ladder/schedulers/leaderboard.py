"""Rung leaderboards: per study, Hyperband bracket and rung, the smoothed value of every
trial that reached the rung.

Recording is idempotent: a trial is counted once per rung, and a second report
(a replayed event, a resumed attempt crossing the rung again) keeps the value the
decision was made with, so population and ranks never drift on replays.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class RungLeaderboard:
    maximize: bool = False
    values: dict[str, float] = field(default_factory=dict)
    # ASHA promotion form: trials that got PROMOTE at this rung. Kept in memory only; a
    # trial found on the next rung's board counts as promoted too, and after a restart
    # a paused trial may be promoted twice, which the evaluate service ignores.
    promoted: set[str] = field(default_factory=set)
    # Sorted index of (sign * value, trial id), NaN values left out (never better than
    # anything): rank and order in O(log n) / O(n) instead of a sort per decision,
    # which would dominate a decision on rungs of thousands of trials. Rebuilt when
    # ``values`` was changed behind its back or ``maximize`` changed.
    _keys: list[tuple[float, str]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    _keys_sign: float = field(default=0.0, init=False, repr=False, compare=False)
    _keys_count: int = field(default=-1, init=False, repr=False, compare=False)
    _ordered: list[tuple[str, float]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _sign(self) -> float:
        return -1.0 if self.maximize else 1.0

    def _index(self) -> list[tuple[float, str]]:
        sign = self._sign()
        if self._keys_sign != sign or self._keys_count != len(self.values):
            self._keys = sorted((sign * v, t) for t, v in self.values.items() if not math.isnan(v))
            self._keys_sign, self._keys_count, self._ordered = sign, len(self.values), None
        return self._keys

    def record(self, trial_id: str, value: float) -> bool:
        """Add ``trial_id``; False (and no change) when it is already on the board."""
        if trial_id in self.values:
            return False
        keys = self._index()
        self.values[trial_id] = value
        if not math.isnan(value):
            bisect.insort(keys, (self._keys_sign * value, trial_id))
        self._keys_count, self._ordered = len(self.values), None
        return True

    def discard(self, trial_id: str) -> None:
        """Take ``trial_id`` off the board (undo a record whose decision was not sent)."""
        if self.values.pop(trial_id, None) is not None:
            self._keys_count = -1  # rebuilt on next use

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
        """Best first; ties broken by trial id so the order is deterministic (NaN last)."""
        keys = self._index()
        if self._ordered is None:
            values = self.values
            nans = sorted(t for t, v in values.items() if math.isnan(v))
            self._ordered = [(t, values[t]) for _, t in keys] + [(t, values[t]) for t in nans]
        return list(self._ordered)

    def value_at(self, position: int) -> float:
        """The value at 1-based ``position`` of ``ordered()``, without building the list
        (every decision reads its cutoff here)."""
        keys = self._index()
        if 1 <= position <= len(keys):
            return self._keys_sign * keys[position - 1][0]
        if len(keys) < position <= len(self.values):
            return math.nan
        raise IndexError(f"position {position} of a board of {len(self.values)}")

    def best_first(self) -> Iterator[tuple[str, float]]:
        """``ordered()`` lazily: a caller that stops at a cutoff reads only the top."""
        values = self.values
        for _, trial_id in list(self._index()):
            yield trial_id, values[trial_id]
        for trial_id in sorted(t for t, v in values.items() if math.isnan(v)):
            yield trial_id, values[trial_id]

    def rank_of(self, trial_id: str) -> int:
        """1-based rank: 1 + the number of trials strictly better (ties share a rank)."""
        value = self.values[trial_id]
        if math.isnan(value):
            return 1  # nothing compares better than NaN
        keys = self._index()
        return 1 + bisect.bisect_left(keys, (self._keys_sign * value, ""))

    def others(self, trial_id: str) -> list[float]:
        return [v for t, v in self.values.items() if t != trial_id]


@dataclass
class Leaderboards:
    """All rung leaderboards of many studies, keyed by (study id, Hyperband bracket,
    rung index); bracket 0 is the only one outside Hyperband."""

    boards: dict[tuple[str, int, int], RungLeaderboard] = field(default_factory=dict)

    def board(
        self, study_id: str, rung: int, maximize: bool = False, bracket: int = 0
    ) -> RungLeaderboard:
        key = (study_id, bracket, rung)
        found = self.boards.get(key)
        if found is None:
            found = self.boards[key] = RungLeaderboard(maximize)
        found.maximize = maximize
        return found
