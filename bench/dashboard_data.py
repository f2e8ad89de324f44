"""The dashboard's data at scale: a synthetic 20,000-trial study in a lineage store, and how
fast lineage's dashboard reads answer on it through a real lineage service (issue 16).

::

    .venv/bin/python bench/dashboard_data.py [--trials 20000] [--points 500000]
        [--engines sqlite,postgresql] [--repeats 7] [--seed 0]

**The fixture** (``make_study(db_url, trials, points, seed) -> study_id``, reused by the
dashboard's page-load benchmark): one MINIMIZE study ("val_loss", ASHA, eta 3, four rungs)
whose trials went the way ASHA sends them: 2/3 stopped at the first rung, 2/9 at the
second, ... 1/81 completed, each stop with its decision and reason (rung, rank, cutoff;
a few diverged with a NaN value, stopped by the divergence rule), 0.5 % failed, 2 %
preempted once and resumed from a checkpoint (re-reporting two steps), the newest 1 %
still running. A stopped trial runs a few steps past its stop decision (the decision
travels while the worker trains): exactly ``points`` metric points in all. Four params
(log-float, int, categorical, float) that explain the value. Deterministic for a seed.

It goes through the store's own write path, ``LineageStore.apply``, as the service's
ingest thread applies consumed records (batches, one transaction each), so the rows are
the ones ingest writes, projections, per-trial curve ends and indexes included; the
records are given a Kafka position on a topic of their own
(``bench.dashboard.<study_id>``), so a service later started on the same store reads its
real topics from where it was. ``db_url``: a SQLite path or ``sqlite:///PATH``, or a
``postgresql://`` URL (``services.lineage.db``): for PostgreSQL the write path fills a
staging SQLite file (the same rows; PostgreSQL would pay a round trip per statement,
minutes for 80,000 trial events) whose tables are then COPied in. About a minute for
20,000 trials on the 2-core machine; a store that already holds the study is kept.

**The measurement**: a lineage service process (``python -m services.lineage`` on the
store, with an embedded broker and Redis from ``ladder up --no-services``) answers
ListTrials, GetStudyCurves (defaults: 500 trials x 64 points), GetStudyRungs,
GetStudySummary and ListStudyListings over gRPC with the SDK's answer limit (64 MiB:
``ladder.limits``): the first call's latency (GetStudyCurves then down-samples all 500
curves; later calls reuse those whose trials did not change), then ``--repeats`` calls:
latency (median, max), the service process's CPU time per call (on a shared machine the
latency includes waiting for a core, the CPU time does not) and the answer's size.
Writes ``bench/results/dashboard-data-<date>.json`` with the machine, the load average
and the seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
from ladder.limits import MAX_RESPONSE_BYTES
from ladder.testing import ServiceGroup, embedded_infra
from ladder.testing.postgres import postgres_server
from ladder.v1 import (
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    trial_pb2,
)

from services.lineage.db import SQLITE, Database, open_database, parse_location
from services.lineage.store import Event, Ingest, LineageStore, Source

RESULTS = Path(__file__).resolve().parent / "results"
METRIC = "val_loss"
ETA = 3
RUNGS = 4  # rungs 0..3; a trial past the last one runs to max_resource
STEP_MS = 2_000  # one reported step of training
START_SPACING_MS = 800  # a new trial every 0.8 s: about 60 running at once
BATCH = 5_000  # records per store transaction
PACKAGES = ("grpcio", "protobuf", "psycopg", "numpy")

TS = trial_pb2.TrialState
LOG = space_pb2.Scale.Value("SCALE_LOG")
KIND = events_pb2.TrialEventKind


@dataclass
class Plan:
    """One trial's fate."""

    index: int
    quality: float  # the value it converges to (lower is better)
    params: dict[str, Any]
    stop_rung: int  # the rung whose decision stopped it; RUNGS: ran to the end
    outcome: str  # pruned / completed / failed / running / diverged
    steps: int  # steps reported by its (last) attempt
    preempted_at: int  # 0: never preempted
    extra: int = 0  # steps run past its stop decision


def _params(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "lr": float(10 ** rng.uniform(-5, -1)),
        "depth": int(rng.integers(2, 13)),
        "optimizer": str(rng.choice(["adam", "sgd", "rmsprop"])),
        "dropout": float(rng.uniform(0, 0.5)),
    }


