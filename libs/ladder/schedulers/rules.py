"""Stopping rules applied when a trial reaches a rung, each with a recorded reason.

- ASHA (asynchronous successive halving): at rung k with population n (trials that
  reached rung k, this one included), nothing is stopped while n < min_population;
  otherwise the trial continues iff its smoothed value is within the top
  max(1, floor(n / eta)) of the rung, else it stops.
- Median stopping: stop when the value is worse than the median of the other trials
  at the same rung (again only once min_population trials reached it).
- Divergence: a NaN / inf value stops the trial at once, whatever its rank.
- Grace period: no stop for rungs whose resource is below ``grace_period``.
- Late-bloomer protection (optional, ``protect_late_bloomers``): a trial below the ASHA
  cutoff goes on when its improvement since its previous rung ranks in the top
  max(1, floor(m / eta)) of the m trials on both rungs: curves that start badly but
  catch up fast are given one more rung.
- ASHA promotion form (``decide_crossing``): instead of STOP a trial gets PAUSE (it
  checkpoints and waits); instead of CONTINUE it gets PROMOTE. Each later crossing of the
  same rung may move paused trials into the grown rung's top max(1, floor(n / eta)):
  they get PROMOTE then, and resume from their checkpoint. Every trial is promoted from
  a rung at most once (``RungLeaderboard.promoted``, plus membership of the next rung).
  Trials still paused when the study ends (its trial budget spent, no crossing left to
  grow their rung) stay PAUSED with their checkpoint and rung value: they count as
  stopped at that rung, as in ASHA with a finite budget, and raising ``max_trials``
  lets later crossings still promote them.

Every decision records rung, resource, value, cutoff, 1-based rank and population,
plus a sentence an operator can read, e.g.
``rung 1 (3 epochs): rank 7/9, val_loss 0.412 > cutoff 0.305 (top 3 of 9 kept, eta=3)``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from enum import StrEnum

from ladder.schedulers.leaderboard import RungLeaderboard
from ladder.schedulers.spec import RESOURCE_EPS, SchedulerKind, SchedulerSpec


class Action(StrEnum):
    CONTINUE = "CONTINUE"
    STOP = "STOP"
    PROMOTE = "PROMOTE"
    PAUSE = "PAUSE"


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
    trial_id: str = ""  # set by ``decide_crossing`` (a crossing may decide for others)

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


def _asha_cutoff(spec: SchedulerSpec, board: RungLeaderboard) -> tuple[int, float]:
    """(how many are kept, the value of the last one kept) on ``board``."""
    keep = kept_count(board.population, spec.eta)
    return keep, board.value_at(keep)


def _unranked(
    rule: str, rung: int, resource: float, value: float, rank: int, population: int, reason: str
) -> RungDecision:
    """CONTINUE with no cutoff applied (too few trials, grace period, no scheduler)."""
    return RungDecision(
        Action.CONTINUE, rule, rung, resource, value, math.nan, rank, population, reason
    )


def _compared(
    spec: SchedulerSpec,
    where: str,
    rank: int,
    population: int,
    value: float,
    worse: bool,
    against: str,
    threshold: float,
) -> str:
    """The sentence of a ranked decision, e.g. ``rung 1 (3 epochs): rank 7/9, val_loss
    0.412 > cutoff 0.305``: ``worse`` picks the sign for the study's direction."""
    worse_sign, not_worse_sign = _worse_sign(spec)
    sign = worse_sign if worse else not_worse_sign
    return (
        f"{where}: rank {rank}/{population}, {_metric(spec)} {_fmt(value)} {sign} {against} "
        f"{_fmt(threshold)}"
    )


def _kept_note(spec: SchedulerSpec, keep: int, population: int) -> str:
    return f" (top {keep} of {population} kept, eta={spec.eta:g})"


def _improvement(spec: SchedulerSpec, before: float, after: float) -> float:
    return after - before if spec.maximize else before - after


def late_bloomer_note(
    spec: SchedulerSpec,
    board: RungLeaderboard,
    previous: RungLeaderboard | None,
    trial_id: str,
    rung: int,
) -> str:
    """Why ``trial_id`` is spared as a late bloomer ("" when it is not): its gain since
    rung ``rung - 1`` ranks in the top 1/eta of the trials on both rungs."""
    if previous is None or trial_id not in previous:
        return ""
    gains = {
        other: _improvement(spec, previous.values[other], value)
        for other, value in board.values.items()
        if other in previous
    }
    mine = gains[trial_id]
    if len(gains) < spec.min_population or mine <= 0:
        return ""
    keep = kept_count(len(gains), spec.eta)
    rank = 1 + sum(1 for gain in gains.values() if gain > mine)
    if rank > keep:
        return ""
    return (
        f"; spared as a late bloomer: improvement {_fmt(mine)} since rung {rung - 1} ranks "
        f"{rank}/{len(gains)} (top {keep} kept)"
    )


