"""The Workload worker: pull a trial, train it step by step with a :class:`Workload`,
report, obey the scheduler; until Suggest answers "budget exhausted" (or the worker is
asked to stop).

Everything about an attempt (StartTrial with the run environment, the heartbeats and
their verdicts, checkpoints and retention, the ends of an attempt, the preemption
notice) is the attempt engine's, ``ladder.api.attempt``, which the Python API's
``study.trials()`` runs on too; this module is the loop that drives it with the
Workload's five methods::

    Suggest ──► StartTrial ──► [resume: load_checkpoint] ──► per step:
        train_step → Attempt.report (metric, Heartbeat: STOP → PruneTrial,
                                     PAUSE → checkpoint + PauseTrial)
        checkpoint when due → save_checkpoint → store → ReportCheckpoint → retention
    ──► CompleteTrial(evaluate)     or FailTrial(kind) on an exception / divergence

Preemption notice (SIGTERM / SIGINT → :meth:`Worker.request_stop`): within the study's
``preemption_notice_seconds`` (default 25 s):

- an interruptible workload (``interruptible = True``: its ``train_step`` takes an
  ``interrupt`` event it polls between mini-batches) stops mid-step and raises
  :class:`StepInterrupted`; the worker saves that partial step (reported as the last
  whole step; the next attempt's ``train_step`` finishes it);
- otherwise the current step finishes if it fits in the notice (estimated from this
  attempt's step and save times), then is checkpointed;
- if neither can make the deadline, the guard thread hands the trial back at once from
  its last reported checkpoint and the worker process exits without waiting for the step.

ASHA promotion form: a PAUSE about a rung the trial has reached makes the worker
checkpoint that step, pin it, call ``PauseTrial`` and take the next suggestion; at a
rung evaluate holds the trial (``decision_pending``) until its verdict arrives, for at
most ``decision_wait`` seconds. A PAUSE about a rung not reached yet (a resumed attempt
behind its checkpoint) waits for that rung.
"""

from __future__ import annotations

import inspect
import logging
import math
import platform
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ladder import runenv
from ladder.api.attempt import (
    SIGNAL_STOP,
    Attempt,
    CheckpointStats,
    LostLease,
    Outcome,
    Session,
    TrialClient,
    WorkerConfig,
    WorkerReport,
    keepalive_interval,
    must_hand_back_now,
)
from ladder.checkpoints import CheckpointStore
from ladder.params import PlainValue
from ladder.v1 import events_pb2, suggest_pb2

__all__ = [
    "CheckpointStats", "Outcome", "StepInterrupted", "Worker", "WorkerConfig", "WorkerReport",
    "Workload", "interruptible", "keepalive_interval", "must_hand_back_now",
]

log = logging.getLogger("ladder.worker")


class StepInterrupted(Exception):
    """Raised by an interruptible workload's ``train_step`` that stopped mid-step because
    its ``interrupt`` event was set. Its state then holds the partial step:
    ``save_checkpoint`` writes it and, after ``load_checkpoint``, ``train_step`` of the
    same step finishes it."""


