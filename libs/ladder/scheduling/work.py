"""One RequestWork answer: which studies' trials go to the asking node, and which
trials running there to pause for a higher-priority one. Pure: the suggest service
reads the state (``ladder.state.holds``, the studies' gates), asks ``plan_work``, then
creates or claims each trial with its hold (the scripts enforce the quotas again,
atomically: a plan made on a stale read only loses a placement, never breaks a quota).

A node agent names no study, so the pending work is not a list of trials: each ACTIVE
study with room offers candidates, its RESUMABLE trials first (their work so far is not
wasted; a preempted trial is one), then new ones, as many as the study may still hand
out (max_trials, max_parallel_trials) and the node may take in one answer. Candidates of
one tenant go by priority, then resumable before new, then round-robin over the
tenant's studies of equal priority (oldest study first); across tenants the weighted
dominant-resource fair share decides (``chooser``). ``fifo`` is the baseline the fleet
bench compares against: every study's candidates in creation order, first fit, no
weights, priorities or preemption.

Preemption (fair policy): when a candidate of a higher priority is blocked (it does not
fit what is free) ``preemption.plan_preemption`` picks the running trials of the node to
pause (lower priority; not in the stable tier, ``resources.tier``: on any node, spot or
not, unless a promoted trial of a study that asked for the stable tier; another
tenant's only if that keeps the shares fair). Trials already asked to pause count as
free-to-be: no second plan is made while the first one's victims are still
checkpointing. The plan's node is reserved for the waiting trial's study (a
``preempting`` reservation), so the room its victims free is not taken by the next small
trial of a tenant with a smaller share.

Across nodes: a node asks only for itself, and a full one asks rarely, so a plan made
only over the asking node finds victims only when their own node happens to ask. When
no plan on the asking node makes room (``WorkPlan.elsewhere``), ``plan_elsewhere`` plans
over every live node (the caller reads every node's holds in one batch): the victims are
asked to pause through their heartbeats, their node is reserved for the waiting study.
Several such plans for one study may be under way at once (up to the bound of the
reservations and the trials it may still hand out), what is under way counting for
the quota and the fairness guard.

Reclaim (fair policy): when no higher-priority plan applies, a blocked trial of the
poorest tenant below its part may pause richer tenants' trials on the asking node
(``reclaim``, ``preemption.plan_reclaim``); the node is then held for its study as
after a preemption plan.

Reservations (fair policy, ``reservation``): with ``reserved``, a node held for a
blocked trial's study considers that study's candidates only, and an answer that leaves
the most under-served tenant's trial blocked names a node to hold for it, so that big
trials are not starved by the small ones that take every GPU freed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ladder.scheduling.chooser import queue_key, schedule
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.placement import first_fit
from ladder.scheduling.preemption import Plan, may_preempt, plan_preemption, plan_reclaim
from ladder.scheduling.reservation import Reservation, Reserved, new_reservation, shortfall
from ladder.scheduling.resources import Demand, Node, Resources, Trial

DEFAULT_MAX_TRIALS = 8  # assignments in one answer when the offer sets none
# A cluster-wide preemption plan searches this many nodes at most (those needing the
# fewest GPUs freed): its cost stays that of a few nodes' plans on a large fleet.
MAX_NODES_SEARCHED = 32
# Whose trials such a plan reads: this many times MAX_NODES_SEARCHED nodes, picked by
# their free space before their trials are known (some will have no trial to pause),
# so the read stays that of a few dozen nodes however large the fleet.
READ_FACTOR = 2
RESUMED = "r"  # candidate id marks: study#r<i> resumes, study#n<i> is new
NEW = "n"


class Policy(enum.StrEnum):
    FAIR = "fair"
    FIFO = "fifo"


@dataclass(frozen=True)
class StudyWork:
    """What one ACTIVE study could hand out now."""

    study_id: str
    tenant: str
    demand: Demand
    priority: int
    created_ms: int
    resumable: int  # RESUMABLE trials queued
    room: int  # trials it may still hand out (max_parallel_trials; large if unbounded)
    new_left: int  # new trials its max_trials still allows (large if unbounded)


@dataclass
class WorkPlan:
    placements: list[Trial] = field(default_factory=list)  # in order
    pause: list[str] = field(default_factory=list)  # trial ids to preempt
    reserve: Reservation | None = None  # a node to hold from now on (any node)
    release: bool = False  # the asking node's reservation ends
    # A higher-priority trial left blocked that no plan on this node makes room for:
    # the caller may look for one over the cluster (``plan_elsewhere``).
    elsewhere: Trial | None = None


def resumed(candidate: Trial) -> bool:
    return candidate.trial_id.rsplit("#", 1)[1].startswith(RESUMED)


def fits_at_most(demand: Demand, node: Node) -> int:
    """How many trials of ``demand`` the node's free space takes (0 when none ever
    fits it; a demand of none of a resource does not limit by that resource)."""
    if not node.could_ever_fit(demand):
        return 0
    need, free = demand.resources, node.free
    counts = [free.gpus // need.gpus if need.gpus else None,
              int(free.cpu // need.cpu) if need.cpu else None,
              int(free.memory_gb // need.memory_gb) if need.memory_gb else None]
    return min(c for c in counts if c is not None)


def candidates(studies: Sequence[StudyWork], per_study: int, node: Node | None = None
               ) -> list[Trial]:
    """Each study's candidates (see the module text), ``seq`` giving the order within
    a tenant and priority: resumable ones first, then new ones round-robin over the
    studies by age. With ``node``: no more per study than the node's free space takes,
    none of a study that can never fit it, and of a study that does not fit now one,
    after those that do within its priority (it may be blocked: a preemption plan's
    trigger): a long backlog of large trials does not use up the chooser's scan of a
    tenant (``chooser.DEFAULT_SCAN_LIMIT``) before its small ones."""
    out = []
    ordered = sorted(studies, key=lambda s: (s.created_ms, s.study_id))
    late = 2 * per_study * len(ordered)
    for rank, study in enumerate(ordered):
        room = min(study.room, per_study)
        later = 0
        if node is not None:
            if not node.could_ever_fit(study.demand):
                continue
            fits = fits_at_most(study.demand, node)
            room, later = min(room, max(1, fits)), 0 if fits else late
        taken = min(study.resumable, room)
        for i in range(taken):
            out.append(Trial(f"{study.study_id}#{RESUMED}{i}", study.tenant, study.study_id,
                             study.demand, study.priority,
                             seq=later + i * len(ordered) + rank))
        for i in range(min(room - taken, study.new_left)):
            out.append(Trial(f"{study.study_id}#{NEW}{i}", study.tenant, study.study_id,
                             study.demand, study.priority,
                             seq=later + (per_study + i) * len(ordered) + rank))
    return out


def _fifo(node: Node, pending: Sequence[Trial], ledger: Ledger, created: dict[str, int],
          max_trials: int) -> list[Trial]:
    placed: list[Trial] = []
    for trial in sorted(pending, key=lambda t: (created[t.study], t.seq, t.trial_id)):
        if len(placed) >= max_trials:
            break
        if not ledger.within_quota(trial.tenant, trial.demand.resources):
            continue
        if first_fit(trial.demand, [node]) is None:
            continue
        node = node.take(trial.demand)
        ledger.add(trial.tenant, trial.demand.resources)
        placed.append(trial)
    return placed


def plan_work(node: Node, studies: Sequence[StudyWork], ledger: Ledger,
              running: Sequence[tuple[Trial, bool]], policy: Policy = Policy.FAIR,
              max_trials: int = DEFAULT_MAX_TRIALS, reserved: Reserved | None = None
              ) -> WorkPlan:
    """The answer for ``node`` (``node.free``: what is free on it now). ``running``:
    the trials holding resources on it, each with whether a plan already asked it to
    pause. ``ledger`` holds every tenant's use and policy; it is updated with the
    placements. ``reserved``: the nodes held (fair policy; none: no reservations)."""
    max_trials = max_trials or DEFAULT_MAX_TRIALS
    if policy is Policy.FIFO:
        pending = candidates(studies, max_trials, node)
        created = {s.study_id: s.created_ms for s in studies}
        return WorkPlan(_fifo(node, pending, ledger, created, max_trials))
    mine = reserved.held.get(node.node_id) if reserved is not None else None
    release = False
    if mine is not None:
        only = [s for s in studies if s.study_id == mine.study]
        if (only and ledger.within_quota(mine.tenant, mine.demand.resources)
                and (mine.preempting or shortfall(
                    ledger, mine.tenant, sorted({s.tenant for s in studies})) > 0)):
            studies = only
        else:  # nothing left to hold it for, or its tenant holds its part again
            mine, release = None, True
    pending = candidates(studies, max_trials, node)
    decided = schedule(pending, [node], ledger, reserve=False)
    plan = WorkPlan([trial for trial, _ in decided.placements][:max_trials])
    plan.release = release or (mine is not None and bool(plan.placements))
    if reserved is not None and mine is None and decided.blocked:
        held = {k: v for k, v in reserved.held.items() if k != node.node_id}
        plan.reserve = new_reservation(
            decided.blocked, sorted({t.tenant for t in pending}), ledger,
            Reserved(held, reserved.nodes, reserved.limit))
    if not decided.blocked:
        return plan
    free = node.free
    for trial in plan.placements:
        free = free - trial.demand.resources
    leaving = sum((t.demand.resources for t, pausing in running if pausing), Resources())
    waiting = max(decided.blocked, key=lambda t: (t.priority, -t.seq))
    after = Node(node.node_id, node.gpu_type, node.capacity, free + leaving)
    if after.fits(waiting.demand):
        return plan  # the victims of an earlier plan make room once they paused
    others = [t for t, pausing in running if not pausing]
    found = plan_preemption(waiting, [after], {node.node_id: others}, ledger)
    if found is None and reserved is not None:
        holding = {t for t, used in ledger.used.items() if used.gpus > 0}
        found = reclaim(decided.blocked, after, others, ledger,
                        sorted(holding | {t.tenant for t in pending}))
    if found is None:
        plan.elsewhere = waiting
        return plan
    plan.pause = [victim.trial_id for victim in found.victims]
    if reserved is not None:  # the room freed is the waiting study's
        plan.reserve = held_for(found.trial, node.node_id)
    return plan


def reclaim(blocked: Sequence[Trial], node: Node, running: Sequence[Trial], ledger: Ledger,
            tenants: Sequence[str]) -> Plan | None:
    """A reclaim plan (``preemption.plan_reclaim``) on ``node`` for the blocked trial of
    the poorest tenant below its part (``reservation.shortfall`` among ``tenants``:
    those holding GPUs or waiting) by at least what that trial needs, or None.
    ``node.free`` counts the room trials already pausing there will free: a trial that
    fits it waits for them."""
    for tenant in sorted({t.tenant for t in blocked}, key=lambda t: (ledger.share(t), t)):
        short = shortfall(ledger, tenant, tenants)
        if short <= 0:
            return None  # this tenant and every richer one hold their part
        waiting = min((t for t in blocked if t.tenant == tenant), key=queue_key)
        if short < waiting.demand.gpus:
            continue  # placing it would take the tenant past its part: no pause for that
        if node.fits(waiting.demand) or not node.could_ever_fit(waiting.demand):
            continue
        if not ledger.within_quota(tenant, waiting.demand.resources):
            continue
        found = plan_reclaim(waiting, node, running, ledger)
        if found is not None:
            return found
    return None


def held_for(waiting: Trial, node_id: str) -> Reservation:
    """The reservation a preemption plan makes: ``node_id`` drains for ``waiting``'s
    study (its victims' room does not go to the next small trial)."""
    return Reservation(node_id, waiting.tenant, waiting.study, waiting.demand,
                       preempting=True)


def elsewhere_due(study: StudyWork, held: Mapping[str, Reservation], limit: int) -> bool:
    """Whether another cluster-wide plan may be made for ``study``: fewer of its plans
    under way (its preempting reservations) than ``limit`` and than the trials it may
    still hand out. The caller asks before reading the cluster."""
    under_way = sum(r.preempting and r.study == study.study_id for r in held.values())
    return under_way < min(limit, study.room, study.resumable + study.new_left)


def nodes_to_read(waiting: Trial, nodes: Sequence[Node], held: Mapping[str, Reservation],
                  asking: str = "") -> list[str]:
    """The nodes whose trials a cluster-wide plan for ``waiting`` reads (and
    ``plan_elsewhere`` then searches): every node a preempting reservation holds (the
    trials pausing there count as gone for the quota and the fairness guard) and, of
    those it could search, the ``READ_FACTOR * MAX_NODES_SEARCHED`` that need the fewest
    GPUs freed."""
    need = waiting.demand.resources.gpus
    open_nodes = sorted(
        (max(0, need - node.free.gpus), node.node_id) for node in nodes
        if node.node_id != asking and node.node_id not in held
        and node.could_ever_fit(waiting.demand))
    pausing = {node_id for node_id, r in held.items() if r.preempting}
    nearest = {node_id for _, node_id in open_nodes[:READ_FACTOR * MAX_NODES_SEARCHED]}
    return sorted(pausing | nearest)


def plan_elsewhere(waiting: Trial, study: StudyWork, nodes: Sequence[Node],
                   running: Mapping[str, Sequence[tuple[Trial, bool]]], ledger: Ledger,
                   held: Mapping[str, Reservation], limit: int, asking: str = ""
                   ) -> tuple[Plan, Reservation] | None:
    """A preemption plan over the whole cluster for ``waiting`` (a ``WorkPlan.elsewhere``
    of ``study``) and the reservation that keeps the room it frees for it, or None.

    ``nodes``: the live nodes ``nodes_to_read`` picked, with their free space;
    ``running``: node id -> the trials holding resources there, each with whether a
    plan already asked it to pause;
    ``held``: the reservations; ``asking``: the node whose own plan found nothing.
    Several plans for one study may be under way at once (its victims on different
    nodes pause in parallel), but no more than ``limit`` (the caller's: the bound of the
    short tenants' reservations, ``Reserved.limit``; each holds a node that drains) and
    than the trials it may still hand out (``elsewhere_due``); what is under way counts
    as done: the pausing victims no longer count for their tenants
    and the preempting reservations count for theirs, so neither the quota nor the
    fairness guard (``preemption.may_preempt``) is passed by plans made in a row. A node
    reserved, or with trials already pausing (that room is promised), is not searched;
    of the others, the ``MAX_NODES_SEARCHED`` that need the fewest GPUs freed are."""
    if not elsewhere_due(study, held, limit):
        return None
    after = ledger.copy()
    for trials in running.values():
        for trial, pausing in trials:
            if pausing:
                after.remove(trial.tenant, trial.demand.resources)
    for reservation in held.values():
        if reservation.preempting:
            after.add(reservation.tenant, reservation.demand.resources)
    if not after.within_quota(waiting.tenant, waiting.demand.resources):
        return None
    need = waiting.demand.resources
    open_nodes: list[tuple[int, str, Node]] = []
    victims: dict[str, list[Trial]] = {}
    for node in nodes:
        trials = running.get(node.node_id, ())
        if (node.node_id == asking or node.node_id in held
                or not node.could_ever_fit(waiting.demand) or any(p for _, p in trials)):
            continue
        victims[node.node_id] = [t for t, _ in trials if may_preempt(t, waiting, after)]
        freeable = sum((t.demand.resources for t in victims[node.node_id]), Resources())
        if (node.free + freeable).covers(need):
            open_nodes.append((max(0, need.gpus - node.free.gpus), node.node_id, node))
    searched = [node for *_, node in sorted(open_nodes)[:MAX_NODES_SEARCHED]]
    found = plan_preemption(waiting, searched, victims, after)
    if found is None:
        return None
    return found, held_for(waiting, found.node_id)
