"""The quality suite's statistics over finished runs (pure: no sampling, no I/O).

A run is a dict with ``problem``, ``sampler``, ``seed`` and ``regret`` (the simple
regret of the best observed point after each completed evaluation); its final regret
is that of the study's recommendation at the end: ``recommended_regret`` where the run
has one (a noisy problem, ``run.simulate``), else the last entry of ``regret``.

- per problem and sampler: median and quartiles of the final regret over seeds;
- per problem, per pair of samplers: the two-sided Mann-Whitney U p-value of their
  final regrets, which one has the lower median and which one's values rank lower
  (the side a significant difference is given to);
- average rank: per problem the samplers are ranked by median final regret (1 = best,
  ties share the mean rank), then the ranks are averaged over the problems. Twice: the
  samplers with a run on every problem over all problems (the others are named as
  left out), and every sampler over the problems where all of them have runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats


def final_regret(run: Mapping[str, Any]) -> float:
    """The regret of what the study recommends when the run ends."""
    return float(run.get("recommended_regret", run["regret"][-1]))


def best_observed(run: Mapping[str, Any]) -> dict[str, Any]:
    """``run`` scored on its best observed point (its recommendation dropped)."""
    return {k: v for k, v in run.items() if k not in ("recommended_regret", "recommendation")}


def finals(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[int, float]]]:
    """problem -> sampler -> seed -> final regret."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for run in runs:
        cell = out.setdefault(run["problem"], {}).setdefault(run["sampler"], {})
        cell[int(run["seed"])] = final_regret(run)
    return out


