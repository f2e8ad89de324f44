"""Multi-tenant GPU fleet through the real services (issue 19 item 5): ``make bench-fleet``.

The scheduler in the suggest service (``RequestWork``: weighted dominant-resource fair
share, quotas, priority with preemption, best-fit packing) against its FIFO first-fit
baseline (``LADDER_SCHEDULER_POLICY=fifo``), each on a stack of its own started by the
project's launcher (``ladder.stack.launcher.up``, broker in memory, auth on), in one run,
on the same scenario and seeds.

Scenario (constants shared with the library-level ``bench/fleet_sim.py``, imported):
``--nodes`` simulated nodes of 8 GPUs (a100, 96 cores, 1,024 GB), ``--spot-share`` of
them spot. Tenants A, B, C with weights 2:1:1 and GPU quotas 1000/500/500 scaled to
the fleet (``ladder tenant create`` / ``ladder tenant quota --weight --max-gpus``); the
node agents authenticate as an admin tenant. Each tenant submits studies as a Poisson
stream offering 0.6 of the fleet (1.8x in all: every tenant stays backlogged), each
study ``--trials-per-study`` trials of 1, 2, 4 or 8 GPUs (p 0.4/0.3/0.2/0.1) whose run
times are lognormal (median 40 min, sigma 1.2: heavy tail); one study of each size per
tenant exists at the start. Time is compressed: one simulated minute lasts ``--minute``
wall seconds (default 1 s). Spot reclaims: each spot node is reclaimed at a Poisson rate
of once per 24 simulated hours and is back 15 simulated minutes later (fleet_sim's
schedule); its trials checkpoint and hand back (FailTrial PREEMPTED), as the node
agent does on SIGTERM. At half the run tenant C creates a high-priority study (priority
10, 4-GPU trials, ``nodes / 2`` at a time (C's share of the fleet) and ``nodes`` in
all, median 3 h).

The simulator is one asyncio process (``workers.loadsim_sim``'s retried calls): per
node a loop doing what ``workers.agent`` does (RequestWork with its free resources,
asked again when a trial ends, else every ``--poll`` s, a full node 4x less often;
obeys ``pause_trial_ids``),
per trial the real RPCs (StartTrial; Heartbeat every quarter of the lease, at the
lease the bench's services use, ``--lease`` s; ReportCheckpoint every 15 simulated
minutes, the step being simulated minutes done, so a resumed trial goes on from its
checkpoint; 3 metric reports on the metrics topic; CompleteTrial; a PAUSE on a
Heartbeat is answered with a checkpoint and PauseTrial, as the worker runtime does).

Reported per policy, after a warm-up of ``--warmup`` of the run: GPU utilisation over
time (samples every ``--sample`` s) and after warm-up, each tenant's share of busy GPUs
against its weight and the weighted Jain index (also over the *contended* samples
only, where every tenant had trials waiting: each sample records each tenant's waiting
GPUs and waiting trials by size), quota violations (samples where a
tenant held more GPUs than its quota, counted from the simulator's view and from the
services' own tally in Redis), the time from the high-priority study's creation until
it holds 50/75/90% of its target (C's share, or all its trials), fragmentation
(GPU-seconds idle on nodes that are up while a study whose trials fit the idle total
waits, its tenant below quota), the RPC latencies and errors the simulator saw, and
the fair/fifo ratios of the headline figures.

    nice -n 19 .venv/bin/python bench/fleet.py [--nodes 200] [--duration 600]
        [--minute 1.0] [--seed 20261203] [--out bench/results/fleet-<date>.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiokafka
import grpc
from ladder import channels, runenv
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.scheduling.resources import Resources
from ladder.testing.processes import temporary_stack
from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    events_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
    trial_pb2,
)

from workers.agent import NodeSpec, node_offer, vector_of
from workers.loadsim_observe import percentiles
from workers.loadsim_sim import call

try:  # the library-level bench's scenario and metrics: run as a script, or as bench.fleet
    import fleet_sim
except ImportError:
    from bench import fleet_sim

GPU_TYPE = "a100"
TENANT_NAMES = tuple(fleet_sim.TENANTS)
ADMIN = "fleet"
HP_TENANT = "C"
METRIC = "loss"
REPORTS_PER_TRIAL = 3
FULL_POLL_FACTOR = 4
POLICIES = ("fair", "fifo")
SPACE = space_pb2.SearchSpace(parameters=[
    space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(low=0.0, high=1.0))])


@dataclass(frozen=True)
class Scenario:
    nodes: int
    duration: float  # wall seconds of the run
    minute: float  # wall seconds per simulated minute
    seed: int
    warmup: float  # fraction of the run
    hp_at: float  # fraction of the run
    spot_share: float
    trials_per_study: int
    poll: float
    lease: float
    sample: float
    reserve_fraction: float = 0.05  # the services' LADDER_RESERVE_FRACTION

    @property
    def capacity(self) -> int:
        return self.nodes * fleet_sim.GPUS_PER_NODE

    def wall(self, sim_seconds: float) -> float:
        return sim_seconds / 60 * self.minute

    def sim_hours(self, wall_seconds: float) -> float:
        return wall_seconds / self.minute / 60

    @property
    def quotas(self) -> dict[str, int]:
        scale = self.nodes / fleet_sim.NODES
        return {t: round((p.max_gpus or 0) * scale) for t, p in fleet_sim.TENANTS.items()}

    @property
    def weights(self) -> dict[str, float]:
        return {t: p.weight for t, p in fleet_sim.TENANTS.items()}

    @property
    def hp_parallel(self) -> int:
        """The high-priority study's parallelism: C's share of the fleet in its trials."""
        return max(1, self.nodes // 2)

    @property
    def hp_trials(self) -> int:
        """Twice its parallelism, so its demand lasts beyond its first, heavy-tailed
        trials: what it holds then measures the scheduler, not the study running out."""
        return 2 * self.hp_parallel

    @property
    def hp_target(self) -> int:
        share = self.weights[HP_TENANT] / sum(self.weights.values()) * self.capacity
        return int(min(share, self.hp_parallel * fleet_sim.HP_GPUS))


@dataclass(frozen=True)
class StudyPlan:
    name: str
    tenant: str
    gpus: int
    at: float  # wall seconds into the run
    trials: int
    priority: int = 0
    median_s: float = fleet_sim.MEDIAN_S
    parallel: int = 0  # max_parallel_trials; 0: no limit


def study_plan(sc: Scenario) -> list[StudyPlan]:
    """Every study of the run and when it is created: per tenant one of each size at the
    start, then a Poisson stream offering ``OFFERED_PER_TENANT`` of the fleet; the
    high-priority study of C at ``hp_at``. Drawn from the seed alone."""
    mean_gpus = sum(s * p for s, p in zip(fleet_sim.SIZES, fleet_sim.SIZE_P, strict=True))
    mean_s = fleet_sim.MEDIAN_S * math.exp(fleet_sim.SIGMA ** 2 / 2)
    trials_per_s = fleet_sim.OFFERED_PER_TENANT * sc.capacity / (mean_gpus * mean_s)
    studies_per_wall_s = trials_per_s / sc.trials_per_study * (60 / sc.minute)
    plans: list[StudyPlan] = []
    for tenant in TENANT_NAMES:
        for gpus in fleet_sim.SIZES:
            plans.append(StudyPlan(f"{tenant}-{gpus}g-0", tenant, gpus, 0.0, sc.trials_per_study))
        stream = random.Random(f"{sc.seed}-{tenant}")
        now, n = 0.0, 0
        while True:
            now += stream.expovariate(studies_per_wall_s)
            if now >= sc.duration:
                break
            n += 1
            gpus = stream.choices(fleet_sim.SIZES, fleet_sim.SIZE_P)[0]
            plans.append(StudyPlan(f"{tenant}-{gpus}g-{n}", tenant, gpus, now,
                                   sc.trials_per_study))
    plans.append(StudyPlan("C-urgent", HP_TENANT, fleet_sim.HP_GPUS, sc.hp_at * sc.duration,
                           sc.hp_trials, fleet_sim.HP_PRIORITY, fleet_sim.HP_MEDIAN_S,
                           sc.hp_parallel))
    return sorted(plans, key=lambda p: (p.at, p.name))


def run_minutes(seed: int, study: str, ordinal: int, median_s: float) -> float:
    """The simulated minutes the ``ordinal``-th trial of ``study`` needs: lognormal with
    fleet_sim's sigma, the same in both policies' runs."""
    rng = random.Random(zlib.crc32(f"{seed}:{study}:{ordinal}".encode()))
    return rng.lognormvariate(math.log(median_s), fleet_sim.SIGMA) / 60


# --- the stack ---------------------------------------------------------------------------


def ladder_cli(state: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LADDER_")}
    env["LADDER_STATE_DIR"] = str(state)
    done = subprocess.run([sys.executable, "-m", "ladder.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"ladder {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def tenants(state: Path, sc: Scenario) -> dict[str, str]:
    """The admin tenant and A, B, C with their weights and GPU quotas; their tokens."""
    tokens = {ADMIN: ladder_cli(state, "tenant", "create", ADMIN, "--admin")}
    for name in TENANT_NAMES:
        tokens[name] = ladder_cli(state, "tenant", "create", name)
        ladder_cli(state, "tenant", "quota", name, "--weight", f"{sc.weights[name]:g}",
                   "--max-gpus", str(sc.quotas[name]))
    return tokens


def study_config(plan: StudyPlan) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name=plan.name, space=SPACE, metric=METRIC, max_trials=plan.trials,
        algorithm=study_pb2.RANDOM,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        trial_resources=study_pb2.TrialResources(
            gpus=plan.gpus, gpu_type=GPU_TYPE, cpu=10 * plan.gpus, memory_gb=100 * plan.gpus),
        priority=plan.priority, labels={"bench": "fleet"},
        max_parallel_trials=plan.parallel,
    )


# --- the simulator -----------------------------------------------------------------------


@dataclass
class SimTrial:
    trial_id: str
    study: str
    tenant: str
    gpus: int
    resources: Resources
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    why: str = ""


@dataclass
class SimNode:
    index: int
    spec: NodeSpec
    free: Resources
    running: dict[str, SimTrial] = field(default_factory=dict)
    down_until: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Tally:
    rpc_ms: dict[str, list[float]] = field(default_factory=dict)
    rpc_errors: dict[str, int] = field(default_factory=dict)
    trials_started: int = 0
    trials_resumed: int = 0
    trials_completed: int = 0
    paused_by_heartbeat: int = 0
    paused_by_request: int = 0
    reclaimed: int = 0
    lost: int = 0
    reports: int = 0
    empty_answers: int = 0  # RequestWork answers with no assignment
    assignments: int = 0
    loop_lag_ms_max: float = 0.0


class FleetSim:
    def __init__(self, settings: Settings, sc: Scenario, plans: list[StudyPlan],
                 tokens: dict[str, str], policy: str) -> None:
        self.settings = replace(settings, token=tokens[ADMIN])
        self.sc = sc
        self.plans = plans
        self.tokens = tokens
        self.policy = policy
        self.tally = Tally()
        self.nodes: list[SimNode] = []
        spot = set(random.Random(f"{sc.seed}-spot").sample(range(sc.nodes),
                                                            round(sc.spot_share * sc.nodes)))
        for i in range(sc.nodes):
            spec = NodeSpec(f"n{i:03d}", fleet_sim.GPUS_PER_NODE, GPU_TYPE,
                            fleet_sim.CPU_PER_NODE, fleet_sim.MEM_PER_NODE, i in spot)
            self.nodes.append(SimNode(i, spec, spec.capacity))
        horizon = sc.duration / sc.minute * 60
        reclaims = fleet_sim.spot_reclaims(random.Random(f"{sc.seed}-reclaim"), sorted(spot),
                                           horizon)
        self.reclaims = [(sc.wall(at), index) for at, index in reclaims]
        self.study_ids: dict[str, StudyPlan] = {}  # study id -> its plan
        self.created_at: dict[str, float] = {}  # study name -> wall second of creation
        self.ordinals: dict[str, int] = {}  # study id -> new trials seen
        self.work: dict[str, float] = {}  # trial id -> simulated minutes it needs
        self.ended: dict[str, int] = {}  # study id -> trials completed
        self.running_ids: dict[str, set[str]] = {}  # study id -> trials held on a node
        self.samples: list[dict[str, Any]] = []
        self.hp_reached: dict[str, float] = {}
        self.frag_gpu_s = 0.0
        self.idle_gpu_s = 0.0
        self.quota_violations = 0
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def rpc(self, name: str, method: Any, request: Any) -> Any:
        started = time.monotonic()
        try:
            return await call(method, request)
        except grpc.RpcError as exc:
            key = f"{name}:{exc.code().name}"
            self.tally.rpc_errors[key] = self.tally.rpc_errors.get(key, 0) + 1
            raise
        finally:
            self.tally.rpc_ms.setdefault(name, []).append((time.monotonic() - started) * 1000)

    # -- studies

    async def create_studies(self) -> None:
        clients = {t: LadderClient(replace(self.settings, token=self.tokens[t]))
                   for t in TENANT_NAMES}
        try:
            for plan in self.plans:
                await asyncio.sleep(max(0.0, plan.at - self.now()))
                study = await asyncio.to_thread(clients[plan.tenant].create_study,
                                                study_config(plan))
                self.study_ids[study.study_id] = plan
                self.created_at[plan.name] = self.now()
        finally:
            for client in clients.values():
                client.close()

    # -- nodes

    async def node_loop(self, node: SimNode, suggest: Any, evaluate: Any,
                        producer: aiokafka.AIOKafkaProducer, end: float) -> None:
        await asyncio.sleep(random.Random(node.index).uniform(0, self.sc.poll))
        while self.now() < end:
            if node.down_until > self.now():
                await asyncio.sleep(node.down_until - self.now())
                continue
            node.changed.clear()
            offer = node_offer(node.spec, node.free, fleet_sim.GPUS_PER_NODE)
            try:
                reply = await self.rpc("RequestWork", suggest.RequestWork,
                                       suggest_pb2.RequestWorkRequest(
                                           node=offer, worker_id=node.spec.node_id))
            except grpc.RpcError:
                await asyncio.sleep(self.sc.poll)
                continue
            for trial_id in reply.pause_trial_ids:
                trial = node.running.get(trial_id)
                if trial is not None and not trial.why:
                    trial.why = "pause-request"
                    trial.interrupt.set()
            for assignment in reply.assignments:
                self.place(node, assignment, evaluate, producer, end)
            self.tally.assignments += len(reply.assignments)
            if not reply.assignments:
                self.tally.empty_answers += 1
            if node.free.gpus == 0 or not reply.assignments:
                # A full node asks FULL_POLL_FACTOR times less often (only a preemption
                # plan can come of it), which spares the scheduler.
                wait = self.sc.poll * (FULL_POLL_FACTOR if node.free.gpus == 0 else 1)
                try:
                    await asyncio.wait_for(node.changed.wait(), wait)
                except TimeoutError:
                    pass

    def place(self, node: SimNode, assignment: suggest_pb2.Assignment, evaluate: Any,
              producer: aiokafka.AIOKafkaProducer, end: float) -> None:
        suggestion = assignment.suggestion
        study_id = suggestion.trial.study_id
        plan = self.study_ids.get(study_id)
        tenant = plan.tenant if plan else "?"
        vector = vector_of(assignment.resources)
        trial = SimTrial(suggestion.trial.trial_id, study_id, tenant, vector.gpus, vector)
        node.free = node.free - vector
        node.running[trial.trial_id] = trial
        self.running_ids.setdefault(study_id, set()).add(trial.trial_id)
        if trial.trial_id not in self.work:
            ordinal = self.ordinals.get(study_id, 0)
            self.ordinals[study_id] = ordinal + 1
            median = plan.median_s if plan else fleet_sim.MEDIAN_S
            self.work[trial.trial_id] = run_minutes(self.sc.seed, plan.name if plan else
                                                    study_id, ordinal, median)
        asyncio.get_running_loop().create_task(
            self.trial_run(node, trial, evaluate, producer, end))

    async def trial_run(self, node: SimNode, trial: SimTrial, evaluate: Any,
                        producer: aiokafka.AIOKafkaProducer, end: float) -> None:
        try:
            await self._trial(node, trial, evaluate, producer, end)
        except grpc.RpcError:
            self.tally.lost += 1
        finally:
            node.running.pop(trial.trial_id, None)
            node.free = node.free + trial.resources
            self.running_ids.get(trial.study, set()).discard(trial.trial_id)
            node.changed.set()

    async def _trial(self, node: SimNode, trial: SimTrial, evaluate: Any,
                     producer: aiokafka.AIOKafkaProducer, end: float) -> None:
        attempt = uuid.uuid4().hex
        started = await self.rpc("StartTrial", evaluate.StartTrial, evaluate_pb2.StartTrialRequest(
            trial_id=trial.trial_id, worker_id=node.spec.node_id, attempt_id=attempt,
            hostname=node.spec.node_id))
        self.tally.trials_started += 1
        done = float(started.checkpoint_step) if started.checkpoint_uri else 0.0
        if started.checkpoint_uri:
            self.tally.trials_resumed += 1
        need = self.work[trial.trial_id]
        beat_every = max(0.25, (started.lease_seconds or self.sc.lease) / 4)
        checkpoint_every = fleet_sim.CHECKPOINT_EVERY_S / 60  # simulated minutes
        last_checkpoint = done
        reports = [need * (k + 1) / (REPORTS_PER_TRIAL + 1) for k in range(REPORTS_PER_TRIAL)]
        began, began_done = time.monotonic(), done
        next_beat = time.monotonic() + beat_every
        while True:
            minutes = began_done + (time.monotonic() - began) / self.sc.minute
            if minutes >= need:
                await self.rpc("CompleteTrial", evaluate.CompleteTrial,
                               evaluate_pb2.CompleteTrialRequest(
                                   trial_id=trial.trial_id, attempt_id=attempt,
                                   value=self.value(trial.trial_id), step=round(need, 3)))
                self.tally.trials_completed += 1
                self.ended[trial.study] = self.ended.get(trial.study, 0) + 1
                return
            if trial.interrupt.is_set() or self.now() >= end:
                if self.now() >= end:
                    return  # the run is over: the lease expires
                await self.checkpoint(evaluate, trial, attempt, minutes)
                kind = "reclaimed" if trial.why == "reclaim" else "paused_by_request"
                setattr(self.tally, kind, getattr(self.tally, kind) + 1)
                await self.rpc("FailTrial", evaluate.FailTrial, evaluate_pb2.FailTrialRequest(
                    trial_id=trial.trial_id, attempt_id=attempt,
                    reason=f"preempted: {trial.why} on {node.spec.node_id}",
                    kind=trial_pb2.PREEMPTED))
                return
            while reports and minutes >= reports[0]:
                reports.pop(0)
                await self.report(producer, trial, attempt, minutes)
            if minutes - last_checkpoint >= checkpoint_every:
                await self.checkpoint(evaluate, trial, attempt, minutes)
                last_checkpoint = minutes
            if time.monotonic() >= next_beat:
                reply = await self.rpc("Heartbeat", evaluate.Heartbeat,
                                       evaluate_pb2.HeartbeatRequest(
                                           trial_id=trial.trial_id, attempt_id=attempt,
                                           step=round(minutes, 3)))
                next_beat = time.monotonic() + beat_every
                if reply.action == events_pb2.PAUSE:
                    await self.checkpoint(evaluate, trial, attempt, minutes)
                    await self.rpc("PauseTrial", evaluate.PauseTrial,
                                   evaluate_pb2.PauseTrialRequest(
                                       trial_id=trial.trial_id, attempt_id=attempt,
                                       step=round(minutes, 3), rung=reply.decision.rung))
                    self.tally.paused_by_heartbeat += 1
                    return
            wake = min(next_beat, began + (need - began_done) * self.sc.minute)
            for at in (reports[:1] or []):
                wake = min(wake, began + (at - began_done) * self.sc.minute)
            wake = min(wake, began + (last_checkpoint + checkpoint_every - began_done)
                       * self.sc.minute)
            try:
                await asyncio.wait_for(trial.interrupt.wait(),
                                       max(0.01, wake - time.monotonic()))
            except TimeoutError:
                pass

    def value(self, trial_id: str) -> float:
        return zlib.crc32(trial_id.encode()) / 2 ** 32

    async def checkpoint(self, evaluate: Any, trial: SimTrial, attempt: str,
                         minutes: float) -> None:
        await self.rpc("ReportCheckpoint", evaluate.ReportCheckpoint,
                       evaluate_pb2.ReportCheckpointRequest(
                           trial_id=trial.trial_id, attempt_id=attempt,
                           uri=f"sim://{trial.trial_id}/{minutes:.3f}", step=round(minutes, 3)))

    async def report(self, producer: aiokafka.AIOKafkaProducer, trial: SimTrial, attempt: str,
                     minutes: float) -> None:
        report = events_pb2.MetricReport(
            study_id=trial.study, trial_id=trial.trial_id, attempt_id=attempt, metric=METRIC,
            step=round(minutes, 3), value=self.value(trial.trial_id) + 1 / (1 + minutes),
            ts_ms=int(time.time() * 1000), worker_id=trial.trial_id)
        await producer.send(self.settings.topics.metrics, key=trial.trial_id.encode(),
                            value=report.SerializeToString())
        self.tally.reports += 1

    # -- spot reclaims

    async def reclaim_loop(self, end: float) -> None:
        down = self.sc.wall(fleet_sim.RECLAIM_DOWN_S)
        for at, index in self.reclaims:
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - self.now()))
            node = self.nodes[index]
            node.down_until = self.now() + down
            for trial in list(node.running.values()):
                if not trial.why:
                    trial.why = "reclaim"
                    trial.interrupt.set()

    # -- measures

    def waiting_demands(self) -> list[tuple[str, int, int]]:
        """(tenant, GPUs per trial, trials) of every created study with trials neither
        done nor running (queued, resumable or still to create)."""
        out = []
        for study_id, plan in self.study_ids.items():
            left = plan.trials - self.ended.get(study_id, 0) - len(self.running_ids.get(
                study_id, ()))
            if left > 0:
                out.append((plan.tenant, plan.gpus, left))
        return out

    def sample(self, dt: float) -> None:
        now = self.now()
        used = dict.fromkeys(TENANT_NAMES, 0)
        hp = 0
        for node in self.nodes:
            for trial in node.running.values():
                if trial.tenant in used:
                    used[trial.tenant] += trial.gpus
                plan = self.study_ids.get(trial.study)
                if plan is not None and plan.priority:
                    hp += trial.gpus
        up = [n for n in self.nodes if n.down_until <= now]
        free = sum(n.free.gpus for n in up)
        busy = sum(used.values())
        warm = now >= self.sc.warmup * self.sc.duration
        demands = self.waiting_demands()
        fits = [g for t, g, _ in demands if used[t] + g <= self.sc.quotas[t]]
        waiting = dict.fromkeys(TENANT_NAMES, 0)
        by_size: dict[str, dict[int, int]] = {t: {} for t in TENANT_NAMES}
        for tenant, gpus, left in demands:
            waiting[tenant] += gpus * left
            by_size[tenant][gpus] = by_size[tenant].get(gpus, 0) + left
        if warm:
            self.idle_gpu_s += free * dt
            if fits and min(fits) <= free:
                self.frag_gpu_s += free * dt
            self.quota_violations += sum(used[t] > self.sc.quotas[t] for t in TENANT_NAMES)
        hp_created = self.created_at.get("C-urgent")
        if hp_created is not None:
            for level in fleet_sim.HP_LEVELS:
                key = f"{level:.0%}"
                if key not in self.hp_reached and hp >= level * self.sc.hp_target:
                    self.hp_reached[key] = round(now - hp_created, 2)
        self.samples.append({
            "t_s": round(now, 2), "t_h": round(self.sc.sim_hours(now), 4), "busy": busy,
            "up_gpus": len(up) * fleet_sim.GPUS_PER_NODE, "hp": hp, "free": free,
            **{f"gpus_{t}": g for t, g in used.items()},
            **{f"waiting_gpus_{t}": g for t, g in waiting.items()},
            "waiting_trials_by_gpus": {t: dict(sorted(n.items())) for t, n in by_size.items()},
            "waiting_studies": len(demands),
        })

    async def sampler(self, end: float) -> None:
        last = self.now()
        while self.now() < end:
            await asyncio.sleep(self.sc.sample)
            lag = (self.now() - last - self.sc.sample) * 1000
            self.tally.loop_lag_ms_max = max(self.tally.loop_lag_ms_max, lag)
            now = self.now()
            self.sample(now - last)
            last = now

    # -- the run

    async def run(self) -> None:
        options = [("grpc.max_concurrent_streams", 10000)]
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                             acks="all", linger_ms=50,
                                             client_id="ladder-bench-fleet")
        await producer.start()
        try:
            async with (
                channels.aio_channel(self.settings.suggest_addr, self.settings, options) as sc,
                channels.aio_channel(self.settings.evaluate_addr, self.settings, options) as ec,
            ):
                suggest = suggest_pb2_grpc.SuggestServiceStub(sc)
                evaluate = evaluate_pb2_grpc.EvaluateServiceStub(ec)
                self.t0 = time.monotonic()
                end = self.sc.duration
                tasks = [asyncio.create_task(self.create_studies()),
                         asyncio.create_task(self.reclaim_loop(end)),
                         asyncio.create_task(self.sampler(end))]
                await asyncio.gather(*(self.node_loop(n, suggest, evaluate, producer, end)
                                       for n in self.nodes), *tasks[2:])
                for task in tasks[:2]:
                    task.cancel()
                for node in self.nodes:  # the run is over: running trials end where they are
                    for trial in node.running.values():
                        trial.interrupt.set()
                await asyncio.sleep(0.5)
        finally:
            await producer.stop()


# --- services' state ---------------------------------------------------------------------


class ServiceQuotaWatch:
    """Polls the services' own tally of GPUs in use per tenant (Redis) and counts the
    polls where a tenant held more than its quota; notes how many nodes are reserved."""

    def __init__(self, settings: Settings, quotas: dict[str, int], every: float) -> None:
        self.settings = settings
        self.quotas = quotas
        self.every = every
        self.polls = 0
        self.violations = 0
        self.max_seen: dict[str, int] = dict.fromkeys(quotas, 0)
        self.reserved: list[int] = []  # nodes held by node reservations, per poll
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServiceQuotaWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import redis
        from ladder.state import Keys

        client = redis.Redis.from_url(self.settings.redis_url)
        keys = Keys.for_prefix(self.settings.topics.prefix)
        try:
            while not self._stop.wait(self.every):
                used = gpus_in_use(client, keys, list(self.quotas))
                self.polls += 1
                self.reserved.append(int(client.hlen(keys.sched_reserved)))
                for tenant, gpus in used.items():
                    self.max_seen[tenant] = max(self.max_seen[tenant], gpus)
                    self.violations += gpus > self.quotas[tenant]
        except Exception as exc:  # noqa: BLE001 - reported in the result, not lost
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()


def gpus_in_use(client: Any, keys: Any, tenants: list[str]) -> dict[str, int]:
    """Each tenant's GPUs in use as the scheduler's Redis tally holds them."""
    from ladder.state.holds import HoldStore  # the scheduler's own reading

    return {t: used.gpus for t, used in HoldStore(client, keys).usage(tenants).items()}


# --- one policy --------------------------------------------------------------------------


def run_policy(policy: str, sc: Scenario, plans: list[StudyPlan]) -> dict[str, Any]:
    for name in [k for k in os.environ if k.startswith("LADDER_")]:
        del os.environ[name]
    os.environ["LADDER_SCHEDULER_POLICY"] = policy
    os.environ["LADDER_LEASE_SECONDS"] = f"{sc.lease:g}"
    os.environ["LADDER_RESERVE_FRACTION"] = f"{sc.reserve_fraction:g}"
    with temporary_stack(f"ladder-fleet-{policy}-", 240, broker_storage="memory") as (
            state, up_s):
        tokens = tenants(state, sc)
        settings = Settings.from_env()
        watch = ServiceQuotaWatch(settings, sc.quotas, sc.sample).start()
        sim = FleetSim(settings, sc, plans, tokens, policy)
        t0 = time.monotonic()
        asyncio.run(sim.run())
        wall = time.monotonic() - t0
        watch.stop()
        return summarise(policy, sc, sim, watch, up_s, wall)


def summarise(policy: str, sc: Scenario, sim: FleetSim, watch: ServiceQuotaWatch,
              up_s: float, wall: float) -> dict[str, Any]:
    warm = sc.warmup * sc.duration
    after = [s for s in sim.samples if s["t_s"] >= warm]
    window = max(1, int(sc.duration * 0.1 / sc.sample))  # a tenth of the run
    span = sum(s["up_gpus"] for s in after) and (after[-1]["t_s"] - after[0]["t_s"])
    gpu_seconds = span * sc.capacity if span else 1.0
    tally = sim.tally
    return {
        "policy": policy,
        **fleet_sim.share_metrics(after, sc.capacity, sc.weights, window,
                                  "utilisation_min_tenth_of_run"),
        "contended": fleet_sim.contended(after, sc.capacity, sc.weights),
        "quota_gpus": sc.quotas,
        "quota_violation_samples_simulator": sim.quota_violations,
        "quota_violation_polls_services": watch.violations,
        "services_polls": watch.polls,
        "services_max_gpus_held": watch.max_seen,
        "services_watch_error": watch.error,
        "reserved_nodes_per_poll": {
            "mean": round(sum(watch.reserved) / max(1, len(watch.reserved)), 2),
            "max": max(watch.reserved, default=0)},
        "hp_time_to_share_fraction_s": {f"{lv:.0%}": sim.hp_reached.get(f"{lv:.0%}")
                                        for lv in fleet_sim.HP_LEVELS},
        "hp_time_to_share_fraction_sim_min": {
            k: (round(v / sc.minute, 1) if v is not None else None)
            for k, v in ((f"{lv:.0%}", sim.hp_reached.get(f"{lv:.0%}"))
                         for lv in fleet_sim.HP_LEVELS)},
        "hp_target_gpus": sc.hp_target,
        "hp_peak_gpus": max((s["hp"] for s in sim.samples), default=0),
        "fragmentation_gpu_s": round(sim.frag_gpu_s, 1),
        "fragmentation_fraction": round(sim.frag_gpu_s / gpu_seconds, 4),
        "idle_gpu_s": round(sim.idle_gpu_s, 1),
        "studies_created": len(sim.study_ids),
        "studies_planned": len(sim.plans),
        # How late CreateStudy made each study's arrival (a saturated suggest service
        # delays the offered load itself).
        "study_creation_late_s": percentiles(
            sim.created_at[p.name] - p.at for p in sim.plans if p.name in sim.created_at),
        "trials": {"started": tally.trials_started, "resumed": tally.trials_resumed,
                   "completed": tally.trials_completed,
                   "paused_by_heartbeat": tally.paused_by_heartbeat,
                   "paused_by_request": tally.paused_by_request,
                   "reclaimed": tally.reclaimed, "lost": tally.lost},
        "metric_reports": tally.reports,
        "request_work": {"assignments": tally.assignments, "empty_answers": tally.empty_answers},
        "spot_reclaims": sum(1 for at, _ in sim.reclaims if at < sc.duration),
        "rpc_ms": {name: percentiles(ms) for name, ms in sorted(tally.rpc_ms.items())},
        "rpc_errors": tally.rpc_errors,
        "simulator_loop_lag_ms_max": round(tally.loop_lag_ms_max, 1),
        "stack_up_s": up_s,
        "wall_s": round(wall, 1),
        "samples": sim.samples,
    }


def ratios(fair: dict[str, Any], fifo: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "utilisation_after_warmup": ratio(fair["utilisation_after_warmup"],
                                          fifo["utilisation_after_warmup"]),
        "jain_weighted": ratio(fair["jain_weighted"], fifo["jain_weighted"]),
        "share_over_target_worst": ratio(fair["share_over_target_worst"],
                                         fifo["share_over_target_worst"]),
        "contended_share_over_target_worst": ratio(
            fair["contended"].get("share_over_target_worst"),
            fifo["contended"].get("share_over_target_worst")),
        "fragmentation_fraction": ratio(fair["fragmentation_fraction"],
                                        fifo["fragmentation_fraction"]),
        "hp_time_to_50%": ratio(fair["hp_time_to_share_fraction_s"]["50%"],
                                fifo["hp_time_to_share_fraction_s"]["50%"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=fleet_sim.NODES)
    parser.add_argument("--duration", type=float, default=600.0, help="wall seconds per policy")
    parser.add_argument("--minute", type=float, default=1.0,
                        help="wall seconds per simulated minute")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run")
    parser.add_argument("--hp-at", type=float, default=0.5, help="fraction of the run")
    parser.add_argument("--spot-share", type=float, default=0.5)
    parser.add_argument("--trials-per-study", type=int, default=0,
                        help="default: max(10, nodes / 2)")
    parser.add_argument("--poll", type=float, default=5.0,
                        help="seconds between an idle node's RequestWork calls")
    parser.add_argument("--lease", type=float, default=40.0,
                        help="the services' LADDER_LEASE_SECONDS (Heartbeat every quarter)")
    parser.add_argument("--sample", type=float, default=1.0)
    parser.add_argument("--reserve-fraction", type=float, default=0.05,
                        help="the services' LADDER_RESERVE_FRACTION")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=Path(
        f"bench/results/fleet-{datetime.date.today():%Y%m%d}.json"))
    args = parser.parse_args(argv)
    sc = Scenario(args.nodes, args.duration, args.minute, args.seed, args.warmup, args.hp_at,
                  args.spot_share, args.trials_per_study or max(10, args.nodes // 2),
                  args.poll, args.lease, args.sample, args.reserve_fraction)
    plans = study_plan(sc)
    started = time.perf_counter()
    results = []
    for policy in args.policies.split(","):
        result = run_policy(policy, sc, plans)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    by = {r["policy"]: r for r in results}
    code = runenv.code_state(Path(__file__).parent)
    report = {
        "benchmark": "fleet",
        "level": "through the real services (suggest's RequestWork scheduler, evaluate, "
                 "early-stop, lineage; broker and Redis) started by ladder.stack.launcher, "
                 "one stack per policy, simulated nodes in one asyncio process",
        "time_compression": f"1 simulated minute = {sc.minute:g} s wall",
        "scenario": {**{k: getattr(sc, k) for k in (
            "nodes", "duration", "minute", "seed", "warmup", "hp_at", "spot_share",
            "trials_per_study", "poll", "lease", "sample", "reserve_fraction")},
            "capacity_gpus": sc.capacity, "quotas": sc.quotas, "weights": sc.weights,
            "studies": len(plans), "hp_trials": sc.hp_trials, "hp_parallel": sc.hp_parallel,
            "hp_target_gpus": sc.hp_target,
            "sizes": fleet_sim.SIZES, "size_p": fleet_sim.SIZE_P,
            "median_s_simulated": fleet_sim.MEDIAN_S, "sigma": fleet_sim.SIGMA,
            "checkpoint_every_s_simulated": fleet_sim.CHECKPOINT_EVERY_S,
            "reclaim_mean_s_simulated": fleet_sim.RECLAIM_MEAN_S,
            "reclaim_down_s_simulated": fleet_sim.RECLAIM_DOWN_S},
        "seeds": {"studies": f"{sc.seed}-<tenant>", "durations": f"crc32({sc.seed}:study:k)",
                  "spot_nodes": f"{sc.seed}-spot", "reclaims": f"{sc.seed}-reclaim"},
        "machine": {"cpu": runenv.cpu_model(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "os": platform.platform(),
                    "load_avg_at_end": os.getloadavg()},
        "versions": {"grpcio": grpc.__version__, "aiokafka": aiokafka.__version__},
        "code": {"commit": code.commit, "dirty": code.dirty},
        "wall_s": round(time.perf_counter() - started, 1),
        "fair_over_fifo": ratios(by["fair"], by["fifo"]) if len(by) == 2 else None,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    drawn = fleet_sim.plot(
        results, png, capacity=sc.capacity,
        marks=(sc.sim_hours(sc.warmup * sc.duration), sc.sim_hours(sc.hp_at * sc.duration)),
        title=f"bench-fleet through the real services: {sc.nodes} nodes x 8 GPUs, weights "
              f"2:1:1, fair (RequestWork) vs fifo; 1 simulated min = {sc.minute:g} s")
    print(f"wrote {args.out}" + (f" and {png}" if drawn else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
