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
| trial_policy | see ``TrialPolicySpec`` below                     |
| trial_resources | 1 CPU, no GPU (``ladder.scheduling.resources``; not written back) |
| priority   | 0 (within +-1000)                                   |

Pure code (no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from ladder.errors import InvalidArgument
from ladder.lifecycle import Budgets, check_budgets, check_limit
from ladder.params import PlainValue, params_to_dict, to_plain
from ladder.proto_enum import ProtoEnum
from ladder.schedulers.spec import SchedulerSpec
from ladder.scheduling import resources
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


class OomPolicy(StrEnum):
    RETRY_ONCE = "retry_once"  # one more attempt, then FAILED
    INFEASIBLE = "infeasible"  # FAILED at once


OOM_POLICIES = ProtoEnum(
    "trial_policy.on_out_of_memory",
    OomPolicy,
    study_pb2.OomPolicy,
    unset=OomPolicy.RETRY_ONCE,
)

CHECKPOINT_INTERVAL_SECONDS = 300.0
CHECKPOINTS_KEPT = 2
PREEMPTION_NOTICE_SECONDS = 25.0
STALL_TIMEOUT_SECONDS = 1800.0
MAX_INTERRUPTIONS = 25


@dataclass(frozen=True)
class TrialPolicySpec:
    """How a study's trials are checkpointed, watched and retried.

    | field                       | default                                          |
    |-----------------------------|--------------------------------------------------|
    | checkpoint_interval_seconds | 300 (0 when only checkpoint_interval_steps given) |
    | checkpoint_interval_steps   | 0 (by time only)                                 |
    | checkpoints_kept            | 2 per trial, plus those a PAUSE or result pins   |
    | preemption_notice_seconds   | 25                                               |
    | stall_timeout_seconds       | 1800 (None: off, from a negative value)          |
    | max_trial_seconds           | None (unlimited, from 0)                         |
    | on_out_of_memory            | RETRY_ONCE                                       |
    | max_failures                | 0 = the evaluate service's --max-attempts        |
    | max_interruptions           | 25 (None: unlimited, from a negative value)      |
    """

    checkpoint_interval_seconds: float = CHECKPOINT_INTERVAL_SECONDS
    checkpoint_interval_steps: int = 0
    checkpoints_kept: int = CHECKPOINTS_KEPT
    preemption_notice_seconds: float = PREEMPTION_NOTICE_SECONDS
    stall_timeout_seconds: float | None = STALL_TIMEOUT_SECONDS
    max_trial_seconds: float | None = None
    on_out_of_memory: OomPolicy = OomPolicy.RETRY_ONCE
    max_failures: int = 0
    max_interruptions: int | None = MAX_INTERRUPTIONS

    @classmethod
    def from_proto(cls, policy: study_pb2.TrialPolicy) -> TrialPolicySpec:
        """Validate and default ``policy``; raises StudyConfigError naming the field."""
        where = "trial_policy"
        for name in (
            "checkpoint_interval_seconds",
            "preemption_notice_seconds",
            "max_trial_seconds",
        ):
            value = getattr(policy, name)
            if not math.isfinite(value) or value < 0:
                raise StudyConfigError(f"{where}.{name} must be finite and >= 0 (got {value})")
        if not math.isfinite(policy.stall_timeout_seconds):
            raise StudyConfigError(
                f"{where}.stall_timeout_seconds must be finite "
                f"(negative = off; got {policy.stall_timeout_seconds})"
            )
        for name in ("checkpoint_interval_steps", "checkpoints_kept", "max_failures"):
            value = getattr(policy, name)
            if value < 0:
                raise StudyConfigError(f"{where}.{name} must be >= 0 (got {value})")
        by_steps_only = (
            policy.checkpoint_interval_steps > 0 and not policy.checkpoint_interval_seconds
        )
        stall = policy.stall_timeout_seconds
        return cls(
            checkpoint_interval_seconds=(
                0.0
                if by_steps_only
                else policy.checkpoint_interval_seconds or CHECKPOINT_INTERVAL_SECONDS
            ),
            checkpoint_interval_steps=policy.checkpoint_interval_steps,
            checkpoints_kept=policy.checkpoints_kept or CHECKPOINTS_KEPT,
            preemption_notice_seconds=(
                policy.preemption_notice_seconds or PREEMPTION_NOTICE_SECONDS
            ),
            stall_timeout_seconds=(None if stall < 0 else stall or STALL_TIMEOUT_SECONDS),
            max_trial_seconds=policy.max_trial_seconds or None,
            on_out_of_memory=OOM_POLICIES.parse(policy.on_out_of_memory, StudyConfigError),
            max_failures=policy.max_failures,
            max_interruptions=(
                None
                if policy.max_interruptions < 0
                else policy.max_interruptions or MAX_INTERRUPTIONS
            ),
        )

    def fill_proto(self, out: study_pb2.TrialPolicy) -> None:
        """Write every default into ``out`` (what the suggest service publishes)."""
        out.checkpoint_interval_seconds = self.checkpoint_interval_seconds
        out.checkpoint_interval_steps = self.checkpoint_interval_steps
        out.checkpoints_kept = self.checkpoints_kept
        out.preemption_notice_seconds = self.preemption_notice_seconds
        out.stall_timeout_seconds = (
            -1.0 if self.stall_timeout_seconds is None else self.stall_timeout_seconds
        )
        out.max_trial_seconds = self.max_trial_seconds or 0.0
        out.on_out_of_memory = OOM_POLICIES.number(self.on_out_of_memory)
        out.max_failures = self.max_failures
        out.max_interruptions = -1 if self.max_interruptions is None else self.max_interruptions

    def checkpoint_due(self, seconds_since: float, steps_since: int) -> bool:
        """Is a checkpoint due after this much training time and these many steps since
        the last one?"""
        by_time = (
            self.checkpoint_interval_seconds > 0
            and seconds_since >= self.checkpoint_interval_seconds
        )
        by_steps = (
            self.checkpoint_interval_steps > 0 and steps_since >= self.checkpoint_interval_steps
        )
        return by_time or by_steps


@dataclass(frozen=True)
class StudySpec:
    metric: str
    direction: Direction
    algorithm: Algorithm
    partitions: int
    max_trials: int  # 0 = unbounded; UpdateStudy's live value overrides it (StudyStore.gate)
    seed: int
    space: Space
    scheduler: SchedulerSpec
    warm_start: WarmStart
    labels: Mapping[str, str]
    trial_policy: TrialPolicySpec
    _proto: study_pb2.StudyConfig = field(repr=False, compare=False)
    max_parallel_trials: int = 0  # 0 = unbounded; overridden like max_trials
    # What each trial needs on one node (RequestWork's placement; the default when unset).
    demand: resources.Demand = resources.DEFAULT_DEMAND
    priority: int = 0  # higher first among the tenant's studies (ladder.scheduling)
    stable_for_promoted: bool = False  # promoted trials only on non-spot nodes

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
        check_limit("max_trials", config.max_trials, StudyConfigError)
        check_limit("max_parallel_trials", config.max_parallel_trials, StudyConfigError)
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
        trial_policy = TrialPolicySpec.from_proto(config.trial_policy)
        try:
            demand = trial_demand(config)
            priority = resources.priority(config.priority)
        except InvalidArgument as exc:
            raise StudyConfigError(str(exc)) from None
        check_budgets(Budgets.of(config), StudyConfigError, gpus=demand.gpus)
        proto = study_pb2.StudyConfig()
        proto.CopyFrom(config)
        proto.direction = DIRECTIONS.number(direction)
        proto.algorithm = ALGORITHMS.number(algorithm)
        proto.partitions = config.partitions or 1
        scheduler.fill_proto(proto.scheduler)
        trial_policy.fill_proto(proto.trial_policy)
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
            trial_policy=trial_policy,
            _proto=proto,
            max_parallel_trials=config.max_parallel_trials,
            demand=demand,
            priority=priority,
            stable_for_promoted=config.stable_for_promoted,
        )

    def to_proto(self) -> study_pb2.StudyConfig:
        """The config with every default filled (a copy)."""
        out = study_pb2.StudyConfig()
        out.CopyFrom(self._proto)
        return out


def trial_demand(config: study_pb2.StudyConfig) -> resources.Demand:
    """The study's trial_resources as a validated demand (the default when unset: it is
    not written into the config, so a study created before resources keeps its config)."""
    if not config.HasField("trial_resources"):
        return resources.DEFAULT_DEMAND
    r = config.trial_resources
    return resources.demand(r.gpus, r.gpu_type, r.cpu, r.memory_gb, field="trial_resources")


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
