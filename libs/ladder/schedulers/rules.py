"""Stopping rules applied when a trial reaches a rung, each with a recorded reason.

- ASHA (asynchronous successive halving): at rung k with population n (trials that
  reached rung k, this one included), nothing is stopped while n < min_population;
  otherwise the trial continues iff its smoothed value is within the top
  max(1, floor(n / eta)) of the rung, else it stops.
- Median stopping: stop when the value is worse than the median of the other trials
  at the same rung (again only once min_population trials reached it).
- Divergence: a NaN / inf value stops the trial at once, whatever its rank.
- Grace period: no stop for rungs whose resource is below ``grace_period``.

Every decision records rung, resource, value, cutoff, 1-based rank and population,
plus a sentence an operator can read, e.g.
``rung 1 (3 epochs): rank 7/9, val_loss 0.412 > cutoff 0.305 (top 3 of 9 kept, eta=3)``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum

from ladder.schedulers.leaderboard import RungLeaderboard
from ladder.schedulers.spec import RESOURCE_EPS, SchedulerKind, SchedulerSpec


class Action(StrEnum):
    CONTINUE = "CONTINUE"
    STOP = "STOP"
    PROMOTE = "PROMOTE"


@dataclass(frozen=True)
class RungDecision:
    action: Action
    rule: str  # asha / median / divergence / grace / none
    rung: int
    resource: float
    value: float
    cutoff: float  # NaN when no cutoff applied
    rank: int  # 0 when not ranked
    population: int
    reason: str

    @property
    def stop(self) -> bool:
        return self.action is Action.STOP


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _where(spec: SchedulerSpec, rung: int, resource: float, trial_id: str = "") -> str:
    where = f"rung {rung} ({spec.format_resource(resource)})"
    if spec.brackets > 1 and trial_id:
        where += f", bracket {spec.bracket_of(trial_id)}"
    return where


def _metric(spec: SchedulerSpec) -> str:
    return spec.metric or "value"


def _worse_sign(spec: SchedulerSpec) -> tuple[str, str]:
    """(worse, not worse) comparison symbols for the study's direction."""
    return ("<", ">=") if spec.maximize else (">", "<=")


def kept_count(population: int, eta: float) -> int:
    """How many trials of a rung survive: floor(n / eta), at least one."""
    return max(1, math.floor(population / eta + RESOURCE_EPS))


def asha_decide(
    spec: SchedulerSpec, board: RungLeaderboard, trial_id: str, rung: int, resource: float
) -> RungDecision:
    value = board.values[trial_id]
    n = board.population
    where = _where(spec, rung, resource, trial_id)
    rule = "hyperband" if spec.kind is SchedulerKind.HYPERBAND else "asha"
    rank = board.rank_of(trial_id)
    if n < spec.min_population:
        return RungDecision(
            Action.CONTINUE, rule, rung, resource, value, math.nan, rank, n,
            f"{where}: population {n} < min {spec.min_population}",
        )
    keep = kept_count(n, spec.eta)
    cutoff = board.ordered()[keep - 1][1]
    stop = board.better(cutoff, value)
    worse, not_worse = _worse_sign(spec)
    sign = worse if stop else not_worse
    reason = (
        f"{where}: rank {rank}/{n}, {_metric(spec)} {_fmt(value)} {sign} cutoff {_fmt(cutoff)}"
        f" (top {keep} of {n} kept, eta={spec.eta:g})"
    )
    action = Action.STOP if stop else Action.CONTINUE
    return RungDecision(action, rule, rung, resource, value, cutoff, rank, n, reason)


def median_decide(
    spec: SchedulerSpec, board: RungLeaderboard, trial_id: str, rung: int, resource: float
) -> RungDecision:
    value = board.values[trial_id]
    n = board.population
    where = _where(spec, rung, resource)
    rank = board.rank_of(trial_id)
    others = board.others(trial_id)
    if n < spec.min_population or not others:
        return RungDecision(
            Action.CONTINUE, "median", rung, resource, value, math.nan, rank, n,
            f"{where}: population {n} < min {max(spec.min_population, 2)}",
        )
    median = statistics.median(others)
    stop = board.better(median, value)
    worse, not_worse = _worse_sign(spec)
    sign = worse if stop else not_worse
    reason = (
        f"{where}: rank {rank}/{n}, {_metric(spec)} {_fmt(value)} {sign} median {_fmt(median)}"
        f" of {len(others)} other trials"
    )
    action = Action.STOP if stop else Action.CONTINUE
    return RungDecision(action, "median", rung, resource, value, median, rank, n, reason)


def diverged_decision(
    spec: SchedulerSpec, rung: int, step: float, raw_value: float
) -> RungDecision:
    """STOP at once: a NaN / inf metric means the run diverged."""
    return RungDecision(
        Action.STOP, "divergence", rung, step, raw_value, math.nan, 0, 0,
        f"diverged: {_metric(spec)} {raw_value} at {spec.format_resource(step)}",
    )


def decide(
    spec: SchedulerSpec, board: RungLeaderboard, trial_id: str, rung: int, resource: float
) -> RungDecision:
    """The study's rule for ``trial_id``, which must already be recorded on ``board``."""
    if trial_id not in board:
        raise KeyError(f"trial {trial_id!r} is not on the rung {rung} leaderboard")
    value = board.values[trial_id]
    if not spec.enabled:
        return RungDecision(
            Action.CONTINUE, "none", rung, resource, value, math.nan, 0, board.population,
            "early stopping disabled (scheduler NONE)",
        )
    if resource < spec.grace_period * (1 - RESOURCE_EPS):
        return RungDecision(
            Action.CONTINUE, "grace", rung, resource, value, math.nan,
            board.rank_of(trial_id), board.population,
            f"{_where(spec, rung, resource)}: within grace period "
            f"({spec.format_resource(resource)} < {spec.format_resource(spec.grace_period)})",
        )
    if spec.kind is SchedulerKind.MEDIAN:
        return median_decide(spec, board, trial_id, rung, resource)
    # HYPERBAND: successive halving inside each bracket; the caller passes the board
    # of the trial's bracket (``spec.bracket_of``), so the per-board rule is ASHA's.
    return asha_decide(spec, board, trial_id, rung, resource)
