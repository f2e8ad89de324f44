import math
from dataclasses import replace

import numpy as np
import pytest
from ladder.schedulers import Action, AshaForm, SchedulerKind, SchedulerSpec, SmoothingKind
from ladder.schedulers.replay import CurveTable, LadderPolicy, NoStopping, replay


def asha(
    min_population: int = 1, max_resource: float = 9, kind: SchedulerKind = SchedulerKind.ASHA
) -> SchedulerSpec:
    return SchedulerSpec(
        kind=kind,
        min_resource=1,
        max_resource=max_resource,
        reduction_factor=3,
        grace_period=1,
        min_population=min_population,
        smoothing=SmoothingKind.NONE,
    )


def flat_curves(levels: list[float], steps: int = 9) -> CurveTable:
    """Each configuration's value is the same at every step: its level."""
    return CurveTable.unit_time(np.repeat(np.asarray(levels, float)[:, None], steps, axis=1))


def sequential_asha_reference(levels: list[float], eta: int = 3, rungs: int = 2) -> list[int]:
    """Rungs passed per trial when one worker runs flat curves in order (the ASHA rule
    written out: continue iff rank <= max(1, floor(n / eta)) among trials at the rung)."""
    at_rung: list[list[float]] = [[] for _ in range(rungs)]
    passed = []
    for level in levels:
        count = 0
        for board in at_rung:
            board.append(level)
            rank = 1 + sum(1 for v in board if v < level)
            if rank > max(1, len(board) // eta):
                break
            count += 1
        passed.append(count)
    return passed


def test_hand_computed_sequential_asha_with_eta_3_and_min_population_1() -> None:
    # Rungs 1 and 3 (max 9). Trial 2 (2.0) is 2nd of 3 at rung 1 with 1 kept; trial 4
    # and 5 are beaten at rung 1 too; trials 0, 1 and 3 lead every rung they reach.
    result = replay(flat_curves([3, 1, 2, 0, 5, 4]), LadderPolicy(asha()), workers=1)
    assert result.steps_run == (9, 9, 1, 9, 1, 1)
    assert [result.reached(s) for s in (1, 3, 9)] == [6, 3, 3]
    assert result.pruned == 3 and result.completed == 3
    assert result.epochs_used == 30
    assert result.budget_fraction == pytest.approx(30 / 54)
    assert result.regret == 0.0 and result.found_rank == 1 and result.found_row == 3
    # Anytime regret: row 0 (3.0) completes after 9 epochs, row 1 after 18, row 3 after
    # 28 (one epoch of the pruned row 2 in between).
    assert result.completions == ((9, 3.0), (18, 1.0), (28, 0.0))
    assert math.isnan(result.regret_at(8))
    assert result.regret_at(9) == 3.0 and result.regret_at(27) == 1.0
    assert result.regret_at(30) == 0.0


def test_sequential_replay_matches_the_rule_written_out() -> None:
    levels = list(np.random.default_rng(7).permutation(81).astype(float))
    result = replay(flat_curves(levels), LadderPolicy(asha()), workers=1)
    rung_steps = {0: 1, 1: 3, 2: 9}
    expected = [rung_steps[p] for p in sequential_asha_reference(levels)]
    assert list(result.steps_run) == expected


def test_every_new_best_survives_and_every_new_worst_is_stopped() -> None:
    improving = replay(flat_curves([9, 8, 7, 6, 5, 4]), LadderPolicy(asha()), workers=1)
    assert improving.pruned == 0 and improving.budget_fraction == 1.0
    worsening = replay(flat_curves([1, 2, 3, 4, 5, 6]), LadderPolicy(asha()), workers=1)
    assert worsening.steps_run == (9, 1, 1, 1, 1, 1)


def test_min_population_lets_the_first_trials_through() -> None:
    result = replay(
        flat_curves([5, 4, 3, 2, 1, 6]), LadderPolicy(asha(min_population=3)), workers=1
    )
    # Rung 1: the first two pass for want of population; the 3rd..5th each lead it.
    # Rung 3: populations 1 and 2 pass; the 6th (worst) stops at rung 1.
    assert result.steps_run == (9, 9, 9, 9, 9, 1)


def test_no_stopping_uses_the_whole_budget_and_finds_the_best() -> None:
    table = flat_curves([0.3, 0.1, 0.2])
    result = replay(table, NoStopping(), workers=2, order=[2, 0, 1])
    assert result.budget_fraction == 1.0 and result.pruned_fraction == 0.0
    assert result.regret == 0.0 and result.found_rank == 1 and result.found_row == 1


def test_asynchronous_order_follows_recorded_epoch_times() -> None:
    # Row 0 is slow (10 s per epoch), rows 1-2 fast: with two workers, row 2 (worse than
    # row 1) reaches rung 1 before row 0 does, and row 0 arrives last as the best.
    values = np.array([[0.0] * 9, [1.0] * 9, [2.0] * 9])
    seconds = np.array([[10.0] * 9, [1.0] * 9, [1.0] * 9])
    result = replay(CurveTable(values, seconds), LadderPolicy(asha()), workers=2)
    assert result.steps_run == (9, 9, 1)
    # Row 1 ran 9 fast epochs; row 2 took its 1 epoch after; row 0 ends at 90 s.
    assert result.wall_time == pytest.approx(90.0)


def test_divergence_stops_at_once() -> None:
    values = np.ones((2, 9))
    values[1, 1:] = math.nan
    result = replay(CurveTable.unit_time(values), LadderPolicy(asha(min_population=5)), workers=1)
    assert result.steps_run == (9, 2)
    assert result.found_row == 0


def test_hyperband_brackets_and_median_run_the_real_rules() -> None:
    levels = list(np.random.default_rng(3).permutation(60).astype(float))
    table = flat_curves(levels, steps=27)
    hyperband = LadderPolicy(asha(max_resource=27, kind=SchedulerKind.HYPERBAND))
    hb = replay(table, hyperband, workers=4)
    brackets = [hyperband.spec.bracket_of(hyperband.trial_id(t)) for t in range(60)]
    # Bracket 2 trials start judging at rung 9: none of them stops before epoch 9.
    assert all(hb.steps_run[t] >= 9 for t in range(60) if brackets[t] == 2)
    assert 0 < hb.pruned < 60
    median = replay(
        table, LadderPolicy(asha(max_resource=27, kind=SchedulerKind.MEDIAN)), workers=4
    )
    plain = replay(table, LadderPolicy(asha(max_resource=27)), workers=4)
    # The median rule keeps about half of each rung, ASHA about a third.
    assert median.epochs_used > plain.epochs_used


def test_bad_arguments_are_rejected() -> None:
    table = flat_curves([1.0])
    with pytest.raises(ValueError, match="workers"):
        replay(table, NoStopping(), workers=0)
    with pytest.raises(ValueError, match="row outside"):
        replay(table, NoStopping(), workers=1, order=[3])
    with pytest.raises(ValueError, match="one shape"):
        CurveTable(np.ones((2, 3)), np.ones((2, 2)))


def test_promotion_form_pauses_then_resumes_promoted_trials_before_new_ones() -> None:
    levels = [0.5, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]
    spec = replace(asha(min_population=3, max_resource=3), form=AshaForm.PROMOTION)
    result = replay(flat_curves(levels, steps=3), LadderPolicy(spec), workers=1)
    # a, b pass rung 0 below min_population; c..i pause at epoch 1; i's arrival (n = 9,
    # top 3) promotes c, which resumes at epoch 2 before any new trial and completes.
    assert result.steps_run == (3, 3, 3, 1, 1, 1, 1, 1, 1)
    assert (result.promotions, result.paused_at_end) == (1, 6)
    assert (result.completed, result.pruned) == (3, 6)
    assert result.epochs_used == 15
    # The same curves in the stopping form stop c for good.
    stopping = replay(flat_curves(levels, steps=3), LadderPolicy(asha(3, 3)), workers=1)
    assert stopping.steps_run[2] == 1 and stopping.promotions == 0


def test_promoted_trials_wake_idle_workers() -> None:
    levels = [0.5, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]
    spec = replace(asha(min_population=3, max_resource=3), form=AshaForm.PROMOTION)
    result = replay(flat_curves(levels, steps=3), LadderPolicy(spec), workers=4)
    assert result.promotions >= 1
    assert result.completed + result.paused_at_end == len(levels)
    assert result.epochs_used == sum(result.steps_run)


def test_a_report_crossing_several_rungs_is_judged_on_each_as_in_the_service() -> None:
    policy = LadderPolicy(asha())  # rungs at 1 and 3 epochs
    policy.start(0)
    policy.start(1)
    assert policy.report(0, 9, 1.0) is Action.CONTINUE
    assert policy.decisions == 2
    # Stopped at rung 0 (2nd of 2, 1 kept), and still recorded and judged at rung 1.
    assert policy.report(1, 9, 2.0) is Action.STOP
    assert policy.decisions == 4
    assert policy.engine.boards.board("replay", 1).population == 2