def _quality(params: dict[str, Any], rng: np.random.Generator) -> float:
    """What a configuration converges to: lr matters most, then the optimizer and depth."""
    lr_term = 0.12 * (math.log10(params["lr"]) + 3) ** 2
    optimizer_term = {"adam": 0.0, "rmsprop": 0.05, "sgd": 0.12}[params["optimizer"]]
    return 0.2 + lr_term + optimizer_term + 0.01 * abs(params["depth"] - 7) + float(
        rng.normal(0, 0.02)
    )


def _value(plan: Plan, step: float, noise: float) -> float:
    return plan.quality + 1.5 * math.exp(-step / 8) + noise


def plan_study(trials: int, points: int, seed: int) -> tuple[list[Plan], list[int]]:
    """Every trial's fate and the rung resources (steps), with exactly ``points`` points."""
    if points < trials:
        raise ValueError(f"points ({points}) must be at least trials ({trials})")
    rng = np.random.default_rng(seed)
    configs = [_params(rng) for _ in range(trials)]
    qualities = [_quality(p, rng) for p in configs]
    # Better configurations get further (ASHA with a little noise: asynchronous ranks).
    order = np.argsort(np.asarray(qualities) + rng.normal(0, 0.03, trials))
    fate = np.empty(trials, dtype=int)
    for place, index in enumerate(order):
        share = (place + 0.5) / trials
        fate[index] = min(RUNGS, int(math.floor(-math.log(share) / math.log(ETA))))
    # A rung's resource in steps: the mean length matches points per trial.
    mean_rung_units = sum(ETA**min(int(f), RUNGS) for f in fate) / trials
    unit = max(1, int(points / trials / mean_rung_units))
    resources = [unit * ETA**k for k in range(RUNGS + 1)]  # last: max_resource
    running_from = trials - max(1, trials // 100)
    plans = []
    for i in range(trials):
        rung = int(fate[i])
        outcome = "completed" if rung == RUNGS else "pruned"
        steps = resources[rung]
        draw = rng.random()
        if i >= running_from:
            outcome = "running"
            steps = max(1, int(steps * rng.uniform(0.2, 1.0)))
        elif draw < 0.005:
            outcome, steps = "failed", max(1, int(steps * rng.uniform(0.3, 1.0)))
        elif draw < 0.007 and rung < RUNGS:
            outcome = "diverged"
        preempted = 0
        if rng.random() < 0.02 and steps >= 4:
            preempted = int(rng.integers(3, steps))
        plans.append(Plan(i, qualities[i], configs[i], rung, outcome, steps, preempted))
    _fit_points(plans, points)
    return plans, resources


def _point_count(plan: Plan) -> int:
    return plan.steps + plan.extra + (2 if plan.preempted_at else 0)


def _fit_points(plans: list[Plan], points: int) -> None:
    """Stopped trials run ahead of their decision until the total is ``points``; when
    there are too many, the longest trials are cut short."""
    total = sum(_point_count(p) for p in plans)
    stopped = [p for p in plans if p.outcome in ("pruned", "diverged")] or plans
    surplus = points - total
    if surplus >= 0:
        for k, plan in enumerate(stopped):
            plan.extra = surplus // len(stopped) + (1 if k < surplus % len(stopped) else 0)
        return
    for plan in sorted(plans, key=lambda p: -p.steps):
        cut = min(-surplus, plan.steps - 1 - (3 if plan.preempted_at else 0))
        if cut > 0:
            plan.steps -= cut
            surplus += cut
            plan.preempted_at = min(plan.preempted_at, plan.steps - 1)
        if surplus == 0:
            return
    raise ValueError(f"cannot fit {len(plans)} trials into {points} points")


class _Records:
    """Positions on the fixture's own topic, in publishing order."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.offset = 0
        self.items: list[Ingest] = []

    def add(self, event: Event) -> None:
        self.items.append(Ingest(Source(self.topic, 0, self.offset), event))
        self.offset += 1


def _study_event(study_id: str, trials: int, resources: list[int], created_ms: int) -> Any:
    config = study_pb2.StudyConfig(
        name=f"dashboard-bench-{trials}", direction=study_pb2.MINIMIZE, metric=METRIC,
        algorithm=study_pb2.TPE, max_trials=trials, dataset_id="synthetic@1",
        code_commit="0" * 40, seed=1,
    )
    config.scheduler.kind = study_pb2.ASHA
    config.scheduler.min_resource = resources[0]
    config.scheduler.max_resource = resources[-1]
    config.scheduler.reduction_factor = ETA
    space = config.space.parameters
    space.add(name="lr", float_range=space_pb2.FloatRange(low=1e-5, high=1e-1, scale=LOG))
    space.add(name="depth", int_range=space_pb2.IntRange(low=2, high=12))
    space.add(name="optimizer").categorical.choices.extend(["adam", "sgd", "rmsprop"])
    space.add(name="dropout", float_range=space_pb2.FloatRange(low=0.0, high=0.5))
    study = study_pb2.Study(
        study_id=study_id, config=config, state=study_pb2.STUDY_ACTIVE,
        created_unix_ms=created_ms, trials_suggested=trials,
    )
    return events_pb2.StudyEvent(study=study, ts_ms=created_ms)


def _trial(plan: Plan, study_id: str, state: int, attempt: int) -> trial_pb2.Trial:
    trial = trial_pb2.Trial(
        trial_id=f"{study_id}-t{plan.index:06d}", study_id=study_id, state=state,
        seed=1000 + plan.index, attempt_id=f"a{attempt}" if attempt else "",
        attempt_number=attempt, worker_id=f"w{plan.index % 64}" if attempt else "",
    )
    for name, value in plan.params.items():
        if isinstance(value, str):
            trial.params[name].str_value = value
        elif isinstance(value, int):
            trial.params[name].int_value = value
        else:
            trial.params[name].float_value = value
    return trial


def _trial_records(
    plan: Plan, study_id: str, resources: list[int], rng: np.random.Generator, t0: int
) -> Iterator[Event]:
    """Every record of one trial, in the order its services would publish them."""
    suggested = t0 + plan.index * START_SPACING_MS
    yield events_pb2.TrialEvent(
        kind=KIND.Value("TRIAL_SUGGESTED"), trial=_trial(plan, study_id, TS.Value("SUGGESTED"), 0),
        ts_ms=suggested, algorithm="random" if plan.index < 20 else "tpe",
        predicted_mean=0.0 if plan.index < 20 else plan.quality + float(rng.normal(0, 0.05)),
        predicted_std=0.0 if plan.index < 20 else float(rng.uniform(0.01, 0.2)),
        reason="suggested by tpe",
    )
    started = suggested + 500
    attempt = 1
    yield _started(plan, study_id, attempt, started)
    values = {s: _value(plan, s, float(rng.normal(0, 0.01))) for s in range(1, _last(plan) + 1)}
    if plan.outcome == "diverged":
        for step in range(plan.steps, _last(plan) + 1):
            values[step] = math.nan
    for step in range(1, _last(plan) + 1):
        if plan.preempted_at and step == plan.preempted_at + 1 and attempt == 1:
            # Preempted after this step's report; resumed from the checkpoint 2 steps back.
            ended = started + step * STEP_MS
            trial = _trial(plan, study_id, TS.Value("RESUMABLE"), 1)
            yield events_pb2.TrialEvent(
                kind=KIND.Value("TRIAL_FAILED"), trial=trial, ts_ms=ended,
                reason="preempted: SIGTERM; not counted (0 of 3 failures used)",
                ended_attempt_id="a1", attempt_end=trial_pb2.ATTEMPT_PREEMPTED,
            )
            attempt = 2
            started = ended + 5_000 - (step - 3) * STEP_MS
            yield _started(plan, study_id, attempt, ended + 5_000)
            for again in (step - 2, step - 1):
                yield _metric(plan, study_id, attempt, again, values[again] + 0.001,
                              started + again * STEP_MS)
        yield _metric(plan, study_id, attempt, step, values[step], started + step * STEP_MS)
        yield from _decisions_at(plan, study_id, resources, step, values[step],
                                 started + step * STEP_MS + 300, rng)
    yield from _ending(plan, study_id, attempt, started + _last(plan) * STEP_MS + 500, values)


def _last(plan: Plan) -> int:
    return plan.steps + plan.extra


def _started(plan: Plan, study_id: str, attempt: int, ts_ms: int) -> events_pb2.TrialEvent:
    return events_pb2.TrialEvent(
        kind=KIND.Value("TRIAL_STARTED"),
        trial=_trial(plan, study_id, TS.Value("RUNNING"), attempt), ts_ms=ts_ms,
        hostname=f"gpu-{plan.index % 16}", environment="python=3.11 torch=2.13.0",
        reason="started",
    )


def _metric(
    plan: Plan, study_id: str, attempt: int, step: int, value: float, ts_ms: int
) -> events_pb2.MetricReport:
    return events_pb2.MetricReport(
        study_id=study_id, trial_id=f"{study_id}-t{plan.index:06d}", attempt_id=f"a{attempt}",
        worker_id=f"w{plan.index % 64}", metric=METRIC, step=step, value=value, ts_ms=ts_ms,
    )


def _decisions_at(
    plan: Plan, study_id: str, resources: list[int], step: int, value: float, ts_ms: int,
    rng: np.random.Generator,
) -> Iterator[events_pb2.Decision]:
    if step not in resources[:RUNGS]:
        return
    rung = resources.index(step)
    stop = rung == plan.stop_rung and plan.outcome in ("pruned", "diverged")
    population = max(ETA, (plan.index + 1) // ETA**rung)
    keep = max(1, population // ETA)
    rank = int(rng.integers(keep + 1, population + 1)) if stop else int(rng.integers(1, keep + 1))
    cutoff = 0.2 + 1.5 * math.exp(-step / 8) + 0.3 / (rung + 1)
    where = f"rung {rung} ({step} steps)"
    if stop and plan.outcome == "diverged":
        reason = f"{where}: {METRIC} is nan: diverged"
    else:
        sign = ">" if stop else "<="
        reason = (
            f"{where}: rank {rank}/{population}, {METRIC} {value:.4g} {sign} cutoff "
            f"{cutoff:.4g} (top {keep} of {population} kept, eta={ETA})"
        )
    yield events_pb2.Decision(
        study_id=study_id, trial_id=f"{study_id}-t{plan.index:06d}",
        action=events_pb2.STOP if stop else events_pb2.CONTINUE, rung=rung, resource=step,
        smoothed_value=value, cutoff=cutoff, rank=rank, population=population, reason=reason,
        scheduler="asha", ts_ms=ts_ms, report_ts_ms=ts_ms - 300,
    )


def _ending(
    plan: Plan, study_id: str, attempt: int, ts_ms: int, values: dict[int, float]
) -> Iterator[events_pb2.TrialEvent]:
    train_seconds = (_last(plan) + (2 if plan.preempted_at else 0)) * STEP_MS / 1000
    if plan.outcome == "running":
        return
    if plan.outcome == "completed":
        trial = _trial(plan, study_id, TS.Value("COMPLETED"), attempt)
        trial.has_final_value, trial.final_value = True, values[_last(plan)]
        kind, end, reason = "TRIAL_COMPLETED", trial_pb2.ATTEMPT_COMPLETED, (
            f"completed with value {trial.final_value:.6g}"
        )
    elif plan.outcome == "failed":
        trial = _trial(plan, study_id, TS.Value("FAILED"), attempt)
        trial.failures, trial.failure_kind = 1, trial_pb2.USER_ERROR
        kind, end, reason = "TRIAL_FAILED", trial_pb2.ATTEMPT_FAILED, (
            "attempt failed (USER_ERROR, final): ValueError: bad batch"
        )
    else:
        trial = _trial(plan, study_id, TS.Value("PRUNED"), attempt)
        kind, end, reason = "TRIAL_PRUNED", trial_pb2.ATTEMPT_PRUNED, (
            f"pruned at step {_last(plan)}"
        )
    trial.last_step = _last(plan)
    trial.train_seconds = train_seconds
    trial.checkpoint_seconds = 0.01 * train_seconds
    yield events_pb2.TrialEvent(
        kind=KIND.Value(kind), trial=trial, ts_ms=ts_ms, reason=reason,
        ended_attempt_id=f"a{attempt}", attempt_end=end,
    )


def make_study(db_url: str, trials: int = 20_000, points: int = 500_000, seed: int = 0) -> str:
    """Fill the lineage store at ``db_url`` with one synthetic ASHA study (see the module
    doc) and return its id; the store's schema is created or upgraded as needed. A store
    that already holds the study is left as it is."""
    study_id = f"dashboard-bench-s{seed}-{trials}x{points}"
    location = parse_location(db_url)
    store = LineageStore(open_database(location))
    try:
        if store.database.execute(
            "SELECT 1 FROM studies WHERE study_id = ?", (study_id,)
        ).fetchone():
            return study_id
        if location.engine == SQLITE:
            _ingest(store, study_id, trials, points, seed)
            return study_id
        # PostgreSQL pays a round trip per statement of the write path (about 80,000
        # trial events): the rows are made by that path in a SQLite file, then copied.
        with tempfile.TemporaryDirectory(prefix="ladder-dashboard-staging-") as tmp:
            staging = LineageStore(open_database(Path(tmp) / "staging.sqlite3"))
            try:
                _ingest(staging, study_id, trials, points, seed)
                _copy_rows(staging.database, location.target)
            finally:
                staging.database.close()
    finally:
        store.database.close()
    return study_id


def _ingest(store: LineageStore, study_id: str, trials: int, points: int, seed: int) -> None:
    """Every record of the study through ``store.apply``, in batches."""
    plans, resources = plan_study(trials, points, seed)
    rng = np.random.default_rng(seed + 1)
    t0 = 1_780_000_000_000
    records = _Records(f"bench.dashboard.{study_id}")
    records.add(_study_event(study_id, trials, resources, t0 - 60_000))
    for plan in plans:
        for event in _trial_records(plan, study_id, resources, rng, t0):
            records.add(event)
        if len(records.items) >= BATCH:
            store.apply(records.items)
            records.items = []
    if records.items:
        store.apply(records.items)


# What the study's records write; ``id`` columns are left to PostgreSQL's identity (rows
# are copied in id order, so they keep their order).
_COPIED_TABLES = (
    "studies", "trial_events", "trials", "attempts", "metric_points", "decisions",
    "rung_crossings", "trial_curves", "consumer_offsets",
)


def _copy_rows(source: Database, target_url: str) -> None:
    """Every row of the staging store's tables into the (migrated) PostgreSQL store."""
    with psycopg.connect(target_url) as target, target.cursor() as cursor:
        for table in _COPIED_TABLES:
            columns = [
                row[1] for row in source.execute(f"PRAGMA table_info({table})").fetchall()
                if row[1] != "id"
            ]
            quoted = ", ".join(f'"{c}"' for c in columns)
            order = " ORDER BY id" if table in ("trial_events", "decisions") else ""
            with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for row in source.execute(f"SELECT {quoted} FROM {table}{order}"):
                    copy.write_row(tuple(row))
        target.commit()
        # What autovacuum does soon after a bulk load: the planner's statistics.
        cursor.execute("ANALYZE")


# -- measurement ------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(call: Callable[[], Any], repeats: int, pid: int | None) -> dict[str, Any]:
    """Latency of ``call`` (after a first, warm-up call) and, given the service's pid,
    the CPU time the service spent per call: on a shared machine the latency includes
    waiting for a core, the CPU time does not."""
    cpu_before = process_cpu_seconds(pid) if pid else 0.0
    first = time.perf_counter()
    call()  # the first: connections, the service's first snapshot, nothing made yet
    first_ms = (time.perf_counter() - first) * 1000
    first_cpu_ms = (process_cpu_seconds(pid) - cpu_before) * 1000 if pid else None
    seconds, cpu, answer = [], [], None
    for _ in range(repeats):
        cpu_before = process_cpu_seconds(pid) if pid else 0.0
        started = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - started)
        if pid:
            cpu.append(process_cpu_seconds(pid) - cpu_before)
    found = {
        "first_call_ms": round(first_ms, 1),
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
        "runs_ms": [round(s * 1000, 1) for s in seconds],
        "answer_bytes": answer.ByteSize() if answer is not None else 0,
    }
    if cpu and first_cpu_ms is not None:
        found["first_call_service_cpu_ms"] = round(first_cpu_ms, 1)
        found["service_cpu_median_ms"] = round(statistics.median(cpu) * 1000, 1)
    return found


