"""Load simulator: thousands of simulated workers against the real stack.

::

    python -m workers.loadsim --workers 1000 --processes 2 --rate 1.0 --duration 60

Each simulated worker runs the trial protocol (Suggest, StartTrial, a synthetic metric
report every ``1/rate`` s on the metrics topic, Heartbeat every few reports, PruneTrial
on STOP, CompleteTrial at ``max_resource``) on one asyncio loop per process, obeying
each Heartbeat's reply by the attempt engine's rule (``ladder.api.attempt.move_after``:
the stopping form never waits for a decision); see :mod:`workers.loadsim_sim`.
Without ``--study`` a study with ASHA is created.

The parent process tails the decisions topic and the early-stop group's committed
offsets, then prints one JSON summary on stdout:

- ``reports``: metric reports sent and acknowledged by the broker;
- ``earlystop``: metric events/s committed by the early-stop group and its lag;
- ``latency_ms``: report-to-decision as produced (``Decision.ts_ms``), as seen on the
  topic by the observer, and report-to-STOP as obeyed by the simulated workers (from
  the report that earned the trial its first STOP to the Heartbeat that brought a
  STOP: every ``--heartbeat-every`` reports, and with ``--decision-poll`` 1, 2, 4, ...
  reports after a rung until its decision comes back);
- ``stop_timeliness``: the trials told STOP, those whose STOP came after their last
  step (too late to prune), and the steps they ran past the rung it was about;
- ``counts``: the rung crossings implied by the acknowledged reports against the
  decisions on the topic: none missing, none twice (``ok``);
- ``suggestions``: every new suggestion counted by algorithm and by what served it
  (``served_by``: "model", "tpe-fallback", "sobol-fallback", "no-model"), the
  model-served fraction (overall and after ``--warmup`` seconds: no model can serve
  before the first rung values exist), the staleness of the models behind them (observations
  unseen, age), the Suggest latency and the workers' idle fraction (time waiting for
  Suggest, StartTrial, Heartbeat, PruneTrial, PauseTrial, CompleteTrial, or held at a
  rung, over time in the run).

A model-based study (``--algorithm gp|tpe|auto``) wants something to model:
``--dims`` float params x0.. and ``--objective bowl`` (the curves' floor rises with
the params' distance from an optimum, ``loadsim_sim.bowl_shift``).

| flag                 | default | meaning                                             |
|----------------------|---------|-----------------------------------------------------|
| --workers            | 100     | simulated workers in total                          |
| --processes          | 1       | simulator processes (workers are split evenly)      |
| --rate               | 1.0     | metric reports per second per worker                |
| --duration           | 30      | seconds of simulated work                           |
| --study              | (new)   | an existing study id; else one is created           |
| --min-resource       | 4       | ASHA of the created study: first rung (steps)       |
| --max-resource       | 108     | steps of an unstopped trial (rungs 4, 12, 36)       |
| --heartbeat-every    | 5       | reports between two heartbeats of a worker          |
| --ramp               | 0       | seconds over which the workers start (0: within 1/rate) |
| --linger-ms          | 50      | producer linger of a simulator process              |
| --drain              | 60      | seconds to wait after the run for late decisions    |
| --seed               | 7       | seeds the curves and the workers' start offsets     |
| --algorithm          | random  | the created study's algorithm (random, tpe, gp, auto) |
| --dims               | 1       | float params of the created study (1: "x", else x0..) |
| --objective          | none    | ``bowl``: the curves depend on the params too        |
| --partitions         | 1       | suggestion partitions of the created study          |
| --warmup             | 20      | suggestions after this many seconds also counted apart |
| --decision-poll      | 0       | s after a rung to poll for its decision (0: never)  |
| --timeline FILE      | unset   | also write the per-decision timeline (JSON lines)   |

Endpoints come from ``Settings.from_env()`` (LADDER_* env vars or stack.json).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.space import Kind
from ladder.study import StudySpec
from ladder.v1 import events_pb2

from workers.loadsim_observe import (
    DecisionLog,
    GroupProgress,
    SeenDecision,
    counts_check,
    expected_crossings,
    merge_acked_steps,
    merge_obeyed,
    percentiles,
    stop_obey_latencies,
    stop_timeliness,
)
from workers.loadsim_sim import SimConfig, run_process, served_by_fraction

METRIC = "loss"
START_DELAY_S = 3.0  # every process imports, connects, then all start together


@dataclass(frozen=True)
class LoadOptions:
    workers: int = 100
    processes: int = 1
    rate: float = 1.0
    duration: float = 30.0
    study_id: str = ""
    min_resource: int = 4
    max_resource: int = 108
    heartbeat_every: int = 5
    linger_ms: int = 50
    ramp: float = 0.0
    drain: float = 60.0
    seed: int = 7
    timeline: Path | None = None
    algorithm: str = "random"
    dims: int = 1
    objective: str = "none"
    partitions: int = 1
    warmup: float = 20.0
    decision_poll: float = SimConfig.decision_poll


def space_of(dims: int) -> dict[str, dict[str, Any]]:
    """The created study's space: ``x`` in [0, 1], or ``x0``.. ``x{dims-1}``."""
    if dims == 1:
        return {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    return {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(dims)}


def create_study(settings: Settings, options: LoadOptions) -> str:
    config = study_config(
        space_of(options.dims),
        name=f"loadsim-{options.workers}w",
        metric=METRIC,
        algorithm=options.algorithm,
        partitions=options.partitions,
        scheduler={
            "kind": "asha",
            "min_resource": options.min_resource,
            "max_resource": options.max_resource,
            "reduction_factor": 3,
            "min_population": 3,
        },
        seed=options.seed,
    )
    with LadderClient(settings) as client:
        return client.create_study(config).study_id


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first index, count) of each part; sizes differ by at most one."""
    base, extra = divmod(total, parts)
    out, first = [], 0
    for i in range(parts):
        count = base + (i < extra)
        out.append((first, count))
        first += count
    return out


def run(settings: Settings, options: LoadOptions) -> dict[str, Any]:
    study_id = options.study_id or create_study(settings, options)
    spec, rungs, max_resource = study_scheduler(settings, study_id, options)
    decisions = DecisionLog(settings, study_id)
    progress = GroupProgress(settings, settings.topics.earlystop_group)
    start_at = time.time() + START_DELAY_S
    metric = spec.scheduler.metric or METRIC
    configs = sim_configs(
        options, study_id, metric, max_resource, start_at, float_bounds(spec),
        hold_at=hold_steps(spec, max_resource),
        rung_steps=tuple(math.ceil(r) for r in rungs),
    )
    results = run_simulators(settings, configs, timeout=options.duration + 300)
    acked = merge_acked_steps(result["acked_max_step"] for result in results)
    expected = expected_crossings(acked, rungs)
    seen = drain(decisions, expected, options.drain)
    progress.close()
    drained_at = time.time()
    summary: dict[str, Any] = {
        "study_id": study_id,
        "workers": options.workers,
        "processes": len(configs),
        "rate_per_worker": options.rate,
        "duration_s": options.duration,
        "seed": options.seed,
        "algorithm": options.algorithm,
        "dims": options.dims,
        "objective": options.objective,
        "partitions": spec.partitions,
        "rungs": rungs,
        "max_resource": max_resource,
        "heartbeat_every": options.heartbeat_every,
        "run_start_unix": round(start_at, 3),
        **results_summary(results, options),
        "earlystop": earlystop_summary(progress, options, start_at, drained_at),
        "decision_poll_s": options.decision_poll,
        "latency_ms": latency_summary(results, seen),
        "stops": {
            "on_topic": sum(d.action == events_pb2.STOP for d in seen),
            "obeyed": _total(results, "stops_seen"),
        },
        "holds": _total(results, "holds"),
        "stop_timeliness": stop_timeliness(acked, seen, rungs, max_resource),
        "counts": counts_check(expected, seen),
        # This process and its simulator processes (reaped when the pool closed).
        "cpu_seconds_self_and_children": cpu_seconds_with_children(),
    }
    if options.timeline:
        write_timeline(options.timeline, seen, start_at)
    return summary


def study_scheduler(
    settings: Settings, study_id: str, options: LoadOptions
) -> tuple[StudySpec, list[int], int]:
    """The study, its scheduler's rungs and the steps of an unstopped trial; an
    unbounded scheduler's rungs stop at ``--max-resource``."""
    with LadderClient(settings) as client:
        study = client.get_study(study_id)
    spec = StudySpec.from_proto(study.config)
    scheduler = spec.scheduler
    rungs = scheduler.rungs() if scheduler.bounded else scheduler.rungs(up_to=options.max_resource)
    return spec, rungs, int(scheduler.max_resource or options.max_resource)


