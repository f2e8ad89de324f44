"""The rules of tenant quotas (ladder.quotas) and study budgets with their circuit
breaker (ladder.lifecycle): values, refusals, when a budget is spent."""

from __future__ import annotations

import math

import pytest
from ladder import lifecycle, quotas
from ladder.errors import AtCapacity, InvalidArgument
from ladder.scheduling.resources import TenantPolicy
from ladder.space import StudyConfigError
from ladder.state.studies import Gate, trial_ms
from ladder.study import StudySpec
from ladder.v1 import space_pb2, study_pb2, suggest_pb2

SPACE = space_pb2.SearchSpace(
    parameters=[space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(low=0, high=1))]
)


def test_quota_values_are_never_negative_and_none_keeps_the_current_one() -> None:
    current = quotas.Quota(max_studies=3, max_trials_running=10)
    assert quotas.updated(current, None, 4) == quotas.Quota(3, 4)
    assert quotas.updated(current, 0, None) == quotas.Quota(0, 10)
    with pytest.raises(InvalidArgument, match="max_trials_running must be >= 0"):
        quotas.updated(current, None, -1)
    with pytest.raises(InvalidArgument, match="--max-studies"):
        quotas.updated(current, None, None)


def test_a_quota_is_read_from_the_tenant_record_absent_fields_unbounded() -> None:
    assert quotas.Quota.from_record({"admin": False, "created_ms": 1}) == quotas.Quota(0, 0)
    assert quotas.Quota.from_record({"max_studies": 2, "max_trials_running": 5}) == (
        quotas.Quota(2, 5))


def test_refusals_name_the_quota_and_how_to_raise_it() -> None:
    studies = quotas.too_many_studies("team-a", 3, 3)
    trials = quotas.trials_at_quota("team-a", 8, 8)
    assert isinstance(studies, AtCapacity) and isinstance(trials, AtCapacity)
    assert "max_studies is 3" in str(studies)
    assert "ladder tenant quota team-a --max-studies N" in str(studies)
    assert "8 trials out" in str(trials) and "max_trials_running is 8" in str(trials)


Budgets = lifecycle.Budgets


def test_no_budget_is_never_spent() -> None:
    assert lifecycle.budget_exceeded(Budgets(0, 0, 0), 1e9, 1e9, 8) is None
    assert lifecycle.budget_exceeded(lifecycle.UNCHANGED, 1e9, 1e9, 8) is None


def test_wall_clock_budget_is_spent_at_its_seconds() -> None:
    assert lifecycle.budget_exceeded(Budgets(60, 0), 59.9, 0) is None
    reason = lifecycle.budget_exceeded(Budgets(60, 0), 60.0, 0)
    assert reason is not None and reason.startswith("budget exceeded")
    assert "max_wall_clock_seconds is 60" in reason


def test_trial_hours_budget_is_spent_at_its_hours() -> None:
    assert lifecycle.budget_exceeded(Budgets(0, 2.0), 0, 1.99) is None
    reason = lifecycle.budget_exceeded(Budgets(0, 2.0), 0, 2.5)
    assert reason is not None and "2.5 trial-hours" in reason and "max_trial_hours is 2" in reason


def test_gpu_hours_are_trial_hours_times_the_trials_gpus() -> None:
    assert lifecycle.gpu_hours(8.05, 2) == pytest.approx(16.1)
    assert lifecycle.gpu_hours(3.0, 0) == 0.0
    # 7.9 trial-hours of 2-GPU trials: 15.8 GPU-hours, under 16.
    assert lifecycle.budget_exceeded(Budgets(gpu_hours=16), 0, 7.9, 2) is None
    reason = lifecycle.budget_exceeded(Budgets(gpu_hours=16), 0, 8.05, 2)
    assert reason == ("budget exceeded: its trials ran 16.1 GPU-hours (8.05 trial-hours "
                      "x 2 GPUs), max_gpu_hours is 16")
    # The same time on 1-GPU trials is within it; trial-hours alone never spend it.
    assert lifecycle.budget_exceeded(Budgets(gpu_hours=16), 0, 8.05, 1) is None
    one = lifecycle.budget_exceeded(Budgets(gpu_hours=8), 0, 8.05, 1)
    assert one is not None and "(8.05 trial-hours x 1 GPU)" in one
    assert lifecycle.budget_exceeded(Budgets(0, 10, 16), 0, 8.05, 0) is None


def test_a_gpu_budget_needs_trials_that_declare_gpus() -> None:
    # Without the study's GPUs (None) only the value is checked.
    lifecycle.check_budgets(Budgets(gpu_hours=4))
    lifecycle.check_budgets(Budgets(gpu_hours=4), gpus=2)
    lifecycle.check_budgets(Budgets(gpu_hours=0), gpus=0)  # 0 = unbounded: fine
    with pytest.raises(InvalidArgument, match="max_gpu_hours 4 could never be spent"):
        lifecycle.check_budgets(Budgets(gpu_hours=4), gpus=0)
    with pytest.raises(InvalidArgument, match="trial_resources.gpus is 0"):
        lifecycle.check_update(None, None, 0, Budgets(gpu_hours=4), gpus=0)
    lifecycle.check_update(None, None, 0, Budgets(gpu_hours=4), gpus=8)
    base = dict(metric="loss", space=SPACE,
                scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE), max_gpu_hours=4)
    with pytest.raises(StudyConfigError, match="max_gpu_hours 4 could never be spent"):
        StudySpec.from_proto(study_pb2.StudyConfig(**base))
    with pytest.raises(StudyConfigError, match="max_gpu_hours"):
        StudySpec.from_proto(study_pb2.StudyConfig(
            **base, trial_resources=study_pb2.TrialResources(cpu=4)))
    spec = StudySpec.from_proto(study_pb2.StudyConfig(
        **base, trial_resources=study_pb2.TrialResources(gpus=2)))
    assert spec.to_proto().max_gpu_hours == 4


