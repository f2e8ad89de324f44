"""What a trial needs and what a node has, validated in one place.

A demand names a GPU type or accepts any (``ANY_GPU``); a node has one GPU type (a
mixed machine is advertised as several nodes). CPU and memory are part of the vector
so that dominant resource fairness (``ladder.scheduling.fairshare``) can see a
CPU-heavy trial on a GPU node, and so placement never over-commits host memory.
Every constructor from outside input goes through ``demand``/``node``/``tenant_policy``
so a bad value is refused with ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ladder.errors import InvalidArgument

ANY_GPU = ""  # a demand with this gpu_type fits any node's GPUs
MAX_GPUS = 64  # per trial: a trial never spans nodes, and no node has more
# Priorities rank a tenant's own studies; the bound keeps them a small ordinal scale.
MAX_PRIORITY = 1000


@dataclass(frozen=True, order=True)
class Resources:
    """A resource vector: GPUs (whole devices), CPU cores, memory in GB."""

    gpus: int = 0
    cpu: float = 0.0
    memory_gb: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.gpus + other.gpus, self.cpu + other.cpu,
                         self.memory_gb + other.memory_gb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.gpus - other.gpus, self.cpu - other.cpu,
                         self.memory_gb - other.memory_gb)

    def covers(self, other: Resources) -> bool:
        """True when every component of ``other`` fits in this vector."""
        return (self.gpus >= other.gpus and self.cpu >= other.cpu
                and self.memory_gb >= other.memory_gb)


NOTHING = Resources()


@dataclass(frozen=True)
class Demand:
    """What one trial needs on a single node (a trial never spans nodes)."""

    resources: Resources
    gpu_type: str = ANY_GPU

    @property
    def gpus(self) -> int:
        return self.resources.gpus

    def accepts(self, gpu_type: str) -> bool:
        """Whether a node with GPUs of ``gpu_type`` can serve this demand. A demand for
        no GPU accepts any node (it still takes CPU and memory there)."""
        return self.gpu_type == ANY_GPU or self.resources.gpus == 0 or self.gpu_type == gpu_type


@dataclass(frozen=True)
class Node:
    """A node's capacity and what is free on it now (``free`` = capacity minus what the
    trials placed there hold). Immutable: placing a trial returns a new Node."""

    node_id: str
    gpu_type: str
    capacity: Resources
    free: Resources

    def fits(self, demand: Demand) -> bool:
        return demand.accepts(self.gpu_type) and self.free.covers(demand.resources)

    def could_ever_fit(self, demand: Demand) -> bool:
        """Whether the demand fits this node once it is empty."""
        return demand.accepts(self.gpu_type) and self.capacity.covers(demand.resources)

    def take(self, demand: Demand) -> Node:
        return Node(self.node_id, self.gpu_type, self.capacity, self.free - demand.resources)

    def give(self, demand: Demand) -> Node:
        return Node(self.node_id, self.gpu_type, self.capacity, self.free + demand.resources)


class Tier(enum.Enum):
    """SPOT trials may be paused for a higher-priority one; STABLE trials never are.
    ``tier`` says which a running trial is in."""

    SPOT = "spot"
    STABLE = "stable"


def tier(spot_node: bool, stable_for_promoted: bool, promoted: bool) -> Tier:
    """The tier of a running trial. A study asks for the stable tier for its promoted
    trials (``stable_for_promoted``; those are never placed on a spot node) and takes
    the spot tier for its exploration: only a promoted trial of such a study, on a node
    that is not spot, is STABLE. Every other trial may be asked to checkpoint and pause
    for a higher-priority one, on any node (a spot node's reclaim is another matter)."""
    return Tier.STABLE if stable_for_promoted and promoted and not spot_node else Tier.SPOT


@dataclass(frozen=True)
class Trial:
    """A trial as the scheduler sees it. ``seq`` is its arrival order (FIFO among
    equals; a paused trial keeps its seq so it resumes ahead of newer work)."""

    trial_id: str
    tenant: str
    study: str
    demand: Demand
    priority: int = 0
    tier: Tier = Tier.SPOT
    seq: int = 0


@dataclass(frozen=True)
class TenantPolicy:
    """A tenant's weight in the fair share and its quota (None = no GPU cap)."""

    weight: float = 1.0
    max_gpus: int | None = None


DEFAULT_POLICY = TenantPolicy()


def _non_negative(value: float, field: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value!r}")
    if value < 0:
        raise InvalidArgument(f"{field} must be >= 0, got {value!r}")
    return value


def _count(value: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{field} must be a whole number, got {value!r}")
    if value < 0:
        raise InvalidArgument(f"{field} must be >= 0, got {value!r}")
    return value


def resources(gpus: int = 0, cpu: float = 0.0, memory_gb: float = 0.0,
              prefix: str = "") -> Resources:
    """A validated resource vector; ``prefix`` names the message's field (``demand.``)."""
    return Resources(_count(gpus, prefix + "gpus"), float(_non_negative(cpu, prefix + "cpu")),
                     float(_non_negative(memory_gb, prefix + "memory_gb")))


def demand(gpus: int = 0, gpu_type: str = ANY_GPU, cpu: float = 0.0,
           memory_gb: float = 0.0, field: str = "demand") -> Demand:
    """A trial's validated demand (``field`` names it in errors: ``trial_resources``
    for a study's). An empty demand is refused: a trial that needs nothing would never
    be held back by any quota or node."""
    vector = resources(gpus, cpu, memory_gb, field + ".")
    if vector == NOTHING:
        raise InvalidArgument(f"{field} must ask for at least one of gpus, cpu, memory_gb")
    if vector.gpus > MAX_GPUS:
        raise InvalidArgument(f"{field}.gpus must be <= {MAX_GPUS}, got {vector.gpus}")
    if not isinstance(gpu_type, str):
        raise InvalidArgument(f"{field}.gpu_type must be a string, got {gpu_type!r}")
    return Demand(vector, gpu_type)


# What a study's trial needs when its config declares nothing: one CPU core, no GPU.
DEFAULT_DEMAND = Demand(Resources(cpu=1.0))


def priority(value: int, field: str = "priority") -> int:
    """A validated study priority: a whole number within +-MAX_PRIORITY."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{field} must be a whole number, got {value!r}")
    if abs(value) > MAX_PRIORITY:
        raise InvalidArgument(
            f"{field} must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, got {value}")
    return value


def node(node_id: str, gpus: int, gpu_type: str = ANY_GPU, cpu: float = 0.0,
         memory_gb: float = 0.0, free: Resources | None = None) -> Node:
    """A validated node, empty unless ``free`` says what is left on it."""
    if not node_id:
        raise InvalidArgument("node.node_id is required")
    capacity = resources(gpus, cpu, memory_gb, "node.")
    left = capacity if free is None else free
    if not capacity.covers(left) or not left.covers(Resources()):
        raise InvalidArgument(f"node.free must lie between 0 and the capacity, got {left}")
    return Node(node_id, gpu_type, capacity, left)


def tenant_policy(weight: float = 1.0, max_gpus: int | None = None) -> TenantPolicy:
    """A validated tenant policy: weight > 0, max_gpus >= 0 or None."""
    if _non_negative(weight, "tenant.weight") == 0:
        raise InvalidArgument("tenant.weight must be > 0")
    cap = None if max_gpus is None else _count(max_gpus, "tenant.max_gpus")
    return TenantPolicy(float(weight), cap)