def asha_decide(
    spec: SchedulerSpec,
    board: RungLeaderboard,
    trial_id: str,
    rung: int,
    resource: float,
    previous: RungLeaderboard | None = None,
) -> RungDecision:
    value = board.values[trial_id]
    n = board.population
    where = _where(spec, rung, resource, trial_id)
    rule = "hyperband" if spec.kind is SchedulerKind.HYPERBAND else "asha"
    rank = board.rank_of(trial_id)
    if n < spec.min_population:
        too_few = f"{where}: population {n} < min {spec.min_population}"
        return _unranked(rule, rung, resource, value, rank, n, too_few)
    keep, cutoff = _asha_cutoff(spec, board)
    stop = board.better(cutoff, value)
    reason = _compared(spec, where, rank, n, value, stop, "cutoff", cutoff)
    reason += _kept_note(spec, keep, n)
    if stop and spec.protect_late_bloomers:
        spared = late_bloomer_note(spec, board, previous, trial_id, rung)
        if spared:
            stop = False
            reason += spared
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
        too_few = f"{where}: population {n} < min {max(spec.min_population, 2)}"
        return _unranked("median", rung, resource, value, rank, n, too_few)
    median = statistics.median(others)
    stop = board.better(median, value)
    reason = _compared(spec, where, rank, n, value, stop, "median", median)
    reason += f" of {len(others)} other trials"
    action = Action.STOP if stop else Action.CONTINUE
    return RungDecision(action, "median", rung, resource, value, median, rank, n, reason)


def diverged_decision(
    spec: SchedulerSpec, rung: int, step: float, raw_value: float
) -> RungDecision:
    """STOP at once: a NaN / inf metric means the run diverged."""
    return RungDecision(
        Action.STOP,
        "divergence",
        rung,
        step,
        raw_value,
        math.nan,
        0,
        0,
        f"diverged: {_metric(spec)} {raw_value} at {spec.format_resource(step)}",
    )


def decide(
    spec: SchedulerSpec,
    board: RungLeaderboard,
    trial_id: str,
    rung: int,
    resource: float,
    previous: RungLeaderboard | None = None,
) -> RungDecision:
    """The study's rule for ``trial_id``, which must already be recorded on ``board``.

    ``previous`` is the board of rung ``rung - 1`` (same bracket), used only by
    late-bloomer protection. Stopping form only: see ``decide_crossing``."""
    if trial_id not in board:
        raise KeyError(f"trial {trial_id!r} is not on the rung {rung} leaderboard")
    value = board.values[trial_id]
    if not spec.enabled:
        disabled = "early stopping disabled (scheduler NONE)"
        return _unranked("none", rung, resource, value, 0, board.population, disabled)
    if resource < spec.grace_period * (1 - RESOURCE_EPS):
        return _unranked(
            "grace",
            rung,
            resource,
            value,
            board.rank_of(trial_id),
            board.population,
            f"{_where(spec, rung, resource)}: within grace period "
            f"({spec.format_resource(resource)} < {spec.format_resource(spec.grace_period)})",
        )
    if spec.kind is SchedulerKind.MEDIAN:
        return median_decide(spec, board, trial_id, rung, resource)
    # HYPERBAND: successive halving inside each bracket; the caller passes the board
    # of the trial's bracket (``spec.bracket_of``), so the per-board rule is ASHA's.
    return asha_decide(spec, board, trial_id, rung, resource, previous)


def _promotion_form(decision: RungDecision) -> RungDecision:
    """The stopping-form verdict restated for the promotion form."""
    if decision.action is Action.STOP:
        return replace(
            decision,
            action=Action.PAUSE,
            reason=decision.reason + "; paused until the rung ranks it in its top 1/eta",
        )
    if decision.action is Action.CONTINUE:
        return replace(decision, action=Action.PROMOTE)
    return decision


def decide_crossing(
    spec: SchedulerSpec,
    board: RungLeaderboard,
    trial_id: str,
    rung: int,
    resource: float,
    previous: RungLeaderboard | None = None,
    next_board: RungLeaderboard | None = None,
) -> list[RungDecision]:
    """Every decision the crossing of ``trial_id`` (already on ``board``) causes: its own
    first, then, in the promotion form, PROMOTE for each paused trial the grown rung now
    ranks within its cutoff. Pure: the caller (``EarlyStopEngine.judge``) records the
    promotions with ``mark_promoted``.

    ``next_board`` (rung + 1, same bracket): trials on it were promoted already.
    """
    own = replace(decide(spec, board, trial_id, rung, resource, previous), trial_id=trial_id)
    if not spec.promotion:
        return [own]
    own = _promotion_form(own)
    out = [own]
    n = board.population
    if own.rule == "grace" or n < spec.min_population:
        return out  # no cutoff applies here yet, so nobody is paused on this rung
    keep, cutoff = _asha_cutoff(spec, board)
    where = _where(spec, rung, resource)
    for other, value in board.best_first():
        if board.better(cutoff, value):
            break  # everything further down is below the cutoff
        if other == trial_id or other in board.promoted:
            continue
        if next_board is not None and other in next_board:
            continue
        rank = board.rank_of(other)
        out.append(
            RungDecision(
                Action.PROMOTE,
                own.rule,
                rung,
                resource,
                value,
                cutoff,
                rank,
                n,
                _compared(spec, where, rank, n, value, False, "cutoff", cutoff)
                + _kept_note(spec, keep, n)
                + ": promoted from pause as the rung grew",
                trial_id=other,
            )
        )
    return out


def mark_promoted(board: RungLeaderboard, decisions: list[RungDecision]) -> None:
    """Remember the PROMOTE decisions of ``decide_crossing``: the rung's later crossings
    do not promote those trials again."""
    board.promoted.update(d.trial_id for d in decisions if d.action is Action.PROMOTE)
