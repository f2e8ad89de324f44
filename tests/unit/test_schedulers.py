import dataclasses
import math

import pytest
from ladder.schedulers import (
    Action,
    AshaForm,
    BracketAllocation,
    CurveState,
    Leaderboards,
    RungCrossed,
    RungCrossingDetector,
    RungLeaderboard,
    SchedulerConfigError,
    SchedulerKind,
    SchedulerSpec,
    SmoothingKind,
    asha_decide,
    decide,
    decide_crossing,
    diverged_decision,
    kept_count,
    mark_promoted,
    median_decide,
    observe,
)
from ladder.v1 import study_pb2

ASHA = SchedulerSpec(
    kind=SchedulerKind.ASHA,
    min_resource=1,
    max_resource=9,
    reduction_factor=3,
    grace_period=1,
    min_population=3,
    metric="val_loss",
    resource_unit="epochs",
)


def board_of(values: dict[str, float], maximize: bool = False) -> RungLeaderboard:
    board = RungLeaderboard(maximize)
    for trial, value in values.items():
        board.record(trial, value)
    return board


# --------------------------------------------------------------------------- spec


def test_defaults_from_an_almost_empty_scheduler_config() -> None:
    spec = SchedulerSpec.from_proto(study_pb2.SchedulerConfig(max_resource=81))
    assert spec.kind is SchedulerKind.ASHA
    assert (spec.min_resource, spec.reduction_factor, spec.grace_period) == (1, 3, 1)
    assert spec.min_population == 3
    assert spec.smoothing is SmoothingKind.EMA and spec.ema_alpha == 0.5
    assert not spec.maximize


def test_spec_takes_direction_metric_and_unit_from_the_study() -> None:
    config = study_pb2.StudyConfig(
        metric="accuracy",
        direction=study_pb2.MAXIMIZE,
        scheduler=study_pb2.SchedulerConfig(
            kind=study_pb2.MEDIAN,
            min_resource=2,
            max_resource=50,
            reduction_factor=4,
            grace_period=4,
            min_population=5,
            smoothing=study_pb2.WINDOW,
            window=7,
        ),
        labels={"resource_unit": "epochs"},
    )
    spec = SchedulerSpec.from_study(config)
    assert spec.maximize and spec.metric == "accuracy"
    assert spec.kind is SchedulerKind.MEDIAN
    assert (spec.min_resource, spec.max_resource, spec.eta) == (2, 50, 4)
    assert (spec.grace_period, spec.min_population, spec.window) == (4, 5, 7)
    assert spec.format_resource(1) == "1 epoch" and spec.format_resource(3) == "3 epochs"


def test_min_population_defaults_to_eta_rounded_up() -> None:
    spec = SchedulerSpec.from_proto(
        study_pb2.SchedulerConfig(max_resource=100, reduction_factor=2.5)
    )
    assert spec.min_population == 3


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (study_pb2.SchedulerConfig(max_resource=9, reduction_factor=1), "reduction_factor"),
        (study_pb2.SchedulerConfig(max_resource=9, min_resource=-1), "min_resource"),
        (study_pb2.SchedulerConfig(max_resource=9, ema_alpha=1.5), "ema_alpha"),
        (study_pb2.SchedulerConfig(max_resource=math.inf), "max_resource"),
        (study_pb2.SchedulerConfig(max_resource=9, window=-2), "window"),
    ],
)
def test_bad_configs_name_the_field(config: study_pb2.SchedulerConfig, field: str) -> None:
    with pytest.raises(SchedulerConfigError, match=f"scheduler.{field}"):
        SchedulerSpec.from_proto(config)


# --------------------------------------------------------------------------- rungs


def test_rungs_are_min_times_eta_to_the_k_below_max_resource() -> None:
    assert ASHA.rungs() == [1, 3]  # 9 is the full budget, not a rung
    assert SchedulerSpec(min_resource=1, max_resource=10).rungs() == [1, 3, 9]
    assert SchedulerSpec(min_resource=2, max_resource=100, reduction_factor=4).rungs() == [
        2,
        8,
        32,
    ]
    # Float rungs are compared with a tolerance: 0.1 * 3**2 is 0.9000000000000001.
    assert SchedulerSpec(min_resource=0.1, max_resource=0.9).rungs() == pytest.approx([0.1, 0.3])
    assert SchedulerSpec(kind=SchedulerKind.NONE, max_resource=9).rungs() == []


def test_unbounded_rungs_need_a_limit() -> None:
    spec = SchedulerSpec(min_resource=1, max_resource=0)
    assert spec.rungs(up_to=30) == [1, 3, 9, 27]
    with pytest.raises(SchedulerConfigError):
        spec.rungs()


