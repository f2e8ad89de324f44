"""RequestWork's resource holds in Redis: what each tenant's and each node's trials hold.

A trial placed by RequestWork holds its study's ``trial_resources`` on its node from the
assignment until its attempt ends (completed, pruned, failed, paused, timed out, lease
or claim expired, stopped). The hold is taken by the same script that creates the trial
or claims the resumable one (CREATE_TRIALS / CLAIM_RESUMABLE with a ``Hold``), after
checking the tenant's ``max_gpus`` and the node's capacity against the tallies, and is
released by the script that ends the attempt (``release`` in ``ladder.state.scripts``,
called from ``stop_clock`` and the claim expiry). So the tallies are exact through every
way a trial ends, and two RequestWork calls racing for a tenant's last GPUs cannot both
win: the quota is never exceeded, whatever the concurrency.

Amounts are integers in Redis (HINCRBY: no float drift): GPUs, and CPU cores and memory
GB in thousandths (``SCALE``). Keys: ``ladder.state.keys`` (``sched:*``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis

from ladder import quotas
from ladder.errors import AtCapacity
from ladder.scheduling.reservation import Reservation
from ladder.scheduling.resources import Demand, Node, Resources, Trial, tier
from ladder.state import scripts
from ladder.state.keys import Keys

SCALE = 1000  # CPU cores and memory GB are held in thousandths


def units(amount: Resources) -> tuple[int, int, int]:
    """The integer amounts a hold keeps in Redis."""
    return amount.gpus, round(amount.cpu * SCALE), round(amount.memory_gb * SCALE)


def from_units(gpus: object, cpu: object, memory: object) -> Resources:
    def whole(raw: object) -> int:
        return int(raw.decode() if isinstance(raw, bytes) else raw or 0)  # type: ignore[union-attr]

    return Resources(whole(gpus), whole(cpu) / SCALE, whole(memory) / SCALE)


@dataclass(frozen=True)
class Hold:
    """What one trial placed on ``node_id`` holds there, and what it is (for a later
    preemption plan): its study's priority, whether the node is spot, whether the
    study asked for the stable tier for its promoted trials (``resources.tier``)."""

    node_id: str
    demand: Demand
    capacity: Resources  # the node's, as its agent offered it
    priority: int = 0
    spot: bool = False
    stable_for_promoted: bool = False  # the study's: no promoted trial onto a spot node

    def encode(self) -> str:
        g, c, m = units(self.demand.resources)
        cap_g, cap_c, cap_m = units(self.capacity)
        return json.dumps({"node": self.node_id, "g": g, "c": c, "m": m, "cap_g": cap_g,
                           "cap_c": cap_c, "cap_m": cap_m, "p": self.priority,
                           "s": int(self.spot), "sp": int(self.stable_for_promoted)})


def refusal(status: str, values: list) -> AtCapacity:
    """The error for a hold CREATE_TRIALS refused: GPUS (the tenant's max_gpus) or NODE
    (the node's capacity is taken by trials placed meanwhile)."""
    text = [v.decode() if isinstance(v, bytes) else v for v in values]
    if status == "GPUS":
        held, max_gpus, tenant = int(text[0]), int(text[1]), str(text[2])
        return quotas.gpus_at_quota(tenant, held, 0, max_gpus)
    return AtCapacity(f"the node's {text[2]} is taken ({text[0]} of {text[1]} held): "
                      "placed elsewhere meanwhile")


@dataclass(frozen=True)
class Offered:
    """A node as its agent last offered it."""

    node_id: str
    gpu_type: str
    capacity: Resources
    spot: bool


def cluster_total(offers: Iterable[Offered]) -> Resources:
    """The summed capacity of ``offers`` (the fair share's denominator)."""
    return sum((o.capacity for o in offers), Resources())


@dataclass(frozen=True)
class HeldTrial:
    """A trial holding resources on a node, as a preemption plan sees it."""

    trial: Trial
    preempting: bool  # a plan already asked it to pause


class HoldStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._preempt = client.register_script(scripts.PREEMPT)

    def offers(self, node: Node, spot: bool, within_s: float, now_ms: int | None = None
               ) -> list[Offered]:
        """Remember the node's offer and read the offers of every node that asked within
        ``within_s`` seconds, this one included (one round trip): the cluster as
        RequestWork sees it (``cluster_total``, ``nodes``)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        pipe = self.r.pipeline(transaction=False)
        self._remember(pipe, node, spot, now)
        pipe.hgetall(self.keys.sched_nodes)
        _, raw = pipe.execute()
        out = []
        for node_id, record in raw.items():
            offer = json.loads(record)
            if now - int(offer["ms"]) <= within_s * 1000:
                out.append(Offered(node_id.decode(), offer["type"],
                                   from_units(offer["g"], offer["c"], offer["m"]),
                                   bool(offer["spot"])))
        return sorted(out, key=lambda o: o.node_id)

    def remember(self, node: Node, spot: bool, now_ms: int | None = None) -> None:
        """Remember the node's offer only (``offers`` without the read)."""
        self._remember(self.r, node, spot, int(time.time() * 1000) if now_ms is None else now_ms)

    def _remember(self, client: redis.Redis | redis.client.Pipeline, node: Node, spot: bool,
                  now_ms: int) -> None:
        g, c, m = units(node.capacity)
        client.hset(self.keys.sched_nodes, node.node_id, json.dumps(
            {"g": g, "c": c, "m": m, "type": node.gpu_type, "spot": spot, "ms": now_ms}))

    def nodes(self, offers: Sequence[Offered]) -> list[Node]:
        """The offered nodes, each with as free its capacity less what the holds on it
        take (one round trip)."""
        return self.cluster(offers, trials=False)[0]

    def cluster(self, offers: Sequence[Offered], trials: bool = True
                ) -> tuple[list[Node], dict[str, list[HeldTrial]]]:
        """``nodes`` and, with ``trials``, the trials holding resources on each (as
        ``on_node``), read in three round trips whatever the number of nodes."""
        pipe = self.r.pipeline(transaction=False)
        for offer in offers:
            pipe.hmget(self.keys.sched_node(offer.node_id), "g", "c", "m")
        read = pipe.execute() if offers else []
        nodes = []
        for offer, held in zip(offers, read, strict=True):
            left = offer.capacity - from_units(*held)
            free = Resources(max(0, left.gpus), max(0.0, left.cpu), max(0.0, left.memory_gb))
            nodes.append(Node(offer.node_id, offer.gpu_type, offer.capacity, free))
        return nodes, self.trials_on([n.node_id for n in nodes]) if trials else {}

    def trials_on(self, node_ids: Sequence[str]) -> dict[str, list[HeldTrial]]:
        """Per node, the trials holding resources there (as ``on_node``), read in two
        round trips however many nodes."""
        pipe = self.r.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.smembers(self.keys.sched_node_trials(node_id))
        read = pipe.execute() if node_ids else []
        return self._held({n: sorted(m.decode() for m in ids)
                           for n, ids in zip(node_ids, read, strict=True)})

    def reservations(self, now_ms: int | None = None) -> dict[str, Reservation]:
        """The nodes held for blocked trials (``ladder.scheduling.reservation``); those
        past their time are dropped."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        out, expired = {}, []
        for raw_id, raw in self.r.hgetall(self.keys.sched_reserved).items():
            node_id, held = raw_id.decode(), json.loads(raw)
            if int(held["until"]) < now:
                expired.append(node_id)
                continue
            out[node_id] = Reservation(node_id, held["tenant"], held["study"], Demand(
                from_units(held["g"], held["c"], held["m"]), held["type"]),
                bool(held.get("pre")))
        if expired:
            self.r.hdel(self.keys.sched_reserved, *expired)
        return out

    def reserve(self, held: Reservation, ttl_s: float, now_ms: int | None = None) -> None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        g, c, m = units(held.demand.resources)
        self.r.hset(self.keys.sched_reserved, held.node_id, json.dumps(
            {"tenant": held.tenant, "study": held.study, "g": g, "c": c, "m": m,
             "type": held.demand.gpu_type, "until": now + int(ttl_s * 1000),
             "pre": int(held.preempting)}))

    def unreserve(self, node_id: str) -> None:
        self.r.hdel(self.keys.sched_reserved, node_id)

    def usage(self, tenants: Iterable[str]) -> dict[str, Resources]:
        """What each tenant's RequestWork trials hold now."""
        names = list(tenants)
        pipe = self.r.pipeline(transaction=False)
        for tenant in names:
            pipe.hmget(self.keys.sched_tenant(tenant), "g", "c", "m")
        return {t: from_units(*row) for t, row in zip(names, pipe.execute(), strict=True)}

    def node_held(self, node_id: str) -> Resources:
        return from_units(*self.r.hmget(self.keys.sched_node(node_id), "g", "c", "m"))

    def on_node(self, node_id: str) -> list[HeldTrial]:
        """The trials holding resources on the node (oldest placement order unknown:
        sorted by id), with what a preemption plan needs."""
        return self.trials_on([node_id])[node_id]

    def _held(self, members: Mapping[str, Sequence[str]]) -> dict[str, list[HeldTrial]]:
        """Per node, its trials (``members``: node id -> trial ids) still holding
        resources there, read in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for ids in members.values():
            for trial_id in ids:
                pipe.hmget(self.keys.trial(trial_id), "study", "hold_node", "hold_tenant",
                           "hold_g", "hold_c", "hold_m", "hold_p", "hold_s", "hold_sp",
                           "promoted", "preempt")
        rows = iter(pipe.execute() if any(members.values()) else [])
        out: dict[str, list[HeldTrial]] = {}
        for node_id, ids in members.items():
            out[node_id] = []
            for trial_id in ids:
                study, node, tenant, g, c, m, priority, spot, sp, promoted, preempt = next(rows)
                if node is None or node.decode() != node_id:
                    continue  # released meanwhile
                out[node_id].append(HeldTrial(
                    Trial(trial_id, tenant.decode() if tenant else "",
                          study.decode() if study else "", Demand(from_units(g, c, m)),
                          int(priority or 0), tier(spot == b"1", sp == b"1", promoted == b"1")),
                    preempting=preempt == b"1",
                ))
        return out

    def preempt(self, trial_id: str, node_id: str) -> bool:
        """Ask the trial (still holding resources on ``node_id``) to checkpoint and pause:
        its heartbeats answer PAUSE until it does; False when it ended or moved."""
        status, *_ = self._preempt(keys=[self.keys.trial(trial_id)], args=[node_id])
        return (status.decode() if isinstance(status, bytes) else status) == "OK"
