"""The attempt engine: everything between StartTrial and the call that ends an attempt,
shared by every way of training on Ladder: the Python API (``ladder.api``: the user's
own loop) and the Workload worker (``workers.runtime``).

::

    Session.suggestions() ──► Session.begin(suggestion) = Attempt (started by Suggest
      itself: one round trip, else StartTrial; with the RunEnvironment; a guard thread
      heartbeating) ──► per step:
        report(step, value): metric to Kafka, Heartbeat; its reply is the verdict
        (STOP, or a PAUSE about a rung reached); decision_pending (promotion form at a
        rung): flush the metrics and heartbeat again until the verdict comes
        save(step, write) when checkpoint_due(step) ──► ReportCheckpoint, retention
      ──► complete / prune / pause / diverged / fail_with / hand_back

Decisions come on one channel, the Heartbeat reply: the worker never computes rungs.
In ASHA's stopping form nothing waits (a STOP is seen on the heartbeat after it was
decided, a step or two later with fast steps); in the promotion form evaluate sets
``decision_pending`` while a trial at a rung of its bracket has no verdict, and the
worker waits for it (at most ``decision_wait`` seconds).

Leases: besides the heartbeat of every report, the guard thread heartbeats every
quarter of the lease, so a step longer than the lease does not lose the trial; a STOP
it is told is kept for the next check. A refused heartbeat (FAILED_PRECONDITION "stale
attempt": the lease expired, or the progress watchdog saw no step advance) abandons
the attempt without further calls (:class:`LostLease`), and sets ``interrupt``.

Checkpoints (``ladder.checkpoints``) go to the session's store when the study's trial
policy says (``TrialPolicySpec.checkpoint_due``: training time or steps since the last
one; ``WorkerConfig.checkpoint_every`` overrides it with a fixed number of steps). Each
ReportCheckpoint carries its save seconds and the training seconds since the previous
one; retention then keeps the newest ``checkpoints_kept``, always counting the one last
reported (the one StartTrial hands out next), plus the pinned ones (those a PAUSE or the
final result refers to). A store that is down skips a scheduled checkpoint (counted in
``CheckpointStats.failed_saves``) and a PAUSE's (it pauses from the last one). A resume
checkpoint that is missing falls back to the newest one the store still has for the
trial, else to step 1.

Preemption notice (:meth:`Session.request_stop`, from SIGTERM / SIGINT): the caller
checkpoints and hands the trial back (:meth:`Attempt.hand_back`: FailTrial PREEMPTED,
RESUMABLE at once) within the study's ``preemption_notice_seconds``; when the training
thread cannot make that deadline (a step longer than the notice), the guard hands the
trial back itself from its last checkpoint and sets ``Session.handed_back_early``.

Failures: :meth:`Attempt.fail_with` fails the attempt with the class
``ladder.failures.classify`` gives the exception (after a stop request it hands the trial
back instead: the step died of the shutdown); :meth:`Attempt.diverged` with DIVERGED; a
hand-back with PREEMPTED (which never counts as a failure).
"""

from __future__ import annotations

import enum
import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from ladder import checkpoints, failures, runenv
from ladder.checkpoints import CheckpointKey, CheckpointStore
from ladder.config import LEASE_SECONDS
from ladder.errors import BudgetExhausted, StudyPaused
from ladder.params import PlainValue, params_to_dict
from ladder.study import StudySpec, TrialPolicySpec
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, suggest_pb2, trial_pb2

log = logging.getLogger("ladder.worker")
_tracer = trace.get_tracer("ladder.worker")

T = TypeVar("T")

# The FailTrial of a hand-back needs a moment before the notice runs out.
HAND_BACK_MARGIN_S = 1.0
# What a save is assumed to take before this attempt has timed one.
DEFAULT_SAVE_ESTIMATE_S = 2.0
# Why a worker stopped, in a hand-back's reason, when a signal (SIGTERM, a spot notice)
# asked it to: Session.request_stop names any other cause.
SIGNAL_STOP = "stopped by signal"
# Step durations kept for the estimate of the current step (the longest of them).
_STEP_TIMES_KEPT = 3