def test_detector_reports_every_skipped_rung_once_with_the_crossing_value() -> None:
    detector = RungCrossingDetector(SchedulerSpec(min_resource=1, max_resource=27))
    assert detector.crossed(-1, 0.5, 0.9) == []
    assert detector.crossed(-1, 10, 0.4) == [
        RungCrossed(0, 1, 0.4),
        RungCrossed(1, 3, 0.4),
        RungCrossed(2, 9, 0.4),
    ]
    assert detector.crossed(0, 3, 0.3) == [RungCrossed(1, 3, 0.3)]
    assert detector.crossed(2, 26, 0.1) == []  # 27 is max_resource: no rung 3
    assert detector.rung_at(0.5) == -1 and detector.rung_at(4) == 1


def test_observe_emits_each_rung_once_and_ignores_replays() -> None:
    spec = SchedulerSpec(min_resource=1, max_resource=27, smoothing=SmoothingKind.NONE)
    state = CurveState(study_id="s")
    first = observe(spec, state, 2, 0.8)
    assert [c.rung for c in first.crossings] == [0]
    second = observe(spec, first.state, 10, 0.5)
    assert [(c.rung, c.resource, c.value) for c in second.crossings] == [(1, 3, 0.5), (2, 9, 0.5)]
    assert second.state.last_rung == 2
    # The same report again (a replayed Kafka record) changes nothing.
    replay = observe(spec, second.state, 10, 0.5)
    assert replay.ignored and replay.crossings == [] and replay.state == second.state
    older = observe(spec, second.state, 4, 0.1)
    assert older.ignored and older.state.reports == 2


def test_observe_records_the_smoothed_value_at_the_crossing() -> None:
    spec = SchedulerSpec(min_resource=2, max_resource=27, ema_alpha=0.5)
    state = observe(spec, CurveState(), 1, 1.0).state  # below the first rung
    crossed = observe(spec, state, 2, 0.0)
    assert crossed.crossings == [RungCrossed(0, 2, 0.5)]


def test_observe_reports_divergence_once() -> None:
    spec = SchedulerSpec(min_resource=1, max_resource=27)
    state = observe(spec, CurveState(), 3, 0.4).state
    diverged = observe(spec, state, 5, math.inf)
    assert diverged.divergence is not None
    assert (diverged.divergence.rung, diverged.divergence.step) == (1, 5)
    assert diverged.crossings == []
    assert observe(spec, diverged.state, 6, math.nan).ignored


def test_curve_state_round_trips_through_a_dict() -> None:
    spec = SchedulerSpec(min_resource=1, max_resource=27)
    state = observe(spec, CurveState(study_id="s"), 4, 0.4).state
    assert CurveState.from_dict(state.to_dict()) == state
    assert CurveState.from_dict(None) == CurveState()


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_recording_is_idempotent() -> None:
    board = RungLeaderboard()
    assert board.record("a", 0.5)
    assert not board.record("a", 0.5)
    assert not board.record("a", 0.1)  # a re-report keeps the value decided on
    assert board.population == 1 and board.values["a"] == 0.5


def test_leaderboards_are_per_study_bracket_and_rung() -> None:
    boards = Leaderboards()
    assert boards.board("s1", 0).record("a", 0.3)
    assert boards.board("s1", 1).record("a", 0.2)
    assert boards.board("s2", 0).record("a", 0.9)
    assert boards.board("s1", 0, bracket=1).record("a", 0.9)
    assert not boards.board("s1", 0).record("a", 0.3)
    assert boards.board("s1", 0).population == 1
    assert sorted(boards.boards) == [("s1", 0, 0), ("s1", 0, 1), ("s1", 1, 0), ("s2", 0, 0)]


def test_ranks_are_direction_aware_and_ties_share_a_rank() -> None:
    minimize = board_of({"a": 0.1, "b": 0.3, "c": 0.3, "d": 0.2})
    assert [t for t, _ in minimize.ordered()] == ["a", "d", "b", "c"]
    assert [minimize.rank_of(t) for t in "abcd"] == [1, 3, 3, 2]
    maximize = board_of({"a": 0.1, "b": 0.3, "d": 0.2}, maximize=True)
    assert [maximize.rank_of(t) for t in "abd"] == [3, 1, 2]


# --------------------------------------------------------------------------- ASHA


def test_kept_count_is_floor_n_over_eta_at_least_one() -> None:
    assert [kept_count(n, 3) for n in (1, 2, 3, 5, 6, 9, 10)] == [1, 1, 1, 1, 2, 3, 3]
    assert kept_count(5, 2.5) == 2


