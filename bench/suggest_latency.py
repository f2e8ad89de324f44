"""Suggest latency of a GP study with 100, 1,000 and 5,000 completed trials.

::

    .venv/bin/python bench/suggest_latency.py [--sizes 100,1000,5000] [--requests 300]

Setup: the embedded broker and Redis (``ladder.stack``, no services) plus a real
suggest and a real evaluate process started here; a loopback gRPC client.

Per size, a fresh GP study (6 continuous parameters, a noisy quadratic bowl):

1. fill: ``size`` TRIAL_COMPLETED events are published on the trials topic (the
   same events evaluate publishes after CompleteTrial; the trials themselves are
   not in Redis, which Suggest does not need), then the bench waits until the
   suggest process logs a refit that saw all of them;
2. measure: ``--requests`` Suggest calls at ``--rate`` per second; every trial is
   started and, once more than ``--workers`` are running, the oldest is completed
   through evaluate, so completions keep arriving and refits keep running in
   the background while requests are measured.

Recorded: client-side Suggest latency (p50 / p90 / p99 / max), the buffer hit
rate (suggestions with algorithm "gp" against the fallbacks), the refit times the
suggest process logged during the measurement, and, for comparison in the same
run, the latency of a synchronous model-based suggestion (what the request path
cost before the buffer: one refit) and Optuna's ``study.ask()`` with its
GPSampler / TPESampler at the same number of completed trials (as ratios).
Writes bench/results/suggest-latency.json and .png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ladder.bus import EventProducer
from ladder.config import Settings, Topics
from ladder.params import fill_params, params_to_dict
from ladder.samplers import LocalDraws, SamplerContext
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.space import Space
from ladder.stack import Stack
from ladder.stack.ports import free_port
from ladder.stack.probes import ProbeFailed, serving, wait_until
from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    events_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
    trial_pb2,
)

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "botorch", "gpytorch", "grpcio", "kafka-python", "redis", "optuna")
DIM = 6
SEED = 20261123
REFIT = re.compile(
    r"refit (?P<name>\S+): (?P<obs>\d+) observations, (?P<points>\d+) points in "
    r"(?P<seconds>[0-9.]+) s"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def search_space() -> space_pb2.SearchSpace:
    return space_pb2.SearchSpace(
        parameters=[
            space_pb2.Parameter(name=f"x{i}", float_range=space_pb2.FloatRange(low=0, high=1))
            for i in range(DIM)
        ]
    )


def objective(params: dict[str, Any], rng: np.random.Generator) -> float:
    x = np.array([params[f"x{i}"] for i in range(DIM)])
    return float(np.sum((x - 0.3) ** 2) + rng.normal(0, 0.01))


def history(size: int, seed: int) -> list[tuple[dict[str, Any], float]]:
    space = Space.from_proto(search_space())
    points = QuasiRandomSampler(SamplerContext(space=space, seed=seed, reserve=LocalDraws()))
    rng = np.random.default_rng(seed)
    return [(p.params, objective(p.params, rng)) for p in points.suggest((), size)]


def percentiles(values: list[float]) -> dict[str, float]:
    data = np.array(values)
    return {
        "p50": round(float(np.percentile(data, 50)), 3),
        "p90": round(float(np.percentile(data, 90)), 3),
        "p99": round(float(np.percentile(data, 99)), 3),
        "max": round(float(data.max()), 3),
        "mean": round(float(data.mean()), 3),
        "n": len(values),
    }


class Service:
    def __init__(self, module: str, port_env: str, env: dict[str, str], log_dir: Path) -> None:
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        self.log_path = log_dir / f"{module.rsplit('.', 1)[-1]}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**env, port_env: str(port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: serving(self.addr),
                time.monotonic() + 120,
                module,
                alive=lambda: self.proc.poll() is None,
                interval=0.25,
            )
        except ProbeFailed:
            raise SystemExit(f"{module} did not start:\n{self.log_text()[-3000:]}") from None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def refits(text: str, study_id: str) -> list[dict[str, float]]:
    out = []
    for line in text.splitlines():
        match = REFIT.search(line)
        if match and match["name"].startswith(f"{study_id}/"):
            out.append({"observations": int(match["obs"]), "seconds": float(match["seconds"])})
    return out


def run_size(
    size: int,
    args: argparse.Namespace,
    settings: Settings,
    producer: EventProducer,
    suggest_svc: Service,
    suggest: suggest_pb2_grpc.SuggestServiceStub,
    evaluate: evaluate_pb2_grpc.EvaluateServiceStub,
) -> dict[str, Any]:
    seed = SEED + size
    config = study_pb2.StudyConfig(
        name=f"bench-suggest-{size}",
        space=search_space(),
        metric="loss",
        algorithm=study_pb2.GP,
        seed=seed,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )
    study = suggest.CreateStudy(suggest_pb2.CreateStudyRequest(config=config), timeout=30)
    sid = study.study_id
    started = time.monotonic()
    for i, (params, value) in enumerate(history(size, seed)):
        trial = trial_pb2.Trial(
            trial_id=f"{sid}-h{i}",
            study_id=sid,
            state=trial_pb2.COMPLETED,
            has_final_value=True,
            final_value=value,
        )
        fill_params(trial.params, params)
        event = events_pb2.TrialEvent(kind=events_pb2.TRIAL_COMPLETED, trial=trial)
        producer.send(settings.topics.trials, sid, event)
    producer.flush(60)
    log(f"{size}: published {size} completions in {time.monotonic() - started:.1f} s")

    # The first request creates the partition's buffer; wait for a refit with all.
    suggest.Suggest(suggest_pb2.SuggestRequest(study_id=sid, worker_id="warmup"), timeout=30)
    deadline = time.monotonic() + args.fill_timeout
    while not any(r["observations"] >= size for r in refits(suggest_svc.log_text(), sid)):
        if time.monotonic() > deadline:
            raise SystemExit(f"{size}: no refit with {size} observations in time")
        time.sleep(0.5)
    before = len(refits(suggest_svc.log_text(), sid))
    log(f"{size}: model ready after {time.monotonic() - started:.1f} s")

    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    # The floor on this machine at this moment: a gRPC Health.Check on the same
    # suggest process and a Redis PING, right after each Suggest.
    health_channel = grpc.insecure_channel(suggest_svc.addr)
    health = health_pb2_grpc.HealthStub(health_channel)
    redis_client = redis.Redis.from_url(settings.redis_url)
    floor_grpc: list[float] = []
    floor_redis: list[float] = []
    algorithms: dict[str, int] = {}
    running: list[tuple[str, str, dict[str, Any]]] = []
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    for n in range(args.requests):
        next_at += interval
        worker = f"w-{n % args.workers}"
        t0 = time.perf_counter()
        reply = suggest.Suggest(
            suggest_pb2.SuggestRequest(study_id=sid, worker_id=worker), timeout=30
        )
        latencies.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        floor_grpc.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        redis_client.ping()
        floor_redis.append((time.perf_counter() - t0) * 1000)
        suggestion = reply.suggestions[0]
        algorithms[suggestion.algorithm] = algorithms.get(suggestion.algorithm, 0) + 1
        trial_id, attempt = suggestion.trial.trial_id, f"a-{n}"
        evaluate.StartTrial(
            evaluate_pb2.StartTrialRequest(trial_id=trial_id, attempt_id=attempt, worker_id=worker),
            timeout=30,
        )
        running.append((trial_id, attempt, params_to_dict(suggestion.trial.params)))
        if len(running) > args.workers:
            done, done_attempt, params = running.pop(0)
            evaluate.CompleteTrial(
                evaluate_pb2.CompleteTrialRequest(
                    trial_id=done, attempt_id=done_attempt, value=objective(params, rng)
                ),
                timeout=30,
            )
        time.sleep(max(0.0, next_at - time.monotonic()))
    health_channel.close()
    redis_client.close()
    during = refits(suggest_svc.log_text(), sid)[before:]
    seconds = [r["seconds"] for r in during]
    hits = algorithms.get("gp", 0)
    result = {
        "study_id": sid,
        "latency_ms": percentiles(latencies),
        "floor_ms": {
            "grpc_health_check": percentiles(floor_grpc),
            "redis_ping": percentiles(floor_redis),
        },
        "algorithms": algorithms,
        "buffer_hit_rate": round(hits / len(latencies), 3),
        "refits_during_measurement": len(during),
        "refit_seconds": {
            "p50": round(statistics.median(seconds), 3) if seconds else None,
            "max": round(max(seconds), 3) if seconds else None,
            "observations_last": during[-1]["observations"] if during else None,
        },
    }
    log(
        f"{size}: Suggest p50 {result['latency_ms']['p50']} ms, "
        f"p99 {result['latency_ms']['p99']} ms (Health.Check p99 "
        f"{result['floor_ms']['grpc_health_check']['p99']} ms), "
        f"hit rate {result['buffer_hit_rate']}, "
        f"refit p50 {result['refit_seconds']['p50']} s over {len(during)} refits"
    )
    return result


def synchronous_suggest_ms(size: int, repeats: int, batch: int = 1) -> dict[str, Any]:
    """One model-based suggest (fit + acquisition) of ``batch`` points in this process:
    with ``batch=1`` what the request path cost before the buffer."""
    from ladder.samplers import Observation
    from ladder.samplers.gp import GPSampler

    space = Space.from_proto(search_space())
    sampler = GPSampler(SamplerContext(space=space, seed=SEED, reserve=LocalDraws()))
    observations = [
        Observation(f"h{i}", p, v) for i, (p, v) in enumerate(history(size, SEED + size))
    ]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampler.suggest(observations, batch, [])
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def optuna_ask_ms(size: int, sampler_name: str, repeats: int) -> dict[str, Any] | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(logging.WARNING)
    distributions = {f"x{i}": optuna.distributions.FloatDistribution(0, 1) for i in range(DIM)}
    sampler = (
        optuna.samplers.GPSampler(seed=SEED)
        if sampler_name == "gp"
        else optuna.samplers.TPESampler(seed=SEED, multivariate=True)
    )
    study = optuna.create_study(sampler=sampler)
    study.add_trials(
        [
            optuna.trial.create_trial(params=p, distributions=distributions, value=v)
            for p, v in history(size, SEED + size)
        ]
    )
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trial = study.ask(distributions)
        times.append((time.perf_counter() - t0) * 1000)
        study.tell(trial, objective(trial.params, np.random.default_rng(0)))
    return percentiles(times)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(report["sizes"], key=int)
    x = np.arange(len(sizes))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, offset in (("p50", -0.2), ("p99", 0.2)):
        left.bar(
            x + offset,
            [report["sizes"][s]["latency_ms"][key] for s in sizes],
            0.4,
            label=f"Suggest {key}",
        )
    left.plot(
        x,
        [report["sizes"][s]["floor_ms"]["grpc_health_check"]["p99"] for s in sizes],
        "k_",
        markersize=40,
        label="Health.Check p99 (same process)",
    )
    left.axhline(20, color="red", linestyle="--", linewidth=1, label="p99 target 20 ms")
    left.set_xticks(x, [f"{int(s):,} trials" for s in sizes])
    left.set_ylabel("ms (loopback gRPC, client side)")
    left.set_title("Suggest latency (GP study, ready buffer)")
    left.legend()
    series = {
        "refit in background (p50)": [
            (report["sizes"][s]["refit_seconds"]["p50"] or 0) * 1000 for s in sizes
        ],
        "Suggest p99": [report["sizes"][s]["latency_ms"]["p99"] for s in sizes],
    }
    for name, peer in (
        ("optuna GPSampler ask p50", "optuna_gp"),
        ("optuna TPE ask p50", "optuna_tpe"),
    ):
        values = [(report["sizes"][s]["peers"].get(peer) or {}).get("p50") for s in sizes]
        series[name] = [v if v is not None else np.nan for v in values]
    for name, values in series.items():
        right.plot(x, values, marker="o", label=name)
    right.set_yscale("log")
    right.set_xticks(x, [f"{int(s):,}" for s in sizes])
    right.set_xlabel("completed trials")
    right.set_ylabel("ms (log)")
    right.set_title(f"Off the request path ({os.cpu_count()} shared cores)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="Suggest calls per second")
    parser.add_argument("--workers", type=int, default=8, help="trials kept running")
    parser.add_argument("--buffer", type=int, default=16, help="LADDER_SUGGEST_BUFFER")
    parser.add_argument("--fill-timeout", type=float, default=600)
    parser.add_argument("--peer-repeats", type=int, default=5)
    parser.add_argument(
        "--optuna-gp-max",
        type=int,
        default=1000,
        help="largest size Optuna's GPSampler is timed at (it is O(n^3))",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "suggest-latency.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {
        "machine": machine(),
        "seed": SEED,
        "dimensions": DIM,
        "fill": "TRIAL_COMPLETED events published on the trials topic",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="ladder-bench-suggest-") as tmp:
        state = Path(tmp)
        stack = Stack(state, services=False)
        stack.up()
        env = {**os.environ, **stack.env(), "LADDER_SUGGEST_BUFFER": str(args.buffer)}
        services: list[Service] = []
        try:
            suggest_svc = Service("services.suggest", "LADDER_SUGGEST_PORT", env, state)
            services.append(suggest_svc)
            evaluate_svc = Service("services.evaluate", "LADDER_EVALUATE_PORT", env, state)
            services.append(evaluate_svc)
            settings = Settings(
                kafka_bootstrap=env["LADDER_KAFKA_BOOTSTRAP"],
                redis_url=env["LADDER_REDIS_URL"],
                topics=Topics(env.get("LADDER_TOPIC_PREFIX", "ladder.")),
            )
            producer = EventProducer(settings, "bench-suggest")
            with (
                grpc.insecure_channel(suggest_svc.addr) as s_channel,
                grpc.insecure_channel(evaluate_svc.addr) as e_channel,
            ):
                suggest = suggest_pb2_grpc.SuggestServiceStub(s_channel)
                evaluate = evaluate_pb2_grpc.EvaluateServiceStub(e_channel)
                for size in sizes:
                    report["sizes"][str(size)] = run_size(
                        size, args, settings, producer, suggest_svc, suggest, evaluate
                    )
            producer.close()
            report["suggest_log_tail"] = suggest_svc.log_text().splitlines()[-5:]
        finally:
            for service in reversed(services):
                service.stop()
            stack.down()
    for size in sizes:
        log(f"{size}: timing the synchronous path and the peers")
        peers: dict[str, Any] = {"synchronous_gp_suggest": synchronous_suggest_ms(size, 3)}
        # What one refit of a full buffer costs (a joint batch of --buffer points).
        report["sizes"][str(size)]["gp_batch_suggest_ms"] = synchronous_suggest_ms(
            size, 3, args.buffer
        )
        peers["optuna_tpe"] = optuna_ask_ms(size, "tpe", args.peer_repeats)
        peers["optuna_gp"] = (
            optuna_ask_ms(size, "gp", args.peer_repeats) if size <= args.optuna_gp_max else None
        )
        entry = report["sizes"][str(size)]
        entry["peers"] = peers
        p99 = entry["latency_ms"]["p99"]
        entry["ratios"] = {
            f"{name}_p50_over_suggest_p99": round(value["p50"] / p99, 1)
            for name, value in peers.items()
            if value
        }
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["target"] = {
        "suggest_p99_ms_at_5000": 20,
        "met": all(report["sizes"][str(s)]["latency_ms"]["p99"] < 20 for s in sizes if s >= 5000),
    }
    write_results(report, args.out)


def write_results(report: dict[str, Any], path: Path) -> None:
    """The JSON report and its PNG beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    png = path.with_suffix(".png")
    plot(report, png)
    log(f"wrote {path} and {png.name}")


if __name__ == "__main__":
    main()
