"""The two Faust tables of the early-stop app and thin views over them.

| table           | kind  | key                          | value                      |
|-----------------|-------|------------------------------|----------------------------|
| trial_curves    | Table | trial id                     | ``CurveState`` dict        |
| rung_entries    | Table | JSON [study, bracket, rung,  | {study, bracket, rung,     |
|                 |       | trial]                       | trial, value}              |

Every table is backed by a compacted changelog topic ``<app id>-<table>-changelog``.
The studies are not a table: every process reads the whole studies topic itself
(``services.earlystop.studies``).

``rung_entries`` holds one record per (study, bracket, rung, trial) rather than one
per leaderboard: a leaderboard value rewritten on every crossing would put
O(trials^2) bytes in the changelog. The leaderboards themselves are an in-memory
index (``LeaderboardView``) built from the table on first use after each rebalance.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import faust
from ladder.schedulers import Leaderboards, RungLeaderboard
from ladder.schedulers.engine import Crossing


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
                board = index.board(value["study"], value["rung"], bracket=value["bracket"])
                board.record(value["trial"], float(value["value"]))
            self._index = index
        return self._index

    def board(
        self, study_id: str, rung: int, maximize: bool = False, bracket: int = 0
    ) -> RungLeaderboard:
        """The early-stop engine's board source (``ladder.schedulers.engine.BoardSource``)."""
        return self._boards().board(study_id, rung, maximize, bracket)

    async def persist(self, partition: int, bracket: int, crossing: Crossing) -> None:
        """Write the crossing's entry to the table and to its changelog ``partition``
        (the rungs partition of the crossing)."""
        study_id, rung, trial_id = crossing.study_id, crossing.board_rung, crossing.trial_id
        entry = {
            "study": study_id,
            "bracket": bracket,
            "rung": rung,
            "trial": trial_id,
            "value": crossing.value,
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
    once 100 records wait, stops the stream until it drained: at a table write per
    metric point that buffer would cap stage 1.
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

    A changelog record per metric point would be the largest single cost of stage 1
    (and of the broker); a worker reporting every second costs one record per interval.

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


@dataclass
class EarlyStopTables:
    curves: faust.Table
    entries: faust.Table


def declare_tables(
    app: faust.App, metrics_partitions: int, rungs_partitions: int
) -> EarlyStopTables:
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
    return EarlyStopTables(curves, entries)
