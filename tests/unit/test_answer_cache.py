"""services.lineage.answer_cache: a part is given back only for the stamp it was made
from, and the least recently used parts go once the byte budget is exceeded."""

from __future__ import annotations

from services.lineage.answer_cache import AnswerCache


def test_a_part_is_reused_only_for_the_same_stamp() -> None:
    cache = AnswerCache(1 << 20)
    cache.put([("t1", (3, ()), b"curve-a"), ("t2", ("row",), b"summary")])
    assert cache.get([("t1", (3, ())), ("t2", ("row",)), ("t3", None)]) == [
        b"curve-a", b"summary", None,
    ]
    # The trial got a point: its stamp changed, the old part is not sent.
    assert cache.get([("t1", (4, ()))]) == [None]
    cache.put([("t1", (4, ()), b"curve-b")])
    assert cache.get([("t1", (4, ())), ("t1", (3, ()))]) == [b"curve-b", None]


def test_the_least_recently_used_go_first_over_the_budget() -> None:
    part = b"x" * 1000
    cache = AnswerCache(3 * (1000 + 500))  # three parts with their overhead
    cache.put([(key, 0, part) for key in ("a", "b", "c")])
    assert cache.get([("a", 0)]) == [part]  # a is now the most recent
    cache.put([("d", 0, part)])
    assert cache.get([(key, 0) for key in "abcd"]) == [part, None, part, part]
    # Replacing a part does not count it twice.
    cache.put([("d", 1, part)])
    assert cache.get([("a", 0), ("c", 0), ("d", 1)]) == [part, part, part]


def test_a_zero_budget_keeps_nothing() -> None:
    cache = AnswerCache(0)
    cache.put([("a", 0, b"part")])
    assert cache.get([("a", 0)]) == [None]
