"""The worker runtime: pull a trial, train it step by step, report, obey the scheduler.

One :class:`Worker` runs one trial at a time::

    Suggest ──► StartTrial(attempt id) ──► [resume from checkpoint] ──► per step:
        train_step → metric to Kafka → Heartbeat (STOP → PruneTrial,
                                                  PAUSE → checkpoint + PauseTrial)
        every K steps: checkpoint file + ReportCheckpoint
    ──► CompleteTrial(final value)     or, on an exception, FailTrial(retryable=True)

until Suggest answers "budget exhausted" (or the worker is asked to stop).

Leases: besides the per-step heartbeat, a keep-alive thread heartbeats every third of
the lease, so a step longer than the lease does not lose the trial; a STOP seen by
that thread stops the training after the current step.

Rung milestones: where the study's scheduler (ASHA / Hyperband) may decide
(``SchedulerSpec.decision_rungs``), the worker flushes its metric and heartbeats for up to
``decision_wait`` seconds until a decision about that rung arrives. With real
training a step lasts minutes and this wait costs nothing; with fast steps it keeps a
trial that is about to be stopped from training several more steps first.

Graceful stop (SIGTERM / SIGINT → :meth:`Worker.request_stop`): the current step
finishes (steps are short and a half-finished step cannot be saved), the worker writes
a checkpoint, reports it, and calls ``FailTrial(retryable=True)`` with the reason. The
trial becomes RESUMABLE at once and the next worker that asks resumes it from that
checkpoint; waiting for the lease to expire would leave it idle for a whole lease. If
the evaluate service cannot be reached, the lease expiring has the same effect later.

ASHA promotion form: a PAUSE about a rung the trial has reached (step >= the decision's
resource) makes the worker checkpoint that step, call ``PauseTrial`` and take the next
suggestion; the trial waits PAUSED until a PROMOTE for that rung makes it RESUMABLE, and
whichever worker gets it from Suggest resumes from that checkpoint. A PAUSE about a
rung not reached yet (a resumed attempt behind its checkpoint) waits for that rung.

A trial whose attempt lost its lease (FAILED_PRECONDITION "stale attempt": another
worker holds it now) is abandoned without further calls.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import grpc
from ladder.errors import BudgetExhausted
from ladder.params import PlainValue, params_to_dict
from ladder.schedulers import SchedulerSpec
from ladder.study import StudySpec
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, suggest_pb2, trial_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace

log = logging.getLogger("ladder.worker")
_tracer = trace.get_tracer("ladder.worker")


class Workload(Protocol):
    """What the runtime needs from a training job. One step = one unit of resource
    (the scheduler's axis, e.g. an epoch)."""

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
        self, trial_id: str, attempt_id: str, uri: str, step: float
    ) -> trial_pb2.Trial: ...
    def complete(
        self, trial_id: str, attempt_id: str, value: float, step: float
    ) -> trial_pb2.Trial: ...
    def prune(
        self, trial_id: str, attempt_id: str, step: float, last_value: float
    ) -> trial_pb2.Trial: ...
    def pause(self, trial_id: str, attempt_id: str, step: float, rung: int) -> trial_pb2.Trial: ...
    def fail(
        self, trial_id: str, attempt_id: str, reason: str, retryable: bool = True
    ) -> trial_pb2.Trial: ...
    def flush(self, timeout: float = 10.0) -> None: ...


class Outcome(enum.Enum):
    COMPLETED = "completed"
    PRUNED = "pruned"
    PAUSED = "paused"  # promotion form: checkpointed and parked until promoted
    FAILED = "failed"  # FailTrial was called (retryable or not)
    INTERRUPTED = "interrupted"  # graceful stop: checkpointed and handed back
    LOST = "lost"  # the attempt lost its lease or could not start


@dataclass
class WorkerConfig:
    study_id: str
    worker_id: str
    state_dir: Path
    checkpoint_every: int = 3  # steps between checkpoints (0 = never)
    decision_wait: float = 3.0  # seconds to wait for a decision at a rung milestone
    max_steps: int | None = None  # overrides the study's max_resource
    idle_wait: float = 0.5  # seconds between Suggest calls that returned nothing
    max_trials: int | None = None  # stop after this many trials (None: until budget ends)
    heartbeat_interval: float | None = None  # default: a third of the lease


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


def checkpoint_path(state_dir: Path, trial_id: str, attempt_id: str, step: int) -> Path:
    return state_dir / "checkpoints" / trial_id / f"{attempt_id}-step{step}.pt"


def path_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"unsupported checkpoint URI scheme {parsed.scheme!r} in {uri!r}")
    return Path(unquote(parsed.path))


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


def _pause_due(reply: evaluate_pb2.HeartbeatResponse, step: float) -> bool:
    """A PAUSE about a rung the trial has reached (not one ahead of a resumed attempt)."""
    return reply.action == events_pb2.PAUSE and step >= reply.decision.resource - 1e-9


