"""SuggestService: studies, their lifecycle (stop, resume, completion) and suggestions
(gRPC), backed by Redis and the samplers.

Thin by design: validation lives in ``ladder.study``, algorithms in
``ladder.samplers``, state transitions in ``ladder.state``; this module turns
requests into those calls and publishes the resulting events.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc
from ladder import auth, lifecycle, quotas
from ladder.bus import EventProducer, now_ms
from ladder.codec import decode
from ladder.config import LEASE_SECONDS, Settings
from ladder.errors import (
    AlreadyExists,
    AtCapacity,
    BudgetExhausted,
    Conflict,
    InvalidArgument,
    LadderError,
    NotFound,
    Unavailable,
    require,
)
from ladder.params import PlainValue, fill_params, params_to_dict
from ladder.samplers import FALLBACK_ALGORITHM, Observation, Proposal, derive_seed
from ladder.samplers.policy import MODEL_FALLBACK_ALGORITHM, staleness
from ladder.starting import start_attempt
from ladder.state import State, Transition
from ladder.state.holds import Hold
from ladder.state.studies import Gate
from ladder.study import StudySpec
from ladder.transitions import TransitionPublisher
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
    trial_pb2,
)
from opentelemetry import metrics, trace

from services.suggest.completion import StudyCompletion
from services.suggest.pool import PolicyPool, partition_of
from services.suggest.publisher import SuggestedPublisher
from services.suggest.refit import RefitProcess
from services.suggest.work import WorkScheduler

WARM_START_ALGORITHM = "warm-start"
# Pseudo-partition whose Redis draw counter numbers a study's seed configurations:
# each is handed out once, across partitions, processes and restarts.
WARM_START_STREAM = -1

log = logging.getLogger("ladder.suggest")
_meter = metrics.get_meter("ladder.suggest")
_suggest_latency = _meter.create_histogram(
    "ladder.suggest.latency", unit="ms", description="Suggest request latency"
)
_suggested = _meter.create_counter("ladder.suggest.trials", description="trials handed out")
_failed_observations = _meter.create_counter(
    "ladder.suggest.failed_observations",
    description="FAILED trials taken in as observations, by study, failure kind and whether "
    "they are infeasible (inform the samplers)",
)
_buffer_lookups = _meter.create_counter(
    "ladder.suggest.buffer",
    description="model-based suggestions served from the ready buffer (hit) or by a "
    "fallback (miss)",
)
_served_by = _meter.create_counter(
    "ladder.suggest.served_by",
    description="new suggestions by what chose them (served_by): 'model' (a fitted model "
    "of the study's sampler), 'tpe-fallback', 'sobol-fallback', 'no-model' (an initial "
    "design, a quasi-random study, a seed); the model-served fraction is model / all",
)
_model_unseen = _meter.create_histogram(
    "ladder.suggest.model_unseen_observations",
    description="observations of the study the model behind a suggestion had not seen",
)
_model_age = _meter.create_histogram(
    "ladder.suggest.model_age", unit="s", description="seconds since the suggestion's refit began"
)

STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_COUNT = 256

class SuggestServicer(suggest_pb2_grpc.SuggestServiceServicer):
    def __init__(
        self,
        settings: Settings,
        state: State,
        producer: EventProducer,
        claim_seconds: float,
        buffer_capacity: int = 8,
        refit_process: RefitProcess | None = None,
        settle_seconds: float = lifecycle.DEFAULT_SETTLE_SECONDS,
        buffer_max: int | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.settings = settings
        self.state = state
        self.producer = producer
        self.claim_seconds = claim_seconds
        self.pool = PolicyPool(
            state.trials,
            state.studies,
            buffer_capacity,
            self._pending_params,
            refit_process,
            buffer_max=buffer_max,
        )
        self.hostname = socket.gethostname()
        self.publisher = SuggestedPublisher(
            producer, state.trials, settings.topics.trials, self.hostname
        )
        # Suggest's ``start``: attempts started here, their TRIAL_STARTED published as
        # evaluate publishes it, with the lease evaluate grants.
        self.starts = TransitionPublisher(settings, producer, state.trials)
        self.lease_seconds = lease_seconds
        # One StudySpec per study (its config is immutable), built once, when the
        # study is created here or first read from Redis.
        self._specs: dict[str, StudySpec] = {}
        # Studies whose seed configurations are all handed out (skip the counter).
        self._seeds_done: set[str] = set()
        # Params of the trials not yet finished, from the trials topic: a rung
        # decision becomes an observation without reading the trial from Redis.
        self._running_params = RunningParams()
        # Marks studies COMPLETED; its sweep thread is started by ``start``.
        self.completion = StudyCompletion(
            state.studies, self._announce, settle_seconds,
            sweep_seconds=max(0.5, min(5.0, settle_seconds / 4)),
            also=self.trip_spent_budgets,
        )
        # RequestWork (node agents): LADDER_SCHEDULER_POLICY picks fair or fifo.
        self.work = WorkScheduler(self, settings)

    # ------------------------------------------------------------ studies

    def CreateStudy(
        self, request: suggest_pb2.CreateStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        spec = StudySpec.from_proto(request.config)
        config = spec.to_proto()
        if request.study_id and not STUDY_ID.match(request.study_id):
            raise InvalidArgument(
                f"study_id {request.study_id!r} must match {STUDY_ID.pattern} "
                "(letters, digits, '.', '_', '-'; at most 64)",
            )
        self._check_warm_start_source(spec.warm_start.from_study_id, request.study_id)
        study = study_pb2.Study(
            study_id=request.study_id or f"st-{uuid.uuid4().hex[:12]}",
            config=config,
            state=study_pb2.STUDY_ACTIVE,
            created_unix_ms=now_ms(),
            tenant=auth.owner_for_new(),
        )
        stored, created = self.state.studies.create(study)
        # As created: UpdateStudy's limits do not make a repeated create a different one.
        if not created and self.state.studies.created_config(stored.study_id) != config:
            raise AlreadyExists(
                f"study {study.study_id!r} already exists with a different config",
            )
        self._specs.setdefault(stored.study_id, spec)
        trace.get_current_span().set_attribute("ladder.study_id", stored.study_id)
        # Published (again, on a repeated create) before answering so downstream
        # consumers know the study before any trial event of it; the topic is
        # compacted and keyed by study id, so a repeat is harmless.
        self._announce_or_refuse(stored, "stored", "repeat CreateStudy with this study_id")
        log.info(
            "study %s %s (%d parameters, algorithm %s, partitions %d)",
            stored.study_id,
            "created" if created else "already existed",
            len(config.space.parameters),
            spec.algorithm.name,
            spec.partitions,
            extra={"study_id": stored.study_id},
        )
        return stored

    def _announce(self, study: study_pb2.Study) -> None:
        """Publish the study's StudyEvent and wait for the broker's acknowledgement."""
        self.producer.send(
            self.settings.topics.studies,
            study.study_id,
            events_pb2.StudyEvent(study=study, ts_ms=now_ms()),
            wait=True,
        )

    def _announce_or_refuse(self, study: study_pb2.Study, done: str, repeat: str) -> None:
        try:
            self._announce(study)
        except Exception as exc:  # noqa: BLE001 - any broker failure
            raise Unavailable(
                f"study {study.study_id!r} {done} but its event was not published ({exc}); "
                f"{repeat}",
            ) from exc

    def StopStudy(
        self, request: suggest_pb2.StopStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        self._release_held(request.study_id, "study stopped")
        study = self._apply(request.study_id, lifecycle.Action.STOP, "stopped", request.reason)
        if request.stop_running_trials:
            self._stop_trials(study.study_id, lifecycle.Action.STOP, request.reason)
        self._release_held(study.study_id, "study stopped")
        return study

    def ResumeStudy(
        self, request: suggest_pb2.ResumeStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        self._release_held(request.study_id, "study resumed")
        study = self._apply(request.study_id, lifecycle.Action.RESUME, "resumed")
        self._release_held(study.study_id, "study resumed")
        return self._completed_if_finished(study)

    def PauseStudy(
        self, request: suggest_pb2.PauseStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        return self._apply(request.study_id, lifecycle.Action.PAUSE, "paused")

    def CancelStudy(
        self, request: suggest_pb2.CancelStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        study = self._apply(request.study_id, lifecycle.Action.CANCEL, "cancelled",
                            request.reason)
        self._stop_trials(study.study_id, lifecycle.Action.CANCEL, request.reason)
        return study

    def RequestWork(
        self, request: suggest_pb2.RequestWorkRequest, context: grpc.ServicerContext
    ) -> suggest_pb2.RequestWorkResponse:
        return self.work.request_work(request)

    def UpdateStudy(
        self, request: suggest_pb2.UpdateStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        study_id = require(request.study_id, "study_id")
        study = self.state.studies.update_limits(
            study_id,
            request.max_trials if request.HasField("max_trials") else None,
            request.max_parallel_trials if request.HasField("max_parallel_trials") else None,
            lifecycle.Budgets.given(request),
        )
        self._announce_or_refuse(study, "updated", "repeat UpdateStudy for this study")
        log.info(
            "study %s limits: max_trials %d, max_parallel_trials %d (%d handed out)",
            study_id, study.config.max_trials, study.config.max_parallel_trials,
            study.trials_suggested, extra={"study_id": study_id},
        )
        return self._completed_if_finished(study)

    def trip_breaker(self, study_id: str, reason: str) -> None:
        """A budget of the study is spent: STOPPED if it is ACTIVE, with the reason in
        Study.state_reason and its StudyEvent (the sweep publishes what fails here)."""
        study, changed = self.state.studies.transition(study_id, lifecycle.Action.BREAK, reason)
        if changed:
            log.warning("study %s stopped by its circuit breaker: %s", study_id, reason,
                        extra={"study_id": study_id})
            self.completion.publish(study)

    def trip_spent_budgets(self) -> None:
        """The breaker for every ACTIVE study whose budget is spent (a study nobody asks
        trials of is stopped too); run by the completion sweep."""
        now = now_ms()
        for study in self.state.studies.list():
            if study.state != lifecycle.ACTIVE:
                continue
            reason = lifecycle.budget_exceeded(
                lifecycle.Budgets.of(study.config), (now - study.created_unix_ms) / 1000,
                study.trial_hours_used, study.config.trial_resources.gpus,
            )
            if reason is not None:
                self.trip_breaker(study.study_id, reason)

    def _completed_if_finished(self, study: study_pb2.Study) -> study_pb2.Study:
        """The study, COMPLETED first if its budget is spent and nothing is left (it may
        have been while it was stopped, or a lowered budget may be reached)."""
        if self.completion.check(study.study_id):
            return self.state.studies.get(study.study_id) or study
        return study

    def _stop_trials(self, study_id: str, action: lifecycle.Action, given: str) -> None:
        """Stop every unfinished trial of the study (StopStudy's stop_running_trials,
        CancelStudy): running ones by the STOP their next heartbeat answers, the others
        PRUNED now; each records the reason."""
        reason = lifecycle.stop_reason(action, given)
        trials = self.state.trials
        stopped = 0
        for trial_id in [*trials.pending(study_id), *trials.paused(study_id)]:
            decision = events_pb2.Decision(
                study_id=study_id, trial_id=trial_id, action=events_pb2.STOP,
                reason=reason, scheduler="lifecycle", ts_ms=now_ms(),
            )
            try:
                transition = trials.stop(trial_id, reason, decision)
            except Conflict:  # it ended meanwhile
                continue
            stopped += 1
            self._publish_transition(transition)
        log.info("study %s: %d unfinished trials stopped (%s)", study_id, stopped, reason,
                 extra={"study_id": study_id})

    def _release_held(self, study_id: str, reason: str) -> None:
        """The study leaves PAUSED: the trials its pause held are RESUMABLE, handed out
        first by the next Suggest. Called before the state changes (while paused, no
        Suggest claims them, and none can find the study resumed with its trials still
        held) and after it (a trial that paused meanwhile)."""
        for transition in self.state.trials.release_held(study_id, reason):
            self._publish_transition(transition)

    def _publish_transition(self, transition: Transition) -> None:
        """A trial transition made here, after the trial's events still unpublished (the
        outbox relay re-publishes any that fail)."""
        if transition.event_kind:
            for event in (*transition.earlier, transition):
                self.publisher.publish(event, 0.0, 0.0)

    def _apply(
        self, study_id: str, action: lifecycle.Action, done: str, reason: str = ""
    ) -> study_pb2.Study:
        require(study_id, "study_id")
        study, changed = self.state.studies.transition(study_id, action, reason.strip())
        # Published on a repeat too: a repeated call delivers an event a failed one lost.
        self._announce_or_refuse(study, done, f"repeat {action.value} for this study")
        log.info(
            "study %s %s%s", study_id, done, "" if changed else " (already)",
            extra={"study_id": study_id},
        )
        return study

    def republish_studies(self, timeout: float = 30.0) -> int:
        """Publish every stored study to the studies topic again; how many.

        Called at start: after a restart on a new embedded broker the topic is empty,
        and early stopping learns a study's scheduler only from it. The topic is
        compacted and keyed by study id, and every consumer keeps the latest record per
        study, so a study published again changes nothing for them."""
        studies = self.state.studies.list()
        sent = [
            self.producer.send(
                self.settings.topics.studies,
                study.study_id,
                events_pb2.StudyEvent(study=study, ts_ms=now_ms()),
            )
            for study in studies
        ]
        for result in sent:
            result.get(timeout=timeout)
        return len(studies)

    def _check_warm_start_source(self, source: str, study_id: str) -> None:
        if not source:
            return
        if not STUDY_ID.match(source):
            raise InvalidArgument(
                f"warm_start.from_study_id {source!r} is not a valid study id "
                f"(must match {STUDY_ID.pattern})",
            )
        if source == study_id:
            raise InvalidArgument(f"warm_start.from_study_id {source!r} is the study itself")
        if self.state.studies.get(source) is None:
            raise NotFound(f"warm_start.from_study_id: study {source!r} not found")

    def _spec(self, study_id: str) -> StudySpec:
        require(study_id, "study_id")
        cached = self._specs.get(study_id)
        if cached is not None:
            return cached
        study = self.state.studies.get(study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found")
        return self._specs.setdefault(study_id, StudySpec.from_proto(study.config))

    def GetStudy(
        self, request: suggest_pb2.GetStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        study = self.state.studies.get(require(request.study_id, "study_id"))
        if study is None:
            raise NotFound(f"study {request.study_id!r} not found")
        return study

    def ListStudies(
        self, request: suggest_pb2.ListStudiesRequest, context: grpc.ServicerContext
    ) -> suggest_pb2.ListStudiesResponse:
        studies = [s for s in self.state.studies.list() if auth.may_see(s.tenant)]
        return suggest_pb2.ListStudiesResponse(studies=studies)

    # ------------------------------------------------------------ suggest

    def Suggest(
        self, request: suggest_pb2.SuggestRequest, context: grpc.ServicerContext
    ) -> suggest_pb2.SuggestResponse:
        started = time.perf_counter()
        study_id = request.study_id
        spec = self._spec(study_id)
        require(request.worker_id, "worker_id")
        if request.count < 0 or request.count > MAX_COUNT:
            raise InvalidArgument(f"count must be between 0 and {MAX_COUNT} (got {request.count})")
        start = _start_request(request)
        count = request.count or 1
        span = trace.get_current_span()
        span.set_attribute("ladder.study_id", study_id)
        response = suggest_pb2.SuggestResponse()
        gate = self.state.studies.gate(study_id)
        refused = lifecycle.refusal_to_suggest(study_id, gate.state)
        if refused is not None:
            raise refused
        spent = gate.budget_exceeded(spec.to_proto())
        if spent is not None:
            self.trip_breaker(study_id, spent)
            raise lifecycle.budget_refusal(study_id, spent)
        max_parallel = _live(gate.max_parallel, spec.max_parallel_trials)

        # Resumable trials first: their work so far is not wasted.
        claimed = self.state.trials.claim_resumable(
            study_id, count, self.claim_seconds, max_parallel
        )
        for trial in claimed:
            response.suggestions.add(trial=trial, resumed=True, algorithm="resume")
            log.info(
                "resumable trial %s handed to %s (checkpoint %r at step %g)",
                trial.trial_id,
                request.worker_id,
                trial.checkpoint_uri,
                trial.checkpoint_step,
                extra={
                    "study_id": study_id,
                    "trial_id": trial.trial_id,
                    "worker_id": request.worker_id,
                },
            )
        remaining = count - len(response.suggestions)
        if remaining and gate.state == lifecycle.STOPPED:
            # Resumable trials finish; new ones wait for ResumeStudy.
            if not response.suggestions:
                raise lifecycle.stopped(study_id)
            remaining = 0
        if remaining:
            try:
                new = self._new_trials(study_id, spec, request.worker_id, remaining, gate)
                observed = len(self.pool.observations(study_id)) if new else 0
                for transition, proposal in new:
                    unseen, age = staleness(proposal, observed)
                    response.suggestions.add(
                        trial=transition.trial,
                        resumed=False,
                        predicted_mean=proposal.predicted_mean,
                        predicted_std=proposal.predicted_std,
                        algorithm=transition.algorithm,
                        model_observations=proposal.model_observations,
                        unseen_observations=unseen,
                        model_age_seconds=age,
                    )
                    self._count_served(study_id, proposal, unseen, age)
            except (BudgetExhausted, AtCapacity, Conflict):
                # Limits reached meanwhile (or the study left ACTIVE): what was claimed
                # is handed out.
                if not response.suggestions:
                    raise
        if start is not None:
            for suggestion in response.suggestions:
                self._start(suggestion, start)
        _suggested.add(len(response.suggestions), {"study_id": study_id})
        _suggest_latency.record((time.perf_counter() - started) * 1000)
        return response

    def _start(
        self, suggestion: suggest_pb2.Suggestion, start: evaluate_pb2.StartTrialRequest
    ) -> None:
        """Start the suggestion's trial as StartTrial would (``ladder.starting``). A
        trial that ended or that another attempt took meanwhile is handed out without
        ``started``: the worker's own StartTrial then gets the precise refusal."""
        request = evaluate_pb2.StartTrialRequest()
        request.CopyFrom(start)
        request.trial_id = suggestion.trial.trial_id
        try:
            suggestion.started.CopyFrom(
                start_attempt(
                    self.state.trials, self.state.studies, self.starts, request,
                    self.lease_seconds,
                )
            )
        except LadderError as exc:
            log.warning(
                "trial %s handed out unstarted: %s", request.trial_id, exc,
                extra={"trial_id": request.trial_id, "worker_id": request.worker_id},
            )

    def _new_trials(
        self, study_id: str, spec: StudySpec, worker_id: str, count: int, gate: Gate,
        hold: Hold | None = None,
    ) -> list[tuple[Transition, Proposal]]:
        # Cheap pre-checks (read before the resumable trials were claimed) so an
        # exhausted or full study does not burn sampler draws; the limits themselves are
        # enforced atomically by CREATE_TRIALS.
        max_trials = _live(gate.max_trials, spec.max_trials)
        max_parallel = _live(gate.max_parallel, spec.max_parallel_trials)
        if max_trials and gate.suggested >= max_trials:
            raise BudgetExhausted(gate.suggested)
        if max_parallel:
            if gate.in_flight >= max_parallel:
                raise lifecycle.at_capacity(study_id, gate.in_flight, max_parallel)
            count = min(count, max_parallel - gate.in_flight)
        if gate.tenant_room is not None:
            room, out, quota, tenant = gate.tenant_room
            if room <= 0:
                raise quotas.trials_at_quota(tenant, out, quota)
            count = min(count, room)
        partition = partition_of(worker_id, spec.partitions)
        proposals = self._seed_configurations(study_id, spec, partition, count)
        if len(proposals) < count:
            policy = self.pool.policy(study_id, spec, partition)
            proposals.extend(policy.take(count - len(proposals)))
        self._count_buffer_lookups(study_id, proposals)
        out: list[tuple[Transition, Proposal]] = []
        # One CREATE_TRIALS per run of equal algorithm names, so every trial records
        # (and its TRIAL_SUGGESTED event carries) what really chose its point.
        for algorithm, group in _runs(proposals):
            protos = []
            for item in group:
                trial = trial_pb2.Trial(
                    study_id=study_id,
                    seed=derive_seed(spec.seed, partition, item.draw),
                    partition=partition,
                )
                fill_params(trial.params, item.params)
                protos.append(trial)
            try:
                created = self.state.trials.create_trials(
                    study_id, protos, max_trials, self.claim_seconds, algorithm,
                    max_parallel=max_parallel, hold=hold,
                )
            except (BudgetExhausted, AtCapacity, Conflict):
                if not out:
                    raise
                break
            out.extend(zip(created, group, strict=False))
            if len(created) < len(group):
                break
        for transition, item in out:
            self.publisher.publish(transition, item.predicted_mean, item.predicted_std)
            log.info(
                "suggested trial %s to %s (partition %d, draw %d, %s, predicted %g +- %g)",
                transition.trial.trial_id,
                worker_id,
                partition,
                item.draw,
                transition.algorithm,
                item.predicted_mean,
                item.predicted_std,
                extra={
                    "study_id": study_id,
                    "trial_id": transition.trial.trial_id,
                    "worker_id": worker_id,
                },
            )
        return out

    def _seed_configurations(
        self, study_id: str, spec: StudySpec, partition: int, count: int
    ) -> list[Proposal]:
        """The study's warm-start configurations without a value, each handed out
        once (a Redis counter numbers them), before any sampler suggestion."""
        if study_id in self._seeds_done:
            return []
        seeds = spec.warm_start.seeds
        if not seeds:
            self._seeds_done.add(study_id)
            return []
        trials = self.state.trials
        first = trials.reserve_draws(study_id, WARM_START_STREAM, min(count, len(seeds)))
        chosen = seeds[first : first + count]
        if first + len(chosen) >= len(seeds):
            self._seeds_done.add(study_id)
        if not chosen:
            return []
        draw = trials.reserve_draws(study_id, partition, len(chosen))
        return [
            Proposal(dict(seed.params), draw + i, algorithm=WARM_START_ALGORITHM)
            for i, seed in enumerate(chosen)
        ]

    def _count_served(self, study_id: str, proposal: Proposal, unseen: int, age: float) -> None:
        """The suggestion in the served_by metric; its model's staleness if it had one."""
        source = served_by(proposal)
        _served_by.add(1, {"study_id": study_id, "served_by": source})
        if source == "model":
            _model_unseen.record(unseen, {"study_id": study_id})
            _model_age.record(age, {"study_id": study_id})

    def _count_buffer_lookups(self, study_id: str, served: list[Proposal]) -> None:
        fallbacks = (FALLBACK_ALGORITHM, MODEL_FALLBACK_ALGORITHM)
        misses = sum(p.algorithm in fallbacks for p in served)
        if misses:
            _buffer_lookups.add(misses, {"study_id": study_id, "result": "miss"})
            log.info(
                "suggestion buffer miss: %d of %d points from a fallback (%s)",
                misses,
                len(served),
                ", ".join(sorted({p.algorithm for p in served if p.algorithm in fallbacks})),
                extra={"study_id": study_id},
            )
        hits = len(served) - misses
        if hits:
            _buffer_lookups.add(hits, {"study_id": study_id, "result": "hit"})

    def _pending_params(self, study_id: str) -> list[dict[str, PlainValue]]:
        """The params of the study's pending trials: from the trials topic where this
        process has them (a trial's params never change), the rest read from Redis. Each
        refit reads them: at 1,000 workers reading all from Redis (a hash and a proto
        parse each) took as long as the refit itself."""
        pending = self.state.trials.pending(study_id)
        return self._running_params.params_of(pending, self.state.trials.get_many)

    # ------------------------------------------------------------ trials topic

    def on_event(self, record: object) -> None:
        """ConsumerLoop handler for the trials and decisions topics."""
        if record.topic == self.settings.topics.decisions:  # type: ignore[attr-defined]
            self.on_decision(decode(events_pb2.Decision, record.value))  # type: ignore[attr-defined]
            return
        event = decode(events_pb2.TrialEvent, record.value)  # type: ignore[attr-defined]
        self._running_params.on_event(event)
        self.completion.on_trial_event(event)
        if event.kind == events_pb2.TRIAL_COMPLETED and self.pool.observe_completed(event.trial):
            log.debug(
                "observation %s = %g",
                event.trial.trial_id,
                event.trial.final_value,
                extra={"study_id": event.trial.study_id, "trial_id": event.trial.trial_id},
            )
        # Whatever event ends a trial FAILED (a RESUMABLE one runs again).
        if event.trial.state == trial_pb2.FAILED:
            self._observe_failed(event.trial)

    def _observe_failed(self, trial: trial_pb2.Trial) -> None:
        """A FAILED trial becomes a failed observation (a replay changes nothing),
        counted and logged with the study's totals."""
        observation = self.pool.observe_failed(trial)
        if observation is None:
            return
        kind = failure_name(trial.failure_kind)
        _failed_observations.add(
            1,
            {
                "study_id": trial.study_id,
                "failure_kind": kind,
                "infeasible": observation.infeasible,
            },
        )
        store = self.pool.observations(trial.study_id)
        log.info(
            "failed trial %s (%s) observed: %s; the study has %d failed trials, "
            "%d infeasible observations",
            trial.trial_id,
            kind,
            "infeasible, the samplers steer away from its region"
            if observation.infeasible
            else "not used by the samplers (a bug, not a property of the region)",
            sum(store.failures().values()),
            store.infeasible,
            extra={"study_id": trial.study_id, "trial_id": trial.trial_id},
        )

    def on_decision(self, decision: events_pb2.Decision) -> None:
        """A rung decision carries the trial's smoothed value at that resource: a
        lower-fidelity observation. Its params come from the trial's events on the
        trials topic; from Redis only when those were not read (yet)."""
        if decision.resource <= 0:
            return
        if not math.isfinite(decision.smoothed_value):
            return
        known = self._running_params.get(decision.trial_id)
        if known is None:
            trial = self.state.trials.get(decision.trial_id)
            if trial is None:  # evaluate dead-letters decisions for unknown trials
                return
            known = (trial.study_id, params_to_dict(trial.params))
        study_id, params = known
        observation = Observation(
            trial_id=decision.trial_id,
            params=params,
            value=decision.smoothed_value,
            resource=decision.resource,
        )
        if self.pool.observe(study_id, [observation]):
            log.debug(
                "rung observation %s at resource %g = %g",
                decision.trial_id,
                decision.resource,
                decision.smoothed_value,
                extra={"study_id": study_id, "trial_id": decision.trial_id},
            )


