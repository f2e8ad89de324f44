"""The early-stopping part of a study: its defaults, its validation, its rungs and brackets.

``SchedulerSpec`` is read from a study's ``SchedulerConfig`` (``from_study``; the whole
study is read by ``ladder.study.StudySpec``) or built directly (tests, benchmarks).
Either way a zero means "the default", as in study.proto, and construction checks the
invariants the rules rely on, so a bad config is reported once, by field
(``SchedulerConfigError``), instead of producing nonsense decisions.

| field              | default                                                  |
|--------------------|----------------------------------------------------------|
| kind               | ASHA                                                     |
| min_resource       | 1                                                        |
| max_resource       | 0: no upper bound, rungs go on (a study must set it)     |
| reduction_factor   | 3 (eta)                                                  |
| grace_period       | min_resource                                             |
| min_population     | ceil(reduction_factor)                                   |
| smoothing          | EMA, ema_alpha 0.5 (window 3 for WINDOW)                 |
| form               | STOPPING                                                 |
| allocation         | HYPERBAND                                                |

Rungs are r_k = min_resource * eta^k below max_resource; the worker, the early-stop
service and the replay all ask this class for them.

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

from ladder.proto_enum import ProtoEnum
from ladder.space import StudyConfigError, format_number
from ladder.v1 import study_pb2

# Relative tolerance when comparing resources: 0.1 * 3**k is not exact in binary.
RESOURCE_EPS = 1e-9

DEFAULT_MIN_RESOURCE = 1.0
DEFAULT_REDUCTION_FACTOR = 3.0
DEFAULT_EMA_ALPHA = 0.5
DEFAULT_WINDOW = 3
_REAL_FIELDS = ("min_resource", "max_resource", "reduction_factor", "grace_period", "ema_alpha")


class SchedulerConfigError(StudyConfigError):
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


SCHEDULER_KINDS = ProtoEnum(
    "scheduler.kind", SchedulerKind, study_pb2.SchedulerKind, unset=SchedulerKind.ASHA
)
SMOOTHINGS = ProtoEnum(
    "scheduler.smoothing", SmoothingKind, study_pb2.SmoothingKind, unset=SmoothingKind.EMA
)
ASHA_FORMS = ProtoEnum("scheduler.form", AshaForm, study_pb2.AshaForm, unset=AshaForm.STOPPING)
BRACKET_ALLOCATIONS = ProtoEnum(
    "scheduler.bracket_allocation",
    BracketAllocation,
    study_pb2.BracketAllocation,
    unset=BracketAllocation.HYPERBAND,
)


@dataclass(frozen=True)
class SchedulerSpec:
    kind: SchedulerKind = SchedulerKind.ASHA
    min_resource: float = 0.0
    max_resource: float = 0.0  # 0 = no upper bound: rungs go on forever
    reduction_factor: float = 0.0
    grace_period: float = 0.0
    min_population: int = 0
    smoothing: SmoothingKind = SmoothingKind.EMA
    ema_alpha: float = 0.0
    window: int = 0
    maximize: bool = False
    metric: str = ""
    resource_unit: str = "steps"
    form: AshaForm = AshaForm.STOPPING
    allocation: BracketAllocation = BracketAllocation.HYPERBAND
    protect_late_bloomers: bool = False

    def __post_init__(self) -> None:
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise SchedulerConfigError(f"scheduler.{name} must be finite (got {value})")
        self._fill_defaults()
        if self.enabled:
            self._check()

    def _fill_defaults(self) -> None:
        def default(name: str, value: float) -> None:
            if getattr(self, name) == 0:
                object.__setattr__(self, name, value)

        default("min_resource", DEFAULT_MIN_RESOURCE)
        default("reduction_factor", DEFAULT_REDUCTION_FACTOR)
        default("grace_period", self.min_resource)
        if self.reduction_factor > 0:  # a bad eta is reported by _check, not rounded here
            default("min_population", max(1, math.ceil(self.reduction_factor)))
        default("ema_alpha", DEFAULT_EMA_ALPHA)
        default("window", DEFAULT_WINDOW)

    def _check(self) -> None:
        def bad(message: str) -> SchedulerConfigError:
            return SchedulerConfigError(f"scheduler.{message}")

        fmt = format_number
        if self.min_resource <= 0:
            raise bad(f"min_resource must be > 0 (got {fmt(self.min_resource)})")
        if self.max_resource != 0 and self.max_resource <= self.min_resource:
            raise bad(
                "max_resource must be > min_resource "
                f"(got {fmt(self.max_resource)} <= {fmt(self.min_resource)})"
            )
        if self.reduction_factor <= 1:
            raise bad(f"reduction_factor must be > 1 (got {fmt(self.reduction_factor)})")
        if self.grace_period < 0:
            raise bad(f"grace_period must be >= 0 (got {fmt(self.grace_period)})")
        if self.min_population < 1:
            raise bad(f"min_population must be >= 1 (got {self.min_population})")
        if not 0 < self.ema_alpha <= 1:
            raise bad(f"ema_alpha must be in (0, 1] (got {fmt(self.ema_alpha)})")
        if self.window < 1:
            raise bad(f"window must be >= 1 (got {self.window})")
        if self.form is AshaForm.PROMOTION and self.kind is SchedulerKind.MEDIAN:
            raise bad(
                "form: ASHA_PROMOTION needs kind ASHA or HYPERBAND (median "
                "stopping has no top 1/eta to promote from)"
            )

    @classmethod
    def from_proto(
        cls,
        s: study_pb2.SchedulerConfig,
        *,
        maximize: bool = False,
        metric: str = "",
        resource_unit: str = "steps",
    ) -> SchedulerSpec:
        """The spec of a SchedulerConfig; unset fields take the defaults."""
        return cls(
            kind=SCHEDULER_KINDS.parse(s.kind, SchedulerConfigError),
            min_resource=s.min_resource,
            max_resource=s.max_resource,
            reduction_factor=s.reduction_factor,
            grace_period=s.grace_period,
            min_population=s.min_population,
            smoothing=SMOOTHINGS.parse(s.smoothing, SchedulerConfigError),
            ema_alpha=s.ema_alpha,
            window=s.window,
            maximize=maximize,
            metric=metric,
            resource_unit=resource_unit,
            form=ASHA_FORMS.parse(s.form, SchedulerConfigError),
            allocation=BRACKET_ALLOCATIONS.parse(s.bracket_allocation, SchedulerConfigError),
            protect_late_bloomers=s.protect_late_bloomers,
        )

    @classmethod
    def from_study(cls, config: study_pb2.StudyConfig) -> SchedulerSpec:
        """The scheduler part of a study (direction, metric and resource unit included)."""
        return cls.from_proto(
            config.scheduler,
            maximize=config.direction == study_pb2.MAXIMIZE,
            metric=config.metric,
            resource_unit=config.labels.get("resource_unit", "steps") or "steps",
        )

    def fill_proto(self, s: study_pb2.SchedulerConfig) -> None:
        """Write the defaulted fields into ``s``, the config this spec was read from.

        ``form`` and ``bracket_allocation`` stay as given: published configs have always
        kept them unset, and a re-created study is compared with the stored config.
        """
        s.kind = SCHEDULER_KINDS.number(self.kind)
        s.smoothing = SMOOTHINGS.number(self.smoothing)
        s.min_resource = self.min_resource
        s.reduction_factor = self.reduction_factor
        s.grace_period = self.grace_period
        s.min_population = self.min_population
        s.ema_alpha = self.ema_alpha
        s.window = self.window

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

    def decision_rungs(self, up_to: float) -> list[float]:
        """The rungs up to ``up_to`` at which ASHA or Hyperband may stop or pause a
        trial: those from the grace period on. Median stopping and no scheduler have
        none. A worker waits briefly at these for the decision."""
        if self.kind not in (SchedulerKind.ASHA, SchedulerKind.HYPERBAND):
            return []
        return [r for r in self.rungs(up_to=up_to) if reached(r, self.grace_period)]

    def verdict_pending(self, trial_id: str, step: float, decided: float | None) -> bool:
        """Whether a trial at ``step`` must wait before training on: in the promotion
        form every trial is paused or promoted at each rung of its bracket from the grace
        period on, so it waits at the highest such rung ``step`` reached until a verdict
        about it arrives (``decided``: the resource of the latest verdict, None before
        any). The stopping form never holds a trial: a STOP comes when it comes."""
        if not self.promotion:
            return False
        first = self.bracket_of(trial_id)
        held = [
            resource
            for index, resource in enumerate(self.rungs(up_to=step))
            if index >= first and reached(resource, self.grace_period)
        ]
        return bool(held) and (decided is None or not reached(decided, held[-1]))

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
