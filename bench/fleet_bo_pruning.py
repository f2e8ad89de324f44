"""The pruned fraction of a bench-fleet-bo run against its replay, on the same trials.

A run of D seconds ends with every worker inside a trial. The trials that *ended* in
it are not a fair sample: a trial that runs to the last step needs ``max_steps /
rate`` seconds (108 s at 1 report/s), so in a 180-s run only those started in the
first ~70 s could complete, while a pruned one (4 steps plus the decision's delay)
ended whenever it started. The pruned share of the ended trials is therefore above
what early stopping decided: at 1,000 paced GP workers (2026-12-03) 95.4 % of the
ended trials were pruned while the replay of the same 5,628 trials, each run to its
end, pruned 88.5 %; of the 1,000 trials cut off by the end of the run, about 435 were
ones the replay completed (649 replayed completions against 214 live ones).

``same_trials`` compares on a cohort both sides ran to their end: the trials started
early enough to run all their steps before the run ended (``cutoff_unix``), each with
its live outcome (its TRIAL_PRUNED or TRIAL_COMPLETED event) and the replay's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRUNED = "pruned"
COMPLETED = "completed"


@dataclass(frozen=True)
class LiveTrial:
    started_unix: float
    outcome: str | None  # PRUNED, COMPLETED, or None: not ended in the run (or failed)


def cohort_cutoff(run_start_unix: float, duration_s: float, max_steps: int, rate: float,
                  margin_s: float) -> float:
    """The latest start of a trial that could still run all ``max_steps`` steps (one
    every ``1 / rate`` s) before the run ended, ``margin_s`` spared for the pace's lag
    and the last RPCs."""
    return run_start_unix + duration_s - max_steps / rate - margin_s


def same_trials(
    live: Mapping[str, LiveTrial], replay_pruned: Mapping[str, bool], cutoff_unix: float
) -> dict[str, Any]:
    """Pruned fractions, live and replayed, of the trials started by ``cutoff_unix``
    that the replay ran (a cohort trial that did not end in the run counts apart, in
    ``unfinished``), and how many outcomes differ each way."""
    cohort = [
        (trial_id, t.outcome) for trial_id, t in live.items()
        if t.started_unix <= cutoff_unix and trial_id in replay_pruned
    ]
    ended = [(trial_id, outcome) for trial_id, outcome in cohort if outcome is not None]
    live_pruned = sum(outcome == PRUNED for _, outcome in ended)
    replayed = sum(replay_pruned[trial_id] for trial_id, _ in ended)
    only_live = sum(outcome == PRUNED and not replay_pruned[trial_id]
                    for trial_id, outcome in ended)
    only_replay = sum(outcome == COMPLETED and replay_pruned[trial_id]
                      for trial_id, outcome in ended)
    n = len(ended)
    return {
        "cutoff_unix": round(cutoff_unix, 3),
        "trials": n,
        "unfinished": len(cohort) - n,
        "live_pruned_fraction": round(live_pruned / n, 4) if n else None,
        "replay_pruned_fraction": round(replayed / n, 4) if n else None,
        "pruned_live_only": only_live,
        "pruned_replay_only": only_replay,
    }
