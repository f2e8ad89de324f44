"""kill -9 of each component in turn, each followed by ``ladder up``, during a study run
by real worker processes: does the study finish with no worker exiting and early
stopping on throughout?

Two runs on fresh stacks (``ladder.stack.launcher.up``, the code behind ``ladder up``)
with the same study (ASHA, random sampler, fixed seed) worked by ``python -m workers
--workload synthetic`` processes (a learning curve and a sleep per step):

- peer: no kills;
- kills: every ``--gap`` seconds one component gets SIGKILL (in ``--order``), then
  ``up`` starts what is dead on its recorded address and the run goes on.

Reported per run: worker exit codes and outcomes, the pruned fraction (pruned /
finished), and in the kill run, per kill the restart's duration, what was restarted,
whether the addresses stayed, and how many trials were pruned between this restart and
the next kill (early stopping on throughout: more than none in every window).

    python bench/restarts.py [--workers 4] [--trials 400] [--out bench/results/restarts.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ladder.client import LadderClient
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.testing import wait_for

from workers.__main__ import WorkerPool

ORDER = ("evaluate", "earlystop", "suggest", "lineage", "redis", "kafka")
ADDRESS_KEYS = ("kafka_bootstrap", "redis_url", "suggest_addr", "evaluate_addr",
                "lineage_addr", "earlystop_health_addr")
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "wd": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
}


def _worker_log(log_dir: Path) -> list[tuple[float, str]]:
    """(unix time, message) of every JSON log line the workers wrote."""
    lines = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            stamp = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
            lines.append((stamp, str(entry.get("msg", ""))))
    return lines


def _outcomes(lines: list[tuple[float, str]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for _, msg in lines:
        if msg.startswith("worker stopped: "):
            for key, count in ast.literal_eval(msg.removeprefix("worker stopped: ")).items():
                total[key] = total.get(key, 0) + count
    return total


def _kill(state: Path, name: str) -> dict[str, Any]:
    """SIGKILL ``name``, then ``up``: what was restarted and how long it took."""
    before = launcher.read_stack(state) or {}
    rec = ProcRecord.from_json(name, before["pids"][name])
    os.killpg(rec.pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_running(rec), 10, f"{name} gone")
    killed_at = time.time()
    started = time.monotonic()
    after = launcher.up(state)
    return {
        "component": name,
        "killed_at": killed_at,
        "restart_s": round(time.monotonic() - started, 2),
        "restarted": after.get("restarted", []),
        "same_addresses": all(before.get(k) == after.get(k) for k in ADDRESS_KEYS),
    }


def run(state: Path, args: argparse.Namespace, kills: tuple[str, ...]) -> dict[str, Any]:
    os.environ["LADDER_STATE_DIR"] = str(state)
    launcher.up(state)
    try:
        with LadderClient() as client:
            study = client.create_study({
                "space": SPACE, "algorithm": "random", "seed": args.seed,
                "max_trials": args.trials,
                "scheduler": {"kind": "asha", "min_resource": 1, "max_resource": 9,
                              "reduction_factor": 3, "min_population": 3},
            })
        log_dir = state / "worker-logs"
        env = {**os.environ, "LADDER_SYNTHETIC_STEP_S": str(args.step_s)}
        pool = WorkerPool(study.study_id, args.workers, worker_args=["--workload", "synthetic"],
                          env=env, log_dir=log_dir).start()
        started = time.time()
        done: list[dict[str, Any]] = []
        try:
            for i, name in enumerate(kills):
                if not pool.wait(args.warmup if i == 0 else args.gap):
                    done.append(_kill(state, name))
                    print(f"  kill {name}: {done[-1]}", flush=True)
            finished = pool.wait(args.timeout)
        finally:
            if pool.running():
                pool.stop()
        seconds = time.time() - started
        lines = _worker_log(log_dir)
        outcomes = _outcomes(lines)
        prunes = [t for t, msg in lines if msg.startswith("trial pruned")]
        ends = [k["killed_at"] for k in done[1:]] + [time.time()] * bool(done)
        for kill, end in zip(done, ends, strict=True):
            kill["pruned_until_next_kill"] = sum(kill["killed_at"] <= t < end for t in prunes)
        finished_trials = outcomes.get("pruned", 0) + outcomes.get("completed", 0)
        return {
            "study_id": study.study_id,
            "finished_before_timeout": finished,
            "seconds": round(seconds, 1),
            "exit_codes": pool.exit_codes(),
            "workers_exited_early": [w for w, c in pool.exit_codes().items() if c != 0],
            "budget_exhausted_workers": sum("no more trials" in m for _, m in lines),
            "outcomes": outcomes,
            "pruned_fraction": round(outcomes.get("pruned", 0) / max(1, finished_trials), 3),
            "kills": done,
        }
    finally:
        launcher.down(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--step-s", type=float, default=0.25, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before kill 1")
    parser.add_argument("--gap", type=float, default=6.0, help="seconds after a restart")
    parser.add_argument("--order", default=",".join(ORDER))
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path("bench/results/restarts.json"))
    args = parser.parse_args()
    order = tuple(args.order.split(","))
    os.environ["LADDER_TOPIC_PREFIX"] = "bench-restarts."
    for var in ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_SUGGEST_ADDR",
                "LADDER_EVALUATE_ADDR", "LADDER_LINEAGE_ADDR"):
        os.environ.pop(var, None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ladder-restarts-") as tmp:
        for label, kills in (("peer", ()), ("kills", order)):
            print(f"run {label}", flush=True)
            results[label] = run(Path(tmp) / label, args, kills)
            summary = {k: results[label][k] for k in ("seconds", "outcomes", "exit_codes")}
            print(f"  {label}: {summary}", flush=True)
    peer, killed = results["peer"], results["kills"]
    checks = {
        "every kill done": len(killed["kills"]) == len(order),
        "restarted on the same addresses": all(k["same_addresses"] for k in killed["kills"]),
        "no worker exited early": not killed["workers_exited_early"]
        and not peer["workers_exited_early"],
        "the study finished": killed["finished_before_timeout"]
        and killed["budget_exhausted_workers"] == args.workers,
        "early stopping after every restart": all(
            k["pruned_until_next_kill"] > 0 for k in killed["kills"]
        ),
        "pruned fraction as without kills (within 0.1)":
            abs(killed["pruned_fraction"] - peer["pruned_fraction"]) <= 0.1,
    }
    report = {
        "question": "kill -9 of each component in turn, each followed by `ladder up`, during "
        "a study run by worker processes: does it finish with no worker exiting and early "
        "stopping on throughout?",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "checks": checks,
        "ok": all(checks.values()),
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: ok={report['ok']}; pruned fraction {killed['pruned_fraction']} "
          f"with kills, {peer['pruned_fraction']} without", flush=True)
    for check, passed in checks.items():
        print(f"  {'ok ' if passed else 'NO '} {check}", flush=True)
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
