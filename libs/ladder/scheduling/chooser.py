"""A scheduling round: which pending trials start now, and where.

Order. Each step takes the tenant with work left whose weighted dominant share
(``fairshare``) is smallest, ties by tenant name; within that tenant, trials go by
priority then arrival (``seq``). Priority ranks a tenant's own studies and does not
jump the fair share: were it global, any tenant could take the cluster by declaring
its studies urgent (DRF's strategy-proofness would be lost). A high-priority study
still gets its tenant's share at once: its trials are first in its tenant's queue, and
``preemption`` pauses its tenant's lower-priority work for it. The chosen trial goes to
the best-fit node (``placement``); the ledger is updated, and the next step sees the
new shares.

Quotas. A trial that would take its tenant past ``max_gpus`` is skipped this round (a
smaller trial of the same tenant may still go): the chooser never exceeds a quota.

Blocked trials and reservations. A trial that fits no node now is skipped (smaller
work backfills around it) but, so that 8-GPU trials are not starved by a stream of
1-GPU ones, its tenant's first blocked trial reserves the node closest to fitting it
(most free GPUs of its type, then node id): nothing else is placed there this round,
so the node drains until the trial fits. One reservation per tenant per round keeps
the idle capacity this costs bounded. ``scan_limit`` bounds how many skipped trials
one tenant is looked through per round (as Slurm's backfill depth does), keeping a
round cheap when the backlog is long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.placement import best_fit
from ladder.scheduling.resources import ANY_GPU, Node, Trial

DEFAULT_SCAN_LIMIT = 64


@dataclass
class Round:
    """What one round decided: placements in the order they were made, the trials
    that fit no node (candidates for a preemption plan), the nodes held back."""

    placements: list[tuple[Trial, str]] = field(default_factory=list)
    blocked: list[Trial] = field(default_factory=list)
    reserved: dict[str, str] = field(default_factory=dict)  # node_id -> trial_id


def queue_key(trial: Trial) -> tuple[int, int, str]:
    """The order within a tenant: higher priority first, then arrival."""
    return (-trial.priority, trial.seq, trial.trial_id)


def _reserve_for(trial: Trial, nodes: Mapping[str, Node], taken: Iterable[str]) -> str | None:
    held = set(taken)
    best: tuple[int, str] | None = None
    for node in nodes.values():
        if node.node_id in held or not node.could_ever_fit(trial.demand):
            continue
        key = (-node.free.gpus, node.node_id)
        if best is None or key < best:
            best = key
    return None if best is None else best[1]


def _most_free(nodes: Mapping[str, Node], reserved: Mapping[str, str]) -> dict[str, int]:
    """The most free GPUs on any open node, per GPU type: a quick refusal for a trial
    larger than that, so a long blocked backlog costs no node scan per trial."""
    most: dict[str, int] = {}
    for node in nodes.values():
        if node.node_id not in reserved and node.free.gpus > most.get(node.gpu_type, -1):
            most[node.gpu_type] = node.free.gpus
    return most


def _may_fit(trial: Trial, most_free: Mapping[str, int]) -> bool:
    wanted = trial.demand
    if wanted.gpus == 0:
        return True
    if wanted.gpu_type == ANY_GPU:
        return any(wanted.gpus <= n for n in most_free.values())
    return wanted.gpus <= most_free.get(wanted.gpu_type, -1)


def schedule(pending: Iterable[Trial], nodes: Iterable[Node], ledger: Ledger, *,
             reserve: bool = True, scan_limit: int = DEFAULT_SCAN_LIMIT) -> Round:
    """Place as many pending trials as fit, by priority, fair share and best-fit.

    ``ledger`` is updated with every placement (the caller's tally of what runs);
    ``nodes`` are read, never changed (the round works on a copy of their free space).
    """
    queues: dict[str, list[Trial]] = {}
    for trial in pending:
        queues.setdefault(trial.tenant, []).append(trial)
    for queue in queues.values():
        queue.sort(key=queue_key, reverse=True)  # pop() from the end = next in order
    free = {n.node_id: n for n in nodes}
    decided = Round()
    skipped: dict[str, list[Trial]] = {tenant: [] for tenant in queues}
    reserving: set[str] = set()  # tenants that hold a reservation this round
    most_free = _most_free(free, decided.reserved)
    while True:
        heads = [(ledger.share(t), t) for t, q in queues.items()
                 if q and len(skipped[t]) < scan_limit]
        if not heads:
            break
        tenant = min(heads)[1]
        trial = queues[tenant].pop()
        if not ledger.within_quota(tenant, trial.demand.resources):
            skipped[tenant].append(trial)
            continue
        target = None
        if _may_fit(trial, most_free):
            open_nodes = (n for n in free.values() if n.node_id not in decided.reserved)
            target = best_fit(trial.demand, open_nodes)
        if target is None:
            skipped[tenant].append(trial)
            decided.blocked.append(trial)
            if reserve and tenant not in reserving:
                node_id = _reserve_for(trial, free, decided.reserved)
                if node_id is not None:
                    decided.reserved[node_id] = trial.trial_id
                    reserving.add(tenant)
                    most_free = _most_free(free, decided.reserved)
            continue
        free[target.node_id] = target.take(trial.demand)
        most_free = _most_free(free, decided.reserved)
        ledger.add(tenant, trial.demand.resources)
        decided.placements.append((trial, target.node_id))
    return decided


def fill_node(node: Node, pending: Sequence[Trial], ledger: Ledger) -> list[Trial]:
    """A worker agent's request: node ``node`` has ``node.free``; which pending trials
    to start there (in order). The same rule as a full round on a one-node cluster;
    no reservation, since the agent asks only about its own free slots."""
    return [trial for trial, _ in schedule(pending, [node], ledger, reserve=False).placements]
