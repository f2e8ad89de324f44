"""The model of a study: one frozen, fully defaulted ``StudySpec`` read from a
``StudyConfig``, the one place where a config is validated and defaulted.

``StudySpec.from_proto`` raises ``StudyConfigError`` (``SpaceError`` for the space and
the warm start, ``SchedulerConfigError`` for the scheduler) whose message names the
field, e.g. ``space.parameters[1] 'lr': float_range.low must be < high (got 0.1 >=
0.01)``. ``to_proto`` is the config with every default filled: what the suggest
service stores and publishes, so every consumer reads the same numbers.

| field      | default                                             |
|------------|-----------------------------------------------------|
| direction  | MINIMIZE                                            |
| algorithm  | RANDOM                                              |
| partitions | 1                                                   |
| seed       | 0                                                   |
| warm_start | none (no known configurations, no source study)     |
| scheduler  | see ``ladder.schedulers.spec`` (``SchedulerSpec``)  |

Pure code (no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from ladder.params import PlainValue, params_to_dict, to_plain
from ladder.proto_enum import ProtoEnum
from ladder.schedulers.spec import SchedulerSpec
from ladder.space import Space, SpaceError, StudyConfigError
from ladder.v1 import study_pb2

MAX_PARTITIONS = 1024


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class Algorithm(StrEnum):
    RANDOM = "random"  # quasi-random (Sobol)
    GP = "gp"
    TPE = "tpe"
    AUTO = "auto"


DIRECTIONS = ProtoEnum("direction", Direction, study_pb2.Direction, unset=Direction.MINIMIZE)
ALGORITHMS = ProtoEnum("algorithm", Algorithm, study_pb2.Algorithm, unset=Algorithm.RANDOM)


@dataclass(frozen=True)
class KnownConfiguration:
    """A configuration the study starts from: with a ``value``, an observation the
    model-based samplers learn from; without, a point handed out before any
    sampler suggestion."""

    params: Mapping[str, PlainValue]
    value: float | None = None


@dataclass(frozen=True)
class WarmStart:
    configurations: tuple[KnownConfiguration, ...] = ()
    from_study_id: str = ""  # "" = no source study

    @property
    def seeds(self) -> tuple[KnownConfiguration, ...]:
        """The configurations without a value, in the order given."""
        return tuple(c for c in self.configurations if c.value is None)

    @classmethod
    def from_proto(cls, warm: study_pb2.WarmStart) -> WarmStart:
        return cls(
            configurations=tuple(
                KnownConfiguration(
                    MappingProxyType(params_to_dict(known.params)),
                    known.value if known.has_value else None,
                )
                for known in warm.configurations
            ),
            from_study_id=warm.from_study_id,
        )


@dataclass(frozen=True)
class StudySpec:
    metric: str
    direction: Direction
    algorithm: Algorithm
    partitions: int
    max_trials: int  # 0 = unbounded
    seed: int
    space: Space
    scheduler: SchedulerSpec
    warm_start: WarmStart
    labels: Mapping[str, str]
    _proto: study_pb2.StudyConfig = field(repr=False, compare=False)

    @property
    def maximize(self) -> bool:
        return self.direction is Direction.MAXIMIZE

    @classmethod
    def from_proto(cls, config: study_pb2.StudyConfig) -> StudySpec:
        """Validate ``config`` and fill its defaults; raises StudyConfigError naming
        the field."""
        if not config.metric.strip():
            raise StudyConfigError(
                "metric is required (the objective metric name, e.g. 'val_loss')"
            )
        try:
            space = Space.from_proto(config.space)
        except SpaceError as exc:
            raise SpaceError(f"space.{exc}") from None
        if not config.space.parameters:
            raise SpaceError("space.parameters must not be empty")
        _check_warm_start(config.warm_start, space)
        if config.max_trials < 0:
            raise StudyConfigError(
                f"max_trials must be >= 0 (0 = unbounded; got {config.max_trials})"
            )
        if not 0 <= config.partitions <= MAX_PARTITIONS:
            raise StudyConfigError(
                f"partitions must be between 0 and {MAX_PARTITIONS} "
                f"(0 = 1; got {config.partitions})"
            )
        direction = DIRECTIONS.parse(config.direction, StudyConfigError)
        algorithm = ALGORITHMS.parse(config.algorithm, StudyConfigError)
        scheduler = SchedulerSpec.from_study(config)
        # The early-stop rules work on an endless ladder too, but a study states its
        # full budget: that is where a worker's trial is done.
        if scheduler.enabled and not scheduler.bounded:
            raise StudyConfigError(
                "scheduler.max_resource is required when scheduler.kind is "
                f"{scheduler.kind.name} (or set scheduler.kind NONE to disable early stopping)"
            )
        proto = study_pb2.StudyConfig()
        proto.CopyFrom(config)
        proto.direction = DIRECTIONS.number(direction)
        proto.algorithm = ALGORITHMS.number(algorithm)
        proto.partitions = config.partitions or 1
        scheduler.fill_proto(proto.scheduler)
        return cls(
            metric=config.metric,
            direction=direction,
            algorithm=algorithm,
            partitions=proto.partitions,
            max_trials=config.max_trials,
            seed=config.seed,
            space=space,
            scheduler=scheduler,
            warm_start=WarmStart.from_proto(config.warm_start),
            # Read-only: the spec is shared by every request of the study.
            labels=MappingProxyType(dict(config.labels)),
            _proto=proto,
        )

    def to_proto(self) -> study_pb2.StudyConfig:
        """The config with every default filled (a copy)."""
        out = study_pb2.StudyConfig()
        out.CopyFrom(self._proto)
        return out


def _check_warm_start(warm: study_pb2.WarmStart, space: Space) -> None:
    """Every known configuration must be exactly a valid point of ``space`` (and
    its value finite when given). ``from_study_id`` is checked by the suggest
    service, which can see whether that study exists."""
    for i, known in enumerate(warm.configurations):
        where = f"warm_start.configurations[{i}]"
        unset = sorted(n for n, v in known.params.items() if v.WhichOneof("value") is None)
        if unset:
            raise SpaceError(f"{where}: params: {unset[0]!r} has no value set")
        try:
            space.check_params({n: to_plain(v) for n, v in known.params.items()})
        except SpaceError as exc:
            raise SpaceError(f"{where}: {exc}") from None
        if known.has_value and not math.isfinite(known.value):
            raise StudyConfigError(f"{where}: value must be finite (got {known.value})")
