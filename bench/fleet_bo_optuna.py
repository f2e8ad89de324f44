"""The Optuna peer of bench/fleet_bo.py (issue 17): Optuna's gRPC storage proxy on
PostgreSQL, driven by simulated workers written as Optuna users write them.

::

    .venv/bin/python bench/fleet_bo_optuna.py [--duration 60] [--scenarios 100:tpe,100:gp,...]
        [--rate 1] [--processes 4] [--server-threads 10] [--client-per-worker] [--label L]

Setup: a throwaway PostgreSQL server (``ladder.testing.postgres``), a fresh database
per scenario, and ``optuna.storages.run_grpc_proxy_server`` in a process of its own on
loopback, backed by ``optuna.storages.get_storage`` of that database (Optuna's
recommended RDB storage with its in-process cache; SQLAlchemy on psycopg 3). The
study minimises, with ``SuccessiveHalvingPruner(min_resource=4, reduction_factor=3)``
(rungs 4, 12, 36 of a 108-step trial: Ladder's simulator's ASHA) and
``TPESampler(multivariate=True)`` or ``GPSampler``, each with 10 startup trials.

The fleet: ``--processes`` worker processes (a fleet's machines; one process per
simulated worker would not fit 1,000 workers on two cores), each with one
``GrpcStorageProxy`` and one study object shared by its simulated workers
(``--client-per-worker``: one each, as on a fleet of one-worker machines), one
thread each (Optuna's API is synchronous; ``study.optimize(n_jobs=...)`` shares a
study between threads the same way). A simulated worker loops, from a start spread
over ``--ramp`` seconds until ``--duration`` is up:
``study.ask(fixed_distributions=...)`` (6 float params in [0, 1]), then one report of
the load simulator's synthetic curve (``workers.loadsim_sim.curve_value`` with its
"bowl" objective, ``bowl_shift``) every ``1/rate`` seconds through
``trial.report(value, step)`` followed by ``trial.should_prune()``, and
``study.tell(trial, state=PRUNED)`` when told to prune, ``study.tell(trial, value)``
after step 108 (not asked to prune there: the trial is done, as in Ladder).

Measured, with the metric names of bench/fleet_bo.py: trials finished per second, the
pruned fraction, the model-served fraction (asks whose params all came from the
sampler's relative, model-based sampling rather than its startup random sampling;
overall and after ``--warmup`` s), ``ask`` latency (the "Suggest"), report +
should_prune latency at the rung steps (the report-to-decision: Optuna decides
synchronously) and at every step, the workers' idle fraction (time inside ask,
report, should_prune and tell over time in the run), calls still unanswered when the
run ends, and the CPU seconds per finished trial of the proxy, PostgreSQL (postmaster
and its backends) and the worker processes.

``run_optuna`` is what bench/fleet_bo.py calls for one scenario. Writes
bench/results/fleet-bo-optuna-<date>[-<label>].json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.loadsim import split
from workers.loadsim_observe import percentiles
from workers.loadsim_sim import bowl_shift, curve_value

if TYPE_CHECKING:
    from ladder.testing.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
SEED = 17
STARTUP_TRIALS = 10  # TPESampler's and GPSampler's default n_startup_trials
START_DELAY_S = 5.0  # every worker process imports, connects, then all start together
GRACE_S = 30.0  # after the run, calls still unanswered get this long (Ladder's CALL_TIMEOUT_S)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = ("optuna", "SQLAlchemy", "psycopg", "grpcio", "torch", "numpy", "scipy")
SAMPLERS = ("tpe", "gp")


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process runs (passed as JSON on its command line)."""

    port: int
    study_name: str
    sampler: str
    first_worker: int
    workers: int
    rate: float  # reports per second per worker; 0: as fast as the calls go
    duration: float
    ramp: float
    warmup: float
    start_at: float  # wall-clock time at which every process starts
    seed: int
    dims: int = 6
    min_resource: int = 4
    max_resource: int = 108
    reduction_factor: int = 3
    process_index: int = 0
    client_per_worker: bool = False  # one GrpcStorageProxy and study per simulated worker


def rungs(min_resource: int, reduction_factor: int, max_resource: int) -> list[int]:
    """The steps at which the pruner decides: min_resource * eta^k below max_resource."""
    out, step = [], min_resource
    while step < max_resource:
        out.append(step)
        step *= reduction_factor
    return out