def test_asha_waits_for_min_population() -> None:
    board = board_of({"a": 0.1, "b": 0.9})
    decision = asha_decide(ASHA, board, "b", 0, 1)
    assert decision.action is Action.CONTINUE
    assert "population 2 < min 3" in decision.reason
    assert decision.population == 2 and decision.rank == 2 and math.isnan(decision.cutoff)


def test_asha_keeps_the_top_n_over_eta_and_stops_the_rest() -> None:
    values = {f"t{i}": 0.1 + 0.05 * i for i in range(9)}  # t0 best, t8 worst
    board = board_of(values)
    decisions = {t: asha_decide(ASHA, board, t, 1, 3) for t in values}
    kept = sorted(t for t, d in decisions.items() if d.action is Action.CONTINUE)
    assert kept == ["t0", "t1", "t2"]
    worst = decisions["t8"]
    assert worst.action is Action.STOP
    assert (worst.rank, worst.population, worst.rung, worst.resource) == (9, 9, 1, 3)
    assert worst.cutoff == pytest.approx(0.2)
    assert worst.value == pytest.approx(0.5)
    assert worst.reason == (
        "rung 1 (3 epochs): rank 9/9, val_loss 0.5 > cutoff 0.2 (top 3 of 9 kept, eta=3)"
    )
    assert decisions["t2"].reason.startswith("rung 1 (3 epochs): rank 3/9, val_loss 0.2 <= cutoff")


def test_asha_maximize_keeps_the_largest_values() -> None:
    spec = SchedulerSpec(max_resource=9, maximize=True, metric="accuracy")
    board = board_of({"a": 0.9, "b": 0.5, "c": 0.7}, maximize=True)
    assert asha_decide(spec, board, "a", 0, 1).action is Action.CONTINUE
    stop = asha_decide(spec, board, "c", 0, 1)
    assert stop.action is Action.STOP
    assert stop.rank == 2 and stop.cutoff == 0.9
    assert "accuracy 0.7 < cutoff 0.9" in stop.reason


def test_asynchronous_asha_decides_against_those_already_at_the_rung() -> None:
    # Trials arrive one by one: the first min_population - 1 always continue, then each
    # newcomer must be in the top floor(n/eta) of everyone seen so far.
    board = RungLeaderboard()
    actions = []
    for trial, value in [("a", 0.5), ("b", 0.6), ("c", 0.4), ("d", 0.7), ("e", 0.3)]:
        board.record(trial, value)
        actions.append(decide(ASHA, board, trial, 0, 1).action)
    assert actions == [
        Action.CONTINUE,
        Action.CONTINUE,
        Action.CONTINUE,
        Action.STOP,
        Action.CONTINUE,
    ]


def test_replaying_a_crossing_does_not_change_the_decision() -> None:
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.9})
    before = decide(ASHA, board, "c", 0, 1)
    assert not board.record("c", 0.9)
    assert decide(ASHA, board, "c", 0, 1) == before
    assert before.population == 3


# --------------------------------------------------------------------------- other rules


def test_median_rule_stops_trials_worse_than_the_median_of_the_others() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.MEDIAN, max_resource=9, metric="loss")
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.25})
    stop = median_decide(spec, board, "c", 0, 1)
    assert stop.action is Action.STOP and stop.cutoff == 0.2
    assert stop.reason == "rung 0 (1 step): rank 4/4, loss 0.3 > median 0.2 of 3 other trials"
    assert decide(spec, board, "b", 0, 1).action is Action.CONTINUE
    small = board_of({"a": 0.1, "b": 0.9})
    assert median_decide(spec, small, "b", 0, 1).action is Action.CONTINUE


def test_median_rule_maximize() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.MEDIAN, max_resource=9, maximize=True)
    board = board_of({"a": 0.9, "b": 0.8, "c": 0.1}, maximize=True)
    assert median_decide(spec, board, "c", 0, 1).action is Action.STOP
    assert median_decide(spec, board, "a", 0, 1).action is Action.CONTINUE


def test_grace_period_blocks_stops_below_it() -> None:
    spec = SchedulerSpec(max_resource=27, grace_period=3, min_population=1)
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.9})
    early = decide(spec, board, "c", 0, 1)
    assert early.action is Action.CONTINUE and early.rule == "grace"
    assert "grace period" in early.reason
    assert decide(spec, board, "c", 1, 3).action is Action.STOP


def test_scheduler_none_never_stops() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.NONE)
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.9})
    assert decide(spec, board, "c", 0, 1).action is Action.CONTINUE


