"""Model-served suggestions at fleet rates (issue 17): simulated workers, GP and TPE studies.

::

    .venv/bin/python bench/fleet_bo.py [--duration 60] [--scenarios 100:gp,100:tpe,1000:gp,1000:tpe]
        [--label after] [--code DIR] [--batch-cost] [--peer optuna]
        [--rate 1.0] [--sim-processes N]

Setup: a fresh embedded stack (``ladder.stack``: broker, Redis, suggest, evaluate,
early-stop, lineage); per scenario a fresh ASHA study (first rung 4 steps, rungs 4,
12, 36, 108) of ``--dims`` float params with the load simulator's "bowl" objective
(the curves' floor depends on the params, so the models have something to learn),
run by ``python -m workers.loadsim`` with N workers paced at 1 report/s. The
simulator runs in its own session (``earlystop_scale.start_loadsim``), ``--sim-nice``
steps nicer than the stack (default 0: at 1,000 workers on a shared host a niced
simulator fell behind its pace, missed heartbeats and let its leases expire).

Per scenario: trials finished per second (pruned + completed, over the run), the
suggestions by provenance (exact counts from the simulated workers: "model",
"tpe-fallback", "sobol-fallback", "no-model") and the model-served fraction, the
staleness of the models behind them, the workers' idle fraction, Suggest latency
p50 / p99, report-to-decision latency p50 / p99 (as seen on the topic), the pruned
fraction, and the CPU seconds per finished trial of each process (the stack's
services, the suggest service's refit children, the simulator), with the load
average before and after. Early stopping's side: report-to-decision as produced and
as seen on the topic, the early-stop group's throughput and backlog at the end, the
STOPs that came after their trial's last step (``stop_timeliness``), the pruned
fraction against a replay of the same trials with instant decisions (``replay``),
and each process's CPU per report and time runnable but waiting for a CPU
(``run_queue_wait_seconds``: a starved process lags however cheap it is).
``--rate`` paces the workers (heartbeat every ~5 s whatever the pace; with
``--decision-poll S`` also 1, 2, 4, ... reports after each rung until its decision
comes back, for at most S seconds: a STOP is then seen about when a real worker, a
Heartbeat per report, would see it, rather than at the next ~5-s heartbeat).

``--code DIR`` runs the stack's services from another source tree (e.g. ``git
archive`` of the commit before a change, with the generated ``libs/ladder/v1``
copied in) for "before" figures; the simulator always runs from this tree (an older
suggest service leaves the new Suggestion fields at 0, so its points count as
"no-model" unless they are a fallback's).

``--peer optuna`` follows each scenario with the same one against Optuna's gRPC
storage proxy on PostgreSQL (``bench/fleet_bo_optuna.run_optuna``: same curves, same
pace, same rungs; the Ladder stack idle meanwhile) and records Ladder's ratios over it
(``ratios``: trials/s, and trials/s x model-served fraction on both sides).

``--batch-cost`` also times, in this process, a GP refit and a TPE batch of 1 to 1,024
points with 2,000 observations and 1,000 pending, and one TPE fallback point.

Writes bench/results/fleet-bo-<date>[-<label>].json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from earlystop_scale import LOADSIM_NICE, cpu_seconds, load_average, read_topic, start_loadsim
from earlystop_scale import machine as base_machine
from fleet_bo_timeline import CpuSampler, buckets
from ladder.stack import Stack

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SEED = 17
# A trial of the same-trials cohort started this long before it would have to, to run
# all its steps in the run: the simulator's pace lag (under 0.5 s at 1,000 workers),
# the last RPCs and the clock of the TRIAL_STARTED event.
COHORT_MARGIN_S = 5.0
TIMELINE_BUCKET_S = 15.0
SERVICES = ("kafka", "redis", "suggest", "evaluate", "lineage", "earlystop")


def machine() -> dict[str, Any]:
    """``earlystop_scale.machine`` plus the model libraries' versions and the commit
    (``dirty``: the work tree differed from it, e.g. other changes under way)."""
    from ladder.runenv import code_state

    out = base_machine()
    code = code_state(ROOT)
    out["commit"], out["dirty"] = code.commit, code.dirty
    for package in ("torch", "botorch", "gpytorch", "numpy", "scipy"):
        try:
            out["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out["versions"][package] = None
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (the suggest service's refit processes)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def process_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of the stack's processes and of the suggest refit children."""
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for child in children_of(pids["suggest"]):
        cpu[f"suggest-refit-{child}"] = cpu_seconds(child)
    return cpu


