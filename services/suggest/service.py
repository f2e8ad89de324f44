"""SuggestService: studies and suggestions (gRPC), backed by Redis and the samplers.

Thin by design: validation lives in ``ladder.space``, algorithms in
``ladder.samplers``, state transitions in ``ladder.state``; this module turns
requests into those calls and publishes the resulting events.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

import grpc
import redis
from ladder.bus import EventProducer, now_ms
from ladder.codec import decode
from ladder.config import Settings
from ladder.params import PlainValue, fill_params, params_to_dict
from ladder.samplers import Proposal, derive_seed
from ladder.space import StudyConfigError, validate_study_config
from ladder.state import BudgetExhausted, State, StateError, Transition, trial_event
from ladder.v1 import events_pb2, study_pb2, suggest_pb2, suggest_pb2_grpc, trial_pb2
from opentelemetry import metrics, trace

from services.suggest.pool import SamplerPool, partition_of

log = logging.getLogger("ladder.suggest")
_meter = metrics.get_meter("ladder.suggest")
_suggest_latency = _meter.create_histogram(
    "ladder.suggest.latency", unit="ms", description="Suggest request latency"
)
_suggested = _meter.create_counter("ladder.suggest.trials", description="trials handed out")

STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_COUNT = 256

R = TypeVar("R")


def _status(
    method: Callable[..., R],
) -> Callable[..., R]:
    """Map domain errors to precise gRPC statuses."""

    @wraps(method)
    def wrapper(self: SuggestServicer, request: object, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except StudyConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StateError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        except redis.RedisError as exc:
            log.warning("redis unavailable: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"state store unavailable: {exc}")
        raise AssertionError("unreachable")

    return wrapper


class SuggestServicer(suggest_pb2_grpc.SuggestServiceServicer):
    def __init__(
        self,
        settings: Settings,
        state: State,
        producer: EventProducer,
        claim_seconds: float,
    ) -> None:
        self.settings = settings
        self.state = state
        self.producer = producer
        self.claim_seconds = claim_seconds
        self.pool = SamplerPool(state.trials)
        self.hostname = socket.gethostname()
        self._studies: dict[str, study_pb2.Study] = {}

    # ------------------------------------------------------------ studies

    @_status
    def CreateStudy(
        self, request: suggest_pb2.CreateStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        config = validate_study_config(request.config)
        if request.study_id and not STUDY_ID.match(request.study_id):
            raise StateError(
                "INVALID_ARGUMENT",
                f"study_id {request.study_id!r} must match {STUDY_ID.pattern} "
                "(letters, digits, '.', '_', '-'; at most 64)",
            )
        study = study_pb2.Study(
            study_id=request.study_id or f"st-{uuid.uuid4().hex[:12]}",
            config=config,
            state=study_pb2.STUDY_ACTIVE,
            created_unix_ms=now_ms(),
        )
        stored, created = self.state.studies.create(study)
        if not created and stored.config != config:
            raise StateError(
                "ALREADY_EXISTS",
                f"study {study.study_id!r} already exists with a different config",
            )
        trace.get_current_span().set_attribute("ladder.study_id", stored.study_id)
        # Published (again, on a repeated create) before answering so downstream
        # consumers know the study before any trial event of it; the topic is
        # compacted and keyed by study id, so a repeat is harmless.
        try:
            self.producer.send(
                self.settings.topics.studies,
                stored.study_id,
                events_pb2.StudyEvent(study=stored, ts_ms=now_ms()),
                wait=True,
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure
            raise StateError(
                "UNAVAILABLE",
                f"study {stored.study_id!r} stored but its event was not published ({exc}); "
                "repeat CreateStudy with this study_id",
            ) from exc
        log.info(
            "study %s %s (%d parameters, algorithm %s, partitions %d)",
            stored.study_id,
            "created" if created else "already existed",
            len(config.space.parameters),
            study_pb2.Algorithm.Name(config.algorithm),
            config.partitions,
            extra={"study_id": stored.study_id},
        )
        return stored

    def _study(self, study_id: str) -> study_pb2.Study:
        if not study_id:
            raise StateError("INVALID_ARGUMENT", "study_id is required")
        cached = self._studies.get(study_id)
        if cached is not None:
            return cached
        study = self.state.studies.get(study_id)
        if study is None:
            raise StateError("NOT_FOUND", f"study {study_id!r} not found")
        self._studies[study_id] = study  # config is immutable
        return study

    @_status
    def GetStudy(
        self, request: suggest_pb2.GetStudyRequest, context: grpc.ServicerContext
    ) -> study_pb2.Study:
        if not request.study_id:
            raise StateError("INVALID_ARGUMENT", "study_id is required")
        study = self.state.studies.get(request.study_id)
        if study is None:
            raise StateError("NOT_FOUND", f"study {request.study_id!r} not found")
        return study

    @_status
    def ListStudies(
        self, request: suggest_pb2.ListStudiesRequest, context: grpc.ServicerContext
    ) -> suggest_pb2.ListStudiesResponse:
        return suggest_pb2.ListStudiesResponse(studies=self.state.studies.list())

    # ------------------------------------------------------------ suggest

    @_status
    def Suggest(
        self, request: suggest_pb2.SuggestRequest, context: grpc.ServicerContext
    ) -> suggest_pb2.SuggestResponse:
        started = time.perf_counter()
        study = self._study(request.study_id)
        if not request.worker_id:
            raise StateError("INVALID_ARGUMENT", "worker_id is required")
        if request.count < 0 or request.count > MAX_COUNT:
            raise StateError(
                "INVALID_ARGUMENT", f"count must be between 0 and {MAX_COUNT} (got {request.count})"
            )
        count = request.count or 1
        span = trace.get_current_span()
        span.set_attribute("ladder.study_id", study.study_id)
        response = suggest_pb2.SuggestResponse()

        # Resumable trials first: their work so far is not wasted.
        for trial in self.state.trials.claim_resumable(study.study_id, count, self.claim_seconds):
            response.suggestions.add(trial=trial, resumed=True, algorithm="resume")
            log.info(
                "resumable trial %s handed to %s (checkpoint %r at step %g)",
                trial.trial_id,
                request.worker_id,
                trial.checkpoint_uri,
                trial.checkpoint_step,
                extra={
                    "study_id": study.study_id,
                    "trial_id": trial.trial_id,
                    "worker_id": request.worker_id,
                },
            )
        remaining = count - len(response.suggestions)
        if remaining:
            try:
                for transition, proposal in self._new_trials(
                    study, request.worker_id, remaining
                ):
                    response.suggestions.add(
                        trial=transition.trial,
                        resumed=False,
                        predicted_mean=proposal.predicted_mean,
                        predicted_std=proposal.predicted_std,
                        algorithm=transition.algorithm,
                    )
            except BudgetExhausted:
                if not response.suggestions:
                    raise
        _suggested.add(len(response.suggestions), {"study_id": study.study_id})
        _suggest_latency.record((time.perf_counter() - started) * 1000)
        return response

    def _new_trials(
        self, study: study_pb2.Study, worker_id: str, count: int
    ) -> list[tuple[Transition, Proposal]]:
        config = study.config
        # Cheap pre-check so an exhausted study does not burn sampler draws; the
        # budget itself is enforced atomically by CREATE_TRIALS.
        if config.max_trials:
            suggested = self.state.studies.suggested(study.study_id)
            if suggested >= config.max_trials:
                raise BudgetExhausted(suggested)
        partition = partition_of(worker_id, config.partitions)
        sampler = self.pool.sampler(study, partition)
        pending = self._pending_params(study) if sampler.uses_pending else []
        proposals = sampler.suggest(count, pending)
        protos = []
        for proposal in proposals:
            trial = trial_pb2.Trial(
                study_id=study.study_id,
                seed=derive_seed(config.seed, partition, proposal.draw),
                partition=partition,
            )
            fill_params(trial.params, proposal.params)
            protos.append(trial)
        created = self.state.trials.create_trials(
            study.study_id, protos, config.max_trials, self.claim_seconds, sampler.algorithm
        )
        for transition, proposal in zip(created, proposals, strict=False):
            self._publish_suggested(transition, proposal.predicted_mean, proposal.predicted_std)
            log.info(
                "suggested trial %s to %s (partition %d, draw %d)",
                transition.trial.trial_id,
                worker_id,
                partition,
                proposal.draw,
                extra={
                    "study_id": study.study_id,
                    "trial_id": transition.trial.trial_id,
                    "worker_id": worker_id,
                },
            )
        return list(zip(created, proposals, strict=False))

    def _pending_params(self, study: study_pb2.Study) -> list[dict[str, PlainValue]]:
        pending = self.state.trials.pending(study.study_id)
        return [params_to_dict(trial.params) for trial in self.state.trials.get_many(pending)]

    def _publish_suggested(self, transition: Transition, mean: float, std: float) -> None:
        event = trial_event(transition, now_ms(), hostname=self.hostname)
        event.predicted_mean, event.predicted_std = mean, std
        try:
            self.producer.send(
                self.settings.topics.trials, transition.trial.study_id, event, wait=True
            )
        except Exception:  # noqa: BLE001 - the outbox relay in evaluate re-publishes it
            log.exception(
                "TRIAL_SUGGESTED not published; left in the outbox",
                extra={"trial_id": transition.trial.trial_id},
            )
            return
        self.state.trials.ack(transition.trial.trial_id, transition.token)

    # ------------------------------------------------------------ trials topic

    def on_trial_event(self, record: object) -> None:
        """ConsumerLoop handler: completed trials become sampler observations."""
        event = decode(events_pb2.TrialEvent, record.value)  # type: ignore[attr-defined]
        if event.kind == events_pb2.TRIAL_COMPLETED and self.pool.observe(event.trial):
            log.debug(
                "observation %s = %g",
                event.trial.trial_id,
                event.trial.final_value,
                extra={"study_id": event.trial.study_id, "trial_id": event.trial.trial_id},
            )
