"""The three Faust tables of the early-stop app and thin views over them.

| table           | kind        | key                          | value                      |
|-----------------|-------------|------------------------------|----------------------------|
| study_configs   | GlobalTable | study id (bytes)             | StudyEvent protobuf bytes  |
| trial_curves    | Table       | trial id                     | ``CurveState`` dict        |
| rung_entries    | Table       | JSON [study, bracket, rung,  | {study, bracket, rung,     |
|                 |             | trial]                       | trial, value}              |

Every table is backed by a compacted changelog topic ``<app id>-<table>-changelog``.

``study_configs`` is global because stage 1 is partitioned by trial: the metrics of one
study land on every partition, so every worker needs every study. It is fed by the
studies agent and written with ``use_partitioner`` into a single-partition changelog
(``partitions=1``, ``recovery_buffer_size=1``, Faust's own advice for global tables
with several workers); every worker reads that changelog as a standby, so a study
written by the worker that owns its studies-topic partition reaches all the others.

``rung_entries`` holds one record per (study, bracket, rung, trial) rather than one
per leaderboard: a leaderboard value rewritten on every crossing would put
O(trials^2) bytes in the changelog. The leaderboards themselves are an in-memory
index (``LeaderboardView``) built from the table on first use after each rebalance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
from ladder.codec import BadRecord, decode
from ladder.schedulers import Leaderboards, RungLeaderboard, SchedulerConfigError, SchedulerSpec
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.earlystop")


@dataclass(frozen=True)
class StudyEntry:
    study_id: str
    spec: SchedulerSpec | None
    error: str = ""  # why the study's scheduler config cannot be used


def parse_study(study_id: str, raw: bytes) -> StudyEntry:
    try:
        event = decode(events_pb2.StudyEvent, raw)
        return StudyEntry(study_id, SchedulerSpec.from_study(event.study.config))
    except (BadRecord, SchedulerConfigError) as exc:
        return StudyEntry(study_id, None, str(exc))


class StudyDirectory:
    """Read side of ``study_configs``: parsed specs, and a bounded wait for studies
    whose StudyEvent has not arrived yet (a metric can overtake it: the two topics are
    consumed independently)."""

    def __init__(self, table: faust.GlobalTable, unknown_study_wait: float) -> None:
        self.table = table
        self.unknown_study_wait = unknown_study_wait
        self._parsed: dict[str, tuple[bytes, StudyEntry]] = {}
        self._first_missed: dict[str, float] = {}
        self._arrivals: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        # Created lazily: it must belong to the worker's running loop.
        if self._arrivals is None:
            self._arrivals = asyncio.Condition()
        return self._arrivals

    def get(self, study_id: str) -> StudyEntry | None:
        raw = self.table.get(study_id.encode())
        if raw is None:
            return None
        cached = self._parsed.get(study_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        entry = parse_study(study_id, raw)
        self._parsed[study_id] = (raw, entry)
        return entry

    async def notify(self) -> None:
        """A study arrived (local write or changelog event from another worker)."""
        async with self._condition():
            self._condition().notify_all()

    async def wait_for(
        self, study_id: str, published_unix: float | None = None
    ) -> StudyEntry | None:
        """The study, waiting at most ``unknown_study_wait`` seconds in total per
        unknown study id (later reports of a study that never came do not wait again).

        The wait counts from when the record was published (``published_unix``, the
        Kafka timestamp), not from when it is read: a record read from a backlog older
        than the wait does not wait at all, since a StudyEvent published with it would
        have arrived by now. Otherwise every unknown study in a replayed backlog would
        hold its partition for the full wait."""
        entry = self.get(study_id)
        if entry is not None:
            self._first_missed.pop(study_id, None)
            return entry
        loop = asyncio.get_running_loop()
        deadline = self._first_missed.setdefault(study_id, loop.time()) + self.unknown_study_wait
        if published_unix is not None and published_unix > 0:
            age = max(0.0, time.time() - published_unix)
            deadline = min(deadline, loop.time() + self.unknown_study_wait - age)
        condition = self._condition()
        while (entry := self.get(study_id)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            # Woken by every arrival; the 1 s slice re-checks even if a wake-up is missed.
            try:
                async with condition:
                    await asyncio.wait_for(condition.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                pass
        self._first_missed.pop(study_id, None)
        return entry


def entry_key(study_id: str, bracket: int, rung: int, trial_id: str) -> str:
    return json.dumps([study_id, bracket, rung, trial_id], separators=(",", ":"))


class LeaderboardView:
    """Leaderboards (per study, bracket and rung) over the ``rung_entries`` table.

    The index is rebuilt in one pass over the table when first needed after a
    rebalance (``invalidate``), so it always matches the partitions this worker owns.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self._index: Leaderboards | None = None

    def invalidate(self) -> None:
        self._index = None

    def _boards(self) -> Leaderboards:
        if self._index is None:
            index = Leaderboards()
            for value in self.table.values():
                index.board(_board_id(value["study"], value["bracket"]), value["rung"]).record(
                    value["trial"], float(value["value"])
                )
            self._index = index
        return self._index

    def board(self, study_id: str, bracket: int, rung: int, maximize: bool) -> RungLeaderboard:
        return self._boards().board(_board_id(study_id, bracket), rung, maximize)

    async def persist(
        self, partition: int, study_id: str, bracket: int, rung: int, trial_id: str, value: float
    ) -> None:
        """Write the entry to the table and to its changelog ``partition`` (the rungs
        partition of the crossing)."""
        entry = {
            "study": study_id,
            "bracket": bracket,
            "rung": rung,
            "trial": trial_id,
            "value": value,
        }
        await write_in_partition(
            self.table, partition, entry_key(study_id, bracket, rung, trial_id), entry
        )


