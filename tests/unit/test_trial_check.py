"""Which metric reports may move early stopping (ladder.trialcheck)."""

from __future__ import annotations

import asyncio

import pytest
from ladder.trialcheck import ACCEPT, IGNORE, Known, TrialCheck, verdict
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
        (Known("s", trial_pb2.COMPLETED), IGNORE),
        (Known("s", trial_pb2.PRUNED), IGNORE),
        (Known("s", trial_pb2.FAILED), IGNORE),
    ],
)
def test_verdict(known: Known | None, expected: str) -> None:
    assert verdict("s", "t", known).startswith(expected)


def test_reads_are_remembered_for_the_ttl_and_finished_trials_for_good() -> None:
    now = [0.0]
    store = {"a": Known("s", trial_pb2.RUNNING), "b": Known("s", trial_pb2.COMPLETED)}

    async def lookup(trial_id: str) -> Known | None:
        return store.get(trial_id)

    check = TrialCheck(lookup, ttl_s=2.0, clock=lambda: now[0])

    async def run() -> None:
        assert await check("s", "a") == ACCEPT
        assert await check("s", "b") == IGNORE
        store["a"] = Known("s", trial_pb2.PRUNED)
        assert await check("s", "a") == ACCEPT  # within the ttl: not read again
        assert check.reads == 2
        now[0] = 2.5
        assert await check("s", "a") == IGNORE  # read again: finished
        assert await check("s", "b") == IGNORE
        assert check.reads == 3  # b was finished: never read again

    asyncio.run(run())


def test_a_suggested_trial_is_read_again_at_once() -> None:
    store = {"a": Known("s", trial_pb2.SUGGESTED)}

    async def lookup(trial_id: str) -> Known | None:
        return store.get(trial_id)

    check = TrialCheck(lookup, clock=lambda: 0.0)

    async def run() -> None:
        assert (await check("s", "a")).startswith("trial not running")
        store["a"] = Known("s", trial_pb2.RUNNING)  # StartTrial
        assert await check("s", "a") == ACCEPT

    asyncio.run(run())


def test_the_memory_is_bounded() -> None:
    async def lookup(trial_id: str) -> Known | None:
        return None

    check = TrialCheck(lookup, clock=lambda: 0.0, cache_max=10)

    async def run() -> None:
        for i in range(25):
            assert (await check("s", f"phantom-{i}")).startswith("unknown trial")

    asyncio.run(run())
    assert len(check._seen) <= 10