class Workload(Protocol):
    """What the worker needs from a training job. One step = one unit of resource
    (the scheduler's axis, e.g. an epoch).

    Optional: ``interruptible = True`` and ``train_step(state, step, interrupt)``, where
    ``interrupt`` is a ``threading.Event`` to poll between mini-batches: once it is set,
    raise :class:`StepInterrupted` (the worker was told to go, or lost its lease).
    Optional: ``dataset_id`` (recorded in the run environment of every attempt).
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


def environment_description(workload: object) -> str:
    parts = [f"python={platform.python_version()}", f"os={platform.system().lower()}"]
    extra = getattr(workload, "environment", "")
    if extra:
        parts.append(str(extra))
    return " ".join(parts)


class Worker:
    """Runs one trial at a time of ``workload`` until the study's budget is spent."""

    def __init__(
        self,
        client: TrialClient,
        workload: Workload,
        config: WorkerConfig,
        store: CheckpointStore | None = None,
    ) -> None:
        self.workload = workload
        self.session = Session(
            client, config, store,
            run_environment=runenv.capture(
                dataset_id=str(getattr(workload, "dataset_id", "") or ""),
                folder=Path(inspect.getfile(type(workload))).parent,
            ),
            environment=environment_description(workload),
            default_metric=workload.metric,
            default_max_steps=workload.max_steps,
        )

    # -- what the session holds, under the names callers know

    @property
    def config(self) -> WorkerConfig:
        return self.session.config

    @property
    def store(self) -> CheckpointStore:
        return self.session.store

    @store.setter
    def store(self, store: CheckpointStore) -> None:
        self.session.store = store

    @property
    def stats(self) -> CheckpointStats:
        return self.session.stats

    @property
    def handed_back_early(self) -> threading.Event:
        return self.session.handed_back_early

    def request_stop(self, why: str = SIGNAL_STOP) -> None:
        """The preemption notice starts (signal-safe); see ``Session.request_stop``."""
        self.session.request_stop(why)

    # -- the loop

    def run(self) -> WorkerReport:
        report = WorkerReport()
        log.info("worker started (%s), checkpoints to %s", self.session.environment,
                 self.store.url,
                 extra=self.session.log_extra())
        for suggestion in self.session.suggestions(report):
            report.add(self.run_trial(suggestion))
        self.session.log_totals(report)
        return report

    def run_trial(self, suggestion: suggest_pb2.Suggestion) -> Outcome:
        attempt = self.session.begin(suggestion)
        if attempt is None:
            return Outcome.LOST
        attempt.interruptible = interruptible(self.workload)
        try:
            return _WorkloadRun(self, attempt).execute()
        except LostLease:
            if attempt.handed_over_by == "guard":
                return Outcome.INTERRUPTED
            log.warning("attempt lost its lease; abandoning the trial", extra=attempt.extra)
            return Outcome.LOST
        except Exception as exc:  # noqa: BLE001 - any training error fails the attempt
            return attempt.fail_with(exc)
        finally:
            self.session.finished(attempt)


class _WorkloadRun:
    """One attempt driven by the Workload's methods."""

    def __init__(self, worker: Worker, attempt: Attempt) -> None:
        self.workload = worker.workload
        self.session = worker.session
        self.attempt = attempt

    def execute(self) -> Outcome:
        attempt, workload, session = self.attempt, self.workload, self.session
        max_steps = session.max_steps
        loaded = attempt.restore(
            lambda path: workload.load_checkpoint(path, attempt.params, attempt.seed)
        )
        state = workload.init(attempt.params, attempt.seed) if loaded is None else loaded
        first_step = attempt.resume_step + 1

        def write(path: Path) -> None:
            workload.save_checkpoint(state, path)

        log.info("trial started at step %d of %d: %s", first_step, max_steps, attempt.params,
                 extra=attempt.extra)
        if first_step > max_steps:
            # A previous attempt checkpointed the final step but never completed.
            return attempt.complete(workload.evaluate(state), max_steps)
        value = math.nan
        for step in range(first_step, max_steps + 1):
            if session.stopping:
                return attempt.hand_back(step - 1, write)
            try:
                value = self._train(state, step)
            except StepInterrupted:
                if attempt.lost:
                    raise LostLease("heartbeat refused during the step") from None
                return attempt.hand_back(step - 1, write, interrupted=True)
            if attempt.handed_over_by:  # the guard handed the trial back during the step
                raise LostLease("handed back by the guard")
            verdict = attempt.report(step, value)
            if verdict is not None and verdict.action == events_pb2.PAUSE:
                return attempt.pause(step, verdict, write)
            if verdict is not None:
                return attempt.prune(step, value, verdict)
            if attempt.lost:
                raise LostLease("keep-alive heartbeat was refused")
            if not math.isfinite(value):
                # Diverged and not stopped by the scheduler: more steps cannot recover it.
                return attempt.diverged(f"diverged: {session.metric}={value} at step {step}")
            if not session.stopping and attempt.checkpoint_due(step):
                attempt.save_periodic(step, write)
        return attempt.complete(value, max_steps)

    def _train(self, state: Any, step: int) -> float:
        self.attempt.begin_step(step)
        whole = False
        try:
            if interruptible(self.workload):
                value = self.workload.train_step(  # type: ignore[call-arg]
                    state, step, self.attempt.interrupt
                )
            else:
                value = self.workload.train_step(state, step)
            whole = True
            return float(value)
        finally:
            self.attempt.end_step(whole)
