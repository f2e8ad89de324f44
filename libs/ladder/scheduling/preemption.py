"""Which running trials to checkpoint and pause so a higher-priority trial fits.

A preemption plan is asked for a trial the round left blocked (``chooser.Round.blocked``).
A running trial may be a victim only if all hold:

- its tier is SPOT (``resources.tier``: a STABLE trial, a promoted trial of a study that
  asked for the stable tier, on a node that is not spot, is never preempted; any other
  trial may be, on any node);
- its priority is strictly lower than the waiting trial's;
- it belongs to the waiting trial's tenant, or its tenant stays at least as rich as the
  waiting tenant after the move (weighted dominant share of the victim's tenant without
  the victim >= the waiting tenant's with the waiting trial): priority orders a
  tenant's own studies, and preempting another tenant must not make shares less fair.

Reclaim (``plan_reclaim``, the fair policy's other use of a pause, as Volcano's reclaim
or Kueue's fair-sharing preemption): a tenant below its weighted part whose trial is
blocked for lack of room (its backlog is 8-GPU trials while every GPU freed goes, in
fragments, to tenants whose small trials fit) may pause trials of another tenant of no
higher priority, not in the stable tier, if that tenant stays at least as rich as the
waiting one after the move, with all its victims of the plan counted together. Both
sides of the guard move toward each other, so no reclaim can be undone by one the
other way.

Among feasible plans (a single node whose free space plus the victims' demand fits the
waiting trial) the chosen one frees the fewest GPUs (the least work paused), then
leaves the fewest free GPUs on that node once the trial lands (best-fit again), then
pauses the lowest-priority work (the highest victim priority is smallest), then the
fewest trials, then by node id. Victims are paused (asked to checkpoint), never killed;
the caller resumes them when capacity frees, as pending trials with their old ``seq``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.resources import Node, Resources, Tier, Trial

# A node with more candidate victims than this is searched over the lowest-priority,
# smallest ones only: 2**12 subsets per node bounds the cost of one plan.
MAX_CANDIDATES_PER_NODE = 12


@dataclass(frozen=True)
class Plan:
    """Pause ``victims`` on ``node_id``; then ``trial`` fits there."""

    trial: Trial
    node_id: str
    victims: tuple[Trial, ...]

    @property
    def gpus_freed(self) -> int:
        return sum(v.demand.gpus for v in self.victims)


def may_preempt(victim: Trial, waiting: Trial, ledger: Ledger) -> bool:
    """Whether ``victim`` may be paused for ``waiting`` (rules in the module text)."""
    if victim.tier is Tier.STABLE or victim.priority >= waiting.priority:
        return False
    if victim.tenant == waiting.tenant:
        return True
    after_victim = ledger.share(victim.tenant, Resources() - victim.demand.resources)
    return after_victim >= ledger.share(waiting.tenant, waiting.demand.resources)


def _node_plan(waiting: Trial, node: Node, candidates: Sequence[Trial]
               ) -> tuple[tuple[int, int, int, int], tuple[Trial, ...]] | None:
    need = waiting.demand.resources
    pool = sorted(candidates, key=lambda v: (v.priority, v.demand.gpus, v.trial_id))
    pool = pool[:MAX_CANDIDATES_PER_NODE]
    best: tuple[tuple[int, int, int, int], tuple[Trial, ...]] | None = None
    for size in range(1, len(pool) + 1):
        for victims in itertools.combinations(pool, size):
            freed = Resources()
            for victim in victims:
                freed = freed + victim.demand.resources
            if not (node.free + freed).covers(need):
                continue
            left = node.free.gpus + freed.gpus - need.gpus
            key = (freed.gpus, left, max(v.priority for v in victims), size)
            if best is None or key < best[0]:
                best = (key, victims)
    return best


def plan_preemption(waiting: Trial, nodes: Iterable[Node],
                    running: Mapping[str, Sequence[Trial]], ledger: Ledger) -> Plan | None:
    """The cheapest plan that makes ``waiting`` fit, or None if none exists.

    ``running`` maps node id to the trials running there. A node where the trial
    already fits gives an empty plan (nothing to pause; the caller should place it).
    """
    best: tuple[tuple[int, int, int, int, str], Plan] | None = None
    for node in nodes:
        if not node.could_ever_fit(waiting.demand):
            continue
        if node.fits(waiting.demand):
            left = node.free.gpus - waiting.demand.gpus
            found: tuple[tuple[int, int, int, int], tuple[Trial, ...]] | None = (
                (0, left, -1, 0), ())
        else:
            candidates = [v for v in running.get(node.node_id, ())
                          if may_preempt(v, waiting, ledger)]
            reachable = node.free + sum((v.demand.resources for v in candidates), Resources())
            if not reachable.covers(waiting.demand.resources):
                continue
            found = _node_plan(waiting, node, candidates)
        if found is None:
            continue
        key = (*found[0], node.node_id)
        if best is None or key < best[0]:
            best = (key, Plan(waiting, node.node_id, found[1]))
    return None if best is None else best[1]


def may_reclaim(victim: Trial, waiting: Trial, ledger: Ledger) -> bool:
    """Whether ``victim`` may be paused to give its room to ``waiting``'s under-served
    tenant (rules in the module text; ``plan_reclaim`` checks the plan's victims
    together)."""
    if (victim.tier is Tier.STABLE or victim.tenant == waiting.tenant
            or victim.priority > waiting.priority):
        return False
    after_victim = ledger.share(victim.tenant, Resources() - victim.demand.resources)
    return after_victim >= ledger.share(waiting.tenant, waiting.demand.resources)


def plan_reclaim(waiting: Trial, node: Node, running: Sequence[Trial], ledger: Ledger
                 ) -> Plan | None:
    """The cheapest plan on ``node`` that pauses other, richer tenants' trials so
    ``waiting`` fits, or None (the caller asks only for a tenant below its part)."""
    candidates = [v for v in running if may_reclaim(v, waiting, ledger)]
    found = _node_plan(waiting, node, candidates)
    if found is None or not found[1]:
        return None
    victims = found[1]
    taken: dict[str, Resources] = {}
    for victim in victims:
        taken[victim.tenant] = taken.get(victim.tenant, Resources()) + victim.demand.resources
    mine = ledger.share(waiting.tenant, waiting.demand.resources)
    if any(ledger.share(tenant, Resources() - gone) < mine for tenant, gone in taken.items()):
        return None
    return Plan(waiting, node.node_id, victims)
