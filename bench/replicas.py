"""1 vs 2 vs 3 suggest replicas under the load simulator, and a kill -9 of one replica
mid-run: Suggest p50/p99 and throughput, partition failover time, the extra latency
clients saw and the errors they saw (must be 0).

Each replica count gets its own embedded stack (``LADDER_REPLICAS=N ladder up``,
broker in memory: N suggest processes with owned partitions and N evaluate processes;
one replica is today's single process, no leases, and then the same with leases on,
every suggestion through Redis). On it ``python -m workers.loadsim``
runs ``--workers`` simulated workers for ``--duration`` seconds on a fresh TPE study
with ``--partitions`` partitions (ASHA, early stopping running), while a probe (a few
threads of the real ``LadderClient``: Suggest, StartTrial, CompleteTrial in a loop,
on a study of its own) records every Suggest call's latency as a worker sees it,
retries included. Then, on the last multi-replica stack, the same run again with
``suggest-2`` killed (SIGKILL) ``--kill-at`` seconds in: the time until a survivor owns
every partition its leases held (polled in Redis), the probe's slowest Suggest after
the kill against its p99 before it, and the errors of the simulator and the probe.

    nice -n 19 python bench/replicas.py [--workers 200] [--duration 60]
        [--out bench/results/replicas-<date>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.stack import launcher
from ladder.state import Keys
from ladder.testing.processes import temporary_stack
from ladder.testing.replicas import Handed, TrialLoop, partition_owners

from workers.loadsim import LoadOptions, create_study

PROBE_WORKERS = 4
PROBE_PACE_S = 0.2  # each probe worker: a trial, then this pause (~20 Suggest/s in all)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def loadsim(state_dir: Path, study_id: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LADDER_")}
    env["LADDER_STATE_DIR"] = str(state_dir)
    argv = [
        sys.executable, "-m", "workers.loadsim", "--study", study_id,
        "--workers", str(args.workers), "--processes", "1", "--rate", "1",
        "--duration", str(args.duration), "--drain", "5", "--warmup", "20",
        "--objective", "bowl",
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=args.duration + 240
    )
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"error": f"loadsim exited {done.returncode}", "stderr": done.stderr[-2000:]}


def owners_watch(
    r: redis.Redis, keys: Keys, studies: list[tuple[str, int]], dead: str, killed: float,
    deadline: float,
) -> float | None:
    """Seconds from ``killed`` until no partition of ``studies`` is owned by ``dead``
    and every one is owned (None: not by ``deadline``)."""
    while time.monotonic() < deadline:
        owners = [o for sid, n in studies for o in partition_owners(r, keys, sid, n)]
        if all(o is not None and dead not in o for o in owners):
            return round(time.monotonic() - killed, 2)
        time.sleep(0.05)
    return None


def probe_summary(handed: list[Handed], errors: list[str], duration: float,
                  killed: float | None = None) -> dict[str, Any]:
    ms = [h.seconds * 1000 for h in handed]
    out: dict[str, Any] = {
        "suggest_calls": len(handed),
        "suggest_ms": {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99),
                       "max": round(max(ms), 1) if ms else None},
        "errors": errors,
    }
    if killed is not None:
        before = [h.seconds * 1000 for h in handed if h.at < killed]
        after = [h.seconds * 1000 for h in handed if killed <= h.at < killed + 10]
        p99 = percentile(before, 0.99) or 0.0
        worst = max(after) if after else 0.0
        out["kill"] = {
            "p99_before_ms": p99,
            "max_within_10s_after_ms": round(worst, 1),
            "extra_latency_ms": round(max(0.0, worst - p99), 1),
            "median_after_ms": round(statistics.median(after), 1) if after else None,
        }
    return out


def run_scenario(
    state_dir: Path, replicas: int, args: argparse.Namespace, kill: bool
) -> dict[str, Any]:
    settings = Settings.from_env()
    info = launcher.read_stack(state_dir) or {}
    study_id = create_study(settings, LoadOptions(
        workers=args.workers, algorithm="tpe", dims=2, objective="bowl",
        partitions=args.partitions, max_resource=args.max_resource, seed=args.seed,
    ))
    probe_config = study_config(
        {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        name="replicas-probe", metric="loss", algorithm="tpe", partitions=2,
    )
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys.for_prefix(settings.topics.prefix)
    result: dict[str, Any] = {"replicas": replicas, "suggest_addr": settings.suggest_addr,
                              "killed": None}
    with LadderClient(settings, retry_timeout=30) as client:
        probe_study = client.create_study(probe_config).study_id
        probe = TrialLoop(client, probe_study, PROBE_WORKERS, PROBE_PACE_S).start()
        sim: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: sim.update(loadsim(state_dir, study_id, args)))
        started = time.monotonic()
        runner.start()
        killed = None
        if kill:
            time.sleep(args.kill_at)  # the run's schedule, not a synchronisation
            pid = int(info["pids"]["suggest-2"]["pid"])
            studies = [(study_id, args.partitions), (probe_study, 2)]
            owned_before = [o for sid, n in studies for o in partition_owners(r, keys, sid, n)]
            dead = f"-{pid}-"
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            failover = owners_watch(r, keys, studies, dead, killed, killed + 30)
            result["killed"] = {
                "process": "suggest-2", "pid": pid, "at_s": round(killed - started, 1),
                "partitions_it_owned": sum(1 for o in owned_before if o and dead in o),
                "partitions_total": len(owned_before),
                "failover_s": failover,
            }
        runner.join(args.duration + 300)
        probe.stop()
    r.close()
    result["probe"] = probe_summary(probe.handed, probe.errors, args.duration, killed)
    sugg = sim.get("suggestions", {})
    result["loadsim"] = {
        "suggest_latency_ms": sugg.get("suggest_latency_ms"),
        "suggestions": sugg.get("total"),
        "suggestions_per_s": round((sugg.get("total") or 0) / args.duration, 1),
        "trials": sim.get("trials"),
        "model_served_fraction_after_warmup": sugg.get("model_served_fraction_after_warmup"),
        "served_by": sugg.get("served_by"),
        "worker_idle_fraction": sugg.get("worker_idle_fraction"),
        "rpc_errors": sim.get("rpc_errors"),
        "error": sim.get("error"),
    }
    return result


def with_stack(
    replicas: int, args: argparse.Namespace, kills: list[bool], leases: bool
) -> list[dict[str, Any]]:
    os.environ["LADDER_REPLICAS"] = str(replicas)
    # One replica runs without leases (today's single process) unless asked; the stack's
    # services inherit this environment.
    os.environ["LADDER_SUGGEST_LEASES"] = "1" if leases else "0"
    with temporary_stack(f"ladder-replicas-{replicas}-", broker_storage="memory") as (
            state, up_s):
        out = []
        for kill in kills:
            scenario = run_scenario(state, replicas, args, kill)
            scenario["stack_up_s"] = up_s
            scenario["leases"] = leases
            out.append(scenario)
            print(json.dumps({k: scenario[k] for k in ("replicas", "killed")}),
                  json.dumps(scenario["loadsim"].get("suggest_latency_ms")), file=sys.stderr)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-resource", type=int, default=12)
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to run")
    parser.add_argument("--kill-at", type=float, default=30.0,
                        help="seconds into the kill run (on the largest count) to kill suggest-2")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-leased-single", action="store_true",
                        help="skip the run of one replica with leases on (the shared-buffer "
                        "path against the single process's own)")
    parser.add_argument(
        "--out", type=Path,
        default=Path(f"bench/results/replicas-{time.strftime('%Y-%m-%d')}.json"),
    )
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("LADDER_")]:
        del os.environ[name]  # the stacks started here, nothing of the caller's
    counts = [int(n) for n in args.replicas.split(",")]
    began = time.monotonic()
    scenarios = []
    for n in counts:
        kills = [False, True] if n == max(counts) and n > 1 else [False]
        scenarios.extend(with_stack(n, args, kills, leases=n > 1))
        if n == 1 and not args.no_leased_single:
            scenarios.extend(with_stack(1, args, [False], leases=True))
    report = {
        "bench": "replicas",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "note": "shared host (2 cores, other jobs running); run under nice -n 19"},
        "workers": args.workers, "duration_s": args.duration, "partitions": args.partitions,
        "lease": {"ttl_s": 3.0, "renew_s": 1.0},
        "scenarios": scenarios,
        "total_s": round(time.monotonic() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