def overlap(start: float, end: float, window_start: float, window_end: float) -> float:
    """Seconds of [start, end] inside [window_start, window_end]."""
    return max(0.0, min(end, window_end) - max(start, window_start))


@dataclass
class WorkerStats:
    """One simulated worker's counts and timings (monotonic clock)."""

    began: float = 0.0
    asks: int = 0
    model_served: int = 0
    model_served_after_warmup: int = 0
    asks_after_warmup: int = 0
    pruned: int = 0
    completed: int = 0
    unfinished: int = 0
    model_served_finished: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ask_ms: list[float] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)  # report + should_prune at a rung
    report_ms: list[float] = field(default_factory=list)  # report + should_prune, every step
    tell_ms: list[float] = field(default_factory=list)
    idle_s: float = 0.0
    in_call: tuple[str, float] | None = None  # (what, since) while waiting for Optuna

    @contextmanager
    def call(self, what: str, deadline: float) -> Iterator[None]:
        """Time a call to Optuna: its part before ``deadline`` is idle time."""
        started = time.monotonic()
        self.in_call = (what, started)
        try:
            yield
        finally:
            self.in_call = None
            self.idle_s += overlap(started, time.monotonic(), self.began, deadline)

    def error(self, what: str, exc: BaseException) -> None:
        code = exc.code().name if hasattr(exc, "code") and callable(exc.code) else ""
        key = f"{what}:{type(exc).__name__}{':' + code if code else ''}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def worker_seconds(self, deadline: float) -> float:
        return max(0.0, deadline - self.began) if self.began else 0.0

    def in_flight(self, now: float, deadline: float) -> tuple[str, float, float] | None:
        """(what, seconds so far, idle seconds before the deadline) of an unanswered call."""
        if self.in_call is None:
            return None
        what, since = self.in_call
        return what, now - since, overlap(since, now, self.began, deadline)


def process_summary(stats: list[WorkerStats], now: float, deadline: float) -> dict[str, Any]:
    """One worker process's result (plain JSON) from its workers' stats at ``now``."""
    in_flight = [s.in_flight(now, deadline) for s in stats]
    unanswered = [f for f in in_flight if f is not None]
    errors: dict[str, int] = {}
    for s in stats:
        for key, n in s.errors.items():
            errors[key] = errors.get(key, 0) + n
    return {
        "workers": len(stats),
        "workers_started": sum(1 for s in stats if s.began),
        "asks": sum(s.asks for s in stats),
        "asks_after_warmup": sum(s.asks_after_warmup for s in stats),
        "model_served": sum(s.model_served for s in stats),
        "model_served_after_warmup": sum(s.model_served_after_warmup for s in stats),
        "model_served_finished": sum(s.model_served_finished for s in stats),
        "pruned": sum(s.pruned for s in stats),
        "completed": sum(s.completed for s in stats),
        "unfinished": sum(s.unfinished for s in stats) + len(unanswered),
        "errors": errors,
        "ask_ms": [v for s in stats for v in s.ask_ms],
        "decision_ms": [v for s in stats for v in s.decision_ms],
        "report_ms": [v for s in stats for v in s.report_ms],
        "tell_ms": [v for s in stats for v in s.tell_ms],
        "idle_s": sum(s.idle_s for s in stats) + sum(f[2] for f in unanswered),
        "worker_s": sum(s.worker_seconds(deadline) for s in stats),
        "unanswered": {
            what: sum(1 for f in unanswered if f[0] == what) for what in {f[0] for f in unanswered}
        },
        "unanswered_age_s": [round(f[1], 3) for f in unanswered],
    }


