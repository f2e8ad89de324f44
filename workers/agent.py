"""Node agent: one per node, ``python -m workers.agent --gpus 8 --gpu-type a100 --cpu 64
--memory-gb 512 [--spot]``.

The agent advertises what its node has and asks the scheduler for work without naming a
study (``RequestWork``, suggest service): the scheduler picks, among every tenant's
active studies, by weighted fair share, quotas and priority, and packs trials best-fit
on this node's free resources (``ladder.scheduling``). Each assignment is an ordinary
trial: the agent runs it with the worker runtime (``workers.runtime.Worker``: StartTrial,
the Heartbeat / ReportMetric / checkpoint path, CompleteTrial; a PAUSE on a Heartbeat is
answered with a checkpoint and PauseTrial), one thread per running trial, and frees its
slot when the attempt ends. A trial named in ``pause_trial_ids`` (preempted for a
higher-priority one) checkpoints and is handed back (RESUMABLE; the scheduler hands it
out again first). SIGTERM / SIGINT: every running trial checkpoints and is handed back
within its study's preemption notice, no new work is asked for, then the agent exits 0;
a second signal quits at once (the leases then expire).

The trial's code: the study's ``workload`` label (``ladder study create ... --label
workload=synthetic``), else ``--workload``; the names ``python -m workers`` knows
(``digits``, ``synthetic``) or ``module:Class``.

| flag / env                          | default     | meaning                            |
|-------------------------------------|-------------|------------------------------------|
| --node-id / LADDER_NODE_ID          | host name   | the node's name (its worker id)    |
| --gpus / LADDER_NODE_GPUS           | 0           | GPUs of the node (whole devices)   |
| --gpu-type / LADDER_NODE_GPU_TYPE   | ""          | their type ("" = untyped)          |
| --cpu / LADDER_NODE_CPU             | host cores  | CPU cores offered                  |
| --memory-gb / LADDER_NODE_MEMORY_GB | 0           | memory offered                     |
| --spot / LADDER_NODE_SPOT=1         | off         | a spot (preemptible) node          |
| --workload                          | synthetic   | what a study without a label runs  |
| --poll                              | 1.0         | seconds between RequestWork calls  |
|                                     |             | while nothing changes              |
| --max-per-request                   | 8           | assignments at most in one answer  |
| --max-trials                        | unbounded   | stop asking after this many        |
| --exit-when-idle                    | never       | exit after this many seconds with  |
|                                     |             | nothing running or assigned        |
| --checkpoint-every, --checkpoint-url, --decision-wait, --max-steps,                   |
| --retry-timeout: as ``python -m workers``                                             |
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from ladder.api.attempt import Outcome, WorkerConfig
from ladder.api.pool import notice_on_signals
from ladder.api.study import worker_retry_seconds
from ladder.checkpoints import CheckpointStore
from ladder.scheduling import resources as res
from ladder.scheduling.resources import NOTHING, Resources
from ladder.v1 import study_pb2, suggest_pb2

log = logging.getLogger("ladder.agent")

WORKLOAD_LABEL = "workload"
DEFAULT_WORKLOAD = "synthetic"
DEFAULT_MAX_PER_REQUEST = 8
# A trial's hand-back reason when RequestWork named it in pause_trial_ids (lineage shows
# "preempted: worker W was paused by the scheduler (priority or fair share) after step N").
SCHEDULER_PAUSE = "was paused by the scheduler (priority or fair share)"


@dataclass(frozen=True)
class NodeSpec:
    """What the node has (validated by ``ladder.scheduling.resources``)."""

    node_id: str
    gpus: int = 0
    gpu_type: str = ""
    cpu: float = 0.0
    memory_gb: float = 0.0
    spot: bool = False

    @property
    def capacity(self) -> Resources:
        return res.node(self.node_id, self.gpus, self.gpu_type, self.cpu,
                        self.memory_gb).capacity


def trial_resources(vector: Resources, gpu_type: str = "") -> study_pb2.TrialResources:
    return study_pb2.TrialResources(gpus=vector.gpus, gpu_type=gpu_type, cpu=vector.cpu,
                                    memory_gb=vector.memory_gb)


def vector_of(message: study_pb2.TrialResources) -> Resources:
    return Resources(message.gpus, message.cpu, message.memory_gb)


def _floor_zero(vector: Resources) -> Resources:
    return Resources(max(0, vector.gpus), max(0.0, vector.cpu), max(0.0, vector.memory_gb))


class Slots:
    """The node's ledger: what each running trial holds, and what is free."""

    def __init__(self, capacity: Resources) -> None:
        self.capacity = capacity
        self.held: dict[str, Resources] = {}

    @property
    def free(self) -> Resources:
        used = NOTHING
        for vector in self.held.values():
            used = used + vector
        return self.capacity - used

    def take(self, trial_id: str, vector: Resources) -> bool:
        """Hold ``vector`` for ``trial_id``; False when it does not fit what is free
        (the trial still runs, the scheduler's word is final, but it is logged)."""
        fits = self.free.covers(vector)
        self.held[trial_id] = self.held.get(trial_id, NOTHING) + vector
        return fits

    def release(self, trial_id: str) -> Resources:
        return self.held.pop(trial_id, NOTHING)