async def write_in_partition(table: faust.Table, partition: int, key: Any, value: Any) -> None:
    """``table[key] = value`` with the changelog partition given, not taken from the
    stream's current event: batches write after their events were all handled.

    The partition must be the source partition of the key's records (Faust's rule for
    a table's changelog partitions), so a worker taking the partition over recovers it.
    The changelog record goes straight to the producer: ``table[key] = value`` queues
    it in Faust's producer buffer, which sends one record per event-loop turn and,
    once 100 records wait, stops the stream until it drained -- at a table write per
    metric point that buffer was what capped stage 1.
    """
    table.data[key] = value
    await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=table.key_serializer,
        value_serializer=table.value_serializer,
    )


class CurveWriteBehind:
    """Stage 1's curve states, written to ``trial_curves`` at most once per trial per
    ``interval`` seconds instead of once per metric point.

    A changelog record per metric point was the largest single cost of stage 1 (and
    the broker's); a worker reporting every second now costs one record per interval.

    Nothing is lost for it: the metric events whose states are not written yet are
    held unacknowledged, so Faust does not commit their offsets. A crash replays them
    on top of the last written states (stage 1 ignores steps it has seen, stage 2
    crossings it has), and a rebalance waits for unacknowledged events, which the
    agent releases as soon as Faust suspends the flow (``flush_now``). ``interval``
    0 writes after every batch.
    """

    def __init__(self, table: faust.Table, interval: float, max_held: int = 50_000) -> None:
        self.table = table
        self.interval = interval
        self.max_held = max_held
        self._dirty: dict[str, tuple[int, dict[str, Any]]] = {}
        self._held: list[Any] = []
        self._oldest: float | None = None  # monotonic time the oldest held event came

    def get(self, trial_id: str) -> dict[str, Any] | None:
        entry = self._dirty.get(trial_id)
        return entry[1] if entry is not None else self.table.get(trial_id)

    def stage(self, curves: dict[str, tuple[int, dict[str, Any]]]) -> None:
        """Newer states (trial id -> (metrics partition, state)), not written yet."""
        self._dirty.update(curves)

    def hold(self, events: list[Any]) -> None:
        if events and self._oldest is None:
            self._oldest = time.monotonic()
        self._held.extend(events)

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def due_in(self) -> float:
        """Seconds until the held events must be released (0: now)."""
        if self._oldest is None or len(self._held) >= self.max_held:
            return 0.0
        return max(0.0, self._oldest + self.interval - time.monotonic())

    async def flush(self) -> list[Any]:
        """Write every staged state once; returns the events it releases for acking."""
        # Cleared only once all are written: a failed flush is retried whole.
        for trial_id, (partition, state) in self._dirty.items():
            await write_in_partition(self.table, partition, trial_id, state)
        released = self._held
        self._dirty, self._held, self._oldest = {}, [], None
        return released


def _board_id(study_id: str, bracket: int) -> str:
    return study_id if bracket == 0 else f"{study_id}#bracket{bracket}"


@dataclass
class EarlyStopTables:
    studies: faust.GlobalTable
    curves: faust.Table
    entries: faust.Table


def declare_tables(
    app: faust.App, metrics_partitions: int, rungs_partitions: int, on_study_changelog: Any
) -> EarlyStopTables:
    studies = app.GlobalTable(
        "study_configs",
        key_type=bytes,
        value_type=bytes,
        partitions=1,
        use_partitioner=True,
        recovery_buffer_size=1,
        on_changelog_event=on_study_changelog,
        help="StudyEvent bytes by study id, from the studies topic (every worker has all).",
    )
    curves = app.Table(
        "trial_curves",
        key_type=str,
        partitions=metrics_partitions,
        help="Stage 1: smoothing state, last step and last rung per trial.",
    )
    entries = app.Table(
        "rung_entries",
        key_type=str,
        partitions=rungs_partitions,
        help="Stage 2: smoothed value of each trial at each rung it reached.",
    )
    return EarlyStopTables(studies, curves, entries)
