"""Parked records of unknown studies in an early-stop stage: the acks held back behind
them (Faust would otherwise commit past a parked record), a study that arrives while
its parking lot is full, and the costs that must not grow with the number parked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from ladder.poison import ParkingLot
from ladder.testing import FakeApp, fake_event
from ladder.v1 import events_pb2
from test_earlystop_engine import agents_over_fakes

from services.earlystop import studies as studies_module
from services.earlystop.agents import STAGE2, AckGate, BatchWork, EarlyStopAgents
from services.earlystop.studies import StudyDirectory, StudyPending

P = ("metrics", 0)


def test_acks_behind_a_parked_record_wait_until_it_is_handled() -> None:
    """Offset 100 parked, 101..200 handled: acking them would let Faust commit 201
    (its consumer skips one missing offset), so none goes before 100 is handled."""
    gate: AckGate[tuple[str, int], int] = AckGate()
    assert gate.passed([(P, 99, 99)]) == [99]  # before any parked record: at once
    gate.park(P, 100)
    assert gate.passed([(P, o, o) for o in range(101, 201)]) == []
    assert gate.passed([(("metrics", 1), 7, 7)]) == [7]  # another partition goes on
    assert len(gate) == 100
    assert gate.passed([(P, 100, 100)]) == list(range(100, 201))  # in offset order
    assert len(gate) == 0
    assert gate.passed([(P, 201, 201)]) == [201]


def test_acks_go_up_to_the_next_parked_record_only() -> None:
    gate: AckGate[tuple[str, int], int] = AckGate()
    gate.park(P, 10)
    gate.park(P, 20)
    assert gate.passed([(P, o, o) for o in (11, 15, 21, 25)]) == []
    assert gate.passed([(P, 20, 20)]) == []  # 10 still parked: 20 waits too
    assert gate.passed([(P, 10, 10)]) == [10, 11, 15, 20, 21, 25]
    gate.park(P, 30)
    gate.park(P, 30)  # parked again (its study's wait restarted): still one block
    assert gate.passed([(P, 31, 31)]) == []
    gate.clear()  # a rebalance: the owner reads the partition again
    assert gate.passed([(P, 32, 32)]) == [32] and len(gate) == 0


class Stream:
    """A Faust stream of the given events, then none; records what was acked."""

    def __init__(self) -> None:
        self.enable_acks = True
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.acked: list[int] = []

    async def events(self) -> Any:
        while True:
            yield await self.queue.get()

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


class ArrivingStudies:
    """A directory where only the studies in ``known`` exist; the others may come."""

    unknown_study_wait = 60.0

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.arrivals = 0
        self._arrival = asyncio.Event()

    def get(self, study_id: str) -> object | None:
        return SimpleNamespace(spec=object()) if study_id in self.known else None

    async def lookup(self, study_id: str, published_unix: float | None = None) -> object:
        entry = self.get(study_id)
        if entry is None:
            raise StudyPending(study_id, asyncio.get_running_loop().time() + 60)
        return entry

    def next_arrival(self) -> asyncio.Event:
        return self._arrival

    def arrive(self, study_id: str) -> None:
        self.known.add(study_id)
        self.arrivals += 1
        arrival, self._arrival = self._arrival, asyncio.Event()
        arrival.set()


async def handle_by_study(agents: EarlyStopAgents, handled: list[int]) -> Any:
    async def handler(event: Any, work: BatchWork) -> None:
        await agents._study_spec(STAGE2, event.value.decode(), event, work)
        handled.append(event.message.offset)

    return handler


def test_no_ack_behind_a_parked_record_until_its_study_arrives() -> None:
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        studies = ArrivingStudies({"known"})
        agents, _ = agents_over_fakes(studies)
        stream, handled = Stream(), []
        handler = await handle_by_study(agents, handled)

        async def finish(work: BatchWork, acked: bool) -> None:
            return None

        consumer = asyncio.ensure_future(
            agents._consume_in_batches(STAGE2, stream, handler, finish, False)  # type: ignore[arg-type]
        )
        for offset, study in enumerate(["late", "known", "known", "known"]):
            await stream.queue.put(fake_event("rungs", offset, study.encode()))
        await asyncio.sleep(0.2)
        before = (list(handled), list(stream.acked))
        studies.arrive("late")
        await asyncio.sleep(0.2)
        consumer.cancel()
        return before[0], before[1], stream.acked

    handled_before, acked_before, acked_after = asyncio.run(scenario())
    assert handled_before == [1, 2, 3]  # the known study's records were not held up
    assert acked_before == []  # but not acked: the parked offset 0 is before them
    assert acked_after == [0, 1, 2, 3]


def full_lot_agents(known: set[str]) -> tuple[EarlyStopAgents, FakeApp]:
    agents, app = agents_over_fakes(ArrivingStudies(known))
    agents.parked[STAGE2] = ParkingLot(per_key=2)
    for offset in (0, 1):
        agents.parked[STAGE2].park("s", fake_event("rungs", offset, b"s"), deadline=1e9)
    return agents, app


async def finish_nothing(work: BatchWork, acked: bool) -> None:
    return None


def test_a_study_that_arrived_while_its_lot_is_full_has_its_record_parked_not_dead_lettered(
) -> None:
    """The lot of "s" is full, then "s" arrives during a batch: its next record waits
    behind the parked ones (released together by the next batch), it is no dead letter
    saying "unknown study"."""
    agents, app = full_lot_agents({"s"})

    async def run() -> list[Any]:
        handler = await handle_by_study(agents, [])
        return await agents._handle_batch(
            STAGE2, [fake_event("rungs", 2, b"s")], handler, finish_nothing, False
        )

    assert asyncio.run(run()) == []  # parked, so not acked yet
    assert app.topics["dead"].sent == []
    assert len(agents.parked[STAGE2]) == 3
    assert agents.parked[STAGE2].release(lambda key: True, now=0)[-1].message.offset == 2


def test_a_full_lot_of_a_still_unknown_study_says_so_in_the_dead_letter() -> None:
    agents, app = full_lot_agents(set())

    async def run() -> list[Any]:
        handler = await handle_by_study(agents, [])
        return await agents._handle_batch(
            STAGE2, [fake_event("rungs", 2, b"s")], handler, finish_nothing, False
        )

    assert [e.message.offset for e in asyncio.run(run())] == [2]
    (letter,) = [events_pb2.DeadLetter.FromString(v) for v in app.topics["dead"].sent]
    assert letter.reason.startswith("unknown study 's'") and "parking lot is full" in letter.reason


def test_the_parking_lot_counts_and_finds_deadlines_without_walking_its_items() -> None:
    lot: ParkingLot[str, int] = ParkingLot(per_key=1000)
    for i in range(1000):
        lot.park(f"k{i % 10}", i, deadline=100.0 + i % 10)
    assert len(lot) == 1000 and lot.next_deadline() == 100.0
    assert lot.release(None, now=101.0) == list(range(0, 1000, 10)) + list(range(1, 1000, 10))
    assert len(lot) == 800 and lot.next_deadline() == 102.0
    assert lot.release(None, now=101.5) == []  # only deadlines: no key is asked about
    assert lot.release(lambda key: key == "k9", now=101.5) == list(range(9, 1000, 10))
    assert len(lot) == 700
    assert lot.park("k9", 5, deadline=50.0) and lot.next_deadline() == 50.0
    lot.clear()
    assert len(lot) == 0 and lot.next_deadline() is None


def test_unknown_ids_within_their_wait_are_pruned_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MISSED_MAX ids all still within their wait, a lookup must not rebuild the
    map of first misses each time (O(ids) per report)."""
    monkeypatch.setattr(studies_module, "MISSED_MAX", 10)
    directory = StudyDirectory(60.0)
    directory.mark_caught_up()

    async def lookups() -> int:
        rebuilt, table = 0, directory._first_missed
        for i in range(200):
            with pytest.raises(StudyPending):
                await directory.lookup(f"ghost-{i}")
            if directory._first_missed is not table:
                rebuilt, table = rebuilt + 1, directory._first_missed
        return rebuilt

    assert asyncio.run(lookups()) <= 1
