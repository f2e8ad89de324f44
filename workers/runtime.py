"""The worker runtime: pull a trial, train it step by step, report, obey the scheduler.

One :class:`Worker` runs one trial at a time::

    Suggest ──► StartTrial(attempt id) ──► [resume: fetch the checkpoint URI] ──► per step:
        train_step → metric to Kafka → Heartbeat (STOP → PruneTrial,
                                                  PAUSE → checkpoint + PauseTrial)
        checkpoint when due → store (file:// or s3://) → ReportCheckpoint → retention
    ──► CompleteTrial(final value)     or FailTrial(kind) on an exception / divergence

until Suggest answers "budget exhausted" (or the worker is asked to stop).

Checkpoints (``ladder.checkpoints``) go to the store the worker is given (default: the
embedded stack's SeaweedFS, else ``<state>/checkpoints``), when the study's trial policy
says (``TrialPolicySpec.checkpoint_due``: training time or steps since the last one;
``WorkerConfig.checkpoint_every`` overrides it with a fixed number of steps). Each
ReportCheckpoint carries the seconds the save took (write + upload) and the training
seconds since the previous one, so the trial's record shows the overhead; retention
then keeps the newest ``checkpoints_kept`` of the trial plus the pinned ones (the
checkpoint a PAUSE or the final result refers to).

Failures: an exception from the workload fails the attempt with the class
``ladder.failures.classify`` gives it (a ``TrialFailed`` names its own), a non-finite
objective with DIVERGED, a hand-back after SIGTERM with PREEMPTED (which never counts
as a failure).

Leases: besides the per-step heartbeat, a guard thread heartbeats every quarter of the
lease, so a step longer than the lease does not lose the trial (and a missed beat or two
do not either); a STOP it is told stops the training after the current step. A refused
heartbeat (FAILED_PRECONDITION "stale attempt": the lease expired, or the progress
watchdog saw no step advance) abandons the attempt without further calls, interrupting
the step if the workload allows.

Rung milestones: where the study's scheduler (ASHA / Hyperband) may decide
(``SchedulerSpec.decision_rungs``), the worker flushes its metric and heartbeats for up to
``decision_wait`` seconds until a decision about that rung arrives. With real
training a step lasts minutes and this wait costs nothing; with fast steps it keeps a
trial that is about to be stopped from training several more steps first.

Preemption notice (SIGTERM / SIGINT → :meth:`Worker.request_stop`): the trial is
checkpointed and handed back (FailTrial PREEMPTED: RESUMABLE at once, the next worker
resumes it) within the study's ``preemption_notice_seconds`` (default 25 s):

- an interruptible workload (``interruptible = True``: its ``train_step`` takes an
  ``interrupt`` event it polls between mini-batches) stops mid-step and raises
  :class:`StepInterrupted`; the runtime saves that partial step (reported as the last
  whole step; the next attempt's ``train_step`` finishes it);
- otherwise the current step finishes if it fits in the notice (estimated from this
  attempt's step and save times), then is checkpointed;
- if neither can make the deadline, the guard thread hands the trial back at once from
  its last reported checkpoint and the worker process exits without waiting for the step.

ASHA promotion form: a PAUSE about a rung the trial has reached (step >= the decision's
resource) makes the worker checkpoint that step, pin it, call ``PauseTrial`` and take
the next suggestion; the trial waits PAUSED until a PROMOTE for that rung makes it
RESUMABLE, and whichever worker gets it from Suggest resumes from that checkpoint. A
PAUSE about a rung not reached yet (a resumed attempt behind its checkpoint) waits for
that rung.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import platform
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from ladder import checkpoints, failures
from ladder.checkpoints import CheckpointKey, CheckpointStore
from ladder.errors import BudgetExhausted
from ladder.params import PlainValue, params_to_dict
from ladder.schedulers import SchedulerSpec
from ladder.study import StudySpec, TrialPolicySpec
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, suggest_pb2, trial_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace

log = logging.getLogger("ladder.worker")
_tracer = trace.get_tracer("ladder.worker")

# The FailTrial of a hand-back needs a moment before the notice runs out.
HAND_BACK_MARGIN_S = 1.0
# What a save is assumed to take before this attempt has timed one.
DEFAULT_SAVE_ESTIMATE_S = 2.0
# Step durations kept for the estimate of the current step (the longest of them).
_STEP_TIMES_KEPT = 3


class StepInterrupted(Exception):
    """Raised by an interruptible workload's ``train_step`` that stopped mid-step because
    its ``interrupt`` event was set. Its state then holds the partial step:
    ``save_checkpoint`` writes it and, after ``load_checkpoint``, ``train_step`` of the
    same step finishes it."""


class Workload(Protocol):
    """What the runtime needs from a training job. One step = one unit of resource
    (the scheduler's axis, e.g. an epoch).

    Optional: ``interruptible = True`` and ``train_step(state, step, interrupt)``, where
    ``interrupt`` is a ``threading.Event`` to poll between mini-batches: once it is set,
    raise :class:`StepInterrupted` (the worker was told to go, or lost its lease).
    """

    name: str
    metric: str  # used when the study names no metric
    max_steps: int  # used when the study's scheduler has no max_resource

    def init(self, params: Mapping[str, PlainValue], seed: int) -> Any:
        """Fresh training state for these hyperparameters; seeds every RNG it uses."""

    def train_step(self, state: Any, step: int) -> float:
        """Train step ``step`` (1-based) and return the objective after it."""

    def evaluate(self, state: Any) -> float:
        """The objective of the current state without training."""

    def save_checkpoint(self, state: Any, path: Path) -> None:
        """Write everything needed to continue exactly where ``state`` is."""

    def load_checkpoint(self, path: Path, params: Mapping[str, PlainValue], seed: int) -> Any:
        """The state saved by :meth:`save_checkpoint`."""


def interruptible(workload: object) -> bool:
    return bool(getattr(workload, "interruptible", False))


class TrialClient(Protocol):
    """The part of :class:`ladder.client.LadderClient` the runtime uses."""

    def get_study(self, study_id: str) -> study_pb2.Study: ...
    def suggest(
        self, study_id: str, worker_id: str, count: int = 1
    ) -> list[suggest_pb2.Suggestion]: ...
    def start_trial(
        self,
        trial_id: str,
        worker_id: str,
        attempt_id: str,
        hostname: str = "",
        environment: str = "",
    ) -> evaluate_pb2.StartTrialResponse: ...
    def heartbeat(
        self, trial_id: str, attempt_id: str, step: float
    ) -> evaluate_pb2.HeartbeatResponse: ...
    def report_metric(
        self,
        study_id: str,
        trial_id: str,
        attempt_id: str,
        step: float,
        value: float,
        metric: str = "",
        worker_id: str = "",
        wait: bool = False,
    ) -> events_pb2.MetricReport: ...
    def checkpoint(
        self,
        trial_id: str,
        attempt_id: str,
        uri: str,
        step: float,
        save_seconds: float = 0.0,
        train_seconds: float = 0.0,
    ) -> trial_pb2.Trial: ...
    def complete(
        self, trial_id: str, attempt_id: str, value: float, step: float
    ) -> trial_pb2.Trial: ...
    def prune(
        self, trial_id: str, attempt_id: str, step: float, last_value: float
    ) -> trial_pb2.Trial: ...
    def pause(self, trial_id: str, attempt_id: str, step: float, rung: int) -> trial_pb2.Trial: ...
    def fail(
        self,
        trial_id: str,
        attempt_id: str,
        reason: str,
        retryable: bool | None = None,
        kind: failures.FailureKind = 0,
    ) -> trial_pb2.Trial: ...
    def flush(self, timeout: float = 10.0) -> None: ...


class Outcome(enum.Enum):
    COMPLETED = "completed"
    PRUNED = "pruned"
    PAUSED = "paused"  # promotion form: checkpointed and parked until promoted
    FAILED = "failed"  # FailTrial was called with a failure class
    INTERRUPTED = "interrupted"  # preemption notice: checkpointed and handed back
    LOST = "lost"  # the attempt lost its lease or could not start


@dataclass
class WorkerConfig:
    study_id: str
    worker_id: str
    state_dir: Path
    # Steps between checkpoints; None: when the study's trial policy says (time or
    # steps); 0: only at a PAUSE or a hand-back.
    checkpoint_every: int | None = None
    checkpoint_url: str | None = None  # default ladder.checkpoints.default_url(state_dir)
    decision_wait: float = 3.0  # seconds to wait for a decision at a rung milestone
    max_steps: int | None = None  # overrides the study's max_resource
    idle_wait: float = 0.5  # seconds between Suggest calls that returned nothing
    max_trials: int | None = None  # stop after this many trials (None: until budget ends)
    heartbeat_interval: float | None = None  # default: a quarter of the lease


@dataclass
class WorkerReport:
    outcomes: dict[str, int] = field(default_factory=dict)
    budget_exhausted: bool = False
    fatal_error: str = ""

    def add(self, outcome: Outcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1

    @property
    def trials(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class CheckpointStats:
    """A worker's checkpoint overhead so far: every save's seconds (write + upload), every
    retention round's, and the seconds spent in ``train_step``."""

    save_seconds: list[float] = field(default_factory=list)
    retain_seconds: list[float] = field(default_factory=list)  # list + delete, after a save
    train_seconds: float = 0.0

    @property
    def overhead(self) -> float:
        return sum(self.save_seconds) / self.train_seconds if self.train_seconds else 0.0


def environment_description(workload: object) -> str:
    parts = [
        f"python={platform.python_version()}",
        f"os={platform.system().lower()}",
        f"cpus={os.cpu_count()}",
    ]
    extra = getattr(workload, "environment", "")
    if extra:
        parts.append(str(extra))
    return " ".join(parts)


def keepalive_interval(lease_seconds: float) -> float:
    """Heartbeats every quarter of the lease: a short lease (~10 s, so a dead worker's
    trial runs again soon) survives a missed beat or two."""
    return max(0.25, (lease_seconds or 30.0) / 4)


def must_hand_back_now(
    now: float,
    deadline: float,
    step_remaining: float,
    save_estimate: float,
    margin: float = HAND_BACK_MARGIN_S,
) -> bool:
    """Whether a stopping worker must hand its trial back from the last checkpoint now:
    finishing the step in progress (``step_remaining`` seconds, estimated) and saving it
    would not end before the notice's ``deadline``."""
    return now + step_remaining + save_estimate + margin >= deadline


def _pause_due(reply: evaluate_pb2.HeartbeatResponse, step: float) -> bool:
    """A PAUSE about a rung the trial has reached (not one ahead of a resumed attempt)."""
    return reply.action == events_pb2.PAUSE and step >= reply.decision.resource - 1e-9


def _stale(exc: grpc.RpcError) -> bool:
    """This attempt no longer owns the trial (lease lost or trial already finished)."""
    return exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class LostLease(Exception):
    pass


class _Guard(threading.Thread):
    """The attempt's second thread: heartbeats on a timer while a step runs (remembering
    a STOP it was told), notices a lost lease, and after a stop request hands the trial
    back itself when the training thread cannot do it within the notice."""

    def __init__(self, run: _TrialRun, interval: float) -> None:
        super().__init__(name=f"guard-{run.trial_id}", daemon=True)
        self.run_ = run
        self.client = run.client
        self.interval = interval
        self.step = 0.0
        self.last_beat = time.monotonic()
        self.stop_reply: evaluate_pb2.HeartbeatResponse | None = None
        self.lost = False
        self._done = threading.Event()
        # Beats belong to the trial's trace.
        self._context = otel_context.get_current()

    def beat(self) -> evaluate_pb2.HeartbeatResponse:
        run = self.run_
        reply = self.client.heartbeat(run.trial_id, run.attempt_id, self.step)
        self.last_beat = time.monotonic()
        if reply.action == events_pb2.STOP and self.stop_reply is None:
            self.stop_reply = reply
        return reply

    def run(self) -> None:
        token = otel_context.attach(self._context)
        try:
            while not self._done.wait(min(0.25, self.interval / 4)):
                if self.run_.worker.stopping and self.run_.hand_back_if_late():
                    return
                if time.monotonic() - self.last_beat < self.interval:
                    continue
                try:
                    self.beat()
                except grpc.RpcError as exc:
                    if _stale(exc):
                        self.lost = True
                        self.run_.interrupt.set()  # an interruptible step ends early
                        log.warning("lease lost: %s", exc.details(), extra=self.run_.extra)
                        return
                    log.warning(
                        "keep-alive heartbeat failed: %s", exc.code(), extra=self.run_.extra
                    )
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


class Worker:
    def __init__(
        self,
        client: TrialClient,
        workload: Workload,
        config: WorkerConfig,
        store: CheckpointStore | None = None,
    ) -> None:
        self.client = client
        self.workload = workload
        self.config = config
        # Opened now: a checkpoint store that cannot be used fails before any trial.
        self.store = store or checkpoints.open_store(
            config.checkpoint_url, state_dir=config.state_dir
        )
        self.store.connect()
        self.hostname = socket.gethostname()
        self.environment = environment_description(workload)
        self.stats = CheckpointStats()
        self._stop_requested = threading.Event()
        self._stop_at: float | None = None
        self._interrupt: threading.Event | None = None
        # Set when the guard handed a trial back while its step still runs: the process
        # may exit without waiting for the step.
        self.handed_back_early = threading.Event()
        self._study: study_pb2.Study | None = None
        self._spec: StudySpec | None = None

    # -- control

    def request_stop(self) -> None:
        """The preemption notice starts: checkpoint, hand the trial back within the
        study's ``preemption_notice_seconds``, take no new one (signal-safe)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop_requested.set()
        interrupt = self._interrupt
        if interrupt is not None:
            interrupt.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def stop_deadline(self) -> float:
        """When the notice that began with :meth:`request_stop` runs out (monotonic)."""
        started = self._stop_at if self._stop_at is not None else time.monotonic()
        return started + self.policy.preemption_notice_seconds

    @property
    def study(self) -> study_pb2.Study:
        if self._study is None:
            self._study = self.client.get_study(self.config.study_id)
        return self._study

    @property
    def spec(self) -> StudySpec:
        if self._spec is None:
            self._spec = StudySpec.from_proto(self.study.config)
        return self._spec

    @property
    def scheduler(self) -> SchedulerSpec:
        return self.spec.scheduler

    @property
    def policy(self) -> TrialPolicySpec:
        return self.spec.trial_policy

    @property
    def metric(self) -> str:
        return self.study.config.metric or self.workload.metric

    @property
    def max_steps(self) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        resource = self.study.config.scheduler.max_resource
        return int(resource) if resource >= 1 else self.workload.max_steps

    # -- the loop

    def run(self) -> WorkerReport:
        report = WorkerReport()
        base = {"study_id": self.config.study_id, "worker_id": self.config.worker_id}
        log.info(
            "worker started (%s), checkpoints to %s", self.environment, self.store.url, extra=base
        )
        while not self.stopping:
            if self.config.max_trials is not None and report.trials >= self.config.max_trials:
                break
            with _tracer.start_as_current_span(
                "worker trial",
                attributes={
                    "ladder.study_id": self.config.study_id,
                    "ladder.worker_id": self.config.worker_id,
                },
            ) as span:
                try:
                    suggestions = self.client.suggest(self.config.study_id, self.config.worker_id)
                except BudgetExhausted as exc:
                    log.info("no more trials: %s", exc, extra=base)
                    report.budget_exhausted = True
                    break
                except grpc.RpcError as exc:
                    report.fatal_error = f"Suggest failed: {exc.code()}: {exc.details()}"
                    log.error(report.fatal_error, extra=base)
                    break
                if not suggestions:
                    self._stop_requested.wait(self.config.idle_wait)
                    continue
                for suggestion in suggestions:
                    span.set_attribute("ladder.trial_id", suggestion.trial.trial_id)
                    report.add(self.run_trial(suggestion))
                    if self.stopping:
                        break
        log.info(
            "worker stopped: %s; checkpoints: %d saves, %.3f s saving / %.1f s training "
            "(%.2f%%)", report.outcomes, len(self.stats.save_seconds),
            sum(self.stats.save_seconds), self.stats.train_seconds, 100 * self.stats.overhead,
            extra=base,
        )
        return report

    def run_trial(self, suggestion: suggest_pb2.Suggestion) -> Outcome:
        trial = suggestion.trial
        attempt_id = uuid.uuid4().hex
        extra = {
            "study_id": trial.study_id or self.config.study_id,
            "trial_id": trial.trial_id,
            "attempt_id": attempt_id,
            "worker_id": self.config.worker_id,
        }
        try:
            start = self.client.start_trial(
                trial.trial_id, self.config.worker_id, attempt_id, self.hostname, self.environment
            )
        except grpc.RpcError as exc:
            log.warning("StartTrial refused: %s %s", exc.code(), exc.details(), extra=extra)
            return Outcome.LOST
        run = _TrialRun(self, trial, attempt_id, extra)
        self._interrupt = run.interrupt
        if self.stopping:  # the notice began while StartTrial was under way
            run.interrupt.set()
        interval = self.config.heartbeat_interval or keepalive_interval(start.lease_seconds)
        run.guard = _Guard(run, interval)
        run.guard.start()
        try:
            return run.execute(start)
        except LostLease:
            if run.handed_over_by == "guard":
                return Outcome.INTERRUPTED
            log.warning("attempt lost its lease; abandoning the trial", extra=extra)
            return Outcome.LOST
        except Exception as exc:  # noqa: BLE001 - any training error fails the attempt
            return run.fail_with(exc)
        finally:
            run.guard.close()
            self._interrupt = None


class _TrialRun:
    """The state of one attempt while it trains (kept apart from the Worker's loop)."""

    def __init__(
        self,
        worker: Worker,
        trial: trial_pb2.Trial,
        attempt_id: str,
        extra: dict[str, str],
    ) -> None:
        self.worker = worker
        self.client = worker.client
        self.workload = worker.workload
        self.config = worker.config
        self.store = worker.store
        self.trial = trial
        self.trial_id = trial.trial_id
        self.study_id = trial.study_id or worker.config.study_id
        self.attempt_id = attempt_id
        self.params = params_to_dict(trial.params)
        self.extra = extra
        self.guard: _Guard
        self.interrupt = threading.Event()
        self.last_checkpoint_step = 0
        self.checkpoint_uri = ""  # the trial's current checkpoint (resumed from or reported)
        self.train_since_checkpoint = 0.0
        self.step = 0  # the step in progress, or the last one trained
        self.step_started: float | None = None  # set while train_step runs
        self.step_times: deque[float] = deque(maxlen=_STEP_TIMES_KEPT)
        self.save_times: list[float] = []
        self.handed_over_by = ""  # "main" or "guard": who ended the attempt
        self._handover = threading.Lock()

    def _rpc(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            if _stale(exc):
                raise LostLease(exc.details()) from exc
            raise

    def _claim(self, who: str) -> bool:
        """Only one of the training thread and the guard ends the attempt."""
        with self._handover:
            if self.handed_over_by:
                return False
            self.handed_over_by = who
            return True

    def _end(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """The call that ends the attempt (complete, prune, pause, fail), unless the
        guard already handed the trial back."""
        if not self._claim("main"):
            raise LostLease("handed back by the guard")
        return self._rpc(method, *args, **kwargs)

    # -- training

    def execute(self, start: evaluate_pb2.StartTrialResponse) -> Outcome:
        max_steps = self.worker.max_steps
        metric = self.worker.metric
        milestones = set(self.worker.scheduler.decision_rungs(max_steps))
        state, first_step = self._initial_state(start)
        self.last_checkpoint_step = first_step - 1
        self.step = first_step - 1
        self.guard.step = first_step - 1
        log.info(
            "trial started at step %d of %d: %s",
            first_step,
            max_steps,
            self.params,
            extra=self.extra,
        )
        if first_step > max_steps:
            # A previous attempt checkpointed the final step but never completed.
            return self._complete(self.workload.evaluate(state), max_steps)
        value = math.nan
        for step in range(first_step, max_steps + 1):
            if self.worker.stopping:
                return self._hand_back(state, step - 1)
            try:
                value = self._train(state, step)
            except StepInterrupted:
                if self.guard.lost:
                    raise LostLease("heartbeat refused during the step") from None
                return self._hand_back(state, step - 1, interrupted=True)
            if self.handed_over_by:  # the guard handed the trial back during the step
                raise LostLease("handed back by the guard")
            self.guard.step = step
            self.client.report_metric(
                self.study_id,
                self.trial_id,
                self.attempt_id,
                step,
                value,
                metric=metric,
                worker_id=self.config.worker_id,
            )
            stop = self._beat(step)
            if (
                stop is None
                and (not math.isfinite(value) or step in milestones)
                and step < max_steps
            ):
                stop = self._await_decision(step)
            if stop is not None and stop.action == events_pb2.PAUSE:
                return self._pause(state, step, stop)
            if stop is not None:
                return self._prune(step, value, stop)
            if self.guard.lost:
                raise LostLease("keep-alive heartbeat was refused")
            if not math.isfinite(value):
                # Diverged and not stopped by the scheduler: more steps cannot recover it.
                return self._diverged(f"diverged: {metric}={value} at step {step}")
            if step < max_steps and not self.worker.stopping and self._checkpoint_due(step):
                self._periodic_checkpoint(state, step)
        return self._complete(value, max_steps)

    def _train(self, state: Any, step: int) -> float:
        self.step = step
        started = self.step_started = time.monotonic()
        try:
            if interruptible(self.workload):
                value = self.workload.train_step(state, step, self.interrupt)  # type: ignore[call-arg]
            else:
                value = self.workload.train_step(state, step)
            self.step_times.append(time.monotonic() - started)  # whole steps only
            return float(value)
        finally:
            took = time.monotonic() - started
            self.step_started = None
            self.train_since_checkpoint += took
            self.worker.stats.train_seconds += took

    def _initial_state(self, start: evaluate_pb2.StartTrialResponse) -> tuple[Any, int]:
        seed = int(self.trial.seed)
        if start.checkpoint_uri:
            with checkpoints.fetched(start.checkpoint_uri, self.store) as path:
                state = self.workload.load_checkpoint(path, self.params, seed)
            self.checkpoint_uri = start.checkpoint_uri
            step = int(start.checkpoint_step)
            log.info("resuming from %s (step %d)", start.checkpoint_uri, step, extra=self.extra)
            return state, step + 1
        return self.workload.init(self.params, seed), 1

    def _beat(self, step: int) -> evaluate_pb2.HeartbeatResponse | None:
        """Heartbeat now; the STOP reply if this or the guard thread saw one, or a
        PAUSE about a rung this step has reached."""
        reply = self._rpc(self.guard.beat)
        if reply.action == events_pb2.STOP or _pause_due(reply, step):
            return reply
        return self.guard.stop_reply

    def _await_decision(self, step: int) -> evaluate_pb2.HeartbeatResponse | None:
        """At a rung milestone: wait briefly for the scheduler's verdict on this rung."""
        self.client.flush()
        deadline = time.monotonic() + self.config.decision_wait
        pause = 0.05
        while time.monotonic() < deadline and not self.worker.stopping:
            reply = self._rpc(self.guard.beat)
            if reply.action == events_pb2.STOP or _pause_due(reply, step):
                return reply
            # Only a verdict about this rung ends the wait: in the promotion form the
            # stored decision is often the PROMOTE of an earlier rung.
            if reply.decision.trial_id and reply.decision.resource >= step - 1e-9:
                return None
            time.sleep(pause)
            pause = min(0.25, pause * 1.5)
        return None

    # -- checkpoints

    def _checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        if every is not None:
            return every > 0 and step % every == 0
        return self.worker.policy.checkpoint_due(
            self.train_since_checkpoint, step - self.last_checkpoint_step
        )

    def _checkpoint(self, state: Any, step: int, interrupted: bool = False) -> str:
        """Save (write + store) and report a checkpoint of ``step``; then retention."""
        key = CheckpointKey(self.study_id, self.trial_id, self.attempt_id, step, interrupted)
        started = time.monotonic()
        path = self.store.staging_path(key)
        try:
            self.workload.save_checkpoint(state, path)
            uri = self.store.save(path, key)
        finally:
            path.unlink(missing_ok=True)  # a failed save leaves nothing staged
        save_seconds = time.monotonic() - started
        trained = self.train_since_checkpoint
        self._rpc(
            self.client.checkpoint, self.trial_id, self.attempt_id, uri, step,
            save_seconds=save_seconds, train_seconds=trained,
        )
        self.train_since_checkpoint = 0.0
        self.last_checkpoint_step = step
        self.checkpoint_uri = uri
        self.save_times.append(save_seconds)
        self.worker.stats.save_seconds.append(save_seconds)
        log.info(
            "checkpoint of step %d%s saved in %.3f s after %.2f s of training (%.2f%%): %s",
            step, " (mid-step)" if interrupted else "", save_seconds, trained,
            100 * save_seconds / trained if trained else 0.0, uri, extra=self.extra,
        )
        self._retain()
        return uri

    def _periodic_checkpoint(self, state: Any, step: int) -> None:
        """A scheduled checkpoint: a store that is down costs durability, not the trial
        (the next due step tries again); a bug in the workload's save still fails it."""
        try:
            self._checkpoint(state, step)
        except (LostLease, grpc.RpcError):
            raise
        except Exception as exc:
            if failures.classify(exc) != failures.INFRASTRUCTURE:
                raise
            log.warning("checkpoint of step %d failed (%s: %s); training goes on",
                        step, type(exc).__name__, exc, extra=self.extra)

    def _retain(self) -> None:
        started = time.monotonic()
        try:
            deleted = self.store.retain(
                self.study_id, self.trial_id, self.worker.policy.checkpoints_kept
            )
        except Exception as exc:  # noqa: BLE001 - retention is housekeeping, never fatal
            log.warning("checkpoint retention failed: %s", exc, extra=self.extra)
            return
        self.worker.stats.retain_seconds.append(time.monotonic() - started)
        if deleted:
            log.debug("retention deleted %s", deleted, extra=self.extra)

    def _pin(self, uri: str) -> None:
        if not uri:
            return
        try:
            checkpoints.store_for(uri, self.store).pin(uri)
        except Exception as exc:  # noqa: BLE001 - at worst retention deletes it later
            log.warning("could not pin checkpoint %s: %s", uri, exc, extra=self.extra)

    # -- ends of an attempt

    def _prune(self, step: int, value: float, reply: evaluate_pb2.HeartbeatResponse) -> Outcome:
        self.client.flush()
        self._end(self.client.prune, self.trial_id, self.attempt_id, step, value)
        log.info(
            "trial pruned at step %d (%s)", step, reply.decision.reason or "STOP", extra=self.extra
        )
        return Outcome.PRUNED

    def _pause(self, state: Any, step: int, reply: evaluate_pb2.HeartbeatResponse) -> Outcome:
        """Obey a PAUSE: checkpoint this step (the next attempt resumes after it) and pin
        it, then hand the trial back; the scheduler promotes it later, or never."""
        self.client.flush()
        if step > self.last_checkpoint_step:
            self._checkpoint(state, step)
        self._pin(self.checkpoint_uri)
        trial = self._end(
            self.client.pause, self.trial_id, self.attempt_id, step, reply.decision.rung
        )
        log.info(
            "trial paused at step %d (%s)%s",
            step,
            reply.decision.reason or "PAUSE",
            "; already promoted, resumable" if trial.state == trial_pb2.RESUMABLE else "",
            extra=self.extra,
        )
        return Outcome.PAUSED

    def _complete(self, value: float, step: int) -> Outcome:
        self.client.flush()
        if not math.isfinite(value):
            return self._diverged(f"final {self.worker.metric} is {value}")
        self._pin(self.checkpoint_uri)  # the checkpoint the result refers to
        self._end(self.client.complete, self.trial_id, self.attempt_id, value, step)
        log.info("trial completed: %s=%.5f", self.worker.metric, value, extra=self.extra)
        return Outcome.COMPLETED

    def _diverged(self, reason: str) -> Outcome:
        self.client.flush()
        self._end(
            self.client.fail, self.trial_id, self.attempt_id, reason, kind=failures.DIVERGED
        )
        log.warning("trial %s", reason, extra=self.extra)
        return Outcome.FAILED

    def fail_with(self, exc: Exception) -> Outcome:
        """The workload raised: FailTrial with its failure class."""
        kind = failures.classify(exc)
        reason = f"{trial_pb2.FailureKind.Name(kind)}: {type(exc).__name__}: {exc}"[:500]
        log.error("trial failed: %s", reason, exc_info=exc, extra=self.extra)
        if not self._claim("main"):
            return Outcome.INTERRUPTED
        try:
            self.client.fail(self.trial_id, self.attempt_id, reason, kind=kind)
        except grpc.RpcError as rpc_exc:
            log.warning(
                "FailTrial failed (%s); the lease will expire instead",
                rpc_exc.code(),
                extra=self.extra,
            )
        return Outcome.FAILED

    def _hand_back(self, state: Any, step: int, interrupted: bool = False) -> Outcome:
        """Preemption notice: checkpoint what is done (the partial step too, if the
        workload stopped mid-step), then make the trial resumable at once."""
        if self.handed_over_by:
            return Outcome.INTERRUPTED
        self.client.flush()
        saved_partial = False
        if interrupted or step > self.last_checkpoint_step:
            try:
                self._checkpoint(state, step, interrupted)
                saved_partial = interrupted
            except LostLease:
                if self.handed_over_by == "guard":
                    return Outcome.INTERRUPTED
                raise
            except Exception as exc:  # noqa: BLE001 - hand back from the last one instead
                log.warning("checkpoint at hand-back failed (%s: %s)",
                            type(exc).__name__, exc, extra=self.extra)
        where = f"in step {step + 1}" if interrupted else f"after step {step}"
        resumes = f"step {self.last_checkpoint_step}" + (" and part of the next"
                                                          if saved_partial else "")
        reason = (
            f"preempted: worker {self.config.worker_id} stopped by signal {where}; "
            f"the checkpoint holds {resumes}"
        )
        try:
            self._end(self.client.fail, self.trial_id, self.attempt_id, reason,
                      kind=failures.PREEMPTED)
        except LostLease:
            if self.handed_over_by == "guard":
                return Outcome.INTERRUPTED
            raise
        except grpc.RpcError as exc:
            log.warning(
                "FailTrial failed (%s); the lease will expire instead", exc.code(), extra=self.extra
            )
        log.info("trial handed back %s", where, extra=self.extra)
        return Outcome.INTERRUPTED

    def hand_back_if_late(self) -> bool:
        """Called by the guard while the worker stops: hand the trial back now, from the
        last reported checkpoint, once the training thread could not finish its step and
        save it before the notice runs out. True if it did."""
        if self.handed_over_by:
            return False
        now = time.monotonic()
        started = self.step_started
        remaining = 0.0
        if started is not None and not interruptible(self.workload) and self.step_times:
            remaining = max(0.0, max(self.step_times) - (now - started))
        save_estimate = max(self.save_times, default=DEFAULT_SAVE_ESTIMATE_S)
        if not must_hand_back_now(now, self.worker.stop_deadline(), remaining, save_estimate):
            return False
        if not self._claim("guard"):
            return False
        reason = (
            f"preempted: worker {self.config.worker_id} stopped by signal; step {self.step} "
            f"would not be saved within the {self.worker.policy.preemption_notice_seconds:g} s "
            f"notice: the checkpoint holds step {self.last_checkpoint_step}"
        )
        try:
            self.client.fail(self.trial_id, self.attempt_id, reason, kind=failures.PREEMPTED)
        except grpc.RpcError as exc:
            log.warning("FailTrial failed (%s); the lease will expire instead", exc.code(),
                        extra=self.extra)
        log.info("trial handed back from the checkpoint of step %d while step %d runs",
                 self.last_checkpoint_step, self.step, extra=self.extra)
        self.worker.handed_back_early.set()
        return True
