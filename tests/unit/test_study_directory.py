"""The early-stop study directory: how long it waits for a study it does not know
(StudyDirectory.wait_for) and what the studies feed stores (StudyFeed.apply)."""

from __future__ import annotations

import asyncio
import time

from ladder.v1 import events_pb2, study_pb2

from services.earlystop.studies import StudyDirectory, StudyFeed

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
        directory = caught_up_directory()
        return await directory.wait_for("ghost", published_unix=time.time() - 60)

    started = time.monotonic()
    assert _run(scenario()) is None
    assert time.monotonic() - started < WAIT / 2


def test_a_live_record_waits_for_its_study_to_arrive() -> None:
    async def scenario() -> object:
        directory = caught_up_directory()
        waiter = asyncio.create_task(directory.wait_for("st-1", published_unix=time.time()))
        await asyncio.sleep(0)  # let the waiter find the study missing first
        assert not waiter.done()
        feed_into(directory).apply(b"st-1", study_event("st-1"))
        return await asyncio.wait_for(waiter, WAIT)

    entry = _run(scenario())
    assert entry is not None and entry.study_id == "st-1" and entry.spec is not None


def test_nothing_is_called_unknown_before_the_topic_was_read_to_its_end() -> None:
    """A restarted process reading an old backlog must not dead-letter its metrics
    because its own copy of the studies topic is still being read."""

    async def scenario() -> tuple[bool, object]:
        directory = StudyDirectory(WAIT)
        waiter = asyncio.create_task(directory.wait_for("st-old", published_unix=time.time() - 600))
        await asyncio.sleep(0.05)
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