def float_bounds(spec: StudySpec) -> tuple[tuple[str, float, float], ...]:
    """(name, low, high) of the study's float params (the bowl objective's inputs)."""
    return tuple(
        (p.name, float(p.low), float(p.high)) for p in spec.space.params if p.kind is Kind.FLOAT
    )


def hold_steps(spec: StudySpec, max_resource: int) -> tuple[int, ...]:
    """The steps at which the promotion form may hold a trial for its verdict (a
    simulated worker heartbeats there); none in the stopping form."""
    scheduler = spec.scheduler
    if not scheduler.promotion:
        return ()
    return tuple(sorted({math.ceil(r) for r in scheduler.decision_rungs(max_resource)}))


def sim_configs(
    options: LoadOptions,
    study_id: str,
    metric: str,
    max_resource: int,
    start_at: float,
    bounds: tuple[tuple[str, float, float], ...] = (),
    hold_at: tuple[int, ...] = (),
    rung_steps: tuple[int, ...] = (),
) -> list[SimConfig]:
    """One config per simulator process, the workers split evenly between them."""
    return [
        SimConfig(
            study_id=study_id,
            metric=metric,
            first_worker=first,
            workers=count,
            rate=options.rate,
            duration=options.duration,
            max_resource=max_resource,
            heartbeat_every=options.heartbeat_every,
            linger_ms=options.linger_ms,
            ramp=options.ramp,
            seed=options.seed,
            start_at=start_at,
            objective=options.objective,
            bounds=bounds,
            hold_at=hold_at,
            warmup=options.warmup,
            rung_steps=rung_steps,
            decision_poll=options.decision_poll,
        )
        for first, count in split(options.workers, options.processes)
        if count
    ]