def run_queue_wait(pids: dict[str, int]) -> dict[str, float]:
    """Seconds so far that the threads of each stack process were runnable but not
    running (the second field of ``/proc/<pid>/task/<tid>/schedstat``)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        total = 0
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[1])
        out[name] = total / 1e9
    return out


def trial_events(env: dict[str, str], study_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study's TRIAL_SUGGESTED events on the trials topic by trial id, in the order
    the trials were handed out (the topic is at least once: the outbox relay may
    publish an event again), and each trial's start and outcome (``LiveTrial``: its
    TRIAL_STARTED time, its first TRIAL_PRUNED or TRIAL_COMPLETED)."""
    from fleet_bo_pruning import COMPLETED, PRUNED, LiveTrial
    from ladder.config import Topics
    from ladder.v1 import events_pb2

    topic = Topics(env.get("LADDER_TOPIC_PREFIX", Topics().prefix)).trials
    ends = {events_pb2.TRIAL_PRUNED: PRUNED, events_pb2.TRIAL_COMPLETED: COMPLETED}
    events: dict[str, Any] = {}
    started: dict[str, float] = {}
    outcome: dict[str, str] = {}
    for record in read_topic(env["LADDER_KAFKA_BOOTSTRAP"], topic):
        event = events_pb2.TrialEvent()
        try:
            event.ParseFromString(record.value())
        except Exception:  # noqa: BLE001 - not a trial event
            continue
        if event.trial.study_id != study_id:
            continue
        trial_id = event.trial.trial_id
        if event.kind == events_pb2.TRIAL_SUGGESTED:
            events.setdefault(trial_id, event)
        elif event.kind == events_pb2.TRIAL_STARTED:
            started.setdefault(trial_id, event.ts_ms / 1000)
        elif event.kind in ends:
            outcome.setdefault(trial_id, ends[event.kind])
    live = {t: LiveTrial(s, outcome.get(t)) for t, s in started.items()}
    return events, live


def suggested_on_topic(events: dict[str, Any]) -> dict[str, int]:
    """The trials suggested by the algorithm of their TRIAL_SUGGESTED event: what the
    suggest service handed out, to check the simulator's counts against."""
    counts: dict[str, int] = {}
    for event in events.values():
        counts[event.algorithm] = counts.get(event.algorithm, 0) + 1
    return counts


def replayed_pruning(
    env: dict[str, str], study_id: str, events: dict[str, Any], workers: int, rate: float,
    live: dict[str, Any], run: tuple[float, float],
) -> dict[str, Any]:
    """The same trials (ids and params, in hand-out order, the simulator's curves)
    through the early-stop engine with instant decisions (``ladder.schedulers.replay``,
    as ``make bench-earlystop``), ``workers`` at a time, each running to its end: the
    pruned fraction early stopping reaches when no decision is late. ``same_trials``
    compares it with the live outcomes on the trials that could run to their end within
    the run (``run``: its start, unix seconds, and duration; ``fleet_bo_pruning``): the
    run's own pruned fraction, over the trials that ended in it, is biased upwards."""
    import numpy as np
    from fleet_bo_pruning import cohort_cutoff, same_trials
    from ladder.client import LadderClient
    from ladder.config import Settings
    from ladder.params import params_to_dict
    from ladder.schedulers.replay import CurveTable, LadderPolicy, replay
    from ladder.study import StudySpec

    from workers.loadsim import float_bounds
    from workers.loadsim_sim import bowl_shift, curve_value

    if not events:
        return {}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with LadderClient(Settings.from_env()) as client:
            spec = StudySpec.from_proto(client.get_study(study_id).config)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    bounds = float_bounds(spec)
    steps = int(spec.scheduler.max_resource or 108)
    # Hand-out order: ids are <study>-t<seq> (the topic's partitions interleave).
    handed_out = sorted(events.items(), key=lambda kv: (len(kv[0]), kv[0]))
    values = np.array([
        [
            curve_value(SEED, trial_id, step,
                        bowl_shift(params_to_dict(event.trial.params), bounds))
            for step in range(1, steps + 1)
        ]
        for trial_id, event in handed_out
    ])
    result = replay(
        CurveTable(values, np.full(values.shape, 1.0 / rate)),
        LadderPolicy(spec.scheduler, study_id=study_id),
        workers,
    )
    # result.steps_run is in start order, i.e. the hand-out order above.
    replay_pruned = {
        trial_id: ran < steps
        for (trial_id, _), ran in zip(handed_out, result.steps_run, strict=True)
    }
    start, duration = run
    return {
        "trials": len(result.order),
        "pruned": result.pruned,
        "completed": result.completed,
        "pruned_fraction": round(result.pruned_fraction, 4),
        "same_trials": same_trials(
            live, replay_pruned,
            cohort_cutoff(start, duration, steps, rate, margin_s=COHORT_MARGIN_S),
        ),
    }


