"""The SDK's pure parts: the plain-dict space/study helpers and the retry policy."""

import grpc
import pytest
from ladder.client import call_with_retry, search_space, study_config
from ladder.space import Space
from ladder.testing import RpcStatus
from ladder.v1 import space_pb2, study_pb2

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "units": {"type": "int", "low": 16, "high": 256, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
    "batch_size": {"type": "ordinal", "values": [16, 32, 64]},
    "warmup": {"type": "int", "low": 0, "high": 5, "when": {"batch_size": 64}},
}


def test_dict_space_becomes_the_proto() -> None:
    space = search_space(SPACE)
    by_name = {p.name: p for p in space.parameters}
    assert list(by_name) == list(SPACE)
    lr = by_name["lr"].float_range
    assert (lr.low, lr.high, lr.scale) == (1e-4, 1e-1, space_pb2.SCALE_LOG)
    units = by_name["units"].int_range
    assert (units.low, units.high, units.scale) == (16, 256, space_pb2.SCALE_LOG)
    assert list(by_name["optimizer"].categorical.choices) == ["sgd", "adam"]
    assert by_name["momentum"].float_range.scale == space_pb2.SCALE_LINEAR
    assert by_name["momentum"].condition.parent == "optimizer"
    assert list(by_name["momentum"].condition.parent_values) == ["sgd"]
    assert list(by_name["batch_size"].ordinal.values) == [16.0, 32.0, 64.0]
    # A single parent value is accepted; numbers are written without ".0".
    assert list(by_name["warmup"].condition.parent_values) == ["64"]


def test_conditional_parameter_is_active_only_under_its_parent_value() -> None:
    space = Space.from_proto(search_space(SPACE))
    assert space.is_active("momentum", {"optimizer": "sgd"})
    assert not space.is_active("momentum", {"optimizer": "adam"})
    assert space.is_active("warmup", {"batch_size": 64})


def test_a_proto_space_passes_through() -> None:
    proto = search_space(SPACE)
    assert search_space(proto) is proto


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "'lr'.*low must be < high"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "'lr'.*log"),
        ({"lr": {"type": "float", "high": 1}}, "'lr': missing 'low'"),
        ({"lr": {"type": "float", "low": "a", "high": 1}}, "'lr': 'low' must be a number"),
        ({"n": {"type": "int", "low": 1.5, "high": 3}}, "'n': 'low' must be an integer"),
        ({"x": {"type": "uniform"}}, "'x': 'type' must be one of"),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": 2}}, "unknown keys \\['step'\\]"),
        ({"c": {"type": "categorical", "choices": []}}, "'c'.*choices must not be empty"),
        ({"c": {"type": "categorical", "choices": "ab"}}, "'c': 'choices' must be a list"),
        ({"c": {"type": "categorical", "choices": ["a", "a"]}}, "'c'.*duplicate"),
        ({"o": {"type": "ordinal", "values": [32, 16]}}, "'o'.*strictly increasing"),
        ({"o": {"type": "ordinal", "values": ["a"]}}, "'o': ordinal values must be numbers"),
        ({"m": {"type": "float", "low": 0, "high": 1, "when": {"opt": ["sgd"]}}},
         "'m'.*'opt' is not a parameter"),
        ({"opt": {"type": "categorical", "choices": ["sgd"]},
          "m": {"type": "float", "low": 0, "high": 1, "when": {"opt": ["adam"]}}},
         "'m'.*'adam' is not one of"),
        ({"m": {"type": "float", "low": 0, "high": 1, "when": {"a": [1], "b": [2]}}},
         "'m': 'when' must name exactly one parent"),
        ({}, "non-empty"),
    ],
)
def test_bad_spaces_name_the_parameter(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        search_space(spec)


def test_study_config_from_plain_values() -> None:
    config = study_config(
        SPACE, name="n", metric="val_loss", algorithm="random", max_trials=64, seed=7,
        scheduler={"kind": "asha", "min_resource": 1, "max_resource": 27,
                   "reduction_factor": 3, "min_population": 3},
        dataset_id="d", code_commit="abc", labels={"team": "x"},
    )
    assert config.algorithm == study_pb2.RANDOM
    assert config.direction == study_pb2.MINIMIZE
    assert config.scheduler.kind == study_pb2.ASHA
    assert (config.scheduler.max_resource, config.scheduler.min_population) == (27, 3)
    assert (config.max_trials, config.seed, config.dataset_id) == (64, 7, "d")
    assert dict(config.labels) == {"team": "x"}


def test_study_config_carries_the_warm_start() -> None:
    adam = {"lr": 0.01, "units": 64, "optimizer": "adam", "batch_size": 32}
    config = study_config(
        SPACE,
        warm_start=[adam],
        known_results=[({**adam, "lr": 0.001}, 0.25)],
        warm_start_from="st-earlier",
    )
    first, known = config.warm_start.configurations
    assert (first.has_value, first.params["optimizer"].str_value) == (False, "adam")
    assert (known.has_value, known.value, known.params["lr"].float_value) == (True, 0.25, 0.001)
    assert config.warm_start.from_study_id == "st-earlier"


def test_a_warm_start_outside_the_space_is_rejected_before_sending() -> None:
    with pytest.raises(ValueError, match="warm_start.configurations"):
        study_config(SPACE, warm_start=[{"lr": 5.0, "units": 64, "optimizer": "adam",
                                         "batch_size": 32}])


def test_study_config_without_scheduler_has_no_early_stopping() -> None:
    assert study_config(SPACE).scheduler.kind == study_pb2.NONE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "bayes"}, "algorithm must be one of"),
        ({"direction": "down"}, "direction must be one of"),
        ({"metric": ""}, "metric is required"),
        ({"scheduler": {"kind": "asha"}}, "max_resource"),
    ],
)
def test_bad_study_configs_are_rejected_before_sending(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study_config(SPACE, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_unavailable_is_retried_with_growing_backoff() -> None:
    clock = Clock()
    outcomes = [RpcStatus(grpc.StatusCode.UNAVAILABLE)] * 3 + ["ok"]

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(call, "X", retry_timeout=30, sleep=clock.sleep, clock=clock) == "ok"
    assert len(clock.sleeps) == 3
    assert clock.sleeps[0] < clock.sleeps[1] < clock.sleeps[2]


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION])
def test_other_statuses_are_not_retried(code: grpc.StatusCode) -> None:
    clock = Clock()
    calls = []

    def call() -> None:
        calls.append(1)
        raise RpcStatus(code)

    with pytest.raises(grpc.RpcError):
        call_with_retry(call, "X", sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and not clock.sleeps


def test_retries_give_up_after_the_retry_timeout() -> None:
    clock = Clock()

    def call() -> None:
        raise RpcStatus(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        call_with_retry(call, "X", retry_timeout=5, sleep=clock.sleep, clock=clock)
    assert clock.now <= 5 + 2.5