def test_decide_requires_the_trial_on_the_board() -> None:
    with pytest.raises(KeyError):
        decide(ASHA, RungLeaderboard(), "ghost", 0, 1)


def test_divergence_stops_at_once_with_reason() -> None:
    decision = diverged_decision(ASHA, 1, 4, math.nan)
    assert decision.action is Action.STOP and decision.rule == "divergence"
    assert decision.reason == "diverged: val_loss nan at 4 epochs"


# --------------------------------------------------------------------------- hyperband


def test_hyperband_brackets_start_trials_at_different_rungs() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.HYPERBAND, min_resource=1, max_resource=27)
    # rungs 1, 3, 9 plus Hyperband's top bracket, whose trials run to 27 untouched
    assert spec.brackets == 4
    brackets = {spec.bracket_of(f"trial-{i}") for i in range(200)}
    assert brackets == {0, 1, 2, 3}
    assert spec.bracket_of("trial-7") == spec.bracket_of("trial-7")  # stable
    trial = next(f"trial-{i}" for i in range(50) if spec.bracket_of(f"trial-{i}") == 2)
    crossed = observe(spec, CurveState(), 10, 0.5, first_rung=spec.bracket_of(trial)).crossings
    assert [c.rung for c in crossed] == [2]
    assert SchedulerSpec(max_resource=27).brackets == 1


def test_hyperband_reason_names_the_bracket() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.HYPERBAND, max_resource=27, min_population=1)
    trial = next(f"t{i}" for i in range(50) if spec.bracket_of(f"t{i}") == 1)
    board = board_of({trial: 0.4})
    decision = decide(spec, board, trial, 1, 3)
    assert decision.rule == "hyperband" and "bracket 1" in decision.reason


def test_hyperband_weights_are_hyperbands_n_per_bracket() -> None:
    spec = SchedulerSpec(kind=SchedulerKind.HYPERBAND, min_resource=1, max_resource=27)
    # n = ceil((s_max + 1) / (s + 1) * eta^s), s = 3, 2, 1, 0 (as Optuna's HyperbandPruner)
    assert spec.bracket_weights() == [27, 12, 6, 4]
    counts = [0] * 4
    for i in range(4900):
        counts[spec.bracket_of(f"study-t{i}")] += 1
    for count, weight in zip(counts, [27, 12, 6, 4], strict=True):
        assert abs(count / 4900 - weight / 49) < 0.03
    top = next(f"t{i}" for i in range(200) if spec.bracket_of(f"t{i}") == 3)
    assert observe(spec, CurveState(), 26, 0.5, first_rung=spec.bracket_of(top)).crossings == []
    even = SchedulerSpec(
        kind=SchedulerKind.HYPERBAND, max_resource=27, allocation=BracketAllocation.EVEN
    )
    assert even.bracket_weights() == [1, 1, 1, 1]
    config = study_pb2.SchedulerConfig(
        kind=study_pb2.HYPERBAND, max_resource=20, bracket_allocation=study_pb2.BRACKETS_EVEN
    )
    assert SchedulerSpec.from_proto(config).allocation is BracketAllocation.EVEN
    # max 20 is no power of 3: s_max = 2 and every bracket has a rung below 20
    assert SchedulerSpec(kind=SchedulerKind.HYPERBAND, max_resource=20).bracket_weights() == [
        9,
        5,
        3,
    ]


# --------------------------------------------------------------------------- promotion form

PROMOTION = dataclasses.replace(ASHA, max_resource=27, form=AshaForm.PROMOTION)


def cross(
    board: RungLeaderboard, trial: str, value: float, spec: SchedulerSpec = PROMOTION
) -> list:
    board.record(trial, value)
    decisions = decide_crossing(spec, board, trial, 0, 1)
    mark_promoted(board, decisions)
    return [(d.trial_id, d.action) for d in decisions]