def node_offer(spec: NodeSpec, free: Resources, max_trials: int) -> suggest_pb2.NodeOffer:
    """The RequestWork offer: the node's capacity and what is free (never negative)."""
    return suggest_pb2.NodeOffer(
        node_id=spec.node_id,
        capacity=trial_resources(spec.capacity, spec.gpu_type),
        free=trial_resources(_floor_zero(free), spec.gpu_type),
        spot=spec.spot,
        max_trials=max_trials,
    )


def workload_name(labels: Mapping[str, str], default: str) -> str:
    """The study's ``workload`` label, else the agent's default."""
    return labels.get(WORKLOAD_LABEL) or default


@dataclass
class AgentOptions:
    workload: str = DEFAULT_WORKLOAD
    poll: float = 1.0
    max_per_request: int = DEFAULT_MAX_PER_REQUEST
    max_trials: int | None = None
    exit_when_idle: float | None = None
    checkpoint_every: int | None = None
    checkpoint_url: str | None = None
    decision_wait: float = 3.0
    max_steps: int | None = None
    state_dir: Path = Path(".ladder")


@dataclass
class AgentReport:
    assigned: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    by_study: dict[str, int] = field(default_factory=dict)
    paused_by_scheduler: int = 0
    fatal_error: str = ""


@dataclass
class _Running:
    trial_id: str
    study_id: str
    worker: Any  # workers.runtime.Worker
    thread: threading.Thread | None = None


