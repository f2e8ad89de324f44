"""A study's trial_resources and priority (StudyConfig fields 18-20): validated once,
by ladder.scheduling.resources, with INVALID_ARGUMENT naming the field; the default
demand is 1 CPU and is not written into the stored config."""

from __future__ import annotations

import pytest
from ladder.client import study_config
from ladder.errors import InvalidArgument
from ladder.scheduling.resources import DEFAULT_DEMAND, Demand, Resources
from ladder.space import StudyConfigError
from ladder.study import StudySpec

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def test_unset_resources_take_the_default_without_changing_the_config() -> None:
    config = study_config(SPACE)
    spec = StudySpec.from_proto(config)
    assert spec.demand == DEFAULT_DEMAND == Demand(Resources(cpu=1.0))
    assert spec.priority == 0 and not spec.stable_for_promoted
    assert not spec.to_proto().HasField("trial_resources")


def test_declared_resources_and_priority_are_kept() -> None:
    config = study_config(SPACE, trial_resources={"gpus": 8, "gpu_type": "a100", "cpu": 16,
                                                  "memory_gb": 200},
                          priority=7, stable_for_promoted=True)
    spec = StudySpec.from_proto(config)
    assert spec.demand == Demand(Resources(8, 16.0, 200.0), "a100")
    assert spec.priority == 7 and spec.stable_for_promoted
    assert spec.to_proto().trial_resources.gpus == 8


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trial_resources": {"gpus": 65}}, "trial_resources.gpus must be <= 64"),
    ({"trial_resources": {"gpus": -1}}, "trial_resources.gpus must be >= 0"),
    ({"trial_resources": {"cpu": float("nan")}}, "trial_resources.cpu must be a finite"),
    ({"trial_resources": {"memory_gb": -2.0}}, "trial_resources.memory_gb must be >= 0"),
    ({"trial_resources": {"gpu_type": "a100"}}, "trial_resources must ask for at least one"),
    ({"priority": 1001}, "priority must be between -1000 and 1000"),
])
def test_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(StudyConfigError, match=message) as caught:
        study_config(SPACE, **kwargs)
    assert isinstance(caught.value, InvalidArgument)  # INVALID_ARGUMENT over gRPC