def test_an_update_request_gives_only_the_budgets_it_sets() -> None:
    request = suggest_pb2.UpdateStudyRequest(study_id="s", max_gpu_hours=0.0)
    assert Budgets.given(request) == Budgets(None, None, 0.0)
    assert Budgets.given(suggest_pb2.UpdateStudyRequest(study_id="s")) == lifecycle.UNCHANGED
    config = study_pb2.StudyConfig(max_wall_clock_seconds=10, max_trial_hours=1,
                                   max_gpu_hours=3)
    assert Budgets(None, 2.0, None).over(config) == Budgets(10, 2.0, 3)


def test_the_breaker_stops_only_an_active_study() -> None:
    rule = lifecycle.RULES[lifecycle.Action.BREAK]
    assert rule.target == lifecycle.STOPPED
    assert set(rule.allowed_from) == {lifecycle.ACTIVE}


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_budgets_must_be_finite_and_not_negative(value: float) -> None:
    with pytest.raises(InvalidArgument, match="max_trial_hours must be a finite number"):
        lifecycle.check_update(None, None, 0, lifecycle.Budgets(None, value))
    with pytest.raises(InvalidArgument, match="max_gpu_hours must be a finite number"):
        lifecycle.check_update(None, None, 0, lifecycle.Budgets(gpu_hours=value), gpus=2)
    config = study_pb2.StudyConfig(metric="loss", space=SPACE, max_wall_clock_seconds=value,
                                   scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE))
    with pytest.raises(StudyConfigError, match="max_wall_clock_seconds"):
        StudySpec.from_proto(config)


def test_an_update_of_budgets_alone_is_an_update() -> None:
    lifecycle.check_update(None, None, 5, lifecycle.Budgets(wall_clock_seconds=0.0))
    with pytest.raises(InvalidArgument, match="max_wall_clock_seconds"):
        lifecycle.check_update(None, None, 5, lifecycle.UNCHANGED)


def test_trial_time_counts_ended_and_running_attempts() -> None:
    # 5 s ended; two attempts running since 1000 and 3000 ms, read at 4000 ms.
    assert trial_ms(b"5000", b"2", b"4000", 4000.0) == 5000 + 3000 + 1000
    assert trial_ms(None, None, None, 4000.0) == 0


def _gate(budgets: lifecycle.Budgets, age_seconds: float, trial_hours: float) -> Gate:
    return Gate(state=lifecycle.ACTIVE, suggested=0, max_trials=None, max_parallel=None,
                in_flight=0, budgets=budgets, age_seconds=age_seconds,
                trial_hours=trial_hours)


def test_the_gate_prefers_updated_budgets_to_the_config() -> None:
    config = study_pb2.StudyConfig(max_wall_clock_seconds=10, max_trial_hours=1)
    gate = _gate(Budgets(wall_clock_seconds=0.0), age_seconds=20, trial_hours=0.5)
    assert gate.budget_exceeded(config) is None  # the wall clock was lifted
    raised = _gate(Budgets(trial_hours=0.25), age_seconds=0, trial_hours=0.5)
    assert "max_trial_hours is 0.25" in (raised.budget_exceeded(config) or "")


def test_the_gate_counts_gpu_hours_with_the_configs_gpus() -> None:
    config = study_pb2.StudyConfig(max_gpu_hours=1,
                                   trial_resources=study_pb2.TrialResources(gpus=4))
    # 0.3 trial-hours of 4-GPU trials: 1.2 GPU-hours, over the created budget of 1.
    spent = _gate(lifecycle.UNCHANGED, age_seconds=0, trial_hours=0.3)
    assert "1.2 GPU-hours (0.3 trial-hours x 4 GPUs)" in (spent.budget_exceeded(config) or "")
    assert _gate(Budgets(gpu_hours=2), 0, 0.3).budget_exceeded(config) is None  # raised
    assert _gate(Budgets(gpu_hours=0), 0, 0.3).budget_exceeded(config) is None  # lifted


def test_gpu_quota_and_weight_are_read_checked_and_become_the_schedulers_policy() -> None:
    assert quotas.Quota.from_record({}).policy() == TenantPolicy(1.0, None)
    quota = quotas.Quota.from_record({"max_gpus": 16, "weight": 2})
    assert (quota.max_gpus, quota.weight) == (16, 2.0)
    assert quota.policy() == TenantPolicy(2.0, 16)
    assert quotas.updated(quota, None, None, max_gpus=0) == quotas.Quota(0, 0, 0, 2.0)
    assert quotas.updated(quota, None, None, weight=0.5).weight == 0.5
    with pytest.raises(InvalidArgument, match="tenant.weight must be > 0"):
        quotas.updated(quota, None, None, weight=0)
    with pytest.raises(InvalidArgument, match="max_gpus must be >= 0"):
        quotas.updated(quota, None, None, max_gpus=-1)
