import pytest
from ladder import failures
from ladder.failures import TrialFailed, classify, disposition, kind_of_request
from ladder.space import StudyConfigError
from ladder.study import OomPolicy, StudySpec, TrialPolicySpec
from ladder.v1 import study_pb2


class OutOfMemoryError(RuntimeError):  # the name torch.cuda uses
    pass


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (MemoryError(), failures.OUT_OF_MEMORY),
        (OutOfMemoryError("CUDA"), failures.OUT_OF_MEMORY),
        (RuntimeError("CUDA error: out of memory"), failures.OUT_OF_MEMORY),
        (FloatingPointError("overflow"), failures.DIVERGED),
        (ValueError("bad shape"), failures.USER_ERROR),
        (KeyError("lr"), failures.USER_ERROR),
        (OSError("disk gone"), failures.INFRASTRUCTURE),
        (ConnectionError("reset"), failures.INFRASTRUCTURE),
        (RuntimeError("NCCL timeout"), failures.INFRASTRUCTURE),
        (RuntimeError("OOM when allocating tensor"), failures.OUT_OF_MEMORY),
        (RuntimeError("not enough room in the zoom buffer"), failures.INFRASTRUCTURE),
        (TrialFailed(failures.TIMEOUT, "too slow"), failures.TIMEOUT),
    ],
)
def test_classify(exc: BaseException, kind: int) -> None:
    assert classify(exc) == kind


def test_a_request_without_kind_reads_retryable() -> None:
    assert kind_of_request(0, retryable=True) == failures.INFRASTRUCTURE
    assert kind_of_request(0, retryable=False) == failures.USER_ERROR
    assert kind_of_request(failures.PREEMPTED, retryable=False) == failures.PREEMPTED


def test_preemption_never_counts_and_user_errors_never_retry() -> None:
    assert disposition(failures.PREEMPTED, OomPolicy.RETRY_ONCE, False) == failures.Disposition(
        counts=False, retry=True
    )
    for kind in (failures.USER_ERROR, failures.DIVERGED, failures.TIMEOUT):
        assert disposition(kind, OomPolicy.RETRY_ONCE, False) == failures.Disposition(True, False)
    assert disposition(failures.INFRASTRUCTURE, OomPolicy.INFEASIBLE, False).retry


def test_out_of_memory_retries_once_or_is_infeasible() -> None:
    oom = failures.OUT_OF_MEMORY
    assert disposition(oom, OomPolicy.RETRY_ONCE, oom_before=False).retry
    # Once an OOM failed the trial, another is never retried, whatever failed between.
    assert not disposition(oom, OomPolicy.RETRY_ONCE, oom_before=True).retry
    assert not disposition(oom, OomPolicy.INFEASIBLE, oom_before=False).retry


def test_interruptions_fail_the_trial_only_beyond_max_interruptions() -> None:
    assert failures.interruption(0, 2) == failures.Interruption(interruptions=1, final=False)
    assert failures.interruption(1, 2) == failures.Interruption(interruptions=2, final=False)
    assert failures.interruption(2, 2) == failures.Interruption(interruptions=3, final=True)
    assert failures.interruption(0, 0).final  # none allowed
    assert not failures.interruption(10_000, None).final  # unlimited
    assert failures.INTERRUPTED_TOO_OFTEN == failures.INFRASTRUCTURE


def _config(**policy: object) -> study_pb2.StudyConfig:
    config = study_pb2.StudyConfig(metric="loss")
    config.space.parameters.add(name="x").float_range.low = 0.0
    config.space.parameters[0].float_range.high = 1.0
    config.scheduler.kind = study_pb2.NONE
    for name, value in policy.items():
        setattr(config.trial_policy, name, value)
    return config


def test_trial_policy_defaults_are_filled_and_round_trip() -> None:
    spec = StudySpec.from_proto(_config())
    assert spec.trial_policy == TrialPolicySpec()
    filled = spec.to_proto().trial_policy
    assert filled.checkpoint_interval_seconds == 300
    assert filled.checkpoints_kept == 2
    assert filled.preemption_notice_seconds == 25
    assert filled.stall_timeout_seconds == 1800
    assert filled.on_out_of_memory == study_pb2.OOM_RETRY_ONCE
    assert filled.max_interruptions == 25
    # Reading the filled config again gives the same policy.
    assert StudySpec.from_proto(spec.to_proto()).trial_policy == spec.trial_policy


def test_trial_policy_by_steps_only_and_watchdog_off() -> None:
    policy = StudySpec.from_proto(
        _config(checkpoint_interval_steps=3, stall_timeout_seconds=-1, max_trial_seconds=60)
    ).trial_policy
    assert policy.checkpoint_interval_seconds == 0
    assert policy.stall_timeout_seconds is None
    assert policy.max_trial_seconds == 60
    assert policy.checkpoint_due(seconds_since=1e6, steps_since=2) is False
    assert policy.checkpoint_due(seconds_since=0, steps_since=3) is True
    again = StudySpec.from_proto(StudySpec.from_proto(_config(stall_timeout_seconds=-1)).to_proto())
    assert again.trial_policy.stall_timeout_seconds is None


def test_max_interruptions_defaults_to_25_and_negative_is_unlimited() -> None:
    assert StudySpec.from_proto(_config()).trial_policy.max_interruptions == 25
    assert StudySpec.from_proto(_config(max_interruptions=4)).trial_policy.max_interruptions == 4
    unlimited = StudySpec.from_proto(_config(max_interruptions=-1))
    assert unlimited.trial_policy.max_interruptions is None
    again = StudySpec.from_proto(unlimited.to_proto())
    assert again.trial_policy.max_interruptions is None


def test_trial_policy_checkpoint_due_by_time() -> None:
    policy = TrialPolicySpec()
    assert not policy.checkpoint_due(seconds_since=299, steps_since=100)
    assert policy.checkpoint_due(seconds_since=300, steps_since=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("checkpoint_interval_seconds", -1.0, "checkpoint_interval_seconds must be finite"),
        ("max_trial_seconds", float("inf"), "max_trial_seconds must be finite"),
        ("stall_timeout_seconds", float("nan"), "stall_timeout_seconds must be finite"),
        ("checkpoints_kept", -2, "checkpoints_kept must be >= 0"),
        ("on_out_of_memory", 99, "on_out_of_memory: unknown value 99"),
    ],
)
def test_trial_policy_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(StudyConfigError, match=message):
        StudySpec.from_proto(_config(**{field: value}))
