"""Node reservations for RequestWork: the one-node answer's counterpart of the chooser's
reservation for blocked big trials.

A node agent asks only about its own free space, so an answer cannot hold a node back
the way a full round does (``chooser``: the blocked trial's tenant reserves the node
closest to fitting it). Without a hold, the weight-2 tenant's 4- and 8-GPU trials wait
while every GPU a trial frees goes at once to some tenant's 1- or 2-GPU trial (best-fit
packs them into the half-full nodes): a big trial fits only where a node happens to
drain, and its tenant falls below its weight when its waiting work is all big (its
studies are of one size each). ``bench/fleet_sim.py --policies ladder-per-node
--trials-per-study 100`` shows it offline (the per-node answer without holds).

The rule, kept across answers by the caller (the suggest service: in Redis, with a
time to live):

- A tenant is *short* when it holds less than its weight's part of what the tenants
  with work hold in all (``shortfall``, in GPUs). When an answer leaves a short tenant
  with a blocked trial, that trial's study reserves the node closest to fitting it
  (most free GPUs of its type, then node id; one that fits it now is best: its next
  ask places the trial). Short tenants are served by their share, smallest first;
  a tenant holds no more reserved GPUs than it is short; at most ``limit`` nodes are
  held in all; one reservation per answer.
- A reserved node gets only the reserving study's trials: when its answer places one,
  the reservation ends; until then the node drains (nothing else goes there).
- A reservation whose study offers nothing, whose tenant is at its GPU quota or no
  longer short ends at the node's next ask; every reservation lapses with its time to
  live (the caller's), so one whose node went away holds nothing for long.

What it buys and costs, offline (``bench/fleet_sim.py --trials-per-study 100``, the
per-node policies): a drain lasts as long as the longest trial left on the node, so
it narrows the weight-2 tenant's shortfall after its small studies run out, at a few
points of utilisation; it does not make big trials start sooner than the tail of the
run-time distribution allows.

Quotas and preemption are untouched: a reservation only narrows which candidates one
node considers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ladder.scheduling.chooser import queue_key
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.resources import Demand, Node, Trial

DEFAULT_RESERVE_FRACTION = 0.05  # of the nodes at most held at once


@dataclass(frozen=True)
class Reservation:
    """Node ``node_id`` held for a trial of ``study`` (of ``tenant``) needing ``demand``.
    ``preempting``: made by a preemption plan (``work``): the trials it paused there
    free the room, held for the higher-priority study whether or not its tenant is short,
    and not counted in ``Reserved.limit``."""

    node_id: str
    tenant: str
    study: str
    demand: Demand
    preempting: bool = False


@dataclass(frozen=True)
class Reserved:
    """What a one-node answer needs to honour and make reservations: the nodes held
    now, every node with its free space (called only when a reservation may be made:
    the read costs the caller one pass over the nodes), the most nodes held at once."""

    held: Mapping[str, Reservation]
    nodes: Callable[[], Sequence[Node]]
    limit: int


def reserve_limit(nodes: int, fraction: float = DEFAULT_RESERVE_FRACTION) -> int:
    """The most nodes held at once: ``fraction`` of the nodes, at least one (none with
    a fraction of 0: reservations off)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the reserved fraction of the nodes must lie in [0, 1], got {fraction}")
    return max(1, round(nodes * fraction)) if fraction else 0


def closest_node(demand: Demand, nodes: Sequence[Node], held: Mapping[str, object]
                 ) -> Node | None:
    """The node not held that comes closest to fitting ``demand``: most free GPUs of a
    type it accepts, then node id."""
    best: Node | None = None
    for node in nodes:
        if node.node_id in held or not node.could_ever_fit(demand):
            continue
        if best is None or (-node.free.gpus, node.node_id) < (-best.free.gpus, best.node_id):
            best = node
    return best


def shortfall(ledger: Ledger, tenant: str, tenants: Sequence[str]) -> float:
    """How many GPUs (dominant-share equivalents) ``tenant`` holds below the level at
    which every tenant of ``tenants`` (those with work) would have the same weighted
    share, with what they hold now in all; <= 0 when it holds its part or more."""
    weights = {t: ledger.policy(t).weight for t in tenants}
    dominant = {t: ledger.share(t) * weights[t] for t in tenants}
    level = sum(dominant.values()) / sum(weights.values())
    return (level * weights[tenant] - dominant[tenant]) * ledger.total.gpus


def new_reservation(blocked: Sequence[Trial], tenants: Sequence[str], ledger: Ledger,
                    reserved: Reserved) -> Reservation | None:
    """The reservation one answer adds (see the module text), or None. ``blocked``: the
    trials the answer could not place for lack of space; ``tenants``: those with
    candidates."""
    if sum(not r.preempting for r in reserved.held.values()) >= reserved.limit:
        return None
    for tenant in sorted(tenants, key=lambda t: (ledger.share(t), t)):
        short = shortfall(ledger, tenant, tenants)
        if short <= 0:
            return None  # this tenant and every later one hold their part
        waiting = sorted((t for t in blocked if t.tenant == tenant), key=queue_key)
        held = sum(r.demand.gpus for r in reserved.held.values()
                   if r.tenant == tenant and not r.preempting)
        if not waiting or held >= short:
            continue
        target = closest_node(waiting[0].demand, reserved.nodes(), reserved.held)
        if target is not None:
            return Reservation(target.node_id, tenant, waiting[0].study, waiting[0].demand)
    return None
