import pytest
from ladder.schedulers import SchedulerSpec
from ladder.v1 import study_pb2


def scheduler(**kwargs: object) -> study_pb2.SchedulerConfig:
    return study_pb2.SchedulerConfig(**kwargs)


def rung_milestones(config: study_pb2.SchedulerConfig, max_steps: float) -> list[float]:
    """Where a worker waits for a decision (``Worker.scheduler.decision_rungs``)."""
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