def fraction(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarize(
    results: list[Mapping[str, Any]], duration: float, rate: float, workers: int
) -> dict[str, Any]:
    """The scenario's figures from its worker processes' results, named as in
    bench/fleet_bo.py (Ladder's side) where they mean the same thing."""

    def total(key: str) -> int:
        return sum(r[key] for r in results)

    def merged(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in results:
            for name, n in r[key].items():
                out[name] = out.get(name, 0) + n
        return out

    pruned, completed = total("pruned"), total("completed")
    finished = pruned + completed
    asks, late = total("asks"), total("asks_after_warmup")
    model, model_late = total("model_served"), total("model_served_after_warmup")
    worker_s = sum(r["worker_s"] for r in results)
    suggest = percentiles(v for r in results for v in r["ask_ms"])
    served_by = {"model": model, "no-model": asks - model}
    summary = {
        "workers": workers,
        "workers_started": total("workers_started"),
        "rate_per_worker": rate,
        "trials": {
            "started": asks,
            "pruned": pruned,
            "completed": completed,
            "unfinished": total("unfinished"),
        },
        "trials_finished_per_s": round(finished / duration, 2),
        "model_served_trials_per_s": round(total("model_served_finished") / duration, 2),
        "pruned_fraction": fraction(pruned, finished),
        "suggestions": {
            "total": asks,
            "served_by": served_by,
            "served_by_after_warmup": {"model": model_late, "no-model": late - model_late},
            "model_served_fraction": fraction(model, asks),
            "model_served_fraction_after_warmup": fraction(model_late, late),
            "suggest_latency_ms": suggest,
            "worker_idle_fraction": (
                round(sum(r["idle_s"] for r in results) / worker_s, 4) if worker_s else None
            ),
        },
        "suggest_latency_ms": suggest,
        "report_to_decision_ms": percentiles(v for r in results for v in r["decision_ms"]),
        "report_and_should_prune_ms": percentiles(v for r in results for v in r["report_ms"]),
        "tell_latency_ms": percentiles(v for r in results for v in r["tell_ms"]),
        "rpc_errors": merged("errors"),
        "unanswered_at_end": merged("unanswered"),
        "unanswered_age_ms": percentiles(v * 1000 for r in results for v in r["unanswered_age_s"]),
    }
    summary["model_served_fraction"] = summary["suggestions"]["model_served_fraction"]
    summary["model_served_fraction_after_warmup"] = summary["suggestions"][
        "model_served_fraction_after_warmup"
    ]
    summary["worker_idle_fraction"] = summary["suggestions"]["worker_idle_fraction"]
    return summary


# ---------------------------------------------------------------- CPU accounting


def stat_cpu(stat: str) -> tuple[float, float, int]:
    """(own CPU s, reaped children's CPU s, parent pid) from a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    ticks = [int(fields[i]) for i in (11, 12, 13, 14)]
    return (ticks[0] + ticks[1]) / CLOCK_TICKS, (ticks[2] + ticks[3]) / CLOCK_TICKS, int(fields[1])


def _read_stat(pid: int | str) -> tuple[float, float, int] | None:
    try:
        return stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (0 when it is gone)."""
    got = _read_stat(pid)
    return got[0] if got else 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server and its children (PostgreSQL's postmaster and its
    backends): its own, its reaped children's, and its live children's."""
    root = _read_stat(pid)
    if root is None:
        return 0.0
    total = root[0] + root[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(pid):
            child = _read_stat(entry.name)
            if child is not None and child[2] == pid:
                total += child[0]
    return total


# ---------------------------------------------------------------- worker processes


def _make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True, n_startup_trials=STARTUP_TRIALS, seed=seed
        )
    if name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=STARTUP_TRIALS, seed=seed)
    raise ValueError(f"sampler must be one of {SAMPLERS}, not {name!r}")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _simulated_worker(
    study_of: Callable[[int], Any],
    config: WorkerConfig,
    index: int,
    stats: WorkerStats,
    deadline: float,
) -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    names = [f"x{i}" for i in range(config.dims)]
    space = {name: FloatDistribution(0.0, 1.0) for name in names}
    bounds = tuple((name, 0.0, 1.0) for name in names)
    decide_at = set(rungs(config.min_resource, config.reduction_factor, config.max_resource))
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    rng = random.Random(config.seed * 1_000_003 + index)
    study = study_of(index)
    start = time.monotonic() + max(0.0, config.start_at - time.time())
    time.sleep(max(0.0, start - time.monotonic()) + rng.uniform(0, max(interval, config.ramp)))
    stats.began = time.monotonic()
    warm_from = start + config.warmup
    while time.monotonic() < deadline:
        try:
            asked = time.monotonic()
            with stats.call("ask", deadline):
                trial = study.ask(fixed_distributions=space)
            stats.ask_ms.append((time.monotonic() - asked) * 1000)
        except Exception as exc:  # noqa: BLE001 - counted; a worker keeps asking
            stats.error("ask", exc)
            time.sleep(max(interval, 0.1))
            continue
        model = set(names) <= set(trial.relative_params)
        stats.asks += 1
        stats.model_served += model
        if asked >= warm_from:
            stats.asks_after_warmup += 1
            stats.model_served_after_warmup += model
        shift = bowl_shift(trial.params, bounds)
        try:
            finished = _run_trial(study, trial, config, stats, deadline, interval, shift, decide_at)
        except Exception as exc:  # noqa: BLE001 - counted; the worker asks for another
            stats.error("trial", exc)
            continue
        if finished is None:
            stats.unfinished += 1
            continue
        state, value = finished
        try:
            told = time.monotonic()
            with stats.call("tell", deadline):
                if state is TrialState.PRUNED:
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    study.tell(trial, value)
            stats.tell_ms.append((time.monotonic() - told) * 1000)
        except Exception as exc:  # noqa: BLE001 - counted
            stats.error("tell", exc)
            continue
        if state is TrialState.PRUNED:
            stats.pruned += 1
        else:
            stats.completed += 1
        stats.model_served_finished += model


def _run_trial(
    study: Any,
    trial: Any,
    config: WorkerConfig,
    stats: WorkerStats,
    deadline: float,
    interval: float,
    shift: float,
    decide_at: set[int],
) -> tuple[Any, float] | None:
    """Report the curve until pruned or done: (state, last value), None at the deadline."""
    from optuna.trial import TrialState

    trial_key = str(trial.number)
    next_tick = time.monotonic()
    value = float("nan")
    for step in range(1, config.max_resource + 1):
        next_tick += interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
        if time.monotonic() >= deadline:
            return None
        value = curve_value(config.seed, trial_key, step, shift)
        reported = time.monotonic()
        with stats.call("report", deadline):
            trial.report(value, step)
            prune = step < config.max_resource and trial.should_prune()
        elapsed_ms = (time.monotonic() - reported) * 1000
        stats.report_ms.append(elapsed_ms)
        if step in decide_at:
            stats.decision_ms.append(elapsed_ms)
        if prune:
            return TrialState.PRUNED, value
    return TrialState.COMPLETE, value


def load_study(config: WorkerConfig, seed: int) -> Any:
    """The study through a new ``GrpcStorageProxy`` client, with the scenario's sampler
    and pruner."""
    import optuna
    from optuna.storages import GrpcStorageProxy

    storage = GrpcStorageProxy(host=HOST, port=config.port)
    storage.wait_server_ready(timeout=60)
    return optuna.load_study(
        study_name=config.study_name,
        storage=storage,
        sampler=_make_sampler(config.sampler, seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        ),
    )


def worker_process(config: WorkerConfig) -> dict[str, Any]:
    """One worker process: its simulated workers on threads, sharing one study (or each
    with its own client and study: ``client_per_worker``)."""
    _quiet_optuna()
    shared = (
        None
        if config.client_per_worker
        else load_study(config, config.seed * 1000 + config.process_index)
    )

    def study_of(index: int) -> Any:
        return shared if shared is not None else load_study(config, config.seed * 1000 + index)

    start_in = max(0.0, config.start_at - time.time())
    deadline = time.monotonic() + start_in + config.duration
    stats = [WorkerStats() for _ in range(config.workers)]
    threads = [
        threading.Thread(
            target=_simulated_worker,
            args=(study_of, config, config.first_worker + i, stats[i], deadline),
            name=f"sim-{config.first_worker + i}",
            daemon=True,  # a worker stuck in a call must not keep the process alive
        )
        for i in range(config.workers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, config.start_at - time.time()))
    cpu_start = _own_cpu()
    time.sleep(max(0.0, deadline - time.monotonic()))
    cpu_run = _own_cpu() - cpu_start  # the run's window, as the proxy's and PostgreSQL's
    give_up = deadline + GRACE_S
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    out = process_summary(stats, time.monotonic(), deadline)
    out["cpu_seconds_run"] = round(cpu_run, 2)
    out["cpu_seconds_total"] = round(_own_cpu(), 2)
    out["threads_still_running"] = sum(t.is_alive() for t in threads)
    return out


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the proxy and the run


def serve(storage_url: str, port: int, threads: int) -> None:
    """The gRPC storage proxy (its own process): Optuna's server on ``get_storage``."""
    from concurrent.futures import ThreadPoolExecutor

    import optuna

    _quiet_optuna()
    storage = optuna.storages.get_storage(storage_url)
    optuna.storages.run_grpc_proxy_server(
        storage, host=HOST, port=port, thread_pool=ThreadPoolExecutor(max_workers=threads)
    )


def _python(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def create_database(server: PostgresServer) -> str:
    """A new database on ``server``; its SQLAlchemy URL (psycopg 3)."""
    import psycopg

    name = f"optuna_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{server.user}@{server.host}:{server.port}/{name}"


def postmaster_pid(server: PostgresServer) -> int:
    """PostgreSQL's postmaster: the parent of a backend serving us."""
    import psycopg

    # Read while connected: the backend exits with the connection.
    with psycopg.connect(server.url()) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        got = _read_stat(row[0])
    if got is None:
        raise RuntimeError("cannot read the backend's /proc entry (another PID namespace?)")
    return got[2]


def _start_proxy(storage_url: str, threads: int) -> tuple[subprocess.Popen[bytes], int]:
    from ladder.stack.ports import free_port

    port = free_port()
    proc = subprocess.Popen(_python(["_serve", storage_url, str(port), str(threads)]))
    return proc, port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import grpc

    channel = grpc.insecure_channel(f"{HOST}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise RuntimeError(f"the Optuna proxy did not start (exit code {proc.poll()})") from None
    finally:
        channel.close()


def _result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=GRACE_S + 120)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"a worker process failed (exit code {proc.returncode})")
    return json.loads(out)


def run_optuna(
    workers: int,
    rate: float = 1.0,
    duration: float = 60.0,
    sampler: str = "tpe",
    seed: int = SEED,
    *,
    processes: int = 4,
    server_threads: int = 10,
    ramp: float = 10.0,
    warmup: float = 20.0,
    dims: int = 6,
    client_per_worker: bool = False,
    server: PostgresServer | None = None,
) -> dict[str, Any]:
    """One scenario against Optuna's gRPC proxy on PostgreSQL: ``workers`` simulated
    workers in ``processes`` processes for ``duration`` s, a client and study per
    process (``client_per_worker``: per worker). ``server``: a running
    ``ladder.testing.postgres.PostgresServer`` (else one is started for this call)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if server is None:
        from ladder.testing.postgres import postgres_server

        with postgres_server() as started:
            return run_optuna(
                workers,
                rate,
                duration,
                sampler,
                seed,
                processes=processes,
                server_threads=server_threads,
                ramp=ramp,
                warmup=warmup,
                dims=dims,
                client_per_worker=client_per_worker,
                server=started,
            )
    import optuna
    from optuna.storages import GrpcStorageProxy

    _quiet_optuna()
    storage_url = create_database(server)
    postgres = postmaster_pid(server)
    proxy, port = _start_proxy(storage_url, server_threads)
    procs: list[subprocess.Popen[str]] = []
    try:
        _wait_ready(port, proxy)
        client = GrpcStorageProxy(host=HOST, port=port)
        study_name = f"fleet-{workers}w-{sampler}"
        optuna.create_study(study_name=study_name, storage=client, direction="minimize")
        client.close()
        start_at = time.time() + START_DELAY_S + 0.02 * workers
        parts = [part for part in split(workers, min(processes, workers)) if part[1]]
        configs = [
            WorkerConfig(
                port=port,
                study_name=study_name,
                sampler=sampler,
                first_worker=first,
                workers=count,
                rate=rate,
                duration=duration,
                ramp=ramp,
                warmup=warmup,
                start_at=start_at,
                seed=seed,
                dims=dims,
                process_index=i,
                client_per_worker=client_per_worker,
            )
            for i, (first, count) in enumerate(parts)
        ]
        load_before = [round(x, 2) for x in os.getloadavg()]
        procs = [
            subprocess.Popen(
                _python(["_worker", json.dumps(asdict(c))]),
                stdout=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        time.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        cpu_before = {
            "optuna-grpc-proxy": cpu_seconds(proxy.pid),
            "postgresql": tree_cpu_seconds(postgres),
        }
        time.sleep(max(0.0, duration - (time.monotonic() - began)))
        cpu_after = {
            "optuna-grpc-proxy": cpu_seconds(proxy.pid),
            "postgresql": tree_cpu_seconds(postgres),
        }
        results = [_result_of(p) for p in procs]
        elapsed = time.monotonic() - began
    finally:
        for p in [*procs, proxy]:
            if p.poll() is None:
                p.kill()
                p.wait()
    summary = summarize(results, duration, rate, workers)
    finished = summary["trials"]["pruned"] + summary["trials"]["completed"]
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_after}
    cpu["workers (all processes)"] = round(sum(r["cpu_seconds_run"] for r in results), 2)
    return {
        "peer": "optuna-grpc-proxy-postgresql",
        "algorithm": sampler,
        "sampler": (
            f"TPESampler(multivariate=True, n_startup_trials={STARTUP_TRIALS})"
            if sampler == "tpe"
            else f"GPSampler(n_startup_trials={STARTUP_TRIALS})"
        ),
        "pruner": "SuccessiveHalvingPruner(min_resource=4, reduction_factor=3)",
        "seed": seed,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "processes": len(configs),
        "proxy_threads": server_threads,
        "clients": "one per worker" if client_per_worker else "one per process",
        "ramp_s": ramp,
        "warmup_s": warmup,
        "dims": dims,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **summary,
        "cpu_seconds": cpu,
        "cpu_seconds_per_finished_trial": {
            n: round(v / finished, 4) for n, v in cpu.items() if finished and v > 0
        },
        # Where hardly any trial finishes, the cost of what the proxy did answer.
        "cpu_seconds_per_answered_ask": {
            n: round(v / summary["trials"]["started"], 4)
            for n, v in cpu.items()
            if summary["trials"]["started"] and v > 0
        },
        "worker_processes_cpu_seconds_total": [r["cpu_seconds_total"] for r in results],
        "threads_still_running_at_end": sum(r["threads_still_running"] for r in results),
    }


# ---------------------------------------------------------------- CLI


def machine() -> dict[str, Any]:
    """Where it ran: platform, CPUs, the peer's library versions, PostgreSQL's."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        from ladder.testing.postgres import find_bin_dir

        versions["postgresql"] = subprocess.run(
            [str(find_bin_dir() / "initdb"), "--version"], capture_output=True, text=True
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        versions["postgresql"] = f"unknown ({exc})"
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def headline(name: str, r: Mapping[str, Any]) -> str:
    return (
        f"{name}: {r['trials_finished_per_s']} trials/s ({r['model_served_trials_per_s']} "
        f"model-served), model-served {r['model_served_fraction']} (after warm-up "
        f"{r['model_served_fraction_after_warmup']}), idle {r['worker_idle_fraction']}, "
        f"ask p50/p99 {r['suggest_latency_ms'].get('p50')}/{r['suggest_latency_ms'].get('p99')}"
        f" ms, decision p50/p99 {r['report_to_decision_ms'].get('p50')}/"
        f"{r['report_to_decision_ms'].get('p99')} ms, pruned {r['pruned_fraction']}, "
        f"unanswered {r['unanswered_at_end']}, load {r['load_average_after']}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        serve(argv[1], int(argv[2]), int(argv[3]))
        return
    if argv[:1] == ["_worker"]:
        out = worker_process(WorkerConfig(**json.loads(argv[1])))
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        os._exit(0)  # workers stuck in a call must not hold the exit
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1.0, help="reports/s per worker (0: full)")
    parser.add_argument("--scenarios", default="100:tpe,100:gp,1000:tpe,1000:gp")
    parser.add_argument("--processes", type=int, default=4, help="worker processes")
    parser.add_argument("--server-threads", type=int, default=10, help="the proxy's threads")
    parser.add_argument(
        "--client-per-worker",
        action="store_true",
        help="a GrpcStorageProxy and study per simulated worker (default: per process)",
    )
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    scenarios = [(int(w), s) for w, s in (item.split(":") for item in args.scenarios.split(","))]
    from ladder.testing.postgres import postgres_server

    results: dict[str, Any] = {
        "benchmark": "fleet-bo-optuna",
        "label": args.label,
        "machine": machine(),
        "seed": args.seed,
        "objective": "bowl",
        "rate_per_worker": args.rate,
        "scenarios": {},
    }
    with postgres_server() as server:
        for workers, sampler in scenarios:
            name = f"{workers}w-{sampler}"
            log(f"{name}: {workers} workers for {args.duration:g}s (load {os.getloadavg()})")
            result = run_optuna(
                workers,
                args.rate,
                args.duration,
                sampler,
                args.seed,
                processes=args.processes,
                server_threads=args.server_threads,
                client_per_worker=args.client_per_worker,
                ramp=args.ramp,
                warmup=args.warmup,
                server=server,
            )
            results["scenarios"][name] = result
            log(headline(name, result))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    stem = f"fleet-bo-optuna-{time.strftime('%Y-%m-%d')}" + (f"-{args.label}" if args.label else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {RESULTS / stem}.json")


if __name__ == "__main__":
    main()