def _stale(exc: grpc.RpcError) -> bool:
    """This attempt no longer owns the trial (lease lost or trial already finished)."""
    return exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class LostLease(Exception):
    pass


class _LeaseKeeper(threading.Thread):
    """Heartbeats on a timer while a step runs; remembers a STOP it was told."""

    def __init__(
        self,
        client: TrialClient,
        trial_id: str,
        attempt_id: str,
        interval: float,
        extra: dict[str, str],
    ) -> None:
        super().__init__(name=f"lease-{trial_id}", daemon=True)
        self.client = client
        self.trial_id = trial_id
        self.attempt_id = attempt_id
        self.interval = interval
        self.extra = extra
        self.step = 0.0
        self.last_beat = time.monotonic()
        self.stop_reply: evaluate_pb2.HeartbeatResponse | None = None
        self.lost = False
        self._done = threading.Event()
        # Beats belong to the trial's trace.
        self._context = otel_context.get_current()

    def beat(self) -> evaluate_pb2.HeartbeatResponse:
        reply = self.client.heartbeat(self.trial_id, self.attempt_id, self.step)
        self.last_beat = time.monotonic()
        if reply.action == events_pb2.STOP and self.stop_reply is None:
            self.stop_reply = reply
        return reply

    def run(self) -> None:
        token = otel_context.attach(self._context)
        try:
            while not self._done.wait(self.interval / 4):
                if time.monotonic() - self.last_beat < self.interval:
                    continue
                try:
                    self.beat()
                except grpc.RpcError as exc:
                    if _stale(exc):
                        self.lost = True
                        log.warning("lease lost: %s", exc.details(), extra=self.extra)
                        return
                    log.warning("keep-alive heartbeat failed: %s", exc.code(), extra=self.extra)
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)