def decision_timeline(summary: dict[str, Any], path: Path, cpu: list[Any],
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """``fleet_bo_timeline.buckets`` of a scenario (the per-decision file is removed)."""
    with path.open() as lines:
        decisions = [(d["t"], d["lat_ms"]) for d in map(json.loads, lines)]
    path.unlink()
    return buckets(summary["run_start_unix"], args.duration + args.drain, TIMELINE_BUCKET_S,
                   decisions, cpu, summary["earlystop"]["samples"])


def named_fraction(counts: dict[str, int], algorithm: str) -> float | None:
    total = sum(counts.values())
    return round(counts.get(algorithm, 0) / total, 4) if total else None


def run_scenario(
    env: dict[str, str],
    pids: dict[str, int],
    workers: int,
    algorithm: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "workers.loadsim",
        "--workers",
        str(workers),
        "--processes",
        str(args.sim_processes or (2 if workers > 200 else 1)),
        "--rate",
        str(args.rate),
        # A heartbeat every ~5 s whatever the pace (evaluate's lease is 30 s here).
        "--heartbeat-every",
        str(max(1, round(5 * args.rate))),
        "--duration",
        str(args.duration),
        "--ramp",
        str(args.ramp),
        "--drain",
        str(args.drain),
        "--algorithm",
        algorithm,
        "--dims",
        str(args.dims),
        "--objective",
        "bowl",
        "--seed",
        str(SEED),
        "--warmup",
        str(args.warmup),
    ]
    if args.decision_poll is not None:
        argv += ["--decision-poll", str(args.decision_poll)]
    timeline_file = Path(tempfile.mkstemp(prefix="fleet-bo-decisions-", suffix=".jsonl")[1])
    argv += ["--timeline", str(timeline_file)]
    name = f"{workers}w-{algorithm}"
    load_before = load_average()
    log(f"{name}: {workers} workers for {args.duration:g}s (load {load_before})")
    before = process_cpu(pids)
    waited_before = run_queue_wait(pids)
    started = time.monotonic()
    sim_env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "libs"), str(ROOT)])}
    sampler = CpuSampler(lambda: process_cpu(pids), lambda: run_queue_wait(pids))
    proc = start_loadsim(argv, sim_env, args.sim_nice)
    out, _ = proc.communicate(timeout=args.duration + 900)
    elapsed = time.monotonic() - started
    cpu_samples = sampler.stop()
    after = process_cpu(pids)
    waited = {n: round(w - waited_before.get(n, 0.0), 2) for n, w in run_queue_wait(pids).items()}
    summary = json.loads(out)
    trials = summary["trials"]
    finished = trials["pruned"] + trials["completed"]
    cpu = {n: round(after[n] - before.get(n, 0.0), 2) for n in after}
    cpu["loadsim (all processes)"] = summary["cpu_seconds_self_and_children"]
    suggestions = summary["suggestions"]
    events, live = trial_events(env, summary["study_id"])
    on_topic = suggested_on_topic(events)
    reports_acked = summary["reports"]["acked"]
    result = {
        "workers": workers,
        "algorithm": algorithm,
        "study_id": summary["study_id"],
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "trials": trials,
        "rate_per_worker": args.rate,
        "trials_finished_per_s": round(finished / args.duration, 2),
        "pruned_fraction": round(trials["pruned"] / finished, 4) if finished else None,
        "suggestions": suggestions,
        "model_served_fraction": suggestions["model_served_fraction"],
        "model_served_fraction_after_warmup": suggestions["model_served_fraction_after_warmup"],
        # The points named after the study's sampler (its initial design included): what
        # a service without the provenance fields ("before") can be compared on.
        "study_sampler_fraction": named_fraction(suggestions["by_algorithm"], algorithm),
        "study_sampler_fraction_after_warmup": named_fraction(
            suggestions["by_algorithm_after_warmup"], algorithm
        ),
        "worker_idle_fraction": suggestions["worker_idle_fraction"],
        "suggest_latency_ms": suggestions["suggest_latency_ms"],
        "report_to_decision_ms": summary["latency_ms"]["report_to_decision_on_topic"],
        "report_to_decision_produced_ms": summary["latency_ms"]["report_to_decision_produced"],
        "report_to_stop_obeyed_ms": summary["latency_ms"]["report_to_stop_obeyed"],
        "stop_timeliness": summary["stop_timeliness"],
        "heartbeats": summary["heartbeats"],
        "decision_poll_s": summary["decision_poll_s"],
        "replay": replayed_pruning(env, summary["study_id"], events, workers, args.rate, live,
                                   (summary["run_start_unix"], args.duration)),
        # The early-stop group's metric events committed per second once warmed up, and
        # its backlog when the simulated workers stopped (workers.loadsim).
        "earlystop": {k: v for k, v in summary["earlystop"].items() if k != "samples"},
        # Per 15 s: decision latency by report time, early-stop's backlog, the cores
        # early-stop and the refit processes used, early-stop's runnable wait.
        "timeline": decision_timeline(summary, timeline_file, cpu_samples, args),
        "cpu_seconds": cpu,
        # Seconds each process's threads were runnable but waited for a CPU
        # (/proc/<pid>/task/*/schedstat): CPU starvation on a shared host.
        "run_queue_wait_seconds": waited,
        "cpu_ms_per_report": {
            n: round(1000 * v / reports_acked, 3) for n, v in cpu.items() if reports_acked
        },
        "cpu_seconds_per_finished_trial": {
            n: round(v / finished, 4) for n, v in cpu.items() if finished and v > 0
        },
        "suggested_on_topic": on_topic,
        # Every suggestion the service handed out reached a simulated worker and was
        # counted there once (a reply lost to a timeout would make these differ).
        "provenance_counts_match": on_topic == suggestions["by_algorithm"],
        "counts_ok": summary["counts"]["ok"],
        "counts": summary["counts"],
        "rpc_errors": summary["rpc_errors"],
        "simulator_loop_lag_ms_max": summary["simulator_loop_lag_ms_max"],
        "simulator_pace_lag_ms_max": summary.get("simulator_pace_lag_ms_max"),
        "simulator_processes": summary["processes"],
        "simulator_max_rss_mb": summary.get("simulator_max_rss_mb"),
        "reports": summary["reports"],
    }
    log(
        f"{name}: model-served {result['model_served_fraction']}, after warm-up "
        f"{result['model_served_fraction_after_warmup']} (named {algorithm}: "
        f"{result['study_sampler_fraction']} / {result['study_sampler_fraction_after_warmup']}),"
        f" served_by "
        f"{suggestions['served_by']}, {result['trials_finished_per_s']} trials/s, idle "
        f"{result['worker_idle_fraction']}, Suggest p50/p99 "
        f"{suggestions['suggest_latency_ms'].get('p50')}/"
        f"{suggestions['suggest_latency_ms'].get('p99')} ms, counts ok {result['counts_ok']}, "
        f"provenance counts match the topic {result['provenance_counts_match']}; "
        f"report-to-decision p50/p99 {result['report_to_decision_ms'].get('p50')}/"
        f"{result['report_to_decision_ms'].get('p99')} ms, pruned {result['pruned_fraction']} "
        f"(replay {result['replay'].get('pruned_fraction')}; same trials, live / replay: "
        f"{result['replay'].get('same_trials')}), early-stop backlog at the end "
        f"{result['earlystop'].get('lag_at_run_end')}, run-queue wait {waited}"
    )
    return result