def run_simulators(
    settings: Settings, configs: list[SimConfig], timeout: float
) -> list[dict[str, Any]]:
    """Run each config in its own (spawned) process; their results, in config order."""
    with ProcessPoolExecutor(len(configs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_process, settings, c) for c in configs]
        return [f.result(timeout=timeout) for f in futures]


def drain(
    decisions: DecisionLog, expected: set[tuple[str, int]], seconds: float
) -> list[SeenDecision]:
    """The decisions seen once every expected crossing has one, or after ``seconds``:
    the last reports' decisions are still on their way when the simulators end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if expected <= {(d.trial_id, d.rung) for d in decisions.snapshot()}:
            break
        time.sleep(0.5)  # polling the observer until the drain deadline
    time.sleep(1.0)  # a duplicate would arrive right behind the first copy
    seen = decisions.snapshot()
    decisions.close()
    return seen


def _total(results: list[dict[str, Any]], key: str) -> int:
    return sum(r[key] for r in results)


def results_summary(results: list[dict[str, Any]], options: LoadOptions) -> dict[str, Any]:
    """What the simulator processes counted: reports, trials, heartbeats, errors."""
    acked = _total(results, "reports_acked")
    return {
        "reports": {
            "target_per_s": options.workers * options.rate,
            "sent": _total(results, "reports_sent"),
            "acked": acked,
            "failed": _total(results, "reports_failed"),
            "acked_per_s": round(acked / options.duration, 1),
        },
        "trials": {
            k: _total(results, f"trials_{k}")
            for k in ("started", "pruned", "completed", "paused", "unfinished")
        },
        "heartbeats": _total(results, "heartbeats"),
        "rpc_errors": _merge([r["rpc_errors"] for r in results]),
        "simulator_loop_lag_ms_max": round(max(r["loop_lag_ms_max"] for r in results), 1),
        "simulator_pace_lag_ms_max": round(max(r["pace_lag_ms_max"] for r in results), 1),
        "simulator_max_rss_mb": max(r["max_rss_mb"] for r in results),
        "suggestions": {"warmup_s": options.warmup, **suggestions_summary(results)},
    }


def suggestions_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """New suggestions by provenance (exact counts), the model-served fraction, the
    staleness of the models, Suggest latency and the workers' idle fraction."""
    served = _merge([r["served_by"] for r in results])
    late = _merge([r["served_by_after_warmup"] for r in results])
    worker_s = sum(r["worker_s"] for r in results)
    return {
        "total": sum(served.values()),
        "by_algorithm": _merge([r["algorithms"] for r in results]),
        "served_by": served,
        "model_served_fraction": served_by_fraction(served, "model"),
        "served_by_after_warmup": late,
        "by_algorithm_after_warmup": _merge([r["algorithms_after_warmup"] for r in results]),
        "model_served_fraction_after_warmup": served_by_fraction(late, "model"),
        "model_unseen_observations": percentiles(
            v for r in results for v in r["unseen_observations"]
        ),
        "model_age_ms": percentiles(v for r in results for v in r["model_age_ms"]),
        "suggest_latency_ms": percentiles(v for r in results for v in r["suggest_latency_ms"]),
        "suggest_latency_after_warmup_ms": percentiles(
            v for r in results for v in r.get("suggest_latency_after_warmup_ms", ())
        ),
        "worker_idle_seconds_by_call": {
            k: round(v, 1) for k, v in _merge_float([r["idle_by_call"] for r in results]).items()
        },
        "worker_idle_fraction": (
            round(sum(r["idle_s"] for r in results) / worker_s, 4) if worker_s else None
        ),
    }


