"""Early-stopping efficiency: Ladder's schedulers vs Optuna's pruners on replayed curves.

Every scheduler sees the same learning curves in the same asynchronous order: the
real digits table (``bench/curves/digits_curves.npz``, 27 epochs per configuration,
recorded epoch times) and three synthetic families whose first epoch predicts the
final value well, moderately or badly. ``ladder.schedulers.replay`` simulates the
workers; Ladder's schedulers run the early-stop service's own ``EarlyStopEngine``
(``LadderPolicy``; tests/unit/test_earlystop_engine.py checks that the two decide
alike), Optuna's ``SuccessiveHalvingPruner`` and ``HyperbandPruner`` run through ask/tell with
``trial.report`` / ``trial.should_prune`` (``OptunaPolicy``), interleaved in the same
simulated-time order (optuna sees every report of a running trial as it happens).

Ladder's schedulers include ASHA's promotion form (losers pause and resume when a grown
rung promotes them; trials still paused at the end count as pruned) and Hyperband with
brackets weighted by Hyperband's n_i (27:12:6:4 for rungs 1/3/9 and max 27, the weights
Optuna's HyperbandPruner uses) or in equal shares.

For each (curve family, scheduler) and each of ``--seeds`` worker orders it records
the pruned fraction, the budget fraction (epochs used / (configs * 27)), the final
regret (best 27-epoch value among trials that ran all 27 epochs minus the table's best)
and the rank of that configuration in the table; the JSON holds medians and quartiles
over seeds, plus the regret of plain random search (no stopping) at the same budget.

    nice -n 10 .venv/bin/python bench/earlystop_efficiency.py           # make bench-earlystop
    .venv/bin/python bench/earlystop_efficiency.py --seeds 2 --quick    # smoke run

| flag        | default                                   |
|-------------|-------------------------------------------|
| --curves    | bench/curves/digits_curves.npz            |
| --out       | bench/results/earlystop-efficiency.json (+ .png) |
| --seeds     | 10 worker orders (seed 0..9)              |
| --workers   | 8,32 simulated workers (the plot shows 8) |
| --quick     | 128 configurations per family (smoke)     |
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from ladder.schedulers import (
    AshaForm,
    BracketAllocation,
    SchedulerKind,
    SchedulerSpec,
    SmoothingKind,
)
from ladder.schedulers.replay import (
    CurveTable,
    LadderPolicy,
    NoStopping,
    ReplayResult,
    StoppingPolicy,
    replay,
)

BENCH = Path(__file__).resolve().parent
DEFAULT_CURVES = BENCH / "curves" / "digits_curves.npz"
DEFAULT_OUT = BENCH / "results" / "earlystop-efficiency.json"
MAX_EPOCHS = 27
ETA = 3
SYNTHETIC_CONFIGS = 512
SYNTHETIC_SEED = 4
# Mixing weights of the early signal with the final quality, calibrated so that the
# Spearman correlation of epoch-1 and epoch-27 values lands near 0.9 / 0.6 / 0.3
# (the measured value is written to the JSON).
SYNTHETIC_FAMILIES = {"synthetic-rho0.9": 0.91, "synthetic-rho0.6": 0.62, "synthetic-rho0.3": 0.31}


# --- curve families ------------------------------------------------------------------------


def load_digits_table(path: Path) -> tuple[CurveTable, dict[str, Any]]:
    data = np.load(path)
    meta = json.loads(str(data["meta_json"]))
    table = CurveTable(data["values"].astype(float), data["seconds"].astype(float))
    return table, meta


def synthetic_table(early_weight: float, configs: int, seed: int) -> CurveTable:
    """Loss curves y_i(t) = 0.25 + 1.2 t^-0.7 + 0.25 q_i(t) + noise, where q_i moves
    from an early signal e_i to the final quality f_i as log(t) grows:
    q_i(t) = (1 - w) e_i + w f_i, w = (log t / log 27)^2, e_i = a f_i + sqrt(1 - a^2) z_i.
    With a small ``early_weight`` a the curves cross: late bloomers start badly."""
    rng = np.random.default_rng(seed)
    final = rng.standard_normal(configs)
    early = early_weight * final + math.sqrt(1 - early_weight**2) * rng.standard_normal(configs)
    t = np.arange(1, MAX_EPOCHS + 1, dtype=float)
    # Squared: the early signal still weighs 56 % at epoch 9, so rung 9 misleads too.
    w = (np.log(t) / math.log(MAX_EPOCHS)) ** 2
    quality = (1 - w)[None, :] * early[:, None] + w[None, :] * final[:, None]
    noise = 0.01 * rng.standard_normal((configs, MAX_EPOCHS))
    values = 0.25 + 1.2 * t[None, :] ** -0.7 + 0.25 * quality + noise
    # Configurations differ in speed (e.g. batch size), independent of their quality.
    per_config = rng.lognormal(mean=-2.0, sigma=0.5, size=configs)
    seconds = per_config[:, None] * rng.lognormal(0.0, 0.05, size=(configs, MAX_EPOCHS))
    return CurveTable(values, seconds)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    ra = np.argsort(np.argsort(a[ok]))
    rb = np.argsort(np.argsort(b[ok]))
    return float(np.corrcoef(ra, rb)[0, 1])


# --- optuna peers --------------------------------------------------------------------------


@dataclass
class OptunaPolicy:
    """An optuna study driven by ask/tell: trial number k is the k-th replayed row."""

    make_pruner: Callable[[], Any]
    study_name: str
    trials: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import optuna

        self._optuna = optuna
        # A fixed name: HyperbandPruner assigns brackets by hash(study name, number).
        self.study = optuna.create_study(
            study_name=self.study_name,
            direction="minimize",
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=self.make_pruner(),
        )

    def start(self, trial: int) -> None:
        asked = self.study.ask()
        if asked.number != trial:
            raise RuntimeError(f"optuna trial number {asked.number} != replay trial {trial}")
        self.trials[trial] = asked

    def report(self, trial: int, step: int, value: float) -> bool:
        handle = self.trials[trial]
        handle.report(value, step)
        return bool(handle.should_prune())

    def finish(self, trial: int, value: float, pruned: bool) -> None:
        handle = self.trials.pop(trial)
        state = self._optuna.trial.TrialState
        if pruned:
            self.study.tell(handle, state=state.PRUNED)
        elif math.isfinite(value):
            self.study.tell(handle, value)
        else:
            self.study.tell(handle, state=state.FAIL)


def optuna_sha() -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA)


def optuna_hyperband() -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=MAX_EPOCHS, reduction_factor=ETA
    )


# --- schedulers ----------------------------------------------------------------------------


def ladder_spec(
    kind: SchedulerKind,
    min_population: int,
    smoothing: SmoothingKind = SmoothingKind.EMA,
    **options: Any,
) -> SchedulerSpec:
    # Everything not named here is the service's documented default (EMA alpha 0.5,
    # grace = min_resource); rungs 1, 3, 9 below max_resource 27.
    return SchedulerSpec(
        kind=kind,
        min_resource=1,
        max_resource=MAX_EPOCHS,
        reduction_factor=ETA,
        grace_period=1,
        min_population=min_population,
        smoothing=smoothing,
        metric="val_loss",
        resource_unit="epochs",
        **options,
    )


SCHEDULERS: dict[str, dict[str, Any]] = {
    "ladder-asha": {
        "spec": ladder_spec(SchedulerKind.ASHA, 3),
        "settings": "ASHA eta 3, rungs 1/3/9, min_population 3 (default), EMA 0.5",
    },
    "ladder-asha-minpop1": {
        "spec": ladder_spec(SchedulerKind.ASHA, 1),
        "settings": "ASHA eta 3, min_population 1, EMA 0.5",
    },
    "ladder-asha-raw": {
        "spec": ladder_spec(SchedulerKind.ASHA, 3, SmoothingKind.NONE),
        "settings": "ASHA eta 3, min_population 3, no smoothing",
    },
    "ladder-asha-promotion": {
        "spec": ladder_spec(SchedulerKind.ASHA, 3, form=AshaForm.PROMOTION),
        "settings": "ASHA promotion form eta 3: losers pause, promoted when the rung grows "
        "(resumed before new trials); min_population 3, EMA 0.5",
    },
    "ladder-asha-late-bloomer": {
        "spec": ladder_spec(SchedulerKind.ASHA, 3, protect_late_bloomers=True),
        "settings": "ASHA eta 3, min_population 3, EMA 0.5, late-bloomer protection",
    },
    "ladder-hyperband": {
        "spec": ladder_spec(SchedulerKind.HYPERBAND, 3),
        "settings": "Hyperband eta 3, 4 brackets (first decision at 1/3/9/none) by trial-id "
        "hash weighted 27:12:6:4 (Hyperband's n_i, as Optuna), min_population 3, EMA 0.5",
    },
    "ladder-hyperband-even": {
        "spec": ladder_spec(SchedulerKind.HYPERBAND, 3, allocation=BracketAllocation.EVEN),
        "settings": "Hyperband eta 3, the same 4 brackets in equal shares, min_population 3",
    },
    "ladder-hyperband-promotion": {
        "spec": ladder_spec(SchedulerKind.HYPERBAND, 3, form=AshaForm.PROMOTION),
        "settings": "Hyperband weighted brackets, promotion form inside each bracket",
    },
    "ladder-median": {
        "spec": ladder_spec(SchedulerKind.MEDIAN, 3),
        "settings": "median stopping at rungs 1/3/9, min_population 3, EMA 0.5",
    },
    "optuna-sha": {
        "optuna": optuna_sha,
        "settings": "SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)",
    },
    "optuna-hyperband": {
        "optuna": optuna_hyperband,
        "settings": "HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)",
    },
    "no-stopping": {"settings": "every trial runs 27 epochs (reference)"},
}
REFERENCE = "optuna-hyperband"


def make_policy(name: str, seed: int) -> StoppingPolicy:
    entry = SCHEDULERS[name]
    if "spec" in entry:
        return LadderPolicy(entry["spec"], trial_prefix=f"s{seed}-t")
    if "optuna" in entry:
        return OptunaPolicy(entry["optuna"], study_name=f"replay-{name}-{seed}")
    return NoStopping()


# --- the run -------------------------------------------------------------------------------


def random_search_regret(table: CurveTable, order: list[int], budget_fraction: float) -> float:
    """Regret of running the first configurations of ``order`` fully on the same budget."""
    finals = table.finals()
    count = max(1, int(budget_fraction * len(order)))
    chosen = finals[order[:count]]
    best = np.nanmin(chosen) if np.isfinite(chosen).any() else math.nan
    return float(best - np.nanmin(finals))


def quartiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = np.nanpercentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def run_family(tables: list[CurveTable], seeds: list[int], workers: int) -> dict[str, Any]:
    """``tables[k]`` is replayed in the order drawn from ``seeds[k]`` (the real table is
    the same for every seed; a synthetic family draws fresh curves per seed)."""
    out: dict[str, Any] = {}
    orders = [
        list(np.random.default_rng(seed).permutation(table.configs))
        for seed, table in zip(seeds, tables, strict=True)
    ]
    # The reference first: every scheduler is also compared with it at equal budget.
    names = [REFERENCE] + [name for name in SCHEDULERS if name != REFERENCE]
    reference_runs: list[ReplayResult] = []
    for name in names:
        runs: list[ReplayResult] = []
        started = time.perf_counter()
        for seed, order, table in zip(seeds, orders, tables, strict=True):
            runs.append(replay(table, make_policy(name, seed), workers, order))
        if name == REFERENCE:
            reference_runs = runs
        # Optuna HB's regret once it had used as many epochs as this run (its final
        # regret if this run used more than it did in all).
        reference_at_budget = [
            ref.regret_at(min(r.epochs_used, ref.epochs_used))
            for r, ref in zip(runs, reference_runs, strict=True)
        ]
        random_regrets = [
            random_search_regret(table, order, r.budget_fraction)
            for table, order, r in zip(tables, orders, runs, strict=True)
        ]
        out[name] = {
            "settings": SCHEDULERS[name]["settings"],
            "pruned_fraction": quartiles([r.pruned_fraction for r in runs]),
            "budget_fraction": quartiles([r.budget_fraction for r in runs]),
            "regret": quartiles([r.regret for r in runs]),
            "found_rank": quartiles([float(r.found_rank) for r in runs]),
            "completed": quartiles([float(r.completed) for r in runs]),
            # Promotion form: paused trials later promoted and resumed / never promoted.
            "promotions": quartiles([float(r.promotions) for r in runs]),
            "paused_at_end": quartiles([float(r.paused_at_end) for r in runs]),
            "random_search_regret_same_budget": quartiles(random_regrets),
            "optuna_hyperband_regret_same_budget": quartiles(reference_at_budget),
            # Per seed: this regret minus Optuna HB's at the same budget (<= 0: not worse).
            "regret_minus_optuna_hyperband_same_budget": quartiles(
                [r.regret - ref for r, ref in zip(runs, reference_at_budget, strict=True)]
            ),
            "per_seed": [
                {
                    "seed": seed,
                    "pruned_fraction": round(r.pruned_fraction, 4),
                    "budget_fraction": round(r.budget_fraction, 4),
                    "regret": r.regret,
                    "found_rank": r.found_rank,
                    "completed": r.completed,
                }
                for seed, r in zip(seeds, runs, strict=True)
            ],
            "seconds": round(time.perf_counter() - started, 2),
        }
        print(
            f"  {name:22s} pruned {out[name]['pruned_fraction']['median']:.3f}  "
            f"budget {out[name]['budget_fraction']['median']:.3f}  "
            f"regret {out[name]['regret']['median']:.4f}  "
            f"rank {out[name]['found_rank']['median']:.0f}  "
            f"({out[name]['seconds']:.1f}s)",
            flush=True,
        )
    out = {name: out[name] for name in SCHEDULERS}  # the documented order again
    reference = out[REFERENCE]
    for entry in out.values():
        entry["vs_optuna_hyperband"] = {
            "budget_ratio": _ratio(
                entry["budget_fraction"]["median"], reference["budget_fraction"]["median"]
            ),
            "regret_difference": entry["regret"]["median"] - reference["regret"]["median"],
        }
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def versions() -> dict[str, str]:
    out = {}
    for package in ("numpy", "optuna", "torch", "scikit-learn", "matplotlib"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def target_check(family: dict[str, Any], name: str) -> dict[str, Any]:
    entry = family[name]
    pruned = entry["pruned_fraction"]["median"]
    budget = entry["budget_fraction"]["median"]
    return {
        "scheduler": name,
        "pruned_fraction": pruned,
        "budget_fraction": budget,
        "pruned_window": "below 0.70"
        if pruned < 0.70
        else "above 0.95"
        if pruned > 0.95
        else "inside",
        "pruned_70_to_95": 0.70 <= pruned <= 0.95,
        "budget_at_most_0.30": budget <= 0.30,
        "regret_not_worse_than_optuna_hyperband": entry["regret"]["median"]
        <= family[REFERENCE]["regret"]["median"] + 1e-12,
        # NaN (Optuna HB had no completed trial yet at that budget) counts as not worse.
        "regret_not_worse_than_optuna_hyperband_at_equal_budget": not entry[
            "regret_minus_optuna_hyperband_same_budget"
        ]["median"]
        > 1e-12,
        "budget_not_above_optuna_hyperband": budget
        <= family[REFERENCE]["budget_fraction"]["median"] + 1e-12,
    }


def plot(results: dict[str, Any], path: Path, workers: int) -> None:
    """Top: budget vs regret per scheduler. Bottom: budget ratio to Optuna's
    HyperbandPruner and regret minus its regret at the same budget (both medians)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    families = list(results)
    names = list(SCHEDULERS)
    fig, axes = plt.subplots(2, len(families), figsize=(4.4 * len(families), 8.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {name: colors[i % len(colors)] for i, name in enumerate(names)}
    markers = dict(zip(names, "osD^vPX*hH<>pd", strict=False))
    for column, family in enumerate(families):
        entries = results[family]["schedulers"]
        ax = axes[0][column]
        for name, entry in entries.items():
            b, r = entry["budget_fraction"], entry["regret"]
            ax.errorbar(
                b["median"],
                r["median"],
                xerr=[[b["median"] - b["q1"]], [b["q3"] - b["median"]]],
                yerr=[[r["median"] - r["q1"]], [r["q3"] - r["median"]]],
                fmt=markers[name],
                capsize=3,
                label=name,
                color=color[name],
                mfc="none" if name.startswith("optuna") else color[name],
                ms=7,
            )
        ax.axvline(0.30, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.3, 0.5, 1.0]))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_title(
            f"{family}: Spearman(epoch 1, 27) {results[family]['spearman_e1_e27']:.2f}", fontsize=9
        )
        ax.set_xlabel("budget fraction (epochs used / all 27-epoch runs)")
        ax.set_ylabel("final regret (val_loss), median + IQR")

        bars = axes[1][column]
        shown = [n for n in names if n not in (REFERENCE, "no-stopping")]
        ratios = [entries[n]["vs_optuna_hyperband"]["budget_ratio"] or 0.0 for n in shown]
        deltas = [entries[n]["regret_minus_optuna_hyperband_same_budget"]["median"] for n in shown]
        x = np.arange(len(shown))
        bars.bar(
            x - 0.2,
            ratios,
            0.4,
            color=[color[n] for n in shown],
            alpha=0.5,
            label="budget / Optuna HB budget",
        )
        bars.axhline(1.0, color="grey", lw=0.8, ls="--")
        bars.set_ylabel("budget ratio to Optuna HyperbandPruner")
        twin = bars.twinx()
        twin.bar(
            x + 0.2,
            np.nan_to_num(deltas),
            0.4,
            color=[color[n] for n in shown],
            hatch="//",
            edgecolor="black",
            label="regret - Optuna HB regret, same budget",
        )
        twin.axhline(0.0, color="black", lw=0.6)
        # Symmetric around 0 so "better" (down) and "worse" (up) read at a glance.
        limit = max([abs(d) for d in deltas if math.isfinite(d)] + [1e-3]) * 1.15
        twin.set_ylim(-limit, limit)
        twin.set_ylabel("regret - Optuna HB regret, equal budget")
        bars.set_xticks(x, shown, rotation=35, ha="right", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"Early stopping, {workers} asynchronous workers, replayed curves "
        "(hatched bars: regret difference; plain bars: budget ratio)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, default=DEFAULT_CURVES)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--workers",
        default="8,32",
        help="simulated worker counts, comma separated; the first is plotted",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    started = time.perf_counter()
    seeds = list(range(args.seeds))
    digits_table, curves_meta = load_digits_table(args.curves)
    configs = 128 if args.quick else SYNTHETIC_CONFIGS
    if args.quick:
        digits_table = CurveTable(digits_table.values[:configs], digits_table.seconds[:configs])
    families: dict[str, list[CurveTable]] = {"digits-real": [digits_table] * len(seeds)}
    for name, weight in SYNTHETIC_FAMILIES.items():
        # A fresh draw per seed: one lucky draw of the best curve would otherwise decide
        # the regret of every seed.
        families[name] = [
            synthetic_table(weight, configs, SYNTHETIC_SEED * 1000 + seed) for seed in seeds
        ]

    worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    results: dict[str, Any] = {}
    for workers in worker_counts:
        results[f"workers={workers}"] = by_family = {}
        for family, tables in families.items():

            def mean_rank_corr(epoch: int, tables: list[CurveTable] = tables) -> float:
                return float(
                    np.mean([spearman(t.values[:, epoch - 1], t.finals()) for t in tables])
                )

            rho = mean_rank_corr(1)
            print(
                f"{family}, {workers} workers: {tables[0].configs} configs, "
                f"Spearman(epoch 1, epoch 27) {rho:.2f}",
                flush=True,
            )
            by_family[family] = {
                "configs": tables[0].configs,
                "tables": "one per seed" if family.startswith("synthetic") else "one",
                "spearman_e1_e27": rho,
                "spearman_e3_e27": mean_rank_corr(3),
                "spearman_e9_e27": mean_rank_corr(9),
                "best_final": float(np.median([np.nanmin(t.finals()) for t in tables])),
                "schedulers": run_family(tables, seeds, workers),
            }
    primary = results[f"workers={worker_counts[0]}"]

    report = {
        "benchmark": "earlystop-efficiency",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "packages": versions(),
        },
        "settings": {
            "workers": worker_counts,
            "order_seeds": seeds,
            "synthetic_seeds": f"{SYNTHETIC_SEED} * 1000 + order seed",
            "synthetic_configs": configs,
            "synthetic_early_weights": SYNTHETIC_FAMILIES,
            "max_epochs": MAX_EPOCHS,
            "reduction_factor": ETA,
            "quick": args.quick,
            "schedulers": {k: v["settings"] for k, v in SCHEDULERS.items()},
        },
        "metrics": {
            "pruned_fraction": "trials stopped before epoch 27 / trials started",
            "budget_fraction": "epochs run / (configurations * 27)",
            "regret": "best epoch-27 val_loss among trials that ran 27 epochs minus the "
            "table's best epoch-27 val_loss",
            "found_rank": "1-based rank of that configuration's final value in the table",
            "random_search_regret_same_budget": "regret of running the first "
            "budget_fraction * n configurations fully",
            "optuna_hyperband_regret_same_budget": "Optuna HyperbandPruner's regret (same "
            "order) once it had consumed as many epochs as this scheduler used in all "
            "(NaN: no trial of it had completed by then)",
        },
        "curves": {
            "path": str(args.curves.relative_to(BENCH.parent))
            if args.curves.is_relative_to(BENCH.parent)
            else str(args.curves),
            "meta": curves_meta,
        },
        "results": results,
        "targets_on_digits_real": {
            key: [
                target_check(by_family["digits-real"]["schedulers"], name)
                for name in SCHEDULERS
                if name.startswith("ladder")
            ]
            for key, by_family in results.items()
        },
    }
    report["runtime_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    plot(primary, args.out.with_suffix(".png"), worker_counts[0])
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {report['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
