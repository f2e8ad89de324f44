import pytest
from ladder.schedulers import SchedulerSpec
from ladder.v1 import study_pb2


def scheduler(**kwargs: object) -> study_pb2.SchedulerConfig:
    return study_pb2.SchedulerConfig(**kwargs)


def rung_milestones(config: study_pb2.SchedulerConfig, max_steps: float) -> list[float]:
    """Where ASHA or Hyperband may decide (``SchedulerSpec.decision_rungs``)."""
    return SchedulerSpec.from_proto(config).decision_rungs(max_steps)


def test_asha_rungs_are_geometric_and_exclude_the_full_budget() -> None:
    config = scheduler(kind=study_pb2.ASHA, min_resource=1, max_resource=27, reduction_factor=3)
    assert rung_milestones(config, 27) == [1, 3, 9]


def test_defaults_follow_the_proto() -> None:
    # kind unset = ASHA, min_resource 1, eta 3; max from the workload when unset.
    assert rung_milestones(scheduler(), 10) == [1, 3, 9]


def test_grace_period_skips_early_rungs() -> None:
    config = scheduler(kind=study_pb2.ASHA, min_resource=1, max_resource=27,
                       reduction_factor=3, grace_period=3)
    assert rung_milestones(config, 27) == [3, 9]


def test_eta_two() -> None:
    config = scheduler(kind=study_pb2.HYPERBAND, min_resource=2, max_resource=16,
                       reduction_factor=2)
    assert rung_milestones(config, 16) == [2, 4, 8]


@pytest.mark.parametrize("kind", [study_pb2.NONE, study_pb2.MEDIAN])
def test_no_milestones_without_rungs(kind: int) -> None:
    assert rung_milestones(scheduler(kind=kind, max_resource=27), 27) == []


# Where evaluate holds a trial for its verdict (HeartbeatResponse.decision_pending).


def promotion(**kwargs: object) -> SchedulerSpec:
    return SchedulerSpec.from_proto(scheduler(
        kind=kwargs.pop("kind", study_pb2.ASHA), min_resource=1, max_resource=27,
        reduction_factor=3, form=study_pb2.ASHA_PROMOTION, **kwargs,
    ))


def test_the_stopping_form_never_holds_a_trial() -> None:
    spec = SchedulerSpec.from_proto(scheduler(min_resource=1, max_resource=27))
    assert not any(spec.verdict_pending("t", step, None) for step in range(1, 28))


def test_the_promotion_form_holds_a_trial_at_each_rung_until_its_verdict() -> None:
    spec = promotion()
    assert not spec.verdict_pending("t", 0, None)
    assert spec.verdict_pending("t", 1, None)
    assert not spec.verdict_pending("t", 1, 1.0)  # PROMOTE of rung 0 arrived
    assert not spec.verdict_pending("t", 2, 1.0)
    assert spec.verdict_pending("t", 3, 1.0)  # rung 1's verdict is still to come
    assert not spec.verdict_pending("t", 4, 3.0)
    assert not spec.verdict_pending("t", 27, 9.0)  # the full budget is no rung


def test_the_grace_period_and_the_bracket_skip_the_early_rungs() -> None:
    assert not promotion(grace_period=3).verdict_pending("t", 1, None)
    hyperband = promotion(kind=study_pb2.HYPERBAND)
    late = next(f"t{i}" for i in range(1000) if hyperband.bracket_of(f"t{i}") == 2)
    assert not hyperband.verdict_pending(late, 3, None)
    assert hyperband.verdict_pending(late, 9, None)
