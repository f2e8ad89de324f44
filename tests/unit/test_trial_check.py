"""Which metric reports may move early stopping (ladder.trialcheck)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from ladder.trialcheck import ACCEPT, Known, TrialCheck, verdict
from ladder.v1 import trial_pb2


@pytest.mark.parametrize(
    ("known", "expected"),
    [
        (None, "unknown trial"),
        (Known("other", trial_pb2.RUNNING), "trial belongs to another study"),
        (Known("s", trial_pb2.SUGGESTED), "trial not running: trial 't' is SUGGESTED"),
        (Known("s", trial_pb2.RUNNING), ACCEPT),
        (Known("s", trial_pb2.PAUSED), ACCEPT),
        (Known("s", trial_pb2.RESUMABLE), ACCEPT),
        (Known("s", trial_pb2.COMPLETED), ACCEPT),
        (Known("s", trial_pb2.PRUNED), ACCEPT),
        (Known("s", trial_pb2.FAILED), ACCEPT),
    ],
)
def test_verdict(known: Known | None, expected: str) -> None:
    assert verdict("s", "t", known).startswith(expected)


def test_accepted_trials_are_remembered_for_good_unknown_ones_for_the_ttl() -> None:
    now = [0.0]
    store = {"a": Known("s", trial_pb2.RUNNING), "b": Known("s", trial_pb2.COMPLETED)}

    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        return [store.get(t) for t in trial_ids]

    check = TrialCheck(lookup, ttl_s=2.0, clock=lambda: now[0])

    async def run() -> None:
        assert await check("s", "a") == ACCEPT
        assert await check("s", "b") == ACCEPT
        assert (await check("s", "later")).startswith("unknown trial")
        assert (await check("other", "a")).startswith("trial belongs to another study")
        store["a"] = Known("s", trial_pb2.PRUNED)
        store["later"] = Known("s", trial_pb2.RUNNING)
        assert check.reads == 3
        now[0] = 1e6
        assert await check("s", "a") == ACCEPT  # accepted: never read again
        assert await check("s", "b") == ACCEPT
        assert check.reads == 3
        assert await check("s", "later") == ACCEPT  # unknown: read again after the ttl
        assert check.reads == 4

    asyncio.run(run())


def test_a_suggested_trial_is_read_again_at_once() -> None:
    store = {"a": Known("s", trial_pb2.SUGGESTED)}

    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        return [store.get(t) for t in trial_ids]

    check = TrialCheck(lookup, clock=lambda: 0.0)

    async def run() -> None:
        assert (await check("s", "a")).startswith("trial not running")
        store["a"] = Known("s", trial_pb2.RUNNING)  # StartTrial
        assert await check("s", "a") == ACCEPT

    asyncio.run(run())


def test_the_memory_is_bounded() -> None:
    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        return [None] * len(trial_ids)

    check = TrialCheck(lookup, clock=lambda: 0.0, cache_max=10)

    async def run() -> None:
        for i in range(25):
            assert (await check("s", f"phantom-{i}")).startswith("unknown trial")

    asyncio.run(run())
    assert len(check._seen) <= 10


def test_a_batch_is_read_in_one_round_trip_and_only_what_is_due() -> None:
    now = [0.0]
    asked: list[list[str]] = []
    store = {t: Known("s", trial_pb2.RUNNING) for t in ("a", "b", "c")}

    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        asked.append(list(trial_ids))
        return [store.get(t) for t in trial_ids]

    check = TrialCheck(lookup, ttl_s=2.0, clock=lambda: now[0])

    async def run() -> None:
        await check.prefetch(["a", "b", "a", "phantom"])
        assert [await check("s", t) for t in ("a", "b")] == [ACCEPT, ACCEPT]
        assert (await check("s", "phantom")).startswith("unknown trial")
        now[0] = 1.0
        await check.prefetch(["a", "c"])  # a is fresh: only c is read
        now[0] = 2.5
        await check.prefetch(["a", "b", "c", "phantom"])  # only the unknown one is due
        await check.prefetch([])

    asyncio.run(run())
    assert asked == [["a", "b", "phantom"], ["c"], ["phantom"]]
