"""How long early-stop waits for a study it does not know (StudyDirectory.wait_for)."""

from __future__ import annotations

import asyncio
import time

from ladder.v1 import study_pb2

from services.earlystop.tables import StudyDirectory

WAIT = 5.0


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_backlog_record_of_an_unknown_study_does_not_wait() -> None:
    directory = StudyDirectory({}, WAIT)  # type: ignore[arg-type]
    started = time.monotonic()
    entry = _run(directory.wait_for("ghost", published_unix=time.time() - 60))
    assert entry is None
    assert time.monotonic() - started < WAIT / 2


def test_a_live_record_waits_for_its_study_to_arrive() -> None:
    table: dict[bytes, bytes] = {}
    directory = StudyDirectory(table, WAIT)  # type: ignore[arg-type]
    study = study_pb2.Study(study_id="st-1", config=study_pb2.StudyConfig(metric="loss"))

    async def scenario() -> object:
        waiter = asyncio.create_task(directory.wait_for("st-1", published_unix=time.time()))
        await asyncio.sleep(0)  # let the waiter find the study missing first
        assert not waiter.done()
        table[b"st-1"] = study.SerializeToString()
        await directory.notify()
        return await asyncio.wait_for(waiter, WAIT)

    entry = _run(scenario())
    assert entry is not None