def batch_costs(dims: int, observations: int, pending: int) -> list[dict[str, Any]]:
    """Seconds per batch (and per point) of the samplers at fleet sizes, in this process:
    a GP refit (fit + Thompson batch, ``observations`` fitted up to its cap) and a TPE
    batch (pooled above 16 points), with ``pending`` points running, and one TPE
    fallback point (the suggest service's miss path)."""
    from ladder.samplers import LocalDraws, QuasiRandomSampler, SamplerContext
    from ladder.samplers.gp import GPSampler
    from ladder.samplers.tpe import TPESampler
    from ladder.space import Kind, ParamSpec, Space
    from ladder.testing.samplers import random_observations

    space = Space([ParamSpec(f"x{i}", Kind.FLOAT, low=0, high=1) for i in range(dims)])

    def bowl(p: dict[str, Any]) -> float:
        return sum((p[f"x{i}"] - 0.3) ** 2 for i in range(dims))

    data = random_observations(space, observations, bowl, seed=SEED)
    running = [
        p.params for p in QuasiRandomSampler(SamplerContext(space, seed=SEED)).suggest((), pending)
    ]
    out = []
    for name, make in (("gp", GPSampler), ("tpe", TPESampler)):
        for q in (1, 16, 64, 256, 1024):
            sampler = make(SamplerContext(space, seed=SEED, reserve=LocalDraws()))
            sampler.suggest(data[:50], 1)  # imports, first fit: not what is measured
            started = time.perf_counter()
            got = sampler.suggest(data, q, running)
            seconds = time.perf_counter() - started
            out.append(
                {
                    "sampler": name,
                    "observations": observations,
                    "pending": pending,
                    "q": q,
                    "points": len(got),
                    "seconds": round(seconds, 3),
                    "ms_per_point": round(1000 * seconds / max(1, len(got)), 2),
                }
            )
            log(f"batch cost: {out[-1]}")
    fallback = TPESampler(SamplerContext(space, seed=SEED, reserve=LocalDraws()))
    fallback.suggest(data, 1, running[:64])  # rows encoded once, as in the service
    started = time.perf_counter()
    for _ in range(20):
        fallback.suggest(data, 1, running[:64])
    out.append(
        {
            "sampler": "tpe-fallback (one miss)",
            "observations": observations,
            "pending": 64,
            "q": 1,
            "points": 1,
            "seconds": round((time.perf_counter() - started) / 20, 4),
            "ms_per_point": round(1000 * (time.perf_counter() - started) / 20, 2),
        }
    )
    log(f"batch cost: {out[-1]}")
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["scenarios"])
    served = results["scenarios"]
    sources = ("model", "tpe-fallback", "sobol-fallback", "no-model")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0.0] * len(names)
    for source in sources:
        values = []
        for name in names:
            counts = served[name]["suggestions"]["served_by"]
            total = sum(counts.values()) or 1
            values.append(counts.get(source, 0) / total)
        left.bar(names, values, bottom=bottom, label=source)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set_ylabel("fraction of new suggestions")
    left.set_title(f"what served the suggestions ({results['label'] or 'this tree'})")
    left.legend(fontsize=8)
    p50 = [served[n]["suggest_latency_ms"].get("p50", 0) for n in names]
    p99 = [served[n]["suggest_latency_ms"].get("p99", 0) for n in names]
    x = range(len(names))
    right.bar([i - 0.2 for i in x], p50, width=0.4, label="Suggest p50")
    right.bar([i + 0.2 for i in x], p99, width=0.4, label="Suggest p99")
    right.set_xticks(list(x), names)
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.set_title("Suggest latency (simulated workers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def served_trials_per_s(result: dict[str, Any]) -> float:
    """Finished trials per second times the share of suggestions the model chose: the
    same estimate of model-served trials/s for Ladder and its peer."""
    return result["trials_finished_per_s"] * (result.get("model_served_fraction") or 0.0)


def ratios(ladder: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """Ladder over its peer, in one run; None where the peer's figure is 0."""
    def over(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None
    return {
        "trials_per_s": over(ladder["trials_finished_per_s"], peer["trials_finished_per_s"]),
        "model_served_trials_per_s": over(served_trials_per_s(ladder),
                                          served_trials_per_s(peer)),
    }


def run_peer(results: dict[str, Any], name: str, workers: int, algorithm: str,
             args: argparse.Namespace, server: Any) -> None:
    """The scenario against Optuna's gRPC proxy, right after Ladder's (alternating)."""
    from fleet_bo_optuna import run_optuna

    log(f"{name}: Optuna's gRPC proxy on PostgreSQL, {workers} workers")
    peer = run_optuna(workers, duration=args.duration, sampler=algorithm,
                      warmup=args.warmup, dims=args.dims, ramp=args.ramp, server=server)
    results["peers"].setdefault("optuna", {})[name] = peer
    results["ratios"][name] = ratios(results["scenarios"][name], peer)
    log(f"{name}: Optuna {peer['trials_finished_per_s']} trials/s; Ladder over Optuna "
        f"{results['ratios'][name]}")


def run_stack(
    results: dict[str, Any], scenarios: list[tuple[int, str]], args: argparse.Namespace
) -> None:
    """The scenarios, in order, on one fresh embedded stack; with ``--peer optuna`` each
    followed by the same scenario against Optuna (the stack idle meanwhile)."""
    with tempfile.TemporaryDirectory(prefix="ladder-fleet-bo-") as tmp, \
            contextlib.ExitStack() as peers:
        server = None
        if args.peer == "optuna":
            from ladder.testing.postgres import postgres_server

            server = peers.enter_context(postgres_server())
            results["peers"] = {}
            results["ratios"] = {}
        stack = Stack(Path(tmp), services=True, broker_storage=args.storage or None)
        info = stack.up()
        env = {**os.environ, **stack.env()}
        # The object store holding the broker's log, when it is there (s3 storage).
        pids = {name: info["pids"][name]["pid"] for name in SERVICES + ("objectstore",)
                if name in info["pids"]}
        try:
            for workers, algorithm in scenarios:
                name = f"{workers}w-{algorithm}"
                results["scenarios"][name] = run_scenario(env, pids, workers, algorithm, args)
                if server is not None:
                    run_peer(results, name, workers, algorithm, args, server)
        finally:
            stack.down()
            if args.keep_logs is not None:
                shutil.copytree(Path(tmp) / "logs", args.keep_logs, dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="suggestions after this many seconds are also counted apart (workers.loadsim)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="seconds the simulator waits after the run for the last decisions (workers.loadsim)",
    )
    parser.add_argument("--dims", type=int, default=6)
    parser.add_argument(
        "--storage", choices=("", "memory", "s3"), default="",
        help="the embedded broker's log (ladder up's LADDER_BROKER_STORAGE; default: s3, "
             "the durable one); memory is what the early-stop scale figures ran on",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="metric reports per second per simulated worker"
    )
    parser.add_argument(
        "--sim-processes", type=int, default=0,
        help="simulator processes (0: 2 above 200 workers, else 1)",
    )
    parser.add_argument("--scenarios", default="100:gp,100:tpe,1000:gp,1000:tpe")
    parser.add_argument("--label", default="")
    parser.add_argument("--code", type=Path, default=None, help="source tree of the services")
    parser.add_argument(
        "--sim-nice",
        type=int,
        default=0,
        help="niceness of the simulator over the stack (earlystop_scale uses "
        f"{LOADSIM_NICE}; on a host shared with other work, 0 lets 1,000 workers keep "
        "their pace: a starved simulator misses heartbeats and its leases expire)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy the stack's logs there at the end"
    )
    parser.add_argument(
        "--peer", choices=("", "optuna"), default="",
        help="after each scenario, run it against Optuna's gRPC storage proxy on PostgreSQL "
             "(bench/fleet_bo_optuna.py) and record Ladder's ratios over it",
    )
    parser.add_argument(
        "--decision-poll", type=float, default=None,
        help="seconds after a rung a simulated worker polls for its decision "
             "(workers.loadsim --decision-poll; 0: only the ~5 s heartbeats)",
    )
    parser.add_argument(
        "--batch-cost",
        action="store_true",
        help="also time the samplers' batches at fleet sizes in this process (this tree)",
    )
    args = parser.parse_args()
    scenarios = [
        (int(w), a) for w, a in (item.split(":") for item in args.scenarios.split(",") if item)
    ]
    # Evaluate's lease: at 1,000 workers on a host shared with other work, heartbeats
    # (every 5 s) came more than the default 8 s apart and most leases expired, which
    # measures the host, not the suggestion path.
    os.environ.setdefault("LADDER_LEASE_SECONDS", "30")
    if args.code is not None:
        code = args.code.resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join([str(code / "libs"), str(code)])
    results: dict[str, Any] = {
        "benchmark": "fleet-bo",
        "label": args.label,
        "services_code": str(args.code.resolve()) if args.code else str(ROOT),
        "machine": machine(),
        "seed": SEED,
        "dims": args.dims,
        "objective": "bowl",
        "rate_per_worker": args.rate,
        "broker_storage": args.storage or os.environ.get("LADDER_BROKER_STORAGE") or "s3",
        "ramp_s": args.ramp,
        "warmup_s": args.warmup,
        "drain_s": args.drain,
        "simulator_nice": args.sim_nice,
        "stack_env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("LADDER_SUGGEST", "LADDER_REFIT", "LADDER_LEASE", "LADDER_GP"))
        },
        "scenarios": {},
    }
    if args.batch_cost:
        results["batch_cost"] = batch_costs(args.dims, observations=2000, pending=1000)
    if scenarios:
        run_stack(results, scenarios, args)
    results["machine"]["load_average_end"] = load_average()
    RESULTS.mkdir(exist_ok=True)
    stem = f"fleet-bo-{time.strftime('%Y-%m-%d')}" + (f"-{args.label}" if args.label else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    if results["scenarios"]:
        plot(results, RESULTS / f"{stem}.png")
    log(f"wrote {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