def earlystop_summary(
    progress: GroupProgress, options: LoadOptions, start_at: float, drained_at: float
) -> dict[str, Any]:
    """The early-stop group's throughput once warmed up, and its lag at the run's end
    and after the drain."""
    run_end = start_at + options.duration
    steady_from = start_at + min(10.0, options.duration / 4)
    return {
        "group": progress.group_id,
        "processed_per_s_steady": progress.rate_between(steady_from, run_end),
        "lag_at_run_end": progress.lag_at(run_end),
        "lag_after_drain": progress.lag_at(drained_at),
        "samples": [(round(t - start_at, 1), c, e) for t, c, e in progress.samples],
    }


def latency_summary(results: list[dict[str, Any]], seen: list[SeenDecision]) -> dict[str, Any]:
    """Report-to-decision latencies: as produced, as seen on the topic, as obeyed."""
    return {
        "report_to_decision_produced": percentiles(
            d.decided_ts_ms - d.report_ts_ms for d in seen if d.report_ts_ms
        ),
        "report_to_decision_on_topic": percentiles(
            d.seen_ms - d.report_ts_ms for d in seen if d.report_ts_ms
        ),
        "report_to_stop_obeyed": percentiles(
            stop_obey_latencies(merge_obeyed(r["stop_obeyed_ms"] for r in results), seen)
        ),
    }


def cpu_seconds_with_children() -> float:
    """CPU seconds of this process and of its reaped children."""
    return round(
        sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        ),
        1,
    )


def write_timeline(path: Path, seen: list[SeenDecision], start_at: float) -> None:
    """One JSON line per decision: when its report was sent, its latency, rung, action."""
    with path.open("w") as out:
        for d in seen:
            out.write(
                json.dumps(
                    {
                        "t": round(d.report_ts_ms / 1000 - start_at, 3),
                        "lat_ms": round(d.seen_ms - d.report_ts_ms, 1),
                        "rung": d.rung,
                        "action": d.action,
                    }
                )
                + "\n"
            )


def _merge_float(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for key, seconds in d.items():
            out[key] = out.get(key, 0.0) + seconds
    return out


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            out[key] = out.get(key, 0) + n
    return out


def parse_args(argv: list[str] | None) -> LoadOptions:
    parser = argparse.ArgumentParser(
        prog="python -m workers.loadsim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--study", default="")
    parser.add_argument("--min-resource", type=int, default=4)
    parser.add_argument("--max-resource", type=int, default=108)
    parser.add_argument("--heartbeat-every", type=int, default=5)
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="seconds over which the workers start (0: all within one report interval)",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=50,
        help="producer linger of each simulator process (reports per produce request)",
    )
    parser.add_argument("--drain", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeline", type=Path, default=None)
    parser.add_argument("--algorithm", default="random", choices=("random", "tpe", "gp", "auto"))
    parser.add_argument("--dims", type=int, default=1)
    parser.add_argument("--objective", default="none", choices=("none", "bowl"))
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument(
        "--decision-poll",
        type=float,
        default=SimConfig.decision_poll,
        help="seconds after crossing a rung during which a worker heartbeats 1, 2, 4, ... "
        "reports after it until the rung's decision comes back, to see a STOP about as "
        "soon as a real worker (a Heartbeat per report) would (0: only every "
        "--heartbeat-every reports)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="suggestions after this many seconds are also counted apart (no model can "
        "serve before the first rung values exist)",
    )
    args = parser.parse_args(argv)
    for name in (
        "workers",
        "processes",
        "heartbeat_every",
        "min_resource",
        "max_resource",
        "dims",
        "partitions",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rate <= 0 or args.duration <= 0 or args.drain < 0 or args.decision_poll < 0:
        parser.error("--rate and --duration must be > 0, --drain and --decision-poll >= 0")
    return LoadOptions(
        workers=args.workers,
        processes=min(args.processes, args.workers),
        rate=args.rate,
        duration=args.duration,
        study_id=args.study,
        min_resource=args.min_resource,
        max_resource=args.max_resource,
        heartbeat_every=args.heartbeat_every,
        linger_ms=args.linger_ms,
        ramp=args.ramp,
        drain=args.drain,
        seed=args.seed,
        timeline=args.timeline,
        algorithm=args.algorithm,
        dims=args.dims,
        objective=args.objective,
        partitions=args.partitions,
        warmup=args.warmup,
        decision_poll=args.decision_poll,
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    summary = run(Settings.from_env(), options)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.exit(0 if summary["counts"]["ok"] else 1)


if __name__ == "__main__":
    main()
