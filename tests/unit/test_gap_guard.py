"""When early-stop's consumer reads a partition again (gaps.GapGuard)."""

from __future__ import annotations

from ladder.gaps import GapGuard

TP = ("ladder.rungs", 1)


def test_contiguous_offsets_are_handed_on() -> None:
    guard = GapGuard()
    assert [guard.check(TP, offset) for offset in (7, 8, 9)] == [None, None, None]
    assert guard.rereads == 0


def test_a_skip_is_read_again_from_the_first_missing_offset() -> None:
    guard = GapGuard()
    assert guard.check(TP, 5612) is None
    assert guard.check(TP, 5616) == 5613  # 5613..5615 skipped by the fetch
    # Read again from 5613: the records are there this time.
    assert [guard.check(TP, offset) for offset in (5613, 5614, 5615, 5616)] == [None] * 4
    assert (guard.rereads, guard.accepted) == (1, 0)


def test_a_gap_still_there_when_read_again_is_accepted_once() -> None:
    guard = GapGuard()
    guard.check(TP, 10)
    assert guard.check(TP, 13) == 11
    assert guard.check(TP, 13) is None  # read again, still no 11 and 12: a real gap
    assert (guard.rereads, guard.accepted) == (1, 1)
    assert guard.check(TP, 20) == 14  # a later gap is read again like the first


def test_going_back_is_not_a_gap_and_partitions_are_independent() -> None:
    guard = GapGuard()
    other = ("ladder.metrics", 0)
    guard.check(TP, 100)
    guard.check(other, 3)
    assert guard.check(TP, 90) is None  # a seek back (rebalance): read on from there
    assert guard.check(TP, 91) is None
    assert guard.check(other, 4) is None


def test_after_a_rebalance_the_first_offset_is_taken_as_it_comes() -> None:
    guard = GapGuard()
    guard.check(TP, 100)
    guard.forget()
    assert guard.check(TP, 250) is None  # another process read 101..249


def test_a_batch_drops_what_follows_a_skip_and_says_where_to_seek() -> None:
    guard = GapGuard()
    other = ("ladder.metrics", 0)
    admitted = [
        (tp, offset)
        for tp, offset in [(TP, 10), (TP, 14), (other, 3), (TP, 15)]
        if guard.admit(tp, offset)
    ]
    assert admitted == [(TP, 10), (other, 3)]
    assert guard.rereading and guard.end_batch() == [(TP, 11)]
    assert guard.end_batch() == []  # asked once
    assert all(guard.admit(TP, offset) for offset in (11, 12, 13, 14, 15))
    assert not guard.rereading
