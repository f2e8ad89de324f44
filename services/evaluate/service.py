"""EvaluateService: the trial lifecycle (gRPC). The only writer of trial state
after the suggestion; every transition is an atomic, fenced Lua script in
``ladder.state`` and is announced on the trials topic.

Each study's ``trial_policy`` (``ladder.study.TrialPolicySpec``, read once per study from
the config suggest stored) sets the progress watchdog, the wall clock, the OOM policy and
max_failures (0: this service's ``--max-attempts``); what a failure does is
``ladder.failures`` (preemption never counts)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import grpc
from ladder import lifecycle
from ladder.bus import Record, now_ms
from ladder.codec import BadRecord, decode
from ladder.errors import InvalidArgument, NotFound, require
from ladder.failures import kind_of_request
from ladder.starting import require_attempt as _attempt
from ladder.starting import start_attempt
from ladder.state import AttemptEnded, State, Transition
from ladder.study import TrialPolicySpec
from ladder.transitions import TransitionPublisher
from ladder.v1 import evaluate_pb2, evaluate_pb2_grpc, events_pb2, trial_pb2

log = logging.getLogger("ladder.evaluate")


class _AttemptCall(Protocol):
    """What every lifecycle request carries: the trial and the attempt acting on it."""

    trial_id: str
    attempt_id: str


def _step(name: str, value: float) -> float | None:
    """Steps are optional (0 = not given) but must be finite and >= 0."""
    return _non_negative(name, value) or None


def _non_negative(name: str, value: float) -> float:
    """A step as given (a checkpoint at step 0 is one), once it is finite and >= 0."""
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be finite and >= 0 (got {value})")
    return value


# The argument checks below return what they checked, so a handler's state call can
# check its arguments in the order they are written.
def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be finite")
    return value


def _rung(value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"rung must be >= 0 (got {value})")
    return value


class EvaluateServicer(evaluate_pb2_grpc.EvaluateServiceServicer):
    def __init__(
        self,
        state: State,
        publisher: TransitionPublisher,
        lease_seconds: float,
        max_attempts: int,
    ) -> None:
        self.trials = state.trials
        self.studies = state.studies
        self.publisher = publisher
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts

    def _policy(self, trial_id: str) -> TrialPolicySpec:
        """The trial policy of the trial's study (both lookups cached)."""
        return self.studies.spec(self.trials.study_of(trial_id)).trial_policy

    def _apply(self, request: _AttemptCall, move: Callable[[], Transition]) -> Transition:
        """A lifecycle call: refused first when it does not name its trial and attempt,
        then ``move`` (its own checks, then one fenced state transition) and the
        transition published on the trials topic."""
        _attempt(request.trial_id, request.attempt_id)
        transition = move()
        self.publisher.publish(transition)
        return transition

    def StartTrial(
        self, request: evaluate_pb2.StartTrialRequest, context: grpc.ServicerContext
    ) -> evaluate_pb2.StartTrialResponse:
        return start_attempt(
            self.trials, self.studies, self.publisher, request, self.lease_seconds
        )

    def Heartbeat(
        self, request: evaluate_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> evaluate_pb2.HeartbeatResponse:
        _attempt(request.trial_id, request.attempt_id)
        step = _step("step", request.step)
        try:
            stored, study_state = self.trials.heartbeat_verdict(
                request.trial_id,
                request.attempt_id,
                step,
                self.lease_seconds,
                self._policy(request.trial_id).stall_timeout_seconds,
            )
        except AttemptEnded as ended:
            # Stalled or out of wall clock: announce it, then tell the worker its
            # attempt is over (FAILED_PRECONDITION, like any stale attempt).
            self.publisher.publish(ended.transition)
            raise
        # While the study is PAUSED: a PAUSE, unless a STOP stands.
        decision = lifecycle.verdict(
            self.trials.study_of(request.trial_id), request.trial_id, study_state, stored
        )
        reply = evaluate_pb2.HeartbeatResponse(
            action=events_pb2.CONTINUE, lease_seconds=self.lease_seconds
        )
        if decision is not None:
            # The latest verdict travels even when it is CONTINUE, so a worker waiting at
            # a rung learns it may go on without waiting out its decision timeout.
            reply.decision.CopyFrom(decision)
            if decision.action in (events_pb2.STOP, events_pb2.PROMOTE, events_pb2.PAUSE):
                reply.action = decision.action
        if step is not None and reply.action != events_pb2.STOP:
            scheduler = self.studies.spec(self.trials.study_of(request.trial_id)).scheduler
            reply.decision_pending = scheduler.verdict_pending(
                request.trial_id, step, decision.resource if decision is not None else None
            )
        return reply

    def ReportCheckpoint(
        self, request: evaluate_pb2.ReportCheckpointRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        return self._apply(
            request,
            lambda: self.trials.checkpoint(
                request.trial_id,
                request.attempt_id,
                require(request.uri, "uri"),
                _non_negative("step", request.step),
                self.lease_seconds,
                save_seconds=request.save_seconds,
                train_seconds=request.train_seconds,
            ),
        ).trial

    def CompleteTrial(
        self, request: evaluate_pb2.CompleteTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        return self._apply(
            request,
            lambda: self.trials.complete(
                request.trial_id,
                request.attempt_id,
                _finite("value", request.value),
                _step("step", request.step),
            ),
        ).trial

    def PruneTrial(
        self, request: evaluate_pb2.PruneTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        return self._apply(
            request,
            lambda: self.trials.prune(
                request.trial_id,
                request.attempt_id,
                _step("step", request.step),
                request.last_value,
            ),
        ).trial

    def PauseTrial(
        self, request: evaluate_pb2.PauseTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        return self._apply(
            request,
            # Keywords in this order: the rung is checked before the step.
            lambda: self.trials.pause(
                request.trial_id,
                request.attempt_id,
                rung=_rung(request.rung),
                step=_step("step", request.step),
            ),
        ).trial

    def FailTrial(
        self, request: evaluate_pb2.FailTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        def fail() -> Transition:
            policy = self._policy(request.trial_id)
            return self.trials.fail(
                request.trial_id,
                request.attempt_id,
                request.reason,
                kind_of_request(request.kind, request.retryable),
                oom=policy.on_out_of_memory,
                max_failures=policy.max_failures or self.max_attempts,
            )

        return self._apply(request, fail).trial

    def StopTrial(
        self, request: evaluate_pb2.StopTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        trial_id = require(request.trial_id, "trial_id")
        reason = require(request.reason.strip(), "reason")
        decision = events_pb2.Decision(
            study_id=self.trials.study_of(trial_id),
            trial_id=trial_id,
            action=events_pb2.STOP,
            reason=f"stopped by an operator: {reason}",
            scheduler="operator",
            ts_ms=now_ms(),
        )
        transition = self.trials.stop(trial_id, reason, decision)
        if transition.event_kind:
            self.publisher.publish(transition)
        log.info(
            "trial %s stopped by an operator (%s): %s", trial_id, reason,
            "PRUNED" if transition.trial.state == trial_pb2.PRUNED
            else "its next heartbeat answers STOP",
            extra={"trial_id": trial_id, "study_id": decision.study_id},
        )
        return transition.trial

    def GetTrial(
        self, request: evaluate_pb2.GetTrialRequest, context: grpc.ServicerContext
    ) -> trial_pb2.Trial:
        trial = self.trials.get(require(request.trial_id, "trial_id"))
        if trial is None:
            raise NotFound(f"trial {request.trial_id!r} not found")
        return trial

    # ------------------------------------------------------------ decisions topic

    def on_decision(self, record: Record) -> None:
        """ConsumerLoop handler: keep each trial's latest decision for Heartbeat.
        Storing the same decision twice is a no-op (replays change nothing). A PROMOTE
        for a PAUSED trial's rung makes it RESUMABLE; that is published like any
        transition (the outbox re-publishes it if this publish fails)."""
        decision = decode(events_pb2.Decision, record.value)
        if not decision.trial_id:
            raise BadRecord("decision has no trial_id")
        result, transition = self.trials.apply_decision(decision)
        if transition is not None:
            self.publisher.publish(transition, wait=0)  # the consumer goes on meanwhile
        log.info(
            "decision %s for %s: %s (%s)",
            events_pb2.Action.Name(decision.action)
            if decision.action in events_pb2.Action.values()
            else decision.action,
            decision.trial_id,
            result.lower(),
            decision.reason,
            extra={"trial_id": decision.trial_id, "study_id": decision.study_id},
        )