def measure(
    addr: str, study_id: str, repeats: int, pid: int | None = None
) -> dict[str, Any]:
    """Each dashboard read of ``study_id`` against the lineage service at ``addr`` (whose
    process is ``pid``, if given: its CPU time per call is recorded too)."""
    channel = grpc.insecure_channel(
        addr, options=[("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
    )
    stub = lineage_pb2_grpc.LineageServiceStub(channel)
    calls: dict[str, Callable[[], Any]] = {
        "ListTrials": lambda: stub.ListTrials(
            lineage_pb2.ListTrialsRequest(study_id=study_id), timeout=60
        ),
        "GetStudyCurves": lambda: stub.GetStudyCurves(
            lineage_pb2.GetStudyCurvesRequest(study_id=study_id), timeout=60
        ),
        "GetStudyRungs": lambda: stub.GetStudyRungs(
            lineage_pb2.GetStudyRungsRequest(study_id=study_id), timeout=60
        ),
        "GetStudySummary": lambda: stub.GetStudySummary(
            lineage_pb2.GetStudySummaryRequest(study_id=study_id), timeout=60
        ),
        "ListStudyListings": lambda: stub.ListStudyListings(
            lineage_pb2.ListStudyListingsRequest(), timeout=60
        ),
    }
    try:
        found = {name: _timed(call, repeats, pid) for name, call in calls.items()}
        curves = stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest(study_id=study_id))
        found["GetStudyCurves"]["curves"] = len(curves.curves)
        found["GetStudyCurves"]["points_sent"] = sum(len(c.points) for c in curves.curves)
        found["GetStudyCurves"]["total_points"] = curves.total_points
        found["GetStudyCurves"]["total_trials"] = curves.total_trials
        found["ListTrials"]["trials"] = len(
            stub.ListTrials(lineage_pb2.ListTrialsRequest(study_id=study_id)).trials
        )
        return found
    finally:
        channel.close()


def machine() -> dict[str, Any]:
    """Where it ran, as the other benchmarks record it, and the SQLite library's version."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "versions": versions, "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_engine(
    engine: str, db_url: str, args: argparse.Namespace, infra: dict[str, str], logs: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    study_id = make_study(db_url, args.trials, args.points, args.seed)
    fill_seconds = time.perf_counter() - started
    print(f"{engine}: {args.trials} trials / {args.points} points in {fill_seconds:.1f} s",
          flush=True)
    group = ServiceGroup(infra, logs)
    try:
        service = group.start("services.lineage", {"LADDER_LINEAGE_DB": db_url})
        load = os.getloadavg()[0]
        reads = measure(service.addr, study_id, args.repeats, service.proc.pid)
    finally:
        group.stop_all()
    for name, figures in reads.items():
        print(f"  {name}: median {figures['median_ms']} ms (service CPU "
              f"{figures.get('service_cpu_median_ms')} ms), max {figures['max_ms']} ms, first "
              f"{figures['first_call_ms']} ms (CPU {figures.get('first_call_service_cpu_ms')} "
              f"ms), {figures['answer_bytes']:,} bytes", flush=True)
    return {
        "study_id": study_id, "fill_seconds": round(fill_seconds, 1),
        "load_average_1m_before_reads": round(load, 2), "reads": reads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    result: dict[str, Any] = {
        "question": "how fast do lineage's dashboard reads answer on a 20,000-trial / "
                    "500,000-point study (issue 16: well under 1 s each)?",
        "machine": machine(),
        "seed": args.seed,
        "settings": {"trials": args.trials, "points": args.points, "repeats": args.repeats,
                     "curves_request": "defaults (500 trials x 64 points)"},
        "engines": {},
    }
    with tempfile.TemporaryDirectory(prefix="ladder-dashboard-data-") as tmp:
        folder = Path(tmp)
        with embedded_infra(folder / "state") as infra:
            for engine in engines:
                if engine == "sqlite":
                    db_url = str(folder / "lineage.sqlite3")
                    result["engines"][engine] = run_engine(engine, db_url, args, infra, folder)
                else:
                    with postgres_server() as server:
                        db_url = server.fresh_url("dashboard")
                        result["engines"][engine] = run_engine(
                            engine, db_url, args, infra, folder
                        )
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = args.out or RESULTS / f"dashboard-data-{datetime.now(UTC):%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
