"""The study model: one place for the defaults and the validation of a StudyConfig."""

import math

import pytest
from ladder.schedulers import SchedulerConfigError, SchedulerKind, SchedulerSpec
from ladder.schedulers.spec import ASHA_FORMS, BRACKET_ALLOCATIONS, SCHEDULER_KINDS, SMOOTHINGS
from ladder.space import SpaceError, StudyConfigError
from ladder.study import ALGORITHMS, DIRECTIONS, Algorithm, Direction, StudySpec
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2


def floats(name: str, low: float, high: float, log: bool = False) -> S.Parameter:
    scale = S.SCALE_LOG if log else S.SCALE_LINEAR
    return S.Parameter(name=name, float_range=S.FloatRange(low=low, high=high, scale=scale))


def published(config: study_pb2.StudyConfig) -> study_pb2.StudyConfig:
    return StudySpec.from_proto(config).to_proto()


def config(**kw: object) -> study_pb2.StudyConfig:
    base = study_pb2.StudyConfig(
        metric="val_loss",
        space=S.SearchSpace(parameters=[floats("lr", 1e-4, 1e-1, log=True)]),
        scheduler=study_pb2.SchedulerConfig(max_resource=27),
    )
    override = study_pb2.StudyConfig(**kw)
    if override.space.parameters:
        base.ClearField("space")
    base.MergeFrom(override)
    return base


def test_defaults_are_filled() -> None:
    out = published(config())
    s = out.scheduler
    assert (out.direction, out.algorithm, out.partitions) == (
        study_pb2.MINIMIZE,
        study_pb2.RANDOM,
        1,
    )
    assert s.kind == study_pb2.ASHA and s.smoothing == study_pb2.EMA
    assert (s.min_resource, s.max_resource, s.reduction_factor) == (1, 27, 3)
    assert (s.grace_period, s.min_population, s.ema_alpha, s.window) == (1, 3, 0.5, 3)
    assert published(out) == out  # idempotent


def test_explicit_values_are_kept() -> None:
    sched = study_pb2.SchedulerConfig(
        min_resource=2, max_resource=20, reduction_factor=2, grace_period=4, min_population=5
    )
    out = published(config(scheduler=sched, partitions=8))
    assert (out.scheduler.min_resource, out.scheduler.grace_period) == (2, 4)
    assert (out.scheduler.min_population, out.partitions) == (5, 8)


def test_scheduler_none_needs_no_resources() -> None:
    cfg = config()
    cfg.scheduler.CopyFrom(study_pb2.SchedulerConfig(kind=study_pb2.NONE))
    assert published(cfg).scheduler.kind == study_pb2.NONE


def _bad(**scheduler: object) -> study_pb2.StudyConfig:
    cfg = config()
    cfg.scheduler.CopyFrom(study_pb2.SchedulerConfig(**scheduler))
    return cfg


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            study_pb2.StudyConfig(space=config().space),
            "metric is required (the objective metric name, e.g. 'val_loss')",
        ),
        (
            config(space=S.SearchSpace(parameters=[floats("a", 0, 1), floats("lr", 0.1, 0.01)])),
            "space.parameters[1] 'lr': float_range.low must be < high (got 0.1 >= 0.01)",
        ),
        (study_pb2.StudyConfig(metric="m"), "space.parameters must not be empty"),
        (config(max_trials=-1), "max_trials must be >= 0 (0 = unbounded; got -1)"),
        (config(partitions=1025), "partitions must be between 0 and 1024 (0 = 1; got 1025)"),
        (config(partitions=-1), "partitions must be between 0 and 1024 (0 = 1; got -1)"),
        (
            _bad(),
            "scheduler.max_resource is required when scheduler.kind is ASHA "
            "(or set scheduler.kind NONE to disable early stopping)",
        ),
        (
            _bad(kind=study_pb2.MEDIAN, min_resource=-1, max_resource=9),
            "scheduler.min_resource must be > 0 (got -1)",
        ),
        (
            _bad(min_resource=9, max_resource=9),
            "scheduler.max_resource must be > min_resource (got 9 <= 9)",
        ),
        (
            _bad(max_resource=9, reduction_factor=1),
            "scheduler.reduction_factor must be > 1 (got 1)",
        ),
        (_bad(max_resource=9, grace_period=-2), "scheduler.grace_period must be >= 0 (got -2)"),
        (_bad(max_resource=9, min_population=-1), "scheduler.min_population must be >= 1 (got -1)"),
        (_bad(max_resource=9, ema_alpha=1.5), "scheduler.ema_alpha must be in (0, 1] (got 1.5)"),
        (_bad(max_resource=math.nan), "scheduler.max_resource must be finite (got nan)"),
        (config(algorithm=42), "algorithm: unknown value 42"),
    ],
)
def test_invalid_study_configs_name_the_field(cfg: study_pb2.StudyConfig, message: str) -> None:
    with pytest.raises(StudyConfigError) as err:
        StudySpec.from_proto(cfg)
    assert str(err.value) == message