class Worker:
    def __init__(self, client: TrialClient, workload: Workload, config: WorkerConfig) -> None:
        self.client = client
        self.workload = workload
        self.config = config
        self.hostname = socket.gethostname()
        self.environment = environment_description(workload)
        self._stop_requested = threading.Event()
        self._study: study_pb2.Study | None = None
        self._scheduler: SchedulerSpec | None = None

    # -- control

    def request_stop(self) -> None:
        """Finish the current step, hand the trial back, take no new one (signal-safe)."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def study(self) -> study_pb2.Study:
        if self._study is None:
            self._study = self.client.get_study(self.config.study_id)
        return self._study

    @property
    def scheduler(self) -> SchedulerSpec:
        if self._scheduler is None:
            self._scheduler = StudySpec.from_proto(self.study.config).scheduler
        return self._scheduler

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
        log.info("worker started (%s)", self.environment, extra=base)
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
        log.info("worker stopped: %s", report.outcomes, extra=base)
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
        params = params_to_dict(trial.params)
        interval = self.config.heartbeat_interval or max(0.5, (start.lease_seconds or 30) / 3)
        keeper = _LeaseKeeper(self.client, trial.trial_id, attempt_id, interval, extra)
        run = _TrialRun(self, trial, attempt_id, params, keeper, extra)
        keeper.start()
        try:
            return run.execute(start)
        except LostLease:
            log.warning("attempt lost its lease; abandoning the trial", extra=extra)
            return Outcome.LOST
        except Exception as exc:  # noqa: BLE001 - any training error fails the attempt
            reason = f"{type(exc).__name__}: {exc}"[:500]
            log.exception("trial failed: %s", reason, extra=extra)
            try:
                self.client.fail(trial.trial_id, attempt_id, reason, retryable=True)
            except grpc.RpcError as rpc_exc:
                log.warning(
                    "FailTrial failed (%s); the lease will expire instead",
                    rpc_exc.code(),
                    extra=extra,
                )
            return Outcome.FAILED
        finally:
            keeper.close()


class _TrialRun:
    """The state of one attempt while it trains (kept apart from the Worker's loop)."""

    def __init__(
        self,
        worker: Worker,
        trial: trial_pb2.Trial,
        attempt_id: str,
        params: dict[str, PlainValue],
        keeper: _LeaseKeeper,
        extra: dict[str, str],
    ) -> None:
        self.worker = worker
        self.client = worker.client
        self.workload = worker.workload
        self.config = worker.config
        self.trial = trial
        self.trial_id = trial.trial_id
        self.study_id = trial.study_id or worker.config.study_id
        self.attempt_id = attempt_id
        self.params = params
        self.keeper = keeper
        self.extra = extra
        self.last_checkpoint_step = 0

    def _rpc(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            if _stale(exc):
                raise LostLease(exc.details()) from exc
            raise

    def execute(self, start: evaluate_pb2.StartTrialResponse) -> Outcome:
        max_steps = self.worker.max_steps
        metric = self.worker.metric
        milestones = set(self.worker.scheduler.decision_rungs(max_steps))
        state, first_step = self._initial_state(start)
        self.last_checkpoint_step = first_step - 1
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
                return self._hand_back(state, step - 1, value)
            value = float(self.workload.train_step(state, step))
            self.keeper.step = step
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
            if self.keeper.lost:
                raise LostLease("keep-alive heartbeat was refused")
            if not math.isfinite(value):
                # Diverged and not stopped by the scheduler: more steps cannot recover it.
                self.client.flush()
                self._rpc(
                    self.client.fail,
                    self.trial_id,
                    self.attempt_id,
                    f"diverged: {metric}={value} at step {step}",
                    retryable=False,
                )
                log.warning("trial diverged at step %d", step, extra=self.extra)
                return Outcome.FAILED
            every = self.config.checkpoint_every
            if every and step % every == 0 and step < max_steps:
                self._checkpoint(state, step)
        return self._complete(value, max_steps)

    def _initial_state(self, start: evaluate_pb2.StartTrialResponse) -> tuple[Any, int]:
        seed = int(self.trial.seed)
        if start.checkpoint_uri:
            path = path_from_uri(start.checkpoint_uri)
            state = self.workload.load_checkpoint(path, self.params, seed)
            step = int(start.checkpoint_step)
            log.info("resuming from %s (step %d)", start.checkpoint_uri, step, extra=self.extra)
            return state, step + 1
        return self.workload.init(self.params, seed), 1

    def _beat(self, step: int) -> evaluate_pb2.HeartbeatResponse | None:
        """Heartbeat now; the STOP reply if this or the keep-alive thread saw one, or a
        PAUSE about a rung this step has reached."""
        reply = self._rpc(self.keeper.beat)
        if reply.action == events_pb2.STOP or _pause_due(reply, step):
            return reply
        return self.keeper.stop_reply

    def _await_decision(self, step: int) -> evaluate_pb2.HeartbeatResponse | None:
        """At a rung milestone: wait briefly for the scheduler's verdict on this rung."""
        self.client.flush()
        deadline = time.monotonic() + self.config.decision_wait
        pause = 0.05
        while time.monotonic() < deadline and not self.worker.stopping:
            reply = self._rpc(self.keeper.beat)
            if reply.action == events_pb2.STOP or _pause_due(reply, step):
                return reply
            # Only a verdict about this rung ends the wait: in the promotion form the
            # stored decision is often the PROMOTE of an earlier rung.
            if reply.decision.trial_id and reply.decision.resource >= step - 1e-9:
                return None
            time.sleep(pause)
            pause = min(0.25, pause * 1.5)
        return None

    def _checkpoint(self, state: Any, step: int) -> None:
        path = checkpoint_path(self.config.state_dir, self.trial_id, self.attempt_id, step)
        self.workload.save_checkpoint(state, path)
        self._rpc(self.client.checkpoint, self.trial_id, self.attempt_id, path.as_uri(), step)
        self.last_checkpoint_step = step

    def _prune(self, step: int, value: float, reply: evaluate_pb2.HeartbeatResponse) -> Outcome:
        self.client.flush()
        self._rpc(self.client.prune, self.trial_id, self.attempt_id, step, value)
        log.info(
            "trial pruned at step %d (%s)", step, reply.decision.reason or "STOP", extra=self.extra
        )
        return Outcome.PRUNED

    def _pause(self, state: Any, step: int, reply: evaluate_pb2.HeartbeatResponse) -> Outcome:
        """Obey a PAUSE: checkpoint this step (the next attempt resumes after it), then
        hand the trial back; the scheduler promotes it later, or never."""
        self.client.flush()
        if step > self.last_checkpoint_step:
            self._checkpoint(state, step)
        trial = self._rpc(
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
            self._rpc(
                self.client.fail,
                self.trial_id,
                self.attempt_id,
                f"final {self.worker.metric} is {value}",
                retryable=False,
            )
            return Outcome.FAILED
        self._rpc(self.client.complete, self.trial_id, self.attempt_id, value, step)
        log.info("trial completed: %s=%.5f", self.worker.metric, value, extra=self.extra)
        return Outcome.COMPLETED

    def _hand_back(self, state: Any, step: int, value: float) -> Outcome:
        """Graceful stop: checkpoint what is done, make the trial resumable at once."""
        self.client.flush()
        if step > self.last_checkpoint_step:
            self._checkpoint(state, step)
        reason = f"worker {self.config.worker_id} stopped by signal after step {step}"
        try:
            self._rpc(self.client.fail, self.trial_id, self.attempt_id, reason, retryable=True)
        except grpc.RpcError as exc:
            log.warning(
                "FailTrial failed (%s); the lease will expire instead", exc.code(), extra=self.extra
            )
        log.info("trial handed back after step %d (last value %s)", step, value, extra=self.extra)
        return Outcome.INTERRUPTED
