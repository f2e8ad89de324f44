"""What the durable broker costs (issue 14): the early-stop scale bench's 1,000-worker
run and capacity backlog on the broker keeping its log in the object store (s3, the
stack's default) and in memory, and their ratio.

::

    .venv/bin/python bench/durability_cost.py [--duration 60] [--scenarios 1es,cap]
        [--rounds 2]

Each round runs ``bench/earlystop_scale.py --scenarios SCENARIOS --duration D --repeat 1
--storage X`` for X = memory, then s3 (each on fresh stacks; alternating, so that load
from elsewhere on the host falls on both), writing
``results/durability-cost-<X>-<round>.json`` (+ .png); then
``results/durability-cost.json``: per storage and round the 1,000-worker run's
acknowledged and committed reports/s and report-to-decision p50 / p99 (on the topic, and
after the warm-up) and the capacity backlog's reports/s; per storage the median over
the rounds, and the ratios s3 / memory of the medians. About 5 minutes a round
(``make bench-scale`` is the full 45-minute bench).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from earlystop_scale import RESULTS, log, machine

STORAGES = ("memory", "s3")


def figures(path: Path) -> dict[str, Any]:
    """The headline figures of one earlystop_scale result file."""
    scenarios = json.loads(path.read_text())["scenarios"]
    run = scenarios.get("1000w-1es", {})
    latency = run.get("latency_ms", {}).get("report_to_decision_on_topic", {})
    steady = run.get("latency_over_run", {}).get("after_warmup", {})
    return {
        "reports_acked_per_s": run.get("reports", {}).get("acked_per_s"),
        "processed_per_s_steady": run.get("earlystop", {}).get("processed_per_s_steady"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "steady_p99_ms": steady.get("p99"),
        "counts_ok": run.get("counts", {}).get("ok"),
        "capacity_reports_per_s": scenarios.get("capacity-1es", {}).get("reports_per_s"),
    }


FIGURES = ("reports_acked_per_s", "processed_per_s_steady", "p50_ms", "p99_ms",
           "steady_p99_ms", "capacity_reports_per_s")


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(durable: float | None, memory: float | None) -> float | None:
    return round(durable / memory, 3) if durable and memory else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--scenarios", default="1es,cap")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.time()
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "seed": 7,
                              "rounds": {s: [] for s in STORAGES}}
    for round_ in range(1, args.rounds + 1):
        for storage in STORAGES:
            out = RESULTS / f"durability-cost-{storage}-{round_}.json"
            log(f"round {round_}, {storage}: earlystop_scale --scenarios {args.scenarios}")
            subprocess.run(
                [sys.executable, str(Path(__file__).with_name("earlystop_scale.py")),
                 "--scenarios", args.scenarios, "--duration", str(args.duration),
                 "--repeat", "1", "--storage", storage, "--out", str(out)],
                check=True,
            )
            report["rounds"][storage].append({"file": out.name, **figures(out)})
    report["median"] = {
        storage: {key: median_of(runs, key) for key in FIGURES}
        for storage, runs in report["rounds"].items()
    }
    memory, durable = report["median"]["memory"], report["median"]["s3"]
    report["ratio_s3_over_memory"] = {key: ratio(durable[key], memory[key]) for key in FIGURES}
    report["wall_s"] = round(time.time() - started, 1)
    path = RESULTS / "durability-cost.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {path}: s3 / memory {report['ratio_s3_over_memory']}")


if __name__ == "__main__":
    main()