# Trial events after which no rung decision is expected for the trial.
_FINISHED = frozenset(
    {events_pb2.TRIAL_COMPLETED, events_pb2.TRIAL_PRUNED, events_pb2.TRIAL_FAILED}
)
_TERMINAL_STATES = frozenset({trial_pb2.COMPLETED, trial_pb2.PRUNED, trial_pb2.FAILED})


class RunningParams:
    """(study id, params) of the trials still running, from the trials topic.

    The topic is read at least once and a partition may be re-read, so a duplicate of
    an older event can arrive after the trial finished: the trials that finished for
    good are remembered, and such a late copy does not add the trial back. Both maps
    are capped (oldest dropped first); a trial missing here is read from Redis."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._params: OrderedDict[str, tuple[str, dict[str, PlainValue]]] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._params)

    def get(self, trial_id: str) -> tuple[str, dict[str, PlainValue]] | None:
        return self._params.get(trial_id)

    def params_of(
        self, trial_ids: Sequence[str], read: Callable[[list[str]], list[trial_pb2.Trial]]
    ) -> list[dict[str, PlainValue]]:
        """The params of the trials ``trial_ids``: those known here, the others ``read``
        (from Redis; a trial not found there is left out)."""
        known = [self._params.get(trial_id) for trial_id in trial_ids]
        unknown = [t for t, k in zip(trial_ids, known, strict=True) if k is None]
        params = [k[1] for k in known if k is not None]
        return params + [params_to_dict(t.params) for t in read(unknown)] if unknown else params

    def on_event(self, event: events_pb2.TrialEvent) -> None:
        trial = event.trial
        trial_id = trial.trial_id
        if event.kind in _FINISHED:
            self._params.pop(trial_id, None)
            # A retryable failure leaves the trial RESUMABLE: it may run again.
            if trial.state in _TERMINAL_STATES:
                _remember(self._finished, trial_id, None, self.capacity)
            return
        if not trial.params or trial_id in self._params or trial_id in self._finished:
            return
        _remember(
            self._params, trial_id, (trial.study_id, params_to_dict(trial.params)), self.capacity
        )


def _start_request(request: suggest_pb2.SuggestRequest) -> evaluate_pb2.StartTrialRequest | None:
    """SuggestRequest.start checked (None when not set), its worker the request's when it
    names none."""
    if not request.HasField("start"):
        return None
    start = request.start
    if start.trial_id:
        raise InvalidArgument(
            f"start.trial_id must be empty: the trial is the one suggested (got {start.trial_id!r})"
        )
    require(start.attempt_id, "start.attempt_id")
    if request.count > 1:
        raise InvalidArgument(f"start needs count 1 (got {request.count})")
    if start.worker_id and start.worker_id != request.worker_id:
        raise InvalidArgument(
            f"start.worker_id {start.worker_id!r} is not the request's worker_id "
            f"{request.worker_id!r}"
        )
    out = evaluate_pb2.StartTrialRequest()
    out.CopyFrom(start)
    out.worker_id = request.worker_id
    return out


def _live(updated: int | None, configured: int) -> int:
    """A study limit: UpdateStudy's value when it set one, else the config's."""
    return configured if updated is None else updated


def _remember(table: OrderedDict, key: str, value: object, capacity: int) -> None:
    table[key] = value
    while len(table) > capacity:
        table.popitem(last=False)


def failure_name(kind: int) -> str:
    """The FailureKind's proto name (its number when this build does not know it)."""
    if kind in trial_pb2.FailureKind.values():
        return trial_pb2.FailureKind.Name(kind)
    return str(kind)


def served_by(proposal: Proposal) -> str:
    """What chose a new suggestion, for the served_by metric: a fallback by name,
    "model" for a fitted model of the study's sampler, "no-model" otherwise."""
    if proposal.algorithm in (FALLBACK_ALGORITHM, MODEL_FALLBACK_ALGORITHM):
        return proposal.algorithm
    return "model" if proposal.model_observations > 0 else "no-model"


def _runs(served: list[Proposal]) -> list[tuple[str, list[Proposal]]]:
    """Consecutive proposals grouped by algorithm name (order kept)."""
    runs: list[tuple[str, list[Proposal]]] = []
    for item in served:
        if runs and runs[-1][0] == item.algorithm:
            runs[-1][1].append(item)
        else:
            runs.append((item.algorithm, [item]))
    return runs
