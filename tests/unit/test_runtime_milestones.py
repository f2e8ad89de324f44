from pathlib import Path

import pytest
from ladder.schedulers import SchedulerSpec
from ladder.v1 import study_pb2

from workers.runtime import checkpoint_path, path_from_uri


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


def test_checkpoint_uri_round_trip(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "state dir", "trial-1", "att", 9)
    assert path.name == "att-step9.pt"
    assert path.parent == tmp_path / "state dir" / "checkpoints" / "trial-1"
    assert path_from_uri(path.as_uri()) == path


def test_unsupported_checkpoint_scheme() -> None:
    with pytest.raises(ValueError, match="s3"):
        path_from_uri("s3://bucket/key")
