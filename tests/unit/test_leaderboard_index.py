"""The leaderboard's sorted index agrees with the plain definitions of rank and order."""

from __future__ import annotations

import math
import random

import pytest
from ladder.schedulers import RungLeaderboard


def naive_rank(board: RungLeaderboard, trial_id: str) -> int:
    value = board.values[trial_id]
    return 1 + sum(1 for other in board.values.values() if board.better(other, value))


def naive_order(board: RungLeaderboard) -> list[tuple[str, float]]:
    sign = -1.0 if board.maximize else 1.0
    finite = [(t, v) for t, v in board.values.items() if not math.isnan(v)]
    nans = sorted((t, v) for t, v in board.values.items() if math.isnan(v))
    return sorted(finite, key=lambda item: (sign * item[1], item[0])) + nans


@pytest.mark.parametrize("maximize", [False, True])
def test_rank_and_order_match_the_definitions_with_ties_and_nan(maximize: bool) -> None:
    rng = random.Random(3)
    board = RungLeaderboard(maximize)
    for i in range(300):
        # Few distinct values, so many ties; a few NaN and infinities.
        value = (
            rng.choice([math.nan, math.inf, -math.inf]) if i % 50 == 7 else rng.randint(0, 20) / 4
        )
        assert board.record(f"t{i:03d}", value)
        if i % 37 == 0:
            assert board.ordered() == naive_order(board)
    assert not board.record("t005", 99.0)  # idempotent: the first value stays
    assert board.ordered() == naive_order(board)
    assert all(board.rank_of(t) == naive_rank(board, t) for t in board.values)


def test_discard_direct_edits_and_direction_change_rebuild_the_index() -> None:
    board = RungLeaderboard(False)
    for i, value in enumerate([0.5, 0.1, 0.9, 0.3]):
        board.record(f"t{i}", value)
    assert [t for t, _ in board.ordered()] == ["t1", "t3", "t0", "t2"]
    board.discard("t1")
    assert board.rank_of("t3") == 1 and board.population == 3
    board.values["t9"] = 0.0  # edited behind the index's back
    assert board.rank_of("t9") == 1 and board.rank_of("t3") == 2
    board.maximize = True
    assert [t for t, _ in board.ordered()] == ["t2", "t0", "t3", "t9"]
    assert board.rank_of("t2") == 1 and board.rank_of("t9") == 4


@pytest.mark.parametrize("maximize", [False, True])
def test_value_at_and_best_first_read_the_order_without_building_it(maximize: bool) -> None:
    rng = random.Random(5)
    board = RungLeaderboard(maximize)
    for i in range(120):
        value = math.nan if i % 17 == 3 else rng.randint(0, 30) / 3
        board.record(f"t{i:03d}", value)
    expected = naive_order(board)
    assert list(board.best_first()) == expected
    for position, (_, value) in enumerate(expected, start=1):
        got = board.value_at(position)
        assert got == value or (math.isnan(got) and math.isnan(value))
    with pytest.raises(IndexError):
        board.value_at(len(expected) + 1)
    with pytest.raises(IndexError):
        board.value_at(0)
