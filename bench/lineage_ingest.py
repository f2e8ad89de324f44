"""How fast the lineage store ingests, on SQLite and on PostgreSQL (issue 15).

::

    .venv/bin/python bench/lineage_ingest.py [--trials 400] [--steps 100] [--rounds 3]

A study's records as the service's writer thread applies them (batches of 500, one
transaction each, the Ingestor's batch size): per trial TRIAL_SUGGESTED, TRIAL_STARTED,
``steps`` metric points, a decision and a checkpoint every 10 steps, TRIAL_COMPLETED
(400 x 100: 49,200 records, 81 % metric points). SQLite is a file with WAL on the local
disk; PostgreSQL a throwaway server on loopback (``ladder.testing.postgres``, fsync
off: it measures the store's statements and round trips, not the disk). Engines
alternate per round so that load from elsewhere on the host falls on both. Reports
records/s per round by wall clock and by this process's CPU time (the CPU figure is the
one to compare SQLite versions on a busy machine), and the medians, in
``results/lineage-ingest.json``. About a minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ladder.testing.postgres import postgres_server
from ladder.v1 import events_pb2, trial_pb2

from services.lineage.db import open_database
from services.lineage.store import Ingest, LineageStore, Source

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 500


def trial_event(trial_id: str, kind: int, state: int, ts_ms: int) -> events_pb2.TrialEvent:
    trial = trial_pb2.Trial(
        trial_id=trial_id, study_id="bench", seed=7, attempt_id=f"{trial_id}-a1",
        attempt_number=1, worker_id="w", state=state,
    )
    trial.params["lr"].float_value = 0.01
    return events_pb2.TrialEvent(kind=kind, trial=trial, ts_ms=ts_ms)


def records(trials: int, steps: int) -> list[Ingest]:
    items: list[Ingest] = []
    for t in range(trials):
        trial_id = f"trial-{t}"
        events: list[Any] = [
            trial_event(trial_id, events_pb2.TRIAL_SUGGESTED, trial_pb2.SUGGESTED, 1),
            trial_event(trial_id, events_pb2.TRIAL_STARTED, trial_pb2.RUNNING, 2),
        ]
        for step in range(steps):
            events.append(events_pb2.MetricReport(
                study_id="bench", trial_id=trial_id, attempt_id=f"{trial_id}-a1",
                worker_id="w", metric="loss", step=step, value=1 / (step + 1), ts_ms=10 + step,
            ))
            if step % 10 == 9:
                events.append(events_pb2.Decision(
                    study_id="bench", trial_id=trial_id, action=events_pb2.CONTINUE,
                    rung=step // 10, ts_ms=10 + step,
                ))
                events.append(trial_event(
                    trial_id, events_pb2.TRIAL_CHECKPOINTED, trial_pb2.RUNNING, 10 + step
                ))
        events.append(
            trial_event(trial_id, events_pb2.TRIAL_COMPLETED, trial_pb2.COMPLETED, 10**6)
        )
        # Four partitions, as the topics have; offsets in publishing order.
        first = len(items)
        items.extend(Ingest(Source("bench", t % 4, first + i), e) for i, e in enumerate(events))
    return items


def ingest(location: str, items: list[Ingest]) -> dict[str, float]:
    store = LineageStore(open_database(location))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(items), BATCH):
            store.apply(items[start:start + BATCH])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        store.database.close()
    return {"records_per_s_wall": len(items) / wall, "records_per_s_cpu": len(items) / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    items = records(args.trials, args.steps)
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with postgres_server() as server, tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            runs["sqlite"].append(ingest(f"{folder}/lineage-{round_number}.sqlite3", items))
            runs["postgresql"].append(ingest(server.fresh_url("bench"), items))
            print(f"round {round_number + 1}: " + ", ".join(
                f"{engine} {found[-1]['records_per_s_wall']:,.0f} records/s"
                for engine, found in runs.items()
            ))
    medians = {
        engine: {key: statistics.median(run[key] for run in found) for key in found[0]}
        for engine, found in runs.items()
    }
    result = {"records": len(items), "batch": BATCH, "runs": runs, "median": medians}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lineage-ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    for engine, median in medians.items():
        print(f"{engine}: median {median['records_per_s_wall']:,.0f} records/s wall, "
              f"{median['records_per_s_cpu']:,.0f} per CPU second")


if __name__ == "__main__":
    main()