class NodeAgent:
    """Asks for work for the node's free resources and runs each assigned trial with the
    worker runtime, one thread per trial."""

    def __init__(self, client: Any, spec: NodeSpec, options: AgentOptions,
                 store: CheckpointStore | None = None,
                 load_workload: Callable[[str], object] | None = None) -> None:
        from ladder import checkpoints

        self.client = client
        self.spec = spec
        self.options = options
        self.store = store or checkpoints.open_store(options.checkpoint_url,
                                                     state_dir=options.state_dir)
        self.store.connect()
        if load_workload is None:
            from workers.__main__ import load_workload as load_workload_by_name

            load_workload = load_workload_by_name
        self._load_workload = load_workload
        self.slots = Slots(spec.capacity)
        self.report = AgentReport()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._workloads: dict[str, object] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        self._counter = 0

    # -- signals

    def request_stop(self) -> None:
        """Stop asking for work; every running trial checkpoints and is handed back
        (signal-safe: sets events only)."""
        self._stopping.set()
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.worker.request_stop()
        self._changed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop

    def run(self) -> AgentReport:
        idle_since = time.monotonic()
        log.info("agent %s: %s%s", self.spec.node_id, self.spec.capacity,
                 " (spot)" if self.spec.spot else "")
        while not self.stopping:
            if self._budget_spent():
                break
            self._changed.clear()
            try:
                reply = self._request_work()
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNIMPLEMENTED):
                    self.report.fatal_error = f"RequestWork: {exc.code().name}: {exc.details()}"
                    log.error(self.report.fatal_error)
                    break
                log.warning("RequestWork failed: %s %s", exc.code(), exc.details())
                self._stopping.wait(self.options.poll)
                continue
            self._obey_pauses(reply.pause_trial_ids)
            for assignment in reply.assignments:
                self._launch(assignment)
            with self._lock:
                busy = bool(self._running)
            if reply.assignments or busy:
                idle_since = time.monotonic()
            elif (self.options.exit_when_idle is not None
                  and time.monotonic() - idle_since >= self.options.exit_when_idle):
                log.info("nothing to run for %.1f s: the agent exits",
                         self.options.exit_when_idle)
                break
            full = len(reply.assignments) >= self.options.max_per_request
            if not full or not self._has_room():
                self._changed.wait(self.options.poll)
        self._drain()
        return self.report

    def _budget_spent(self) -> bool:
        cap = self.options.max_trials
        if cap is None or self.report.assigned < cap:
            return False
        with self._lock:
            return not self._running

    def _has_room(self) -> bool:
        with self._lock:
            return self.slots.free.gpus > 0 or self.slots.free.cpu > 0

    def _request_work(self) -> suggest_pb2.RequestWorkResponse:
        with self._lock:
            free = self.slots.free
        room = self.options.max_per_request
        if self.options.max_trials is not None:
            room = min(room, self.options.max_trials - self.report.assigned)
        if room <= 0:
            free = NOTHING  # only listening for pauses
            room = 0
        offer = node_offer(self.spec, free, room)
        return self.client.request_work(offer, self.spec.node_id)

    def _obey_pauses(self, trial_ids: Sequence[str]) -> None:
        for trial_id in trial_ids:
            with self._lock:
                run = self._running.get(trial_id)
            if run is None:
                continue  # already ended here (or never ran here): nothing to pause
            log.info("scheduler preempts trial %s: checkpoint and hand back", trial_id)
            self.report.paused_by_scheduler += 1
            run.worker.request_stop(SCHEDULER_PAUSE)

    def _workload(self, study_id: str) -> object:
        labels = self._labels.get(study_id)
        if labels is None:
            labels = dict(self.client.get_study(study_id).config.labels)
            self._labels[study_id] = labels
        name = workload_name(labels, self.options.workload)
        if name not in self._workloads:
            self._workloads[name] = self._load_workload(name)
        return self._workloads[name]

    def _launch(self, assignment: suggest_pb2.Assignment) -> None:
        from workers.runtime import Worker

        trial = assignment.suggestion.trial
        vector = vector_of(assignment.resources)
        self.report.assigned += 1
        self.report.by_study[trial.study_id] = self.report.by_study.get(trial.study_id, 0) + 1
        self._counter += 1
        with self._lock:
            if not self.slots.take(trial.trial_id, vector):
                log.warning("assignment %s needs %s, more than the %s free", trial.trial_id,
                            vector, self.slots.free + vector)
        try:
            workload = self._workload(trial.study_id)
            worker = Worker(self.client, workload, WorkerConfig(  # type: ignore[arg-type]
                study_id=trial.study_id,
                worker_id=f"{self.spec.node_id}/{self._counter}",
                state_dir=self.options.state_dir,
                checkpoint_every=self.options.checkpoint_every,
                checkpoint_url=self.options.checkpoint_url,
                decision_wait=self.options.decision_wait,
                max_steps=self.options.max_steps,
            ), store=self.store)
        except Exception as exc:  # noqa: BLE001 - the slot must be freed whatever failed
            log.error("cannot run trial %s: %s", trial.trial_id, exc)
            self._finish(trial.trial_id, Outcome.LOST)
            return
        run = _Running(trial.trial_id, trial.study_id, worker)
        run.thread = threading.Thread(target=self._run_trial, args=(run, assignment),
                                      name=f"trial-{trial.trial_id[:8]}", daemon=True)
        with self._lock:
            self._running[trial.trial_id] = run
        if self.stopping:
            worker.request_stop()
        run.thread.start()

    def _run_trial(self, run: _Running, assignment: suggest_pb2.Assignment) -> None:
        outcome = Outcome.LOST
        try:
            outcome = run.worker.run_trial(assignment.suggestion)
        except Exception as exc:  # noqa: BLE001 - the agent outlives one trial's bug
            log.exception("trial %s: %s", run.trial_id, exc)
        finally:
            self._finish(run.trial_id, outcome)

    def _finish(self, trial_id: str, outcome: Outcome) -> None:
        with self._lock:
            self._running.pop(trial_id, None)
            self.slots.release(trial_id)
            self.report.outcomes[outcome.value] = self.report.outcomes.get(outcome.value, 0) + 1
        self._changed.set()

    def _drain(self, timeout: float = 60.0) -> None:
        """Wait for the running trials (they end or, after a stop, hand back); a trial
        the guard handed back while its step runs is not waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                left = [r for r in self._running.values()
                        if not r.worker.handed_back_early.is_set()]
            if not left:
                return
            self._changed.wait(0.2)
            self._changed.clear()


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers.agent",
                                     description=__doc__.split("\n")[0])
    env = os.environ
    parser.add_argument("--node-id", default=env.get("LADDER_NODE_ID") or socket.gethostname())
    parser.add_argument("--gpus", type=int, default=int(env.get("LADDER_NODE_GPUS") or 0))
    parser.add_argument("--gpu-type", default=env.get("LADDER_NODE_GPU_TYPE", ""))
    parser.add_argument("--cpu", type=float,
                        default=_env_float("LADDER_NODE_CPU", float(os.cpu_count() or 1)))
    parser.add_argument("--memory-gb", type=float, default=_env_float("LADDER_NODE_MEMORY_GB", 0))
    parser.add_argument("--spot", action="store_true",
                        default=env.get("LADDER_NODE_SPOT", "") in ("1", "true", "on"))
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--max-per-request", type=int, default=DEFAULT_MAX_PER_REQUEST)
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument("--exit-when-idle", type=float, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--checkpoint-url", default=env.get("LADDER_CHECKPOINT_URL") or None)
    parser.add_argument("--decision-wait", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--retry-timeout", type=float, default=worker_retry_seconds())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ladder import telemetry
    from ladder.checkpoints import CheckpointStoreError
    from ladder.client import LadderClient
    from ladder.config import Settings
    from ladder.errors import InvalidArgument
    from ladder.objectstore import NoObjectStore

    try:
        spec = NodeSpec(args.node_id, args.gpus, args.gpu_type, args.cpu, args.memory_gb,
                        args.spot)
        _ = spec.capacity
    except InvalidArgument as exc:
        raise SystemExit(f"node: {exc}") from None
    telemetry.setup("ladder-agent")
    settings = Settings.from_env()
    options = AgentOptions(
        workload=args.workload, poll=args.poll, max_per_request=args.max_per_request,
        max_trials=args.max_trials, exit_when_idle=args.exit_when_idle,
        checkpoint_every=args.checkpoint_every, checkpoint_url=args.checkpoint_url,
        decision_wait=args.decision_wait, max_steps=args.max_steps,
        state_dir=settings.state_dir,
    )
    client = LadderClient(settings, retry_timeout=args.retry_timeout, readdress=True)
    try:
        agent = NodeAgent(client, spec, options)
    except (CheckpointStoreError, NoObjectStore) as exc:
        client.close()
        raise SystemExit(f"checkpoint store: {exc}") from None
    notice_on_signals(agent.request_stop)
    try:
        report = agent.run()
    finally:
        client.close()
        telemetry.shutdown()
    log.info("agent %s stopped: %d assigned, %s", spec.node_id, report.assigned,
             report.outcomes)
    return 1 if report.fatal_error else 0


if __name__ == "__main__":
    sys.exit(main())
