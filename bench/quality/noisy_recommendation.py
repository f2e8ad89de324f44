"""What a study should recommend on a noisy objective: its best observed value, or its
model's pick (Ladder: the best posterior mean, ``ladder.samplers.recommend``; Ax: its
model-based best), on the quality suite's noisy problems.

Read from the suite's cache, nothing is run here: a run of a tool with a recommendation
of its own holds both (``run.simulate``): the regret of its best observed point (the
curve's last entry) and of its recommendation (``recommended_regret``), each scored on
its true value. Optuna's and random search's recommendation is their best observed
value. Per problem: each cell's seeds reaching the optimum, quartiles, and Mann-Whitney
p-values between every pair (``suite_stats.pairwise``).

Output: bench/results/noisy-recommendation-<UTC date>.json (``--out STEM``: .json added).
Run (after ``bench.quality.suite``): ``.venv/bin/python -m bench.quality.noisy_recommendation``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.quality import suite_stats
from bench.quality.distinct_configs import commit
from bench.quality.run import machine_info, write_report
from bench.quality.suite import (
    OWN_RECOMMENDATION,
    PROBLEM_NAMES,
    delegate_of,
    library_versions,
    load_cache,
    problem,
    run_version,
)

BUDGET, WORKERS = 100, 8
SUITE_CACHE = Path("bench/results/quality-suite-runs.jsonl")
# AUTO's run is its delegate's: the delegate stands for Ladder.
TOOLS = ("ladder", "ax-bo", "optuna-gp", "optuna-tpe", "random")


def noisy_problems() -> list[str]:
    return [name for name in PROBLEM_NAMES if problem(name).noisy]


def cached_runs(
    cache: Mapping[tuple, dict[str, Any]], name: str, kind: str
) -> dict[int, dict[str, Any]]:
    """The suite's runs of ``kind`` on problem ``name`` as it is now, by seed."""
    wanted = (name, problem(name).version, kind, BUDGET, WORKERS, run_version(name, kind))
    return {k[3]: v for k, v in cache.items() if (*k[:3], *k[4:]) == wanted}


def cells_of(cache: Mapping[tuple, dict[str, Any]], name: str) -> dict[str, dict[int, float]]:
    """Cell name -> seed -> regret: each tool's best observed point, and its own
    recommendation where it has one."""
    cells: dict[str, dict[int, float]] = {}
    for tool in TOOLS:
        kind = delegate_of(name) if tool == "ladder" else tool
        runs = cached_runs(cache, name, kind)
        if not runs:
            continue
        cells[f"{tool} best observed"] = {s: float(r["regret"][-1]) for s, r in runs.items()}
        if kind in OWN_RECOMMENDATION:
            cells[f"{tool} recommended"] = {
                s: float(r["recommended_regret"]) for s, r in runs.items()
            }
    return cells


def summarise(cache: Mapping[tuple, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        cells = cells_of(cache, name)
        out[name] = {
            "ladder": delegate_of(name),
            "seeds": {k: sorted(c) for k, c in cells.items()},
            "optimum_reached": {k: sum(v == 0 for v in c.values()) for k, c in cells.items()},
            "quartiles": {k: suite_stats.quartiles(list(c.values())) for k, c in cells.items()},
            "pairwise_mann_whitney": suite_stats.pairwise(cells),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=SUITE_CACHE)
    parser.add_argument(
        "--out", type=Path, default=None, help="report path; .json is added (as suite.py does)")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    out = args.out or Path(f"bench/results/noisy-recommendation-{stamp}")
    write_report(out.with_suffix(".json"), {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine_info(),
        "versions": library_versions(),
        "method": "the quality suite's cached runs (8 async workers, 100 evaluations, "
        "seeds as listed): per tool the true regret of its best observed configuration "
        "and, for Ladder (AUTO's delegate) and Ax, of its own recommendation at the end",
        "problems": summarise(load_cache(args.cache), noisy_problems()),
    })


if __name__ == "__main__":
    main()
