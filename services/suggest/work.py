"""RequestWork: a node agent offers its free resources, the scheduler answers with
trials of any tenant's studies placed there and the trials there to pause.

Thin: the rules are ``ladder.scheduling.work.plan_work`` (fair share, quotas, priority,
best fit, preemption, node reservations) and ``plan_elsewhere`` (preemption on other
nodes), the holds, reservations and their atomic quota checks ``ladder.state.holds``
and the scripts; trials are created and claimed exactly as Suggest does
(``SuggestServicer._new_trials`` / ``TrialStore.claim_resumable``), with a hold.

Cost. One call reads the node offers once (the cluster's total, its nodes, their
count), and at most once per ``LADDER_SCHED_VIEW_SECONDS`` (other calls reuse that read
with the asking node's offer updated). A plan over every node (every live node's free
space, then the holds of the few dozen nodes ``nodes_to_read`` picks: three pipelined
round trips whatever the fleet's size) is made only for a blocked trial whose priority is above the
lowest of the live studies (no lower-priority trial can run otherwise), while fewer of
its study's plans are under way than the reservation bound, and not again for a study
within ``QUIET_SECONDS`` of a search for it that found nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING

from ladder import lifecycle, quotas
from ladder.config import Settings
from ladder.errors import AtCapacity, BudgetExhausted, Conflict, InvalidArgument, NotFound
from ladder.scheduling import resources as res
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.reservation import Reservation, Reserved, reserve_limit
from ladder.scheduling.work import (
    Policy,
    StudyWork,
    elsewhere_due,
    nodes_to_read,
    plan_elsewhere,
    plan_work,
    resumed,
)
from ladder.state.holds import Hold, HoldStore, Offered, cluster_total
from ladder.state.studies import Gate
from ladder.study import StudySpec
from ladder.v1 import study_pb2, suggest_pb2
from opentelemetry import metrics

if TYPE_CHECKING:
    from services.suggest.service import SuggestServicer

log = logging.getLogger("ladder.suggest.work")
_meter = metrics.get_meter("ladder.suggest")
_latency = _meter.create_histogram(
    "ladder.suggest.request_work.latency", unit="ms", description="RequestWork latency")
_assigned = _meter.create_counter(
    "ladder.suggest.request_work.assignments",
    description="trials RequestWork placed, by whether they resumed")
_preempted = _meter.create_counter(
    "ladder.suggest.request_work.preemptions",
    description="running trials a preemption plan asked to pause")

# Nodes that asked within this long make up the cluster (the fair share's total).
NODE_SEEN_SECONDS = 300.0
# A study whose cluster-wide preemption search found nothing is not searched for again
# for this long (per process): every answer would otherwise read every node's holds
# while it stays blocked; the cluster it saw changes only as trials end or pause.
QUIET_SECONDS = 2.0
UNBOUNDED = 1 << 30


def offered_node(offer: suggest_pb2.NodeOffer, held: res.Resources) -> res.Node:
    """The validated node (INVALID_ARGUMENT naming the field), with as free the smaller
    of what its agent says and what the holds leave: an assignment not started yet is
    not in the agent's count, a trial the agent lost track of is not in the holds'."""
    cap = offer.capacity
    told = res.resources(offer.free.gpus, offer.free.cpu, offer.free.memory_gb, "node.free.")
    node = res.node(offer.node_id, cap.gpus, cap.gpu_type, cap.cpu, cap.memory_gb, free=told)
    left = node.capacity - held
    free = res.Resources(max(0, min(told.gpus, left.gpus)), max(0.0, min(told.cpu, left.cpu)),
                         max(0.0, min(told.memory_gb, left.memory_gb)))
    if offer.max_trials < 0:
        raise InvalidArgument(f"node.max_trials must be >= 0, got {offer.max_trials}")
    return res.Node(node.node_id, node.gpu_type, node.capacity, free)


def wire(amount: res.Demand) -> study_pb2.TrialResources:
    r = amount.resources
    return study_pb2.TrialResources(gpus=r.gpus, gpu_type=amount.gpu_type, cpu=r.cpu,
                                    memory_gb=r.memory_gb)


class WorkScheduler:
    def __init__(self, servicer: SuggestServicer, settings: Settings) -> None:
        self.servicer = servicer
        self.state = servicer.state
        policy = settings.scheduler_policy
        try:
            self.policy = Policy(policy)
        except ValueError:
            raise ValueError("LADDER_SCHEDULER_POLICY must be one of "
                             f"{', '.join(p.value for p in Policy)}, got {policy!r}") from None
        try:
            reserve_limit(0, settings.reserve_fraction)
        except ValueError as bad:
            raise ValueError(f"LADDER_RESERVE_FRACTION: {bad}") from None
        self.reserve_fraction = settings.reserve_fraction
        # A reservation lapses, so one whose node went away holds nothing for long; a
        # tenant still short and blocked makes a new one at its next blocked answer.
        if settings.reserve_seconds <= 0:
            raise ValueError(
                f"LADDER_RESERVE_SECONDS must be > 0, got {settings.reserve_seconds}")
        self.reserve_seconds = settings.reserve_seconds
        self._quiet: dict[str, float] = {}  # study -> no cluster-wide search before (monotonic)
        if settings.sched_view_seconds < 0:
            raise ValueError(
                f"LADDER_SCHED_VIEW_SECONDS must be >= 0, got {settings.sched_view_seconds}")
        self.view_seconds = settings.sched_view_seconds
        self._view: dict[str, Offered] = {}  # node id -> its offer, as last read or asked
        self._view_until = 0.0  # monotonic

    @functools.cached_property
    def holds(self) -> HoldStore:
        # At the first RequestWork: a suggest service no node agent asks loads no script.
        return HoldStore(self.state.client, self.state.keys)

    def request_work(self, request: suggest_pb2.RequestWorkRequest
                     ) -> suggest_pb2.RequestWorkResponse:
        started = time.perf_counter()
        offer = request.node
        node = offered_node(offer, self.holds.node_held(offer.node_id))
        offers = self._offers(node, offer.spot)
        studies, specs, gates, lowest = self._studies()
        ledger = self._ledger(cluster_total(offers), {s.tenant for s in studies})
        running = [(h.trial, h.preempting) for h in self.holds.on_node(node.node_id)]
        reserved = None
        if self.policy is Policy.FAIR:
            reserved = Reserved(self.holds.reservations(),
                                functools.partial(self.holds.nodes, offers),
                                reserve_limit(len(offers), self.reserve_fraction))
        plan = plan_work(node, studies, ledger, running, self.policy,
                         offer.max_trials, reserved)
        if plan.release:
            self.holds.unreserve(node.node_id)
        if plan.reserve is not None:
            self._reserve(plan.reserve)
        if (plan.elsewhere is not None and reserved is not None
                and plan.elsewhere.priority > lowest
                and self._quiet.get(plan.elsewhere.study, 0.0) <= time.monotonic()):
            held = {k: v for k, v in reserved.held.items()
                    if not (plan.release and k == node.node_id)}
            if plan.reserve is not None:
                held[plan.reserve.node_id] = plan.reserve
            study = next(s for s in studies if s.study_id == plan.elsewhere.study)
            if elsewhere_due(study, held, reserved.limit):
                self._preempt_elsewhere(plan.elsewhere, study, offers, held, ledger,
                                        node.node_id, reserved.limit)
        response = suggest_pb2.RequestWorkResponse()
        worker_id = request.worker_id or node.node_id
        for placed in plan.placements:
            spec = specs[placed.study]
            hold = Hold(node.node_id, spec.demand, node.capacity, spec.priority, offer.spot,
                        spec.stable_for_promoted)
            suggestion = self._assign(placed.study, spec, gates[placed.study], hold,
                                      resumed(placed), worker_id)
            if suggestion is not None:
                response.assignments.add(suggestion=suggestion, resources=wire(spec.demand))
                _assigned.add(1, {"resumed": suggestion.resumed})
        pausing = [t.trial_id for t, pausing in running if pausing]
        for victim in plan.pause:
            if self.holds.preempt(victim, node.node_id):
                pausing.append(victim)
                _preempted.add(1)
                log.info("trial %s on node %s preempted for study %s", victim, node.node_id,
                         plan.reserve.study if plan.reserve else "?", extra={"trial_id": victim})
        response.pause_trial_ids.extend(pausing)
        _latency.record((time.perf_counter() - started) * 1000)
        return response

    def _offers(self, node: res.Node, spot: bool) -> list[Offered]:
        """Every live node's offer, the asking one's as it is now. The others' are read
        at most once per ``view_seconds``: every node asks every few seconds, and what
        they give (the fair share's total, the reservation bound, the nodes a plan
        searches) moves only as nodes come and go."""
        now = time.monotonic()
        if now >= self._view_until:
            offers = self.holds.offers(node, spot, NODE_SEEN_SECONDS)
            self._view = {o.node_id: o for o in offers}
            self._view_until = now + self.view_seconds
            return offers
        self.holds.remember(node, spot)
        self._view[node.node_id] = Offered(node.node_id, node.gpu_type, node.capacity, spot)
        return sorted(self._view.values(), key=lambda o: o.node_id)

    def _reserve(self, held: Reservation) -> None:
        self.holds.reserve(held, self.reserve_seconds)
        log.info("node %s reserved for a trial of study %s (tenant %s, %d GPUs%s)",
                 held.node_id, held.study, held.tenant, held.demand.gpus,
                 ", preempting" if held.preempting else "", extra={"study_id": held.study})

    def _preempt_elsewhere(self, waiting: res.Trial, study: StudyWork,
                           offers: list[Offered], held: dict[str, Reservation],
                           ledger: Ledger, asking: str, limit: int) -> None:
        """A preemption plan over every live node for ``waiting`` (``plan_elsewhere``):
        the node reserved for its study, then its victims marked; their heartbeats
        answer PAUSE (and their node's RequestWork lists them)."""
        nodes = self.holds.nodes(offers)
        trials = self.holds.trials_on(nodes_to_read(waiting, nodes, held, asking))
        running = {n: [(h.trial, h.preempting) for h in held_there]
                   for n, held_there in trials.items()}
        searched = [node for node in nodes if node.node_id in running]
        found = plan_elsewhere(waiting, study, searched, running, ledger, held, limit, asking)
        if found is None:
            now = time.monotonic()
            # Lapsed entries go as new ones come: the map holds only studies searched
            # for within the last QUIET_SECONDS, however many studies a service sees.
            self._quiet = {s: t for s, t in self._quiet.items() if t > now}
            self._quiet[waiting.study] = now + QUIET_SECONDS
            return
        plan, reservation = found
        self._reserve(reservation)
        for victim in plan.victims:
            if self.holds.preempt(victim.trial_id, plan.node_id):
                _preempted.add(1)
                log.info("trial %s on node %s preempted for a higher-priority study "
                         "(asked from node %s)", victim.trial_id, plan.node_id, asking,
                         extra={"trial_id": victim.trial_id})

    def _studies(self) -> tuple[list[StudyWork], dict[str, StudySpec], dict[str, Gate], int]:
        """What each live study could hand out now: ACTIVE ones new and resumable
        trials, STOPPED ones resumable trials only (as Suggest); and the lowest
        priority of any live study (no trial of a study at or below it can preempt)."""
        live = [s for s in self.state.studies.list()
                if s.state in (lifecycle.ACTIVE, lifecycle.STOPPED)]
        read = self.state.studies.gates([s.study_id for s in live])
        out, specs, gates = [], {}, {}
        lowest = res.MAX_PRIORITY
        for study, gate in zip(live, read, strict=True):
            sid = study.study_id
            spec = self.servicer._spec(sid)
            lowest = min(lowest, spec.priority)
            if gate.state not in (lifecycle.ACTIVE, lifecycle.STOPPED):
                continue
            if gate.budget_exceeded(spec.to_proto()) is not None:
                continue  # the completion sweep's breaker stops it
            max_trials = gate.max_trials if gate.max_trials is not None else spec.max_trials
            max_parallel = (gate.max_parallel if gate.max_parallel is not None
                            else spec.max_parallel_trials)
            room = max_parallel - gate.in_flight if max_parallel else UNBOUNDED
            if gate.tenant_room is not None:
                room = min(room, gate.tenant_room[0])
            new_left = max_trials - gate.suggested if max_trials else UNBOUNDED
            if gate.state == lifecycle.STOPPED:
                new_left = 0
            if room <= 0 or (gate.queued == 0 and new_left <= 0):
                continue
            specs[sid], gates[sid] = spec, gate
            out.append(StudyWork(sid, study.tenant, spec.demand, spec.priority,
                                 study.created_unix_ms, gate.queued, room, new_left))
        return out, specs, gates, lowest

    def _ledger(self, total: res.Resources, tenants: set[str]) -> Ledger:
        """Every tenant's use and policy (weight, max_gpus) against the cluster's total
        (the asking node's offer is part of it)."""
        records = self.state.client.hmget(self.state.keys.tenants, *tenants) if tenants else []
        policies = {
            tenant: quotas.Quota.from_record(json.loads(raw)).policy()
            for tenant, raw in zip(tenants, records, strict=True) if raw
        }
        ledger = Ledger(total, policies)
        for tenant, used in self.holds.usage(tenants).items():
            ledger.add(tenant, used)
        return ledger

    def _assign(self, study_id: str, spec: StudySpec, gate: Gate, hold: Hold, resume: bool,
                worker_id: str) -> suggest_pb2.Suggestion | None:
        """One placement made real: a RESUMABLE trial claimed, else a new trial created,
        either holding ``hold``; None when the scripts refuse (limits reached, quota or
        node taken meanwhile)."""
        trials = self.state.trials
        max_parallel = (gate.max_parallel if gate.max_parallel is not None
                        else spec.max_parallel_trials)
        if resume:
            claimed = trials.claim_resumable(study_id, 1, self.servicer.claim_seconds,
                                             max_parallel, hold=hold)
            if claimed:
                return suggest_pb2.Suggestion(trial=claimed[0], resumed=True,
                                              algorithm="resume")
            # Taken meanwhile, or promoted trials kept off a spot node: a new one instead.
        try:
            created = self.servicer._new_trials(study_id, spec, worker_id, 1, gate, hold=hold)
        except (BudgetExhausted, AtCapacity, Conflict, NotFound) as refused:
            log.debug("no trial of %s placed: %s", study_id, refused,
                      extra={"study_id": study_id})
            return None
        if not created:
            return None
        transition, proposal = created[0]
        return suggest_pb2.Suggestion(
            trial=transition.trial, resumed=False, predicted_mean=proposal.predicted_mean,
            predicted_std=proposal.predicted_std, algorithm=transition.algorithm,
            model_observations=proposal.model_observations,
        )