def test_the_spec_holds_the_resolved_values() -> None:
    spec = StudySpec.from_proto(
        config(direction=study_pb2.MAXIMIZE, algorithm=study_pb2.TPE, max_trials=64)
    )
    assert spec.metric == "val_loss" and spec.maximize and spec.direction is Direction.MAXIMIZE
    assert (spec.algorithm, spec.partitions, spec.max_trials) == (Algorithm.TPE, 1, 64)
    assert spec.space.names == ["lr"]
    assert spec.scheduler == SchedulerSpec(
        kind=SchedulerKind.ASHA, max_resource=27, maximize=True, metric="val_loss"
    )
    assert StudySpec.from_proto(config()).direction is Direction.MINIMIZE


def test_rungs_and_brackets_are_answered_by_the_spec() -> None:
    sched = study_pb2.SchedulerConfig(kind=study_pb2.HYPERBAND, max_resource=27, grace_period=3)
    spec = StudySpec.from_proto(config(scheduler=sched)).scheduler
    assert spec.rungs() == [1, 3, 9]
    assert spec.decision_rungs(27) == [3, 9]  # from the grace period on
    assert spec.brackets == 4 and spec.bracket_weights() == [27, 12, 6, 4]
    median = study_pb2.SchedulerConfig(kind=study_pb2.MEDIAN, max_resource=27)
    assert StudySpec.from_proto(config(scheduler=median)).scheduler.decision_rungs(27) == []


def test_a_scheduler_error_is_the_same_through_the_study_and_the_spec() -> None:
    bad = study_pb2.SchedulerConfig(max_resource=9, window=-2)
    with pytest.raises(SchedulerConfigError) as through_study:
        StudySpec.from_proto(config(scheduler=bad))
    with pytest.raises(SchedulerConfigError) as through_spec:
        SchedulerSpec.from_proto(bad)
    assert str(through_study.value) == str(through_spec.value) == (
        "scheduler.window must be >= 1 (got -2)"
    )


def test_the_spec_fills_the_same_defaults_as_the_published_config() -> None:
    direct = SchedulerSpec(min_resource=2, max_resource=50, reduction_factor=2.5)
    assert (direct.grace_period, direct.min_population) == (2, 3)
    sched = study_pb2.SchedulerConfig(min_resource=2, max_resource=50, reduction_factor=2.5)
    out = published(config(scheduler=sched)).scheduler
    assert (out.grace_period, out.min_population, out.ema_alpha, out.window) == (
        direct.grace_period,
        direct.min_population,
        direct.ema_alpha,
        direct.window,
    )


def test_form_and_allocation_stay_unset_in_the_published_config() -> None:
    out = published(config()).scheduler
    assert (out.form, out.bracket_allocation) == (
        study_pb2.ASHA_FORM_UNSPECIFIED,
        study_pb2.BRACKET_ALLOCATION_UNSPECIFIED,
    )


@pytest.mark.parametrize(
    ("table", "proto_enum"),
    [
        (DIRECTIONS, study_pb2.Direction),
        (ALGORITHMS, study_pb2.Algorithm),
        (SCHEDULER_KINDS, study_pb2.SchedulerKind),
        (SMOOTHINGS, study_pb2.SmoothingKind),
        (ASHA_FORMS, study_pb2.AshaForm),
        (BRACKET_ALLOCATIONS, study_pb2.BracketAllocation),
    ],
)
def test_every_proto_enum_value_has_one_plain_name(table: object, proto_enum: object) -> None:
    numbers = [n for n in proto_enum.values() if n != 0]  # type: ignore[attr-defined]
    names = [table.parse(n) for n in numbers]  # type: ignore[attr-defined]
    assert sorted(names) == table.names  # type: ignore[attr-defined]
    assert [table.number(name) for name in names] == numbers  # type: ignore[attr-defined]


def test_an_unknown_enum_number_names_the_field() -> None:
    with pytest.raises(SchedulerConfigError, match="scheduler.kind: unknown value 9"):
        StudySpec.from_proto(config(scheduler=study_pb2.SchedulerConfig(kind=9)))


def test_a_warm_start_outside_the_space_names_the_configuration() -> None:
    cfg = config()
    cfg.warm_start.configurations.add().params["lr"].float_value = 5.0
    with pytest.raises(SpaceError, match=r"warm_start.configurations\[0\]: params: 'lr'=5.0"):
        StudySpec.from_proto(cfg)


def test_the_spec_holds_seed_warm_start_and_labels_read_only() -> None:
    known = study_pb2.KnownConfiguration(has_value=True, value=0.5)
    known.params["lr"].float_value = 0.01
    seed_point = study_pb2.KnownConfiguration()
    seed_point.params["lr"].float_value = 0.001
    cfg = config(
        seed=42,
        labels={"team": "vision"},
        warm_start=study_pb2.WarmStart(configurations=[known, seed_point], from_study_id="st-a"),
    )
    spec = StudySpec.from_proto(cfg)
    assert spec.seed == 42 and dict(spec.labels) == {"team": "vision"}
    assert spec.warm_start.from_study_id == "st-a"
    assert [(dict(c.params), c.value) for c in spec.warm_start.configurations] == [
        ({"lr": 0.01}, 0.5),
        ({"lr": 0.001}, None),
    ]
    assert [dict(c.params) for c in spec.warm_start.seeds] == [{"lr": 0.001}]
    with pytest.raises(TypeError):
        spec.labels["team"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.warm_start.configurations[0].params["lr"] = 1.0  # type: ignore[index]
    defaults = StudySpec.from_proto(config())
    assert (defaults.seed, dict(defaults.labels), defaults.warm_start.configurations) == (0, {}, ())
