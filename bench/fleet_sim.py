"""Offline fleet simulation of multi-tenant GPU scheduling (issue 19 item 5, library half).

A deterministic discrete-event simulation that drives ``ladder.scheduling`` directly:
no service, broker or Redis is involved. It is the offline half of ``make bench-fleet``
(``bench/fleet.py``: the same scenario through the real services, node agents asking
the suggest service's RequestWork for work).

Fleet: 200 nodes x 8 GPUs (1,600), 96 cores and 1,024 GB each. Tenants A, B, C with
weights 2:1:1 and GPU quotas 1,000 / 500 / 500. Each tenant submits trials as a Poisson
stream offering 0.6 of the fleet (1.8x in total: every tenant is always backlogged, so
shares are decided by the scheduler, not by demand) with 1, 2, 4 or 8 GPUs
(probabilities 0.4/0.3/0.2/0.1) and lognormal run times (median 40 min, sigma 1.2: heavy
tail, mean 82 min). Trials checkpoint every 15 min. Spot reclaims: every node is
reclaimed at a Poisson rate of once per 24 h and comes back 15 min later; its trials lose
the work since their last checkpoint and wait again. At 10 h a high-priority study of
tenant C arrives: 100 trials x 4 GPUs (C's fair share, 400 GPUs), median 3 h.

Policies, on the same arrivals and reclaims (pre-drawn from the seed):
- ``ladder``: ``chooser.schedule`` (weighted DRF, priority inside a tenant, quotas,
  best-fit, reservation for blocked big trials) plus ``preemption.plan_preemption`` for
  blocked high-priority trials (victims checkpoint for 60 s, then pause and wait again);
- ``ladder-no-reservation``: the same without the reservation for blocked big trials
  (what the reservation costs in idle GPUs and buys in 8-GPU waits);
- ``fifo``: one queue in arrival order, each trial on the first node with room (greedy:
  later trials pass a blocked one), no weights, quotas, priorities or preemption.

Two more policies model the suggest service's RequestWork (``--policies``; not in the
default run): every round, each node with free GPUs asks in turn (shuffled, as agents
ask when their trials end) and gets ``work.plan_work``'s one-node answer, each study's
pending trials (of one size and priority) offered as one ``StudyWork``:
- ``ladder-per-node``: the answer as the service gave it before node reservations;
- ``ladder-per-node-reserve``: with ``reservation`` (a node held for a short
  tenant's blocked trial, at most ``reserve_limit`` nodes), as the service does now.
``--trials-per-study N`` submits the arrivals as ``bench/fleet.py`` does: studies of N
trials of one size each (one of each size per tenant at the start), so that a tenant's
waiting work can be all big trials.

A scheduling round runs every 30 s of simulated time for both. Measures after a 2 h
warm-up: GPU utilisation over time, each tenant's share of busy GPUs against its weight
and the weighted Jain index, quota violations (rounds after which a tenant held more GPUs
than its quota), the time from the high-priority study's arrival until it holds 50/75/90%
of 400 GPUs (its share, or less once some of its trials ended), fragmentation (GPU-seconds
idle while a waiting trial needs no more GPUs than are idle in total), and the queueing
time by trial size (the load is 1.8x the fleet, so waits grow all run: compare sizes and
policies, not absolute hours).

    nice -n 19 .venv/bin/python bench/fleet_sim.py [--seed 20261202] [--hours 24]
        [--policies ladder,ladder-no-reservation,fifo] [--trials-per-study 0]
        [--out bench/results/fleet-sim-<date>.json]   (also writes a .png beside it)
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import heapq
import json
import math
import platform
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladder import runenv
from ladder.scheduling import resources as res
from ladder.scheduling.chooser import queue_key, schedule
from ladder.scheduling.fairshare import Ledger, jain_index
from ladder.scheduling.placement import first_fit
from ladder.scheduling.preemption import plan_preemption
from ladder.scheduling.reservation import Reservation, Reserved, reserve_limit
from ladder.scheduling.resources import Node, Resources, Trial
from ladder.scheduling.work import StudyWork, plan_work

NODES, GPUS_PER_NODE, CPU_PER_NODE, MEM_PER_NODE = 200, 8, 96, 1024
TENANTS = {"A": res.tenant_policy(2.0, 1000), "B": res.tenant_policy(1.0, 500),
           "C": res.tenant_policy(1.0, 500)}
SIZES, SIZE_P = (1, 2, 4, 8), (0.4, 0.3, 0.2, 0.1)
MEDIAN_S, SIGMA = 40 * 60, 1.2
OFFERED_PER_TENANT = 0.6  # fraction of the fleet each tenant's arrivals would keep busy
CHECKPOINT_EVERY_S, PAUSE_CHECKPOINT_S = 15 * 60, 60.0
RECLAIM_MEAN_S, RECLAIM_DOWN_S = 24 * 3600, 15 * 60
HP_AT_S, HP_TRIALS, HP_GPUS, HP_MEDIAN_S, HP_PRIORITY = 10 * 3600, 100, 4, 3 * 3600, 10
TICK_S, SAMPLE_S, WARMUP_S = 30.0, 300.0, 2 * 3600
WINDOW = 512  # trials per tenant (ladder) or in total (fifo) a round looks at
PLANS_PER_ROUND = 32
POLICIES = ("ladder", "ladder-no-reservation", "fifo")
PER_NODE = ("ladder-per-node", "ladder-per-node-reserve")
HP_LEVELS = (0.5, 0.75, 0.9)


def demand_for(gpus: int) -> res.Demand:
    return res.demand(gpus, "a100", cpu=10 * gpus, memory_gb=100 * gpus)


@dataclass(frozen=True)
class Job:
    trial: Trial
    arrival: float
    work: float  # seconds of computation the trial needs in all


def workload(seed: int, hours: float, per_study: int = 0
             ) -> tuple[list[Job], list[tuple[float, int]]]:
    """The arrivals (every tenant's Poisson stream and the high-priority study) and the
    spot reclaims (time, node index), identical for every policy. ``per_study``: 0, a
    stream of trials of mixed sizes; else, as ``bench/fleet.py`` submits them, a stream
    of studies of that many trials of one size each, one study of each size per tenant
    at the start."""
    rng = random.Random(seed)
    mean_gpus = sum(s * p for s, p in zip(SIZES, SIZE_P, strict=True))
    mean_s = MEDIAN_S * math.exp(SIGMA ** 2 / 2)
    rate = OFFERED_PER_TENANT * NODES * GPUS_PER_NODE / (mean_gpus * mean_s)
    horizon = hours * 3600
    jobs: list[Job] = []
    for tenant in TENANTS:
        stream = random.Random(f"{seed}-{tenant}")
        if per_study:
            jobs.extend(studies(stream, tenant, rate / per_study, horizon, per_study))
            continue
        now = 0.0
        while True:
            now += stream.expovariate(rate)
            if now >= horizon:
                break
            gpus = stream.choices(SIZES, SIZE_P)[0]
            work = stream.lognormvariate(math.log(MEDIAN_S), SIGMA)
            jobs.append(Job(Trial("", tenant, f"{tenant}-main", demand_for(gpus)), now, work))
    hp = random.Random(f"{seed}-hp")
    for _ in range(HP_TRIALS):
        work = hp.lognormvariate(math.log(HP_MEDIAN_S), SIGMA)
        jobs.append(Job(Trial("", "C", "C-urgent", demand_for(HP_GPUS), priority=HP_PRIORITY),
                        HP_AT_S, work))
    jobs.sort(key=lambda j: (j.arrival, j.trial.tenant, j.trial.study))
    numbered = [Job(Trial(f"t{i}", j.trial.tenant, j.trial.study, j.trial.demand,
                          j.trial.priority, seq=i), j.arrival, j.work)
                for i, j in enumerate(jobs)]
    return numbered, spot_reclaims(rng, range(NODES), horizon)


def studies(stream: random.Random, tenant: str, rate: float, horizon: float, per_study: int
            ) -> list[Job]:
    """One tenant's studies of ``per_study`` trials of one size: one of each size at the
    start, then a Poisson stream of ``rate`` studies a second."""
    starts = [(0.0, gpus) for gpus in SIZES]
    now = 0.0
    while True:
        now += stream.expovariate(rate)
        if now >= horizon:
            break
        starts.append((now, stream.choices(SIZES, SIZE_P)[0]))
    return [Job(Trial("", tenant, f"{tenant}-s{k}", demand_for(gpus)), at,
                stream.lognormvariate(math.log(MEDIAN_S), SIGMA))
            for k, (at, gpus) in enumerate(starts) for _ in range(per_study)]


def spot_reclaims(rng: random.Random, nodes: Iterable[int], horizon: float,
                  mean_s: float = RECLAIM_MEAN_S, down_s: float = RECLAIM_DOWN_S
                  ) -> list[tuple[float, int]]:
    """(time, node index) of every spot reclaim before ``horizon``: each node is taken
    at a Poisson rate of once per ``mean_s`` and is back ``down_s`` later."""
    reclaims = []
    for index in nodes:
        now = rng.expovariate(1 / mean_s)
        while now < horizon:
            reclaims.append((now, index))
            now += down_s + rng.expovariate(1 / mean_s)
    return sorted(reclaims)


@dataclass
class Running:
    trial: Trial
    node_id: str
    started: float
    done_at: float
    pausing: bool = False


@dataclass
class Fleet:
    """The simulated cluster's state under one policy."""

    policy: str
    nodes: dict[str, Node]
    ledger: Ledger
    left: dict[str, float] = field(default_factory=dict)  # trial id -> work left
    pending: dict[str, list[Trial]] = field(default_factory=dict)  # queue, sorted
    running: dict[str, Running] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # node -> trial a plan frees it for
    reservations: dict[str, Reservation] = field(default_factory=dict)  # per-node policies
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    plans: dict[str, set[str]] = field(default_factory=dict)  # waiting trial -> victims left
    events: list[tuple[float, int, str, str]] = field(default_factory=list)
    first_start: dict[str, float] = field(default_factory=dict)
    counter: int = 0
    preempted: int = 0
    reclaimed: int = 0

    def queue_of(self, trial: Trial) -> list[Trial]:
        return self.pending.setdefault("all" if self.policy == "fifo" else trial.tenant, [])

    def wait(self, trial: Trial) -> None:
        key = (lambda t: t.seq) if self.policy == "fifo" else queue_key
        bisect.insort(self.queue_of(trial), trial, key=key)

    def push(self, at: float, kind: str, ref: str) -> None:
        self.counter += 1
        heapq.heappush(self.events, (at, self.counter, kind, ref))

    def start(self, trial: Trial, node_id: str, now: float, counted: bool) -> None:
        self.queue_of(trial).remove(trial)
        self.nodes[node_id] = self.nodes[node_id].take(trial.demand)
        if not counted:
            self.ledger.add(trial.tenant, trial.demand.resources)
        run = Running(trial, node_id, now, now + self.left[trial.trial_id])
        self.first_start.setdefault(trial.trial_id, now)
        self.running[trial.trial_id] = run
        self.push(run.done_at, "end", trial.trial_id)

    def stop(self, trial_id: str, now: float, lost: float) -> Running:
        run = self.running.pop(trial_id)
        self.nodes[run.node_id] = self.nodes[run.node_id].give(run.trial.demand)
        self.ledger.remove(run.trial.tenant, run.trial.demand.resources)
        self.left[trial_id] = max(0.0, run.done_at - now) + lost
        return run


def fifo_round(fleet: Fleet, now: float) -> None:
    queue = fleet.pending.get("all", [])
    order = [fleet.nodes[f"n{i:03d}"] for i in range(NODES)]
    most = max((n.free.gpus for n in order if n.node_id not in fleet.down), default=0)
    for trial in list(queue[:WINDOW]):
        if trial.demand.gpus > most:
            continue
        target = first_fit(trial.demand, (n for n in order if n.node_id not in fleet.down))
        if target is None:
            continue
        fleet.start(trial, target.node_id, now, counted=False)
        order[int(target.node_id[1:])] = fleet.nodes[target.node_id]
        most = max(n.free.gpus for n in order if n.node_id not in fleet.down)


def ladder_round(fleet: Fleet, now: float) -> None:
    window = [t for queue in fleet.pending.values() for t in queue[:WINDOW]
              if t.trial_id not in fleet.plans]
    open_nodes = [n for n in fleet.nodes.values()
                  if n.node_id not in fleet.down and n.node_id not in fleet.held]
    decided = schedule(window, open_nodes, fleet.ledger, reserve=fleet.policy == "ladder")
    for trial, node_id in decided.placements:
        fleet.start(trial, node_id, now, counted=True)
    plans = 0
    for trial in decided.blocked:
        if trial.priority == 0 or plans >= PLANS_PER_ROUND:
            continue
        plans += 1
        candidates = [n for n in fleet.nodes.values()
                      if n.node_id not in fleet.down and n.node_id not in fleet.held]
        on_node: dict[str, list[Trial]] = {}
        for run in fleet.running.values():
            if not run.pausing:
                on_node.setdefault(run.node_id, []).append(run.trial)
        plan = plan_preemption(trial, candidates, on_node, fleet.ledger)
        if plan is None or not plan.victims:
            continue
        fleet.held[plan.node_id] = trial.trial_id
        fleet.plans[trial.trial_id] = {v.trial_id for v in plan.victims}
        for victim in plan.victims:
            fleet.running[victim.trial_id].pausing = True
            fleet.push(now + PAUSE_CHECKPOINT_S, "paused", victim.trial_id)
        fleet.preempted += len(plan.victims)


def per_node_round(fleet: Fleet, now: float) -> None:
    """Each node with free GPUs asks in turn, as node agents call RequestWork."""
    asking = [n for n in fleet.nodes.values() if n.free.gpus and n.node_id not in fleet.down]
    fleet.rng.shuffle(asking)
    for asked in asking:
        node = fleet.nodes[asked.node_id]
        groups: dict[str, list[Trial]] = {}
        for queue in fleet.pending.values():
            for trial in queue[:WINDOW]:
                groups.setdefault(f"{trial.study}-{trial.demand.gpus}g-p{trial.priority}",
                                  []).append(trial)
        studies = [StudyWork(sid, q[0].tenant, q[0].demand, q[0].priority, min(t.seq for t in q),
                             len(q), len(q), 0) for sid, q in groups.items()]
        running = [(r.trial, r.pausing) for r in fleet.running.values()
                   if r.node_id == node.node_id]
        reserved = None
        if fleet.policy == "ladder-per-node-reserve":
            up = [n for n in fleet.nodes.values() if n.node_id not in fleet.down]
            reserved = Reserved(dict(fleet.reservations), lambda up=up: up,
                                reserve_limit(len(up)))
        plan = plan_work(node, studies, fleet.ledger, running, reserved=reserved)
        for placed in plan.placements:
            sid, index = placed.trial_id.rsplit("#", 1)
            fleet.start(groups[sid][int(index[1:])], node.node_id, now, counted=True)
        if plan.release:
            fleet.reservations.pop(node.node_id, None)
        if plan.reserve is not None:
            fleet.reservations[plan.reserve.node_id] = plan.reserve
        for victim in plan.pause:
            fleet.running[victim].pausing = True
            fleet.push(now + PAUSE_CHECKPOINT_S, "paused", victim)
            fleet.preempted += 1


def on_paused(fleet: Fleet, trial_id: str, now: float) -> None:
    run = fleet.stop(trial_id, now, lost=0.0)  # checkpointed: nothing lost
    fleet.wait(run.trial)
    if fleet.policy in PER_NODE:
        return  # no plan bookkeeping: the node's next answer sees the freed space
    waiting = next(w for w, left in fleet.plans.items() if trial_id in left)
    fleet.plans[waiting].discard(trial_id)
    if fleet.plans[waiting]:
        return
    del fleet.plans[waiting]
    node_id = next(n for n, w in fleet.held.items() if w == waiting)
    del fleet.held[node_id]
    trial = next(t for q in fleet.pending.values() for t in q if t.trial_id == waiting)
    if fleet.nodes[node_id].fits(trial.demand) and node_id not in fleet.down:
        fleet.ledger.add(trial.tenant, trial.demand.resources)
        fleet.start(trial, node_id, now, counted=True)


def reclaim(fleet: Fleet, node_id: str, now: float) -> None:
    fleet.down.add(node_id)
    if node_id in fleet.held:
        waiting = fleet.held.pop(node_id)
        for victim in fleet.plans.pop(waiting, set()):
            fleet.running[victim].pausing = False
    for run in [r for r in fleet.running.values() if r.node_id == node_id]:
        if run.pausing:  # its plan's node is gone: it just dies like the others
            for victims in fleet.plans.values():
                victims.discard(run.trial.trial_id)
        lost = (now - run.started) % CHECKPOINT_EVERY_S
        fleet.stop(run.trial.trial_id, now, lost)
        fleet.wait(run.trial)
        fleet.reclaimed += 1
    fleet.push(now + RECLAIM_DOWN_S, "up", node_id)


def simulate(policy: str, jobs: list[Job], reclaims: list[tuple[float, int]],
             hours: float) -> dict[str, Any]:
    nodes = {f"n{i:03d}": res.node(f"n{i:03d}", GPUS_PER_NODE, "a100", CPU_PER_NODE,
                                   MEM_PER_NODE) for i in range(NODES)}
    total = Resources(NODES * GPUS_PER_NODE, NODES * CPU_PER_NODE, NODES * MEM_PER_NODE)
    fleet = Fleet(policy, nodes, Ledger(total, TENANTS))
    for job in jobs:
        fleet.left[job.trial.trial_id] = job.work
        fleet.push(job.arrival, "arrive", job.trial.trial_id)
    by_id = {job.trial.trial_id: job.trial for job in jobs}
    for at, index in reclaims:
        fleet.push(at, "reclaim", f"n{index:03d}")
    horizon = hours * 3600
    total_weight = sum(p.weight for p in TENANTS.values())
    tick = 0.0
    samples: list[dict[str, Any]] = []
    next_sample = 0.0
    frag_gpu_s = idle_gpu_s = 0.0
    violations = 0
    hp_reached: dict[float, float] = {}
    completed = 0
    round_fn = (fifo_round if policy == "fifo" else per_node_round if policy in PER_NODE
                else ladder_round)
    while tick < horizon:
        while fleet.events and fleet.events[0][0] <= tick:
            at, _, kind, ref = heapq.heappop(fleet.events)
            if kind == "arrive":
                fleet.wait(by_id[ref])
            elif kind == "end":
                run = fleet.running.get(ref)
                if run is not None and run.done_at == at:
                    fleet.stop(ref, at, 0.0)
                    completed += 1
            elif kind == "paused":
                if ref in fleet.running and fleet.running[ref].pausing:
                    on_paused(fleet, ref, at)
            elif kind == "reclaim":
                reclaim(fleet, ref, at)
            elif kind == "up":
                fleet.down.discard(ref)
        round_fn(fleet, tick)
        used = {t: fleet.ledger.usage(t).gpus for t in TENANTS}
        busy = sum(used.values())
        free = sum(n.free.gpus for n in fleet.nodes.values() if n.node_id not in fleet.down)
        smallest = min((t.demand.gpus for q in fleet.pending.values() for t in q[:WINDOW]),
                       default=None)
        if tick >= WARMUP_S:
            idle_gpu_s += free * TICK_S
            if smallest is not None and smallest <= free:
                frag_gpu_s += free * TICK_S
            violations += sum(used[t] > TENANTS[t].max_gpus for t in TENANTS)
        hp_gpus = sum(r.trial.demand.gpus for r in fleet.running.values()
                      if r.trial.priority == HP_PRIORITY)
        hp_waiting = sum(t.demand.gpus for q in fleet.pending.values() for t in q
                         if t.priority == HP_PRIORITY)
        # Its share: C's fair share, or less once some of its trials have ended.
        hp_target = min(TENANTS["C"].weight / total_weight * NODES * GPUS_PER_NODE,
                        hp_gpus + hp_waiting)
        for level in HP_LEVELS:
            if tick >= HP_AT_S and level not in hp_reached and hp_gpus >= level * hp_target:
                hp_reached[level] = tick - HP_AT_S
        if tick >= next_sample:
            waiting = dict.fromkeys(TENANTS, 0)
            for queue in fleet.pending.values():
                for trial in queue:
                    waiting[trial.tenant] += trial.demand.gpus
            samples.append({"t_h": round(tick / 3600, 4), "busy": busy, "up_gpus":
                            (NODES - len(fleet.down)) * GPUS_PER_NODE, "hp": hp_gpus,
                            **{f"gpus_{t}": g for t, g in used.items()},
                            **{f"waiting_gpus_{t}": g for t, g in waiting.items()},
                            "waiting": sum(len(q) for q in fleet.pending.values())})
            next_sample += SAMPLE_S
        tick += TICK_S
    result = summarise(policy, samples, fleet, frag_gpu_s, idle_gpu_s, violations, hp_reached,
                       completed)
    result["wait_by_gpus"] = waits(jobs, fleet.first_start, horizon)
    return result


def waits(jobs: list[Job], first_start: dict[str, float], horizon: float
          ) -> dict[str, dict[str, Any]]:
    """Queueing time (arrival to first start) by trial size, for trials that arrived
    after warm-up; one that never started counts its wait up to the end (a lower bound)."""
    out: dict[str, dict[str, Any]] = {}
    for gpus in SIZES:
        arrived = [j for j in jobs if j.trial.demand.gpus == gpus and j.arrival >= WARMUP_S
                   and j.trial.priority == 0]
        waited = sorted(first_start.get(j.trial.trial_id, horizon) - j.arrival for j in arrived)
        if not waited:
            continue
        out[str(gpus)] = {
            "arrived": len(arrived),
            "started": sum(j.trial.trial_id in first_start for j in arrived),
            "median_wait_h": round(waited[len(waited) // 2] / 3600, 2),
            "p95_wait_h": round(waited[int(len(waited) * 0.95)] / 3600, 2),
        }
    return out


def summarise(policy: str, samples: list[dict[str, Any]], fleet: Fleet, frag_gpu_s: float,
              idle_gpu_s: float, violations: int, hp_reached: dict[float, float],
              completed: int) -> dict[str, Any]:
    after = [s for s in samples if s["t_h"] * 3600 >= WARMUP_S]
    capacity = NODES * GPUS_PER_NODE
    gpu_seconds = len(after) * SAMPLE_S * capacity
    return {
        "policy": policy,
        **share_metrics(after, capacity, {t: p.weight for t, p in TENANTS.items()},
                        int(3600 / SAMPLE_S), "utilisation_min_hourly"),
        "contended": contended(after, capacity, {t: p.weight for t, p in TENANTS.items()}),
        "quota_violation_rounds": violations,
        "quota_gpus": {t: p.max_gpus for t, p in TENANTS.items()},
        "hp_time_to_share_fraction_s": {f"{level:.0%}": hp_reached.get(level)
                                        for level in HP_LEVELS},
        "hp_peak_gpus": max(s["hp"] for s in samples),
        "fragmentation_gpu_hours": round(frag_gpu_s / 3600, 1),
        "fragmentation_fraction": round(frag_gpu_s / gpu_seconds, 4),
        "idle_gpu_hours": round(idle_gpu_s / 3600, 1),
        "trials_completed": completed,
        "trials_waiting_at_end": after[-1]["waiting"],
        "trials_paused_by_preemption": fleet.preempted,
        "trials_hit_by_spot_reclaim": fleet.reclaimed,
        "samples": samples,
    }


def share_metrics(after: list[dict[str, Any]], capacity: int, weights: dict[str, float],
                  window: int, window_name: str) -> dict[str, Any]:
    """Utilisation and each tenant's share of busy GPUs against its weight over the
    samples ``after`` warm-up (keys ``busy``, ``up_gpus``, ``gpus_<tenant>``): the lowest
    utilisation over ``window`` consecutive samples, shares, weighted Jain index."""
    busy = sum(s["busy"] for s in after)
    shares = {t: sum(s[f"gpus_{t}"] for s in after) / max(1, busy) for t in weights}
    targets = {t: w / sum(weights.values()) for t, w in weights.items()}
    window = max(1, min(window, len(after)))
    return {
        "utilisation_after_warmup": round(busy / (len(after) * capacity), 4),
        "utilisation_of_up_gpus": round(busy / max(1, sum(s["up_gpus"] for s in after)), 4),
        window_name: round(min(
            sum(s["busy"] for s in after[i:i + window]) / (window * capacity)
            for i in range(0, len(after) - window + 1, window)), 4),
        "share_of_busy_gpus": {t: round(v, 4) for t, v in shares.items()},
        "share_target": targets,
        "share_over_target_worst": round(max(abs(shares[t] / targets[t] - 1)
                                             for t in weights), 4),
        "jain_weighted": round(jain_index(shares[t] / weights[t] for t in weights), 4),
        "max_gpus_held": {t: max(s[f"gpus_{t}"] for s in after) for t in weights},
    }


def contended(after: list[dict[str, Any]], capacity: int, weights: dict[str, float]
              ) -> dict[str, Any]:
    """The shares over the samples ``after`` warm-up where every tenant had trials waiting
    (``waiting_gpus_<tenant>`` > 0): only there does a share below the weight mean the
    scheduler gave its GPUs to another tenant; elsewhere the tenant had no more work."""
    both = [s for s in after if all(s[f"waiting_gpus_{t}"] > 0 for t in weights)]
    out: dict[str, Any] = {
        "definition": "samples after warm-up where every tenant had trials waiting "
                      "(arrived, neither done nor running)",
        "samples": len(both), "of_samples": len(after),
        "waiting_fraction": {t: round(sum(s[f"waiting_gpus_{t}"] > 0 for s in after)
                                      / max(1, len(after)), 4) for t in weights},
    }
    if both:
        found = share_metrics(both, capacity, weights, len(both), "_")
        out.update({k: found[k] for k in ("utilisation_after_warmup", "share_of_busy_gpus",
                                          "share_over_target_worst", "jain_weighted")})
    return out


def plot(results: list[dict[str, Any]], path: Path, capacity: int = NODES * GPUS_PER_NODE,
         marks: tuple[float, float] = (WARMUP_S / 3600, HP_AT_S / 3600),
         xlabel: str = "simulated hours",
         title: str = "Library-level fleet simulation (no services): ladder.scheduling vs "
                      "FIFO first-fit, weights 2:1:1") -> bool:
    """Utilisation (top) and tenant shares (bottom) of each policy's ``samples`` over
    ``t_h``; ``marks``: the warm-up's end and the high-priority study's arrival."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_u, ax_s) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colours = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
    for result, style in zip(results, ("-", "--", ":", "-."), strict=False):
        if result["policy"] == "ladder-no-reservation":
            continue
        hours = [s["t_h"] for s in result["samples"]]
        ax_u.plot(hours, [s["busy"] / capacity for s in result["samples"]], style,
                  label=f"{result['policy']} utilisation")
        for tenant, colour in colours.items():
            ax_s.plot(hours, [s[f"gpus_{tenant}"] / max(1, s["busy"]) for s in result["samples"]],
                      style, color=colour, label=f"{result['policy']} tenant {tenant}")
        ax_s.plot(hours, [s["hp"] / max(1, s["busy"]) for s in result["samples"]], style,
                  color="tab:red", label=f"{result['policy']} C high-priority study")
    for target in (0.5, 0.25):
        ax_s.axhline(target, color="grey", linewidth=0.5)
    for ax in (ax_u, ax_s):
        ax.axvline(marks[0], color="grey", linestyle="--", linewidth=0.8)
        ax.axvline(marks[1], color="tab:red", linestyle="--", linewidth=0.8)
    ax_u.set_ylabel(f"busy GPUs / {capacity:,}")
    ax_u.set_ylim(0, 1.02)
    ax_s.set_ylabel("share of busy GPUs")
    ax_s.set_xlabel(xlabel)
    ax_u.legend(loc="lower right", fontsize=8)
    ax_s.legend(loc="upper right", fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"of {', '.join(POLICIES + PER_NODE)}")
    parser.add_argument("--trials-per-study", type=int, default=0,
                        help="0: trials of mixed sizes arrive one by one; else studies of "
                             "that many trials of one size (bench/fleet.py's arrivals)")
    parser.add_argument("--out", type=Path, default=Path(
        f"bench/results/fleet-sim-{datetime.date.today():%Y%m%d}.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    jobs, reclaims = workload(args.seed, args.hours, args.trials_per_study)
    results = []
    for policy in args.policies.split(","):
        t0 = time.perf_counter()
        result = simulate(policy, jobs, reclaims, args.hours)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    code = runenv.code_state(Path(__file__).parent)
    report = {
        "benchmark": "fleet-sim",
        "level": "library-level simulation: ladder.scheduling driven in-process by a "
                 "discrete-event simulator; no services, broker or Redis (make "
                 "bench-fleet runs the scenario through the real services)",
        "seed": args.seed, "hours": args.hours, "warmup_h": WARMUP_S / 3600,
        "fleet": {"nodes": NODES, "gpus_per_node": GPUS_PER_NODE, "cpu_per_node": CPU_PER_NODE,
                  "memory_gb_per_node": MEM_PER_NODE},
        "tenants": {t: {"weight": p.weight, "max_gpus": p.max_gpus} for t, p in TENANTS.items()},
        "workload": {"sizes": SIZES, "size_p": SIZE_P, "median_s": MEDIAN_S, "sigma": SIGMA,
                     "offered_per_tenant": OFFERED_PER_TENANT, "trials": len(jobs),
                     "trials_per_study": args.trials_per_study,
                     "checkpoint_every_s": CHECKPOINT_EVERY_S,
                     "pause_checkpoint_s": PAUSE_CHECKPOINT_S,
                     "reclaim_mean_s": RECLAIM_MEAN_S, "reclaim_down_s": RECLAIM_DOWN_S,
                     "spot_reclaims": len(reclaims),
                     "high_priority": {"at_s": HP_AT_S, "trials": HP_TRIALS, "gpus": HP_GPUS,
                                       "median_s": HP_MEDIAN_S, "tenant": "C"}},
        "round_every_s": TICK_S, "sample_every_s": SAMPLE_S,
        "machine": {"cpu": runenv.cpu_model(), "python": platform.python_version(),
                    "os": platform.platform()},
        "code": {"commit": code.commit, "dirty": code.dirty},
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    if plot(results, png):
        print(f"wrote {args.out} and {png}")
    else:
        print(f"wrote {args.out} (no matplotlib: no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