class TrialClient(Protocol):
    """The part of :class:`ladder.client.LadderClient` an attempt uses."""

    def get_study(self, study_id: str) -> study_pb2.Study: ...
    def suggest(
        self,
        study_id: str,
        worker_id: str,
        count: int = 1,
        start: evaluate_pb2.StartTrialRequest | None = None,
    ) -> list[suggest_pb2.Suggestion]: ...
    def start_trial(
        self,
        trial_id: str,
        worker_id: str,
        attempt_id: str,
        hostname: str = "",
        environment: str = "",
        run_environment: trial_pb2.RunEnvironment | None = None,
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
    # Seconds a trial waits at a rung for its verdict when evaluate says one is due
    # (promotion form only; the stopping form never waits).
    decision_wait: float = 3.0
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
    retention round's, and the seconds spent training."""

    save_seconds: list[float] = field(default_factory=list)
    retain_seconds: list[float] = field(default_factory=list)  # list + delete, after a save
    failed_saves: int = 0  # the store was down: no checkpoint, the trial trained on
    train_seconds: float = 0.0

    @property
    def overhead(self) -> float:
        return sum(self.save_seconds) / self.train_seconds if self.train_seconds else 0.0


def keepalive_interval(lease_seconds: float) -> float:
    """Heartbeats every quarter of the lease: a short lease (~10 s, so a dead worker's
    trial runs again soon) survives a missed beat or two."""
    return max(0.25, (lease_seconds or LEASE_SECONDS) / 4)


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


def pause_due(reply: evaluate_pb2.HeartbeatResponse, step: float) -> bool:
    """A PAUSE about a rung the trial has reached (not one ahead of a resumed attempt)."""
    return reply.action == events_pb2.PAUSE and step >= reply.decision.resource - 1e-9


class Move(enum.Enum):
    """What a worker does after the Heartbeat of a report (:func:`move_after`)."""

    TRAIN = "train"  # nothing to obey: the next step
    HOLD = "hold"  # promotion form: evaluate holds the trial at this rung
    STOP = "stop"  # prune
    PAUSE = "pause"  # checkpoint, PauseTrial


def move_after(
    reply: evaluate_pb2.HeartbeatResponse, step: float, max_steps: int,
    standing_stop: bool = False,
) -> Move:
    """The one rule for a Heartbeat's reply to the report of ``step``, shared by the
    attempt engine and the load simulator (``workers.loadsim_sim``): a STOP (or one an
    earlier heartbeat brought, ``standing_stop``) prunes, a PAUSE about a rung reached
    pauses, ``decision_pending`` holds the trial (evaluate sets it in the promotion form
    only: the stopping form trains on, and its STOP comes on whichever Heartbeat
    follows the decision). Once the full budget (``max_steps``; 0: unknown) is
    trained nothing is obeyed: a verdict about an earlier rung arriving now would
    throw a complete result away."""
    if 0 < max_steps <= step:
        return Move.TRAIN
    if reply.action == events_pb2.STOP:
        return Move.STOP
    if pause_due(reply, step):
        return Move.PAUSE
    if standing_stop:
        return Move.STOP
    return Move.HOLD if reply.decision_pending else Move.TRAIN


def hold_pauses(decision_wait: float) -> Iterator[float]:
    """The pauses before each Heartbeat of a trial held at a rung (:attr:`Move.HOLD`):
    50 ms growing to 250 ms, while ``decision_wait`` seconds have not passed."""
    deadline = time.monotonic() + decision_wait
    pause = 0.05
    while time.monotonic() < deadline:
        yield pause
        pause = min(0.25, pause * 1.5)


def _stale(exc: grpc.RpcError) -> bool:
    """This attempt no longer owns the trial (lease lost or trial already finished)."""
    return exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


# What PauseTrial answers (FAILED_PRECONDITION, as for a stale attempt) when the trial's
# latest decision is a STOP: ladder.state.trials' "STOPPED" refusal.
STOPPED_NOT_PAUSED = "(latest decision STOP)"


class LostLease(Exception):
    """The attempt no longer holds its trial; nothing more is sent for it."""


Writer = Callable[[Path], None]


class Session:
    """What the attempts of one worker process share: the client, the checkpoint store,
    the study (read once), the run environment, the stop notice and the overhead
    figures. ``config`` is read live (a caller may change it between trials)."""

    def __init__(
        self,
        client: TrialClient,
        config: WorkerConfig,
        store: CheckpointStore | None = None,
        *,
        run_environment: trial_pb2.RunEnvironment | None = None,
        environment: str = "",
        default_metric: str = "",
        default_max_steps: int = 0,
    ) -> None:
        self.client = client
        self.config = config
        # Opened now: a checkpoint store that cannot be used fails before any trial.
        self.store = store or checkpoints.open_store(
            config.checkpoint_url, state_dir=config.state_dir
        )
        self.store.connect()
        self.hostname = socket.gethostname()
        self.run_environment = run_environment
        self.environment = environment or (
            runenv.describe(run_environment) if run_environment is not None else ""
        )
        self.default_metric = default_metric
        self.default_max_steps = default_max_steps
        self.stats = CheckpointStats()
        self._stop_requested = threading.Event()
        self._stop_at: float | None = None
        self.stop_why = SIGNAL_STOP
        self._interrupt: threading.Event | None = None
        # Set when the guard handed a trial back while its step still runs: the process
        # may exit without waiting for the step.
        self.handed_back_early = threading.Event()
        self._study: study_pb2.Study | None = None
        self._spec: StudySpec | None = None

    # -- the stop notice

    def request_stop(self, why: str = SIGNAL_STOP) -> None:
        """The preemption notice starts: checkpoint, hand the trial back within the
        study's ``preemption_notice_seconds``, take no new one (signal-safe). ``why``
        completes "worker W ..." in the hand-back's reason (lineage shows it)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            self.stop_why = why
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

    # -- the study

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
    def policy(self) -> TrialPolicySpec:
        return self.spec.trial_policy

    @property
    def metric(self) -> str:
        return self.study.config.metric or self.default_metric

    @property
    def max_steps(self) -> int:
        """The steps of a full trial: the config's cap, else the study's max_resource,
        else the default given (0: unknown)."""
        if self.config.max_steps:
            return self.config.max_steps
        resource = self.study.config.scheduler.max_resource
        return int(resource) if resource >= 1 else self.default_max_steps

    def log_extra(self) -> dict[str, str]:
        return {"study_id": self.config.study_id, "worker_id": self.config.worker_id}

    # -- trials

    def suggestions(self, report: WorkerReport) -> Iterator[suggest_pb2.Suggestion]:
        """Suggestions for this worker until the budget is spent, a stop is requested,
        ``max_trials`` were taken or Suggest fails (``report`` says which), each under a
        "worker trial" span."""
        base = self.log_extra()
        while not self.stopping:
            if self.config.max_trials is not None and report.trials >= self.config.max_trials:
                return
            try:
                found = self.client.suggest(
                    self.config.study_id, self.config.worker_id, start=self._start_request()
                )
            except StudyPaused as exc:
                log.info("waiting for the study to resume: %s", exc, extra=base)
                self._stop_requested.wait(self.config.idle_wait)
                continue
            except BudgetExhausted as exc:
                log.info("no more trials: %s", exc, extra=base)
                report.budget_exhausted = True
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # The study's max_parallel_trials are all out: one will end.
                    log.info("waiting for room: %s", exc.details(), extra=base)
                    self._stop_requested.wait(self.config.idle_wait)
                    continue
                report.fatal_error = f"Suggest failed: {exc.code()}: {exc.details()}"
                log.error(report.fatal_error, extra=base)
                return
            if not found:
                self._stop_requested.wait(self.config.idle_wait)
                continue
            for suggestion in found:
                with _tracer.start_as_current_span(
                    "worker trial",
                    attributes={
                        "ladder.study_id": self.config.study_id,
                        "ladder.worker_id": self.config.worker_id,
                        "ladder.trial_id": suggestion.trial.trial_id,
                    },
                ):
                    yield suggestion
                if self.stopping:
                    return

    def _start_request(self) -> evaluate_pb2.StartTrialRequest:
        """What Suggest needs to start the suggestion too (one round trip instead of
        Suggest then StartTrial): a fresh attempt id and this worker's environment."""
        return evaluate_pb2.StartTrialRequest(
            attempt_id=uuid.uuid4().hex, hostname=self.hostname,
            environment=self.environment, run_environment=self.run_environment,
        )

    def begin(self, suggestion: suggest_pb2.Suggestion) -> Attempt | None:
        """The attempt of a suggestion from :meth:`suggestions`: the one Suggest started
        when it did (``started``), else :meth:`start`'s."""
        if suggestion.HasField("started"):
            return self.start(suggestion.trial, suggestion.started)
        return self.start(suggestion.trial)

    def start(
        self, trial: trial_pb2.Trial, started: evaluate_pb2.StartTrialResponse | None = None
    ) -> Attempt | None:
        """StartTrial with a fresh attempt id (or the attempt Suggest ``started``) and the
        guard thread started; None when StartTrial is refused (another attempt holds it,
        it ended meanwhile)."""
        attempt_id = started.trial.attempt_id if started is not None else uuid.uuid4().hex
        extra = {**self.log_extra(), "trial_id": trial.trial_id, "attempt_id": attempt_id}
        if trial.study_id:
            extra["study_id"] = trial.study_id
        try:
            start = started or self.client.start_trial(
                trial.trial_id, self.config.worker_id, attempt_id, self.hostname,
                self.environment, run_environment=self.run_environment,
            )
        except grpc.RpcError as exc:
            log.warning("StartTrial refused: %s %s", exc.code(), exc.details(), extra=extra)
            return None
        attempt = Attempt(self, trial, attempt_id, start, extra)
        self._interrupt = attempt.interrupt
        if self.stopping:  # the notice began while StartTrial was under way
            attempt.interrupt.set()
        attempt.guard.start()
        return attempt

    def finished(self, attempt: Attempt) -> None:
        attempt.close()
        if self._interrupt is attempt.interrupt:
            self._interrupt = None

    def log_totals(self, report: WorkerReport) -> None:
        log.info(
            "worker stopped: %s; checkpoints: %d saves (%d failed), %.3f s saving / %.1f s "
            "training (%.2f%%)", report.outcomes, len(self.stats.save_seconds),
            self.stats.failed_saves, sum(self.stats.save_seconds), self.stats.train_seconds,
            100 * self.stats.overhead,
            extra=self.log_extra(),
        )


class _Guard(threading.Thread):
    """The attempt's second thread: heartbeats on a timer while a step runs (remembering
    a STOP it was told), notices a lost lease, and after a stop request hands the trial
    back itself when the training thread cannot do it within the notice."""

    def __init__(self, attempt: Attempt, interval: float) -> None:
        super().__init__(name=f"guard-{attempt.trial_id}", daemon=True)
        self.attempt = attempt
        self.interval = interval
        self.step = 0.0
        self.last_beat = time.monotonic()
        self.stop_reply: evaluate_pb2.HeartbeatResponse | None = None
        self.lost = False
        self._done = threading.Event()
        # Beats belong to the trial's trace.
        self._context = otel_context.get_current()

    def beat(self) -> evaluate_pb2.HeartbeatResponse:
        attempt = self.attempt
        reply = attempt.client.heartbeat(attempt.trial_id, attempt.attempt_id, self.step)
        self.last_beat = time.monotonic()
        if reply.action == events_pb2.STOP and self.stop_reply is None:
            self.stop_reply = reply
        return reply

    def run(self) -> None:
        token = otel_context.attach(self._context)
        attempt = self.attempt
        try:
            while not self._done.wait(min(0.25, self.interval / 4)):
                if attempt.session.stopping and attempt.hand_back_if_late():
                    return
                if time.monotonic() - self.last_beat < self.interval:
                    continue
                try:
                    self.beat()
                except grpc.RpcError as exc:
                    if _stale(exc):
                        self.lost = True
                        attempt.interrupt.set()  # an interruptible step ends early
                        log.warning("lease lost: %s", exc.details(), extra=attempt.extra)
                        return
                    log.warning("keep-alive heartbeat failed: %s", exc.code(),
                                extra=attempt.extra)
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


class Attempt:
    """One attempt of a trial, from StartTrial to the call that ends it."""

    def __init__(
        self,
        session: Session,
        trial: trial_pb2.Trial,
        attempt_id: str,
        start: evaluate_pb2.StartTrialResponse,
        extra: dict[str, str],
    ) -> None:
        self.session = session
        self.client = session.client
        self.config = session.config
        self.store = session.store
        self.trial = trial
        self.trial_id = trial.trial_id
        self.study_id = trial.study_id or session.config.study_id
        self.attempt_id = attempt_id
        self.params: dict[str, PlainValue] = params_to_dict(trial.params)
        self.seed = int(trial.seed)
        self.extra = extra
        self.interrupt = threading.Event()
        # Where a previous attempt left off: its checkpoint, and the step it holds.
        self.resume_uri = start.checkpoint_uri
        self.resume_step = int(start.checkpoint_step) if start.checkpoint_uri else 0
        self.last_checkpoint_step = self.resume_step
        self.checkpoint_uri = start.checkpoint_uri  # the trial's current checkpoint
        self._tried: set[str] = set()  # checkpoints found missing while resuming
        self.train_since_checkpoint = 0.0
        self.step = self.resume_step  # the step in progress, or the last one reported
        self.reported_step = self.resume_step
        self.last_value = math.nan
        self.step_started: float | None = None  # set while a step trains
        self.step_times: deque[float] = deque(maxlen=_STEP_TIMES_KEPT)
        self.save_times: list[float] = []
        self.handed_over_by = ""  # "main" or "guard": who ended the attempt
        self.outcome: Outcome | None = None
        self._handover = threading.Lock()
        interval = self.config.heartbeat_interval or keepalive_interval(start.lease_seconds)
        self.guard = _Guard(self, interval)
        self.guard.step = self.resume_step

    # -- plumbing

    def _rpc(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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

    def _end(self, outcome: Outcome, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The call that ends the attempt (complete, prune, pause, fail), unless the
        guard already handed the trial back."""
        if not self._claim("main"):
            raise LostLease("handed back by the guard")
        result = self._rpc(method, *args, **kwargs)
        self.outcome = outcome
        return result

    @property
    def ended(self) -> bool:
        return bool(self.handed_over_by)

    @property
    def lost(self) -> bool:
        """The guard's heartbeat was refused: the attempt no longer holds the trial."""
        return self.guard.lost

    def close(self) -> None:
        self.guard.close()

    # -- training time

    def begin_step(self, step: int) -> None:
        self.step = step
        self.step_started = time.monotonic()

    def end_step(self, whole: bool = True) -> float:
        """The step that :meth:`begin_step` started is over (``whole``: not cut short);
        its seconds count as training."""
        started = self.step_started
        if started is None:
            return 0.0
        took = time.monotonic() - started
        if whole:
            self.step_times.append(took)
        self.step_started = None
        self.train_since_checkpoint += took
        self.session.stats.train_seconds += took
        return took

    # -- reports and verdicts

    def report(self, step: int, value: float) -> evaluate_pb2.HeartbeatResponse | None:
        """Publish the metric of ``step`` and heartbeat; the verdict to obey now (a STOP,
        or a PAUSE about a rung reached), waiting for it first when evaluate says one is
        due at this step (promotion form). None: train on."""
        self.step = self.reported_step = step
        self.last_value = value
        self.guard.step = step
        self.client.report_metric(
            self.study_id, self.trial_id, self.attempt_id, step, value,
            metric=self.session.metric, worker_id=self.config.worker_id,
        )
        reply = self._rpc(self.guard.beat)
        move = self._move(reply, step)
        if move is Move.HOLD:
            return self._await_verdict(step)
        return self._verdict(move, reply)

    def _move(self, reply: evaluate_pb2.HeartbeatResponse, step: float) -> Move:
        return move_after(reply, step, self.session.max_steps, self.guard.stop_reply is not None)

    def _verdict(self, move: Move, reply: evaluate_pb2.HeartbeatResponse
                 ) -> evaluate_pb2.HeartbeatResponse | None:
        """The reply a STOP or PAUSE is obeyed from (a standing STOP's own), or None."""
        if move is Move.PAUSE or (move is Move.STOP and reply.action == events_pb2.STOP):
            return reply
        return self.guard.stop_reply if move is Move.STOP else None

    def _finished_budget(self, step: float) -> bool:
        # The full budget is trained: a verdict about an earlier rung that arrives now
        # would throw a complete result away.
        return 0 < self.session.max_steps <= step

    def standing_stop(self) -> evaluate_pb2.HeartbeatResponse | None:
        """A STOP the guard's heartbeats brought since (no call of its own)."""
        return None if self._finished_budget(self.reported_step) else self.guard.stop_reply

    def _await_verdict(self, step: int) -> evaluate_pb2.HeartbeatResponse | None:
        """At a rung where evaluate holds the trial: the metric must reach the scheduler,
        then heartbeat until the verdict arrives (or ``decision_wait`` passes)."""
        self.client.flush()
        for pause in hold_pauses(self.config.decision_wait):
            if self.session.stopping:
                break
            time.sleep(pause)
            reply = self._rpc(self.guard.beat)
            move = self._move(reply, step)
            if move is not Move.HOLD:
                return self._verdict(move, reply)
        log.info("no verdict for step %d within %.1f s; training on", step,
                 self.config.decision_wait, extra=self.extra)
        return None

    # -- checkpoints

    def checkpoint_due(self, step: int) -> bool:
        """Whether a scheduled checkpoint of ``step`` is due: by the config's fixed
        interval, else by the study's trial policy; never at the final step (the trial
        completes instead)."""
        if self._finished_budget(step):
            return False
        every = self.config.checkpoint_every
        if every is not None:
            return every > 0 and step % every == 0
        return self.session.policy.checkpoint_due(
            self.train_since_checkpoint, step - self.last_checkpoint_step
        )

    def restore(self, read: Callable[[Path], T]) -> T | None:
        """``read(local path)`` of the checkpoint this attempt resumes from; None for a
        trial that starts afresh."""
        missing = ""
        while self.resume_uri:
            try:
                with checkpoints.fetched(self.resume_uri, self.store) as path:
                    value = read(path)
            except checkpoints.CheckpointMissing:
                missing = missing or self.resume_uri
                self._resume_from(self._older_checkpoint(self.resume_uri))
                continue
            log.info("resuming from %s (step %d)", self.resume_uri, self.resume_step,
                     extra=self.extra)
            if missing:
                self._report_fallback(missing)
            return value
        if missing:
            log.warning("checkpoint %s is missing and the trial has no other: it starts "
                        "again from step 1", missing, extra=self.extra)
        return None

    def _older_checkpoint(self, gone: str) -> checkpoints.Checkpoint | None:
        """The newest checkpoint of this trial the store still has, other than ``gone``
        (a missing checkpoint costs the steps since an older one, not the trial)."""
        try:
            found = checkpoints.store_for(gone, self.store).list(self.study_id, self.trial_id)
        except Exception as exc:  # noqa: BLE001 - no listing: start afresh rather than fail
            log.warning("could not list the trial's checkpoints: %s", exc, extra=self.extra)
            return None
        candidates = [c for c in found if c.uri != gone and c.uri not in self._tried]
        self._tried.add(gone)
        return max(candidates, key=lambda c: (c.saved_at, c.step, c.interrupted),
                   default=None)

    def _resume_from(self, found: checkpoints.Checkpoint | None) -> None:
        uri, step = (found.uri, found.step) if found is not None else ("", 0)
        self.resume_uri = self.checkpoint_uri = uri
        self.resume_step = self.last_checkpoint_step = self.step = self.reported_step = step
        self.guard.step = step

    def _report_fallback(self, missing: str) -> None:
        """Tell the server the checkpoint this attempt resumes from, so that no later
        attempt is handed the missing one again; the reason goes to the log."""
        log.warning("checkpoint %s is missing: resuming from %s (step %d) instead", missing,
                    self.resume_uri, self.resume_step, extra=self.extra)
        try:
            self._rpc(self.client.checkpoint, self.trial_id, self.attempt_id,
                      self.resume_uri, self.resume_step)
        except grpc.RpcError as exc:  # the next save reports a checkpoint anyway
            log.warning("ReportCheckpoint of %s failed: %s", self.resume_uri, exc.code(),
                        extra=self.extra)

    def save(self, step: int, write: Writer, interrupted: bool = False) -> str:
        """Save (``write`` a local file, store it) and report a checkpoint of ``step``;
        then retention."""
        key = CheckpointKey(self.study_id, self.trial_id, self.attempt_id, step, interrupted)
        started = time.monotonic()
        path = self.store.staging_path(key)
        try:
            write(path)
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
        self.session.stats.save_seconds.append(save_seconds)
        log.info(
            "checkpoint of step %d%s saved in %.3f s after %.2f s of training (%.2f%%): %s",
            step, " (mid-step)" if interrupted else "", save_seconds, trained,
            100 * save_seconds / trained if trained else 0.0, uri, extra=self.extra,
        )
        self._retain()
        return uri

    def save_periodic(self, step: int, write: Writer) -> bool:
        """A scheduled checkpoint: a store that is down costs durability, not the trial
        (the next due step tries again); a bug in the save still fails it. True if saved."""
        return self._save_unless_store_down(step, write, "training goes on")

    def _save_unless_store_down(self, step: int, write: Writer, then: str) -> bool:
        """:meth:`save`, except that an infrastructure failure (the object store is down,
        its bucket gone) is logged and counted in ``stats.failed_saves``, and False."""
        try:
            self.save(step, write)
        except (LostLease, grpc.RpcError):
            raise
        except Exception as exc:
            if failures.classify(exc) != failures.INFRASTRUCTURE:
                raise
            self.session.stats.failed_saves += 1
            log.warning("checkpoint of step %d failed (%s: %s); %s",
                        step, type(exc).__name__, exc, then, extra=self.extra)
            return False
        return True

    def _retain(self) -> None:
        started = time.monotonic()
        try:
            deleted = self.store.retain(
                self.study_id, self.trial_id, self.session.policy.checkpoints_kept,
                current=self.checkpoint_uri,
            )
        except Exception as exc:  # noqa: BLE001 - retention is housekeeping, never fatal
            log.warning("checkpoint retention failed: %s", exc, extra=self.extra)
            return
        self.session.stats.retain_seconds.append(time.monotonic() - started)
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

    def prune(self, step: int, value: float, reply: evaluate_pb2.HeartbeatResponse) -> Outcome:
        self.client.flush()
        self._end(Outcome.PRUNED, self.client.prune, self.trial_id, self.attempt_id, step,
                  value)
        log.info(
            "trial pruned at step %d (%s)", step, reply.decision.reason or "STOP", extra=self.extra
        )
        return Outcome.PRUNED

    def pause(self, step: int, reply: evaluate_pb2.HeartbeatResponse, write: Writer | None
              ) -> Outcome:
        """Obey a PAUSE: checkpoint this step (the next attempt resumes after it) and pin
        it, then hand the trial back; the scheduler promotes it later, or never. Without
        ``write`` the trial resumes from its last checkpoint (or from the start)."""
        self.client.flush()
        saved = write is not None and (step <= self.last_checkpoint_step
                                       or self._save_unless_store_down(
                                           step, write, "pausing from the last one"))
        self._pin(self.checkpoint_uri)
        try:
            trial = self._end(
                Outcome.PAUSED, self.client.pause, self.trial_id, self.attempt_id,
                step if saved else self.last_checkpoint_step, reply.decision.rung,
            )
        except LostLease as exc:
            if STOPPED_NOT_PAUSED not in str(exc):
                raise
            # A STOP decided after the PAUSE won: the attempt still holds the trial, and
            # ends it as the STOP says (else it stays RUNNING until the lease expires).
            self._rpc(self.client.prune, self.trial_id, self.attempt_id, step,
                      self.last_value)
            self.outcome = Outcome.PRUNED
            log.info("trial pruned at step %d: a STOP overtook the PAUSE", step,
                     extra=self.extra)
            return Outcome.PRUNED
        log.info(
            "trial paused at step %d (%s)%s",
            step,
            reply.decision.reason or "PAUSE",
            "; already promoted, resumable" if trial.state == trial_pb2.RESUMABLE else "",
            extra=self.extra,
        )
        return Outcome.PAUSED

    def complete(self, value: float, step: float) -> Outcome:
        self.client.flush()
        if not math.isfinite(value):
            return self.diverged(f"final {self.session.metric} is {value}")
        self._pin(self.checkpoint_uri)  # the checkpoint the result refers to
        self._end(Outcome.COMPLETED, self.client.complete, self.trial_id, self.attempt_id,
                  value, step)
        log.info("trial completed: %s=%.5f", self.session.metric, value, extra=self.extra)
        return Outcome.COMPLETED

    def diverged(self, reason: str) -> Outcome:
        self.client.flush()
        self._end(Outcome.FAILED, self.client.fail, self.trial_id, self.attempt_id, reason,
                  kind=failures.DIVERGED)
        log.warning("trial %s", reason, extra=self.extra)
        return Outcome.FAILED

    def fail_with(self, exc: BaseException) -> Outcome:
        """The training code raised: FailTrial with its failure class. After a stop
        request the trial is handed back from its last checkpoint instead (PREEMPTED):
        a step often dies of the shutdown itself (its DataLoader workers killed first),
        which is no fault of the trial; a :class:`~ladder.failures.TrialFailed` is still
        the failure it names."""
        if self.session.stopping and not isinstance(exc, failures.TrialFailed):
            log.warning("step failed while the worker stops (%s: %s); handing the trial "
                        "back", type(exc).__name__, exc, extra=self.extra)
            try:
                return self.hand_back(self.reported_step, None)
            except LostLease:
                return Outcome.LOST
        kind = failures.classify(exc)
        reason = f"{trial_pb2.FailureKind.Name(kind)}: {type(exc).__name__}: {exc}"[:500]
        log.error("trial failed: %s", reason, exc_info=exc, extra=self.extra)
        if not self._claim("main"):
            return Outcome.INTERRUPTED
        self.outcome = Outcome.FAILED
        try:
            self.client.fail(self.trial_id, self.attempt_id, reason, kind=kind)
        except grpc.RpcError as rpc_exc:
            log.warning(
                "FailTrial failed (%s); the lease will expire instead",
                rpc_exc.code(),
                extra=self.extra,
            )
        return Outcome.FAILED

    def hand_back(self, step: int, write: Writer | None, interrupted: bool = False,
                  why: str | None = None) -> Outcome:
        """Preemption notice: checkpoint what is done (with ``write``; the partial step
        too when ``interrupted``), then make the trial resumable at once."""
        if self.handed_over_by:
            return Outcome.INTERRUPTED
        self.client.flush()
        saved_partial = False
        if write is not None and (interrupted or step > self.last_checkpoint_step):
            try:
                self.save(step, write, interrupted)
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
        why = why or self.session.stop_why
        reason = (
            f"preempted: worker {self.config.worker_id} {why} {where}; "
            f"the checkpoint holds {resumes}"
        )
        try:
            self._end(Outcome.INTERRUPTED, self.client.fail, self.trial_id, self.attempt_id,
                      reason, kind=failures.PREEMPTED)
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
        if started is not None and not self.interruptible and self.step_times:
            remaining = max(0.0, max(self.step_times) - (now - started))
        save_estimate = max(self.save_times, default=DEFAULT_SAVE_ESTIMATE_S)
        if not must_hand_back_now(now, self.session.stop_deadline(), remaining, save_estimate):
            return False
        if not self._claim("guard"):
            return False
        self.outcome = Outcome.INTERRUPTED
        notice = self.session.policy.preemption_notice_seconds
        reason = (
            f"preempted: worker {self.config.worker_id} {self.session.stop_why}; "
            f"step {self.step} "
            f"would not be saved within the {notice:g} s "
            f"notice: the checkpoint holds step {self.last_checkpoint_step}"
        )
        try:
            self.client.fail(self.trial_id, self.attempt_id, reason, kind=failures.PREEMPTED)
        except grpc.RpcError as exc:
            log.warning("FailTrial failed (%s); the lease will expire instead", exc.code(),
                        extra=self.extra)
        log.info("trial handed back from the checkpoint of step %d while step %d runs",
                 self.last_checkpoint_step, self.step, extra=self.extra)
        self.session.handed_back_early.set()
        return True

    #: Set by a caller whose steps stop early on ``interrupt`` (no need to estimate the
    #: rest of a step before handing back).
    interruptible = False