def quartiles(values: Sequence[float]) -> dict[str, float]:
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value; None with fewer than two values a side, 1.0 when every
    value is equal (scipy's statistic is undefined there: no evidence of a difference)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def lower_ranked(a: Sequence[float], b: Sequence[float]) -> int:
    """-1 when ``a``'s values tend to be the lower (Mann-Whitney's U of ``a``, its
    pairs above ``b`` with ties counted half, below half the pairs), 1 when ``b``'s
    are, 0 when neither. Equal medians can hide it: all zeros against a few misses is
    a difference the test finds and the medians do not show."""
    excess = stats.mannwhitneyu(a, b).statistic - len(a) * len(b) / 2
    return -1 if excess < 0 else 1 if excess > 0 else 0


def pairwise(cells: Mapping[str, Mapping[int, float]]) -> dict[str, dict[str, Any]]:
    """``"a vs b"`` -> p-value, the sampler with the lower median (None if equal) and
    the one whose values rank lower (None if neither)."""
    out: dict[str, dict[str, Any]] = {}
    for a, b in itertools.combinations(sorted(cells), 2):
        va, vb = list(cells[a].values()), list(cells[b].values())
        ma, mb = float(np.median(va)), float(np.median(vb))
        direction = lower_ranked(va, vb)
        out[f"{a} vs {b}"] = {
            "p_value": mann_whitney(va, vb),
            "lower_median": a if ma < mb else b if mb < ma else None,
            "lower_ranked": a if direction < 0 else b if direction > 0 else None,
        }
    return out


def ranks(medians: Mapping[str, float]) -> dict[str, float]:
    """1 = lowest median regret; ties share the mean of their ranks."""
    names = sorted(medians)
    ranked = stats.rankdata([medians[n] for n in names], method="average")
    return {n: float(r) for n, r in zip(names, ranked, strict=True)}


def average_ranks(
    per_problem: Mapping[str, Mapping[str, float]], samplers: Sequence[str]
) -> dict[str, Any]:
    """Mean rank over the problems where every one of ``samplers`` has a median."""
    complete = [p for p, m in per_problem.items() if all(s in m for s in samplers)]
    if not complete:
        return {"problems": [], "ranks": {}}
    table = [ranks({s: per_problem[p][s] for s in samplers}) for p in complete]
    return {
        "problems": complete,
        "ranks": {s: float(np.mean([row[s] for row in table])) for s in samplers},
    }


def covering_ranks(
    per_problem: Mapping[str, Mapping[str, float]], samplers: Sequence[str]
) -> dict[str, Any]:
    """Mean rank over every problem, of the samplers that have a median on each."""
    covering = [s for s in samplers if all(s in m for m in per_problem.values())]
    left_out = [s for s in samplers if s not in covering]
    return {**average_ranks(per_problem, covering), "left_out": left_out}


def summarize(
    runs: Sequence[Mapping[str, Any]],
    samplers: Sequence[str],
    headline: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per problem the samplers' quartiles and pairwise tests; the average ranks of the
    ``headline`` samplers (default: all), and of all ``samplers``."""
    headline = [s for s in (headline or samplers) if s in samplers]
    table = finals(runs)
    problems: dict[str, Any] = {}
    medians: dict[str, dict[str, float]] = {}
    for problem, cells in table.items():
        cells = {s: cells[s] for s in samplers if s in cells}
        problems[problem] = {
            "samplers": {
                s: {"seeds": sorted(seeds), **quartiles(list(seeds.values()))}
                for s, seeds in cells.items()
            },
            "pairwise_mann_whitney": pairwise(cells),
        }
        medians[problem] = {s: problems[problem]["samplers"][s]["median"] for s in cells}

    def among(names: Sequence[str]) -> dict[str, dict[str, float]]:
        return {p: {s: m[s] for s in names if s in m} for p, m in medians.items()}

    return {
        "problems": problems,
        "average_rank": covering_ranks(among(headline), headline),
        "average_rank_common_problems": average_ranks(among(headline), headline),
        "average_rank_all_samplers": covering_ranks(medians, samplers),
        "ranks_per_problem": {p: ranks(m) for p, m in among(headline).items() if m},
    }


def distinct_configurations(
    runs: Iterable[Mapping[str, Any]], sizes: Mapping[str, float], budget: int
) -> dict[str, dict[str, Any]]:
    """Per finite problem (``sizes``: problem -> how many configurations its space has)
    and sampler, over the runs that record ``distinct`` (the distinct configurations
    among their ``budget`` suggestions): the seeds, the minimum and median, and the
    most there can be (the budget, or the space's size when smaller)."""
    cells: dict[str, dict[str, dict[int, int]]] = {}
    for run in runs:
        if run["problem"] in sizes and "distinct" in run:
            cell = cells.setdefault(run["problem"], {}).setdefault(run["sampler"], {})
            cell[int(run["seed"])] = int(run["distinct"])
    return {
        problem: {
            "possible": int(min(budget, sizes[problem])),
            "samplers": {
                sampler: {"seeds": sorted(by_seed), "min": min(by_seed.values()),
                          "median": float(np.median(list(by_seed.values())))}
                for sampler, by_seed in sorted(per_sampler.items())
            },
        }
        for problem, per_sampler in sorted(cells.items())
    }


def versus(
    summary: Mapping[str, Any], sampler: str, peers: Sequence[str], alpha: float = 0.05
) -> dict[str, Any]:
    """Per problem, ``sampler`` against the peer with the lower median among ``peers``:
    "win"/"loss" when Mann-Whitney's p < ``alpha`` (the side whose values rank lower
    wins, whether or not the medians differ), else "tie"."""
    outcomes: dict[str, dict[str, Any]] = {}
    for problem, entry in summary["problems"].items():
        cells = entry["samplers"]
        present = [p for p in peers if p in cells]
        if sampler not in cells or not present:
            continue
        peer = min(present, key=lambda p: cells[p]["median"])
        pair = " vs ".join(sorted([sampler, peer]))
        test = entry["pairwise_mann_whitney"][pair]
        p_value = test["p_value"]
        if p_value is None or p_value >= alpha or test["lower_ranked"] is None:
            outcome = "tie"
        else:
            outcome = "win" if test["lower_ranked"] == sampler else "loss"
        outcomes[problem] = {"peer": peer, "p_value": p_value, "outcome": outcome}
    adjusted = holm({problem: o["p_value"] for problem, o in outcomes.items()})
    for problem, o in outcomes.items():
        o["p_holm"] = adjusted[problem]
        o["outcome_holm"] = o["outcome"] if (adjusted[problem] or 1.0) < alpha else "tie"

    def count(key: str) -> dict[str, int]:
        return {k: sum(o[key] == k for o in outcomes.values()) for k in ("win", "loss", "tie")}

    return {
        "alpha": alpha,
        "counts": count("outcome"),
        # With some twenty problems tested at alpha, about one "significant" difference is
        # expected by chance alone: the same counts with Holm's step-down correction over
        # the problems (family-wise error rate alpha).
        "counts_holm": count("outcome_holm"),
        "problems": outcomes,
    }


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted): the i-th
    smallest of m is multiplied by m - i + 1, made monotone, and capped at 1."""
    tested = sorted((p, k) for k, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = {k: None for k, p in p_values.items() if p is None}
    running = 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))
        adjusted[k] = running
    return adjusted


def shape_evidence(
    summary: Mapping[str, Any],
    shapes: Mapping[str, str],
    rule: Mapping[str, str],
    pair: tuple[str, str] = ("ladder-gp", "ladder-tpe"),
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Per space shape (``shapes``: problem -> shape), which of ``pair`` did better on
    the shape's problems: their average rank between the two (by median final regret),
    the problems each won with Mann-Whitney's p < ``alpha``; the pick (the lower average
    rank, on equal ranks the one with more such wins, else None) and whether ``rule``
    (shape -> "gp" / "tpe", the second word of each sampler's name) agrees with it. A
    shape whose problems lack either sampler's runs is reported without a pick."""
    first, second = pair
    out: dict[str, Any] = {}
    for shape in sorted(set(shapes.values())):
        problems = sorted(p for p, s in shapes.items() if s == shape)
        rows: dict[str, Any] = {}
        for problem in problems:
            entry = summary["problems"].get(problem)
            if entry is None or not {first, second} <= set(entry["samplers"]):
                continue
            test = entry["pairwise_mann_whitney"][" vs ".join(sorted(pair))]
            significant = test["p_value"] is not None and test["p_value"] < alpha
            rows[problem] = {
                "medians": {s: entry["samplers"][s]["median"] for s in pair},
                "seeds": min(len(entry["samplers"][s]["seeds"]) for s in pair),
                "p_value": test["p_value"],
                "winner": test["lower_ranked"] if significant else None,
            }
        chosen = rule.get(shape)
        if len(rows) < len(problems) or not rows:
            out[shape] = {"problems": rows, "missing": sorted(set(problems) - set(rows)),
                          "pick": None, "rule": chosen, "agrees": None}
            continue
        table = [ranks(row["medians"]) for row in rows.values()]
        mean_rank = {s: float(np.mean([r[s] for r in table])) for s in pair}
        wins = {s: sum(row["winner"] == s for row in rows.values()) for s in pair}
        # Lower average rank; on equal ranks, more significant wins; else no pick.
        order = sorted(pair, key=lambda s: (mean_rank[s], -wins[s]))
        best, other = order
        tied = (mean_rank[best], wins[best]) == (mean_rank[other], wins[other])
        pick = None if tied else best
        out[shape] = {
            "problems": rows,
            "average_rank": mean_rank,
            "significant_wins": wins,
            "pick": pick,
            "rule": chosen,
            "agrees": pick is None or pick.rsplit("-", 1)[-1] == chosen,
        }
    return out
