"""The early-stop study directory: how long a record may wait for a study it does not
know (StudyDirectory.lookup) and what the studies feed stores (StudyFeed.apply)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ladder.v1 import events_pb2, study_pb2

from services.earlystop.studies import StudyDirectory, StudyFeed, StudyPending

WAIT = 5.0


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def study_event(study_id: str, metric: str = "loss") -> bytes:
    study = study_pb2.Study(study_id=study_id, config=study_pb2.StudyConfig(metric=metric))
    return events_pb2.StudyEvent(study=study).SerializeToString()


def caught_up_directory() -> StudyDirectory:
    directory = StudyDirectory(WAIT)
    directory.mark_caught_up()
    return directory


def feed_into(directory: StudyDirectory) -> StudyFeed:
    async def no_end_offsets(_bootstrap: str, listed: object) -> object:
        return listed

    return StudyFeed("unused:0", "studies", directory, no_end_offsets)  # type: ignore[arg-type]


def test_a_backlog_record_of_an_unknown_study_does_not_wait() -> None:
    async def scenario() -> object:
        return await caught_up_directory().lookup("ghost", published_unix=time.time() - 60)

    assert _run(scenario()) is None


def test_a_live_record_of_an_unknown_study_is_parked_until_its_wait_is_over() -> None:
    async def scenario() -> tuple[float, float, float]:
        directory = caught_up_directory()
        with pytest.raises(StudyPending) as first:
            await directory.lookup("st-1", published_unix=time.time())
        now = asyncio.get_running_loop().time()
        with pytest.raises(StudyPending) as later:  # the wait counts once per study
            await directory.lookup("st-1", published_unix=time.time() + 3)
        return now, first.value.deadline, later.value.deadline

    now, first, later = _run(scenario())  # type: ignore[misc]
    assert now < first <= now + WAIT
    assert later == pytest.approx(first, abs=0.05)


def test_a_study_that_arrived_is_found_and_wakes_its_waiters() -> None:
    async def scenario() -> tuple[bool, object]:
        directory = caught_up_directory()
        with pytest.raises(StudyPending):
            await directory.lookup("st-1", published_unix=time.time())
        arrival = directory.next_arrival()
        feed_into(directory).apply(b"st-1", study_event("st-1"))
        return arrival.is_set(), await directory.lookup("st-1", published_unix=time.time())

    woken, entry = _run(scenario())  # type: ignore[misc]
    assert woken and entry is not None and entry.study_id == "st-1"  # type: ignore[attr-defined]


def test_nothing_is_called_unknown_before_the_topic_was_read_to_its_end() -> None:
    """A restarted process reading an old backlog must not dead-letter its metrics
    because its own copy of the studies topic is still being read."""

    async def scenario() -> tuple[bool, object]:
        directory = StudyDirectory(WAIT)
        waiter = asyncio.create_task(directory.lookup("st-old", published_unix=time.time() - 600))
        await asyncio.sleep(0.05)  # lets the lookup run up to its wait (not a sync point)
        waited = not waiter.done()
        feed_into(directory).apply(b"st-old", study_event("st-old"))
        directory.mark_caught_up()
        return waited, await asyncio.wait_for(waiter, WAIT)

    waited, entry = _run(scenario())  # type: ignore[misc]
    assert waited and entry is not None and entry.study_id == "st-old"


def test_the_feed_keeps_the_latest_study_forgets_tombstones_and_skips_garbage() -> None:
    async def scenario() -> StudyDirectory:
        directory = caught_up_directory()
        feed = feed_into(directory)
        feed.apply(b"st-1", study_event("st-1", "loss"))
        feed.apply(b"st-1", study_event("st-1", "accuracy"))
        feed.apply(b"st-2", study_event("st-2"))
        feed.apply(b"st-2", None)  # tombstone
        feed.apply(b"junk", b"\xff\x00 not a StudyEvent")  # the studies agent dead-letters it
        feed.apply(b"st-3", events_pb2.StudyEvent().SerializeToString())  # no study id
        return directory

    directory = _run(scenario())
    assert len(directory) == 1  # type: ignore[arg-type]
    entry = directory.get("st-1")  # type: ignore[union-attr]
    assert entry is not None and entry.spec is not None
    assert directory.get("st-2") is None  # type: ignore[union-attr]
