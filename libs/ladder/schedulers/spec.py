"""The early-stopping parameters of a study, resolved once from its protobuf config.

``SchedulerSpec.from_study`` fills the documented defaults (``ladder.space.with_defaults``:
min_resource 1, reduction_factor 3, grace = min_resource, min_population =
ceil(reduction_factor), EMA smoothing with alpha 0.5, window 3) and checks the invariants
the rules rely on, so a bad config is reported once, by field, instead of producing
nonsense decisions.

Hyperband brackets follow Hyperband (Li et al., 2018): with s_max = floor(log_eta(
max_resource / min_resource)) there are s_max + 1 brackets; bracket b starts deciding at
rung b, and receives trials in proportion to Hyperband's
n = ceil((s_max + 1) / (s + 1) * eta^s) for s = s_max - b (27 : 12 : 6 : 4 for rungs
1, 3, 9 and max 27; the top bracket runs its trials to max_resource untouched). Those
are the weights Optuna's HyperbandPruner uses too. ``BracketAllocation.EVEN`` gives every
bracket the same share instead.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import StrEnum

from ladder.errors import InvalidArgument
from ladder.space import with_defaults
from ladder.v1 import study_pb2

# Relative tolerance when comparing resources: 0.1 * 3**k is not exact in binary.
RESOURCE_EPS = 1e-9


class SchedulerConfigError(InvalidArgument, ValueError):
    """A scheduler config the rules cannot work with; the message names the field."""


class SchedulerKind(StrEnum):
    NONE = "none"
    ASHA = "asha"
    MEDIAN = "median"
    HYPERBAND = "hyperband"


class AshaForm(StrEnum):
    STOPPING = "stopping"  # a trial below the cutoff is stopped (PRUNED)
    PROMOTION = "promotion"  # it is paused, and promoted if the rung later ranks it high


class BracketAllocation(StrEnum):
    HYPERBAND = "hyperband"  # Hyperband's n_s trials per bracket
    EVEN = "even"  # the same share per bracket


class SmoothingKind(StrEnum):
    NONE = "none"
    EMA = "ema"
    WINDOW = "window"


_KINDS = {
    study_pb2.NONE: SchedulerKind.NONE,
    study_pb2.ASHA: SchedulerKind.ASHA,
    study_pb2.MEDIAN: SchedulerKind.MEDIAN,
    study_pb2.HYPERBAND: SchedulerKind.HYPERBAND,
}
_FORMS = {
    study_pb2.ASHA_FORM_UNSPECIFIED: AshaForm.STOPPING,
    study_pb2.ASHA_STOPPING: AshaForm.STOPPING,
    study_pb2.ASHA_PROMOTION: AshaForm.PROMOTION,
}
_ALLOCATIONS = {
    study_pb2.BRACKET_ALLOCATION_UNSPECIFIED: BracketAllocation.HYPERBAND,
    study_pb2.BRACKETS_HYPERBAND: BracketAllocation.HYPERBAND,
    study_pb2.BRACKETS_EVEN: BracketAllocation.EVEN,
}
_SMOOTHING = {
    study_pb2.SMOOTHING_NONE: SmoothingKind.NONE,
    study_pb2.EMA: SmoothingKind.EMA,
    study_pb2.WINDOW: SmoothingKind.WINDOW,
}


@dataclass(frozen=True)
class SchedulerSpec:
    kind: SchedulerKind = SchedulerKind.ASHA
    min_resource: float = 1.0
    max_resource: float = 0.0  # 0 = no upper bound: rungs go on forever
    reduction_factor: float = 3.0
    grace_period: float = 1.0
    min_population: int = 3
    smoothing: SmoothingKind = SmoothingKind.EMA
    ema_alpha: float = 0.5
    window: int = 3
    maximize: bool = False
    metric: str = ""
    resource_unit: str = "steps"
    form: AshaForm = AshaForm.STOPPING
    allocation: BracketAllocation = BracketAllocation.HYPERBAND
    protect_late_bloomers: bool = False

    def __post_init__(self) -> None:
        for name in ("min_resource", "max_resource", "reduction_factor", "grace_period"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise SchedulerConfigError(f"scheduler.{name} must be finite (got {value})")
        if self.kind is SchedulerKind.NONE:
            return
        if self.min_resource <= 0:
            raise SchedulerConfigError(
                f"scheduler.min_resource must be > 0 (got {self.min_resource:g})"
            )
        if self.max_resource < 0:
            raise SchedulerConfigError(
                f"scheduler.max_resource must be >= 0 (got {self.max_resource:g})"
            )
        if self.reduction_factor <= 1:
            raise SchedulerConfigError(
                f"scheduler.reduction_factor must be > 1 (got {self.reduction_factor:g})"
            )
        if self.min_population < 1:
            raise SchedulerConfigError(
                f"scheduler.min_population must be >= 1 (got {self.min_population})"
            )
        if not 0 < self.ema_alpha <= 1:
            raise SchedulerConfigError(
                f"scheduler.ema_alpha must be in (0, 1] (got {self.ema_alpha:g})"
            )
        if self.window < 1:
            raise SchedulerConfigError(f"scheduler.window must be >= 1 (got {self.window})")
        if self.form is AshaForm.PROMOTION and self.kind is SchedulerKind.MEDIAN:
            raise SchedulerConfigError(
                "scheduler.form: ASHA_PROMOTION needs kind ASHA or HYPERBAND (median "
                "stopping has no top 1/eta to promote from)"
            )

    @classmethod
    def from_study(cls, config: study_pb2.StudyConfig) -> SchedulerSpec:
        """The spec of a study; unset fields take the documented defaults."""
        full = with_defaults(config)
        s = full.scheduler
        if s.kind not in _KINDS:
            raise SchedulerConfigError(f"scheduler.kind: unknown value {s.kind}")
        if s.smoothing not in _SMOOTHING:
            raise SchedulerConfigError(f"scheduler.smoothing: unknown value {s.smoothing}")
        if s.form not in _FORMS:
            raise SchedulerConfigError(f"scheduler.form: unknown value {s.form}")
        if s.bracket_allocation not in _ALLOCATIONS:
            raise SchedulerConfigError(
                f"scheduler.bracket_allocation: unknown value {s.bracket_allocation}"
            )
        return cls(
            kind=_KINDS[s.kind],
            min_resource=s.min_resource,
            max_resource=s.max_resource,
            reduction_factor=s.reduction_factor,
            grace_period=s.grace_period,
            min_population=s.min_population,
            smoothing=_SMOOTHING[s.smoothing],
            ema_alpha=s.ema_alpha,
            window=s.window,
            maximize=full.direction == study_pb2.MAXIMIZE,
            metric=full.metric,
            resource_unit=full.labels.get("resource_unit", "steps") or "steps",
            form=_FORMS[s.form],
            allocation=_ALLOCATIONS[s.bracket_allocation],
            protect_late_bloomers=s.protect_late_bloomers,
        )

    @classmethod
    def from_scheduler(
        cls,
        scheduler: study_pb2.SchedulerConfig,
        direction: int = study_pb2.MINIMIZE,
        metric: str = "",
    ) -> SchedulerSpec:
        """The spec for a bare SchedulerConfig (tests, tools)."""
        return cls.from_study(
            study_pb2.StudyConfig(scheduler=scheduler, direction=direction, metric=metric)
        )

    @property
    def enabled(self) -> bool:
        return self.kind is not SchedulerKind.NONE

    @property
    def eta(self) -> float:
        return self.reduction_factor

    @property
    def bounded(self) -> bool:
        return self.max_resource > 0

    def rung_resource(self, index: int) -> float:
        return self.min_resource * self.reduction_factor**index

    def is_rung(self, index: int) -> bool:
        """True when rung ``index`` exists: r_k < max_resource (or no maximum)."""
        if index < 0:
            return False
        if not self.bounded:
            return True
        return self.rung_resource(index) < self.max_resource * (1 - RESOURCE_EPS)

    def rungs(self, up_to: float | None = None) -> list[float]:
        """Rung milestones r_k = min_resource * eta^k with r_k < max_resource.

        Without a maximum the ladder is endless, so ``up_to`` (inclusive) bounds it.
        """
        if not self.enabled:
            return []
        if not self.bounded and up_to is None:
            raise SchedulerConfigError("rungs are unbounded without max_resource: pass up_to")
        out: list[float] = []
        index = 0
        while self.is_rung(index):
            resource = self.rung_resource(index)
            if up_to is not None and not reached(up_to, resource):
                break
            out.append(resource)
            index += 1
        return out

    @property
    def promotion(self) -> bool:
        """ASHA's promotion form: losers pause instead of stopping."""
        return self.form is AshaForm.PROMOTION and self.kind in (
            SchedulerKind.ASHA,
            SchedulerKind.HYPERBAND,
        )

    @property
    def brackets(self) -> int:
        """Hyperband bracket count s_max + 1 (1 unless HYPERBAND with a max_resource).

        Bracket b starts deciding at rung b (resource min_resource * eta^b), so the
        brackets trade many cheap early stops against few trials run longer. When
        min_resource * eta^s_max equals max_resource the top bracket has no rung at all:
        its trials run to the end, as in Hyperband.
        """
        if self.kind is not SchedulerKind.HYPERBAND or not self.bounded:
            return 1
        count = 1
        limit = self.max_resource * (1 + RESOURCE_EPS)
        while self.rung_resource(count) <= limit and count < 64:
            count += 1
        return count

    def bracket_weights(self) -> list[int]:
        """Relative number of trials per bracket (index = bracket)."""
        count = self.brackets
        if self.allocation is BracketAllocation.EVEN:
            return [1] * count
        s_max = count - 1
        return [
            math.ceil((s_max + 1) / (s + 1) * self.reduction_factor**s - RESOURCE_EPS)
            for s in (s_max - b for b in range(count))
        ]

    def bracket_of(self, trial_id: str) -> int:
        """The trial's bracket, from a stable hash of its id (same in every process),
        drawn with ``bracket_weights``."""
        if self.brackets == 1:
            return 0
        weights = self.bracket_weights()
        ticket = zlib.crc32(trial_id.encode()) % sum(weights)
        for bracket, weight in enumerate(weights):
            if ticket < weight:
                return bracket
            ticket -= weight
        raise AssertionError("unreachable: ticket < sum(weights)")

    def format_resource(self, resource: float) -> str:
        unit = self.resource_unit
        if unit.endswith("s") and resource == 1:
            unit = unit[:-1]
        return f"{resource:g} {unit}"


def reached(step: float, resource: float) -> bool:
    """``step`` is at or beyond ``resource`` (with a tolerance for float rungs)."""
    return step >= resource * (1 - RESOURCE_EPS)