def test_promotion_form_pauses_losers_and_promotes_them_when_the_rung_grows() -> None:
    board = RungLeaderboard()
    # Below min_population nobody is paused (no cold-start pause).
    assert cross(board, "a", 0.5) == [("a", Action.PROMOTE)]
    assert cross(board, "b", 0.4) == [("b", Action.PROMOTE)]
    # n = 3: top 1 kept, cutoff 0.4; c is worse: paused, not stopped.
    assert cross(board, "c", 0.6) == [("c", Action.PAUSE)]
    assert cross(board, "d", 0.7) == [("d", Action.PAUSE)]
    assert cross(board, "e", 0.8) == [("e", Action.PAUSE)]
    # n = 6: top 2 = b (promoted already) and a (promoted already): nobody new.
    assert cross(board, "f", 0.9) == [("f", Action.PAUSE)]
    assert cross(board, "g", 0.95) == [("g", Action.PAUSE)]
    assert cross(board, "h", 0.97) == [("h", Action.PAUSE)]
    # n = 9: top 3 = b, a, c: the paused c is promoted by i's arrival.
    board.record("i", 0.99)
    decisions = decide_crossing(PROMOTION, board, "i", 0, 1)
    assert [(d.trial_id, d.action) for d in decisions] == [
        ("i", Action.PAUSE),
        ("c", Action.PROMOTE),
    ]
    promoted = decisions[1]
    assert (promoted.rank, promoted.population, promoted.cutoff) == (3, 9, 0.6)
    mark_promoted(board, decisions)
    assert "c" in board.promoted
    # Once marked, deciding the same crossing again promotes nobody twice.
    assert [d.trial_id for d in decide_crossing(PROMOTION, board, "i", 0, 1)] == ["i"]


def test_promotion_of_a_paused_trial_records_its_reason_fields() -> None:
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.6, "e": 0.7})
    board.promoted.update({"a"})
    decisions = decide_crossing(PROMOTION, board, "e", 0, 1)
    # n = 5: keep 1 (a, promoted); e is paused; nobody else qualifies.
    assert [(d.trial_id, d.action) for d in decisions] == [("e", Action.PAUSE)]
    assert "paused until" in decisions[0].reason and decisions[0].rank == 5
    board.record("f", 0.8)
    decisions = decide_crossing(PROMOTION, board, "f", 0, 1)
    # n = 6: keep 2 -> b (never promoted: it was paused) is promoted now.
    promote = decisions[1]
    assert (promote.trial_id, promote.action, promote.rank, promote.population) == (
        "b",
        Action.PROMOTE,
        2,
        6,
    )
    assert promote.cutoff == 0.2 and "promoted from pause" in promote.reason


def test_trials_on_the_next_rung_count_as_promoted_after_a_restart() -> None:
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.6, "e": 0.7, "f": 0.8})
    next_board = board_of({"a": 0.05})
    decisions = decide_crossing(PROMOTION, board, "f", 0, 1, next_board=next_board)
    assert [(d.trial_id, d.action) for d in decisions] == [
        ("f", Action.PAUSE),
        ("b", Action.PROMOTE),
    ]


def test_median_has_no_promotion_form() -> None:
    with pytest.raises(SchedulerConfigError, match="form"):
        SchedulerSpec(kind=SchedulerKind.MEDIAN, max_resource=9, form=AshaForm.PROMOTION)
    config = study_pb2.SchedulerConfig(max_resource=9, form=study_pb2.ASHA_PROMOTION)
    assert SchedulerSpec.from_proto(config).promotion


def test_stopping_form_decides_only_for_the_crossing_trial() -> None:
    board = board_of({"a": 0.1, "b": 0.2, "c": 0.5})
    decisions = decide_crossing(ASHA, board, "c", 1, 3)
    assert [(d.trial_id, d.action) for d in decisions] == [("c", Action.STOP)]


# --------------------------------------------------------------------------- late bloomers


def test_late_bloomer_protection_spares_a_fast_improver_below_the_cutoff() -> None:
    spec = SchedulerSpec(
        kind=SchedulerKind.ASHA,
        max_resource=27,
        min_population=3,
        protect_late_bloomers=True,
        metric="val_loss",
    )
    previous = board_of({"a": 0.30, "b": 0.32, "c": 0.90, "d": 0.35})
    board = board_of({"a": 0.28, "b": 0.31, "c": 0.40, "d": 0.34})
    # c ranks 4/4 (cutoff 0.28, top 1) but gained 0.50 since rung 0: the best gain.
    spared = decide(spec, board, "c", 1, 3, previous)
    assert spared.action is Action.CONTINUE and "late bloomer" in spared.reason
    assert spared.rank == 4 and spared.cutoff == 0.28
    # d gained 0.01 (rank 4/4 of gains): stopped as usual.
    assert decide(spec, board, "d", 1, 3, previous).action is Action.STOP
    # Off by default: the same c stops.
    plain = SchedulerSpec(kind=SchedulerKind.ASHA, max_resource=27, min_population=3)
    assert decide(plain, board, "c", 1, 3, previous).action is Action.STOP
    config = study_pb2.SchedulerConfig(max_resource=27, protect_late_bloomers=True)
    assert SchedulerSpec.from_proto(config).protect_late_bloomers
