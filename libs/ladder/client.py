"""The Ladder client SDK: one object for studies, the trial lifecycle and lineage queries.

::

    from ladder.client import LadderClient, study_config

    with LadderClient() as ladder:          # endpoints from Settings.from_env()
        study = ladder.create_study(study_config(
            {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
             "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
             "momentum": {"type": "float", "low": 0, "high": 0.99,
                          "when": {"optimizer": ["sgd"]}}},
            metric="val_loss", max_trials=64,
            scheduler={"kind": "asha", "min_resource": 1, "max_resource": 27},
        ))
        suggestion = ladder.suggest(study.study_id, worker_id="w1")

Request/response calls go over gRPC to the suggest, evaluate and lineage services;
metric reports are produced to the Kafka ``metrics`` topic (key = trial id), as the
architecture prescribes, so a worker never waits on the early-stop service.

Failures: a call that fails with UNAVAILABLE (a service restarting, a connection not
up yet) is retried with exponential back-off until ``retry_timeout`` seconds have
passed (default LADDER_CLIENT_RETRY_S, else 30; workers wait minutes, see
``python -m workers``); every other status (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, ...) is raised at once as ``grpc.RpcError``, because repeating
the request cannot help. A client built from the environment (no ``settings``
argument) reads the addresses again (env, else ``stack.json``) while a call keeps
failing, and reconnects to a service, or the broker, whose address changed: a stack
started again elsewhere is found without restarting the client.
The evaluate calls are idempotent per (trial id, attempt id), so a retried call that
had in fact reached the server changes nothing. ``Suggest`` raises
:class:`BudgetExhausted` once the study's ``max_trials`` have been handed out.

The plain-dict form of a search space (:func:`search_space`)::

    {name: {"type": "float" | "int",  "low": ..., "high": ..., "log": bool,
            "when": {parent: [parent values]}},            # "when" is optional
     name: {"type": "categorical", "choices": ["a", "b"]},
     name: {"type": "ordinal", "values": [16, 32, 64]}}

A conditional parameter ("when") is active only while its parent (a categorical or
ordinal parameter) takes one of the listed values. Parent values are compared as text;
ordinal values are written without a trailing ".0" (``32``, ``0.5``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from ladder import channels, errors, failures, lifecycle, limits, telemetry
from ladder.config import Settings
from ladder.errors import BudgetExhausted
from ladder.params import fill_params
from ladder.proto_enum import ProtoEnum
from ladder.schedulers.spec import ASHA_FORMS, BRACKET_ALLOCATIONS, SCHEDULER_KINDS, SMOOTHINGS
from ladder.space import Space
from ladder.study import ALGORITHMS, DIRECTIONS, OomPolicy, StudySpec
from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
    trial_pb2,
)

log = logging.getLogger("ladder.client")

T = TypeVar("T")

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
DEFAULT_CALL_TIMEOUT = 10.0  # seconds per attempt of one RPC
DEFAULT_RETRY_TIMEOUT = 30.0  # seconds of UNAVAILABLE retries before giving up
RETRY_TIMEOUT_ENV = "LADDER_CLIENT_RETRY_S"
# A call failing this long re-reads the addresses (at most once per this period): a
# service restarting on its address is back within seconds, so a file read per retry
# before then would buy nothing.
READDRESS_AFTER = 2.0


def default_retry_timeout() -> float:
    """LADDER_CLIENT_RETRY_S, else DEFAULT_RETRY_TIMEOUT seconds."""
    return float(os.environ.get(RETRY_TIMEOUT_ENV) or DEFAULT_RETRY_TIMEOUT)

# Reconnect quickly after a service restarts instead of gRPC's default back-off of up
# to two minutes: the retry loop below is what bounds the waiting.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # The servers' sizes (ladder.limits): a request they would refuse fails here.
    ("grpc.max_send_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.max_receive_message_length", limits.MAX_RESPONSE_BYTES),
]


# --- retries -----------------------------------------------------------------------------


def call_with_retry(
    call: Callable[[], T],
    what: str,
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[float], None] | None = None,
) -> T:
    """Run ``call``; retry it with jittered exponential back-off while it fails with a
    retryable status (UNAVAILABLE) and ``retry_timeout`` has not passed.
    ``on_retry(seconds failing so far)`` runs before each retry."""
    started = clock()
    deadline = started + retry_timeout
    backoff = initial_backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in RETRYABLE_CODES or clock() + backoff > deadline:
                raise
            log.info("%s: %s (attempt %d), retrying in %.2fs", what, code, attempt, backoff)
        sleep(backoff * random.uniform(0.8, 1.2))
        if on_retry is not None:
            on_retry(clock() - started)
        backoff = min(max_backoff, backoff * 2)


# --- the plain-dict form of search spaces and study configs --------------------------------

_SCALES = {False: space_pb2.SCALE_LINEAR, True: space_pb2.SCALE_LOG}
_KEYS = {
    "float": {"type", "low", "high", "log", "when"},
    "int": {"type", "low", "high", "log", "when"},
    "categorical": {"type", "choices", "when"},
    "ordinal": {"type", "values", "when"},
}


def choice_text(value: object) -> str:
    """How a parent's value is written in a condition: ``"sgd"``, ``"32"``, ``"0.5"``."""
    if isinstance(value, bool):
        raise ValueError("boolean choices are not supported; use strings")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(spec: Mapping[str, Any], key: str, name: str) -> float:
    if key not in spec:
        raise ValueError(f"parameter {name!r}: missing {key!r}")
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"parameter {name!r}: {key!r} must be a number, got {value!r}")
    return value


def _integer(spec: Mapping[str, Any], key: str, name: str) -> int:
    value = _number(spec, key, name)
    if not float(value).is_integer():
        raise ValueError(f"parameter {name!r}: {key!r} must be an integer, got {value!r}")
    return int(value)


def _list(spec: Mapping[str, Any], key: str, name: str) -> list[Any]:
    value = spec.get(key)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"parameter {name!r}: {key!r} must be a list, got {value!r}")
    return list(value)


def parameter(name: str, spec: Mapping[str, Any]) -> space_pb2.Parameter:
    """One parameter from its plain-dict spec (see the module docstring). Only the
    shape of the dict is checked here; :func:`search_space` validates the result."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"parameter {name!r}: spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ValueError(
            f"parameter {name!r}: 'type' must be one of {sorted(_KEYS)}, got {kind!r}"
        )
    unknown = set(spec) - _KEYS[kind]
    if unknown:
        raise ValueError(f"parameter {name!r}: unknown keys {sorted(unknown)} for type {kind!r}")
    param = space_pb2.Parameter(name=name)
    scale = _SCALES[bool(spec.get("log", False))]
    if kind == "float":
        param.float_range.CopyFrom(space_pb2.FloatRange(
            low=float(_number(spec, "low", name)), high=float(_number(spec, "high", name)),
            scale=scale,
        ))
    elif kind == "int":
        param.int_range.CopyFrom(space_pb2.IntRange(
            low=_integer(spec, "low", name), high=_integer(spec, "high", name), scale=scale,
        ))
    elif kind == "categorical":
        param.categorical.choices.extend(choice_text(c) for c in _list(spec, "choices", name))
    else:
        values = _list(spec, "values", name)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"parameter {name!r}: ordinal values must be numbers, got {value!r}"
                )
        param.ordinal.values.extend(float(v) for v in values)
    if "when" in spec:
        param.condition.CopyFrom(_condition(name, spec["when"]))
    return param


def _condition(name: str, when: object) -> space_pb2.Condition:
    if not isinstance(when, Mapping) or len(when) != 1:
        raise ValueError(
            f"parameter {name!r}: 'when' must name exactly one parent, e.g. "
            "{'optimizer': ['sgd']}"
        )
    ((parent, values),) = when.items()
    if isinstance(values, str | int | float):
        values = [values]
    return space_pb2.Condition(parent=parent, parent_values=[choice_text(v) for v in values])


def search_space(
    spec: Mapping[str, Mapping[str, Any]] | space_pb2.SearchSpace,
) -> space_pb2.SearchSpace:
    """A validated ``SearchSpace`` from the plain-dict form (or a ``SearchSpace``).

    Raises ``ValueError`` (``ladder.space.SpaceError`` for semantic problems: low >= high,
    log scale with low <= 0, duplicate choices, an unknown condition parent, ...) with a
    message naming the parameter. The services validate the same way, so a space that
    passes here is not rejected by CreateStudy.
    """
    if isinstance(spec, space_pb2.SearchSpace):
        space = spec
    else:
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError("a search space must be a non-empty dict of parameters")
        space = space_pb2.SearchSpace(parameters=[parameter(n, p) for n, p in spec.items()])
    Space.from_proto(space)
    return space


def _enum(table: ProtoEnum[Any], value: str | int, what: str) -> int:
    """The proto number of a plain name (the study model's vocabulary), or a number."""
    if isinstance(value, int):
        return value
    try:
        return table.number(value)
    except KeyError:
        raise ValueError(f"{what} must be one of {table.names}, got {value!r}") from None


def scheduler_config(
    kind: str | int = "asha",
    *,
    max_resource: float = 0.0,
    min_resource: float = 0.0,
    reduction_factor: float = 0.0,
    grace_period: float = 0.0,
    min_population: int = 0,
    smoothing: str | int = "ema",
    ema_alpha: float = 0.0,
    window: int = 0,
    form: str | int = 0,
    bracket_allocation: str | int = 0,
    protect_late_bloomers: bool = False,
) -> study_pb2.SchedulerConfig:
    """A SchedulerConfig; zero means "the service's default" (see study.proto).
    ``form``: "stopping" or "promotion" (ASHA / Hyperband); ``bracket_allocation``:
    "hyperband" or "even"."""
    return study_pb2.SchedulerConfig(
        kind=_enum(SCHEDULER_KINDS, kind, "scheduler kind"),
        min_resource=min_resource,
        max_resource=max_resource,
        reduction_factor=reduction_factor,
        grace_period=grace_period,
        min_population=min_population,
        smoothing=_enum(SMOOTHINGS, smoothing, "smoothing"),
        ema_alpha=ema_alpha,
        window=window,
        form=_enum(ASHA_FORMS, form, "scheduler form"),
        bracket_allocation=_enum(BRACKET_ALLOCATIONS, bracket_allocation, "bracket allocation"),
        protect_late_bloomers=protect_late_bloomers,
    )


def study_config(
    space: Mapping[str, Mapping[str, Any]] | space_pb2.SearchSpace,
    *,
    name: str = "",
    metric: str = "val_loss",
    direction: str | int = "minimize",
    algorithm: str | int = "random",
    scheduler: Mapping[str, Any] | study_pb2.SchedulerConfig | None = None,
    max_trials: int = 0,
    seed: int = 0,
    dataset_id: str = "",
    code_commit: str = "",
    partitions: int = 0,
    labels: Mapping[str, str] | None = None,
    warm_start: Iterable[Mapping[str, Any]] = (),
    known_results: Iterable[tuple[Mapping[str, Any], float]] = (),
    warm_start_from: str = "",
    max_parallel_trials: int = 0,
    max_wall_clock_seconds: float = 0.0,
    max_trial_hours: float = 0.0,
    max_gpu_hours: float = 0.0,
    trial_resources: Mapping[str, Any] | study_pb2.TrialResources | None = None,
    priority: int = 0,
    stable_for_promoted: bool = False,
) -> study_pb2.StudyConfig:
    """A validated StudyConfig from plain values.

    ``scheduler`` takes :func:`scheduler_config`'s keyword arguments as a dict (e.g.
    ``{"kind": "asha", "max_resource": 27}``); without one the study has no early
    stopping. Zero values mean the defaults (``ladder.study.StudySpec``);
    ``max_trials``, ``max_parallel_trials`` and the budgets ``max_wall_clock_seconds``,
    ``max_trial_hours`` and ``max_gpu_hours`` (trial-hours times ``trial_resources``'
    GPUs; only for trials that declare GPUs) (0: unbounded; a spent budget stops the
    study) may change later (:meth:`LadderClient.update_study`).
    Warm start: ``warm_start`` configurations are handed out first; ``known_results``
    ((params, value) pairs) and the completed trials of study ``warm_start_from`` are
    observations the samplers learn from before the first trial.
    Scheduling (RequestWork, docs/tenancy.md): ``trial_resources`` what each trial
    needs on one node (``{"gpus": 8, "gpu_type": "a100", "cpu": 16, "memory_gb": 200}``;
    default 1 CPU, no GPU), ``priority`` among the tenant's studies (higher first, may
    preempt lower ones on spot nodes), ``stable_for_promoted`` (promoted trials only on
    non-spot nodes).
    Raises ``ValueError`` (``ladder.space.StudyConfigError``) naming the bad field.
    """
    if scheduler is None:
        sched = study_pb2.SchedulerConfig(kind=study_pb2.NONE)
    elif isinstance(scheduler, study_pb2.SchedulerConfig):
        sched = scheduler
    else:
        sched = scheduler_config(**scheduler)
    config = study_pb2.StudyConfig(
        name=name,
        space=search_space(space),
        direction=_enum(DIRECTIONS, direction, "direction"),
        metric=metric,
        algorithm=_enum(ALGORITHMS, algorithm, "algorithm"),
        scheduler=sched,
        max_trials=max_trials,
        max_parallel_trials=max_parallel_trials,
        max_wall_clock_seconds=max_wall_clock_seconds,
        max_trial_hours=max_trial_hours,
        max_gpu_hours=max_gpu_hours,
        seed=seed,
        dataset_id=dataset_id,
        code_commit=code_commit,
        partitions=partitions,
        labels=dict(labels or {}),
        priority=priority,
        stable_for_promoted=stable_for_promoted,
    )
    if trial_resources is not None:
        if isinstance(trial_resources, study_pb2.TrialResources):
            config.trial_resources.CopyFrom(trial_resources)
        else:
            config.trial_resources.CopyFrom(study_pb2.TrialResources(**trial_resources))
    config.warm_start.from_study_id = warm_start_from
    for params in warm_start:
        fill_params(config.warm_start.configurations.add().params, params)
    for params, value in known_results:
        known = config.warm_start.configurations.add(has_value=True, value=value)
        fill_params(known.params, params)
    # Same checks as CreateStudy, so mistakes show up before anything is sent.
    StudySpec.from_proto(config)
    return config


# --- the client ------------------------------------------------------------------------------


class _Endpoint:
    """One service's channel and stub, rebuilt when its address changes."""

    def __init__(self, field: str, stub_class: Callable[[grpc.Channel], Any]) -> None:
        self.field = field  # the Settings attribute holding the address
        self.stub_class = stub_class
        self.addr = ""
        self.channel: grpc.Channel | None = None
        self.stub: Any = None

    def connect(self, settings: Settings) -> grpc.Channel | None:
        """Point at the address ``settings`` give; the replaced channel, if any."""
        addr = getattr(settings, self.field)
        if addr == self.addr:
            return None
        old = self.channel
        self.addr = addr
        self.channel = channels.channel(addr, settings, _CHANNEL_OPTIONS)
        self.stub = self.stub_class(self.channel)
        return old


class LadderClient:
    """gRPC stubs for suggest / evaluate / lineage plus a Kafka producer for metrics.

    Thread-safe (gRPC channels and the Kafka producer are); a worker's heartbeat thread
    shares the client of its training loop. ``retry_timeout`` defaults to
    LADDER_CLIENT_RETRY_S, else 30 s. ``readdress`` (default: when ``settings`` is not
    given) re-reads the addresses while a call keeps failing.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        retry_timeout: float | None = None,
        producer_name: str = "worker",
        readdress: bool | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.call_timeout = call_timeout
        self.retry_timeout = default_retry_timeout() if retry_timeout is None else retry_timeout
        self.readdress = settings is None if readdress is None else readdress
        self._producer_name = producer_name
        # Instrument before any channel exists: only channels created afterwards get
        # client spans and carry the trace context to the services.
        telemetry.instrument_grpc_client()
        self._suggest = _Endpoint("suggest_addr", suggest_pb2_grpc.SuggestServiceStub)
        self._evaluate = _Endpoint("evaluate_addr", evaluate_pb2_grpc.EvaluateServiceStub)
        self._lineage = _Endpoint("lineage_addr", lineage_pb2_grpc.LineageServiceStub)
        self._endpoints = (self._suggest, self._evaluate, self._lineage)
        for endpoint in self._endpoints:
            endpoint.connect(self.settings)
        # Channels replaced by a new address: calls may still be under way on them, so
        # they are closed with the client, not when replaced.
        self._retired: list[grpc.Channel] = []
        self._readdress_lock = threading.Lock()
        self._readdressed_at = 0.0
        self._producer: Any = None  # created on the first metric report
        # Threads of one client (a node agent's trials) may send their first report at
        # once: one producer, else the other is never flushed nor closed.
        self._producer_lock = threading.Lock()

    # -- plumbing

    def _call(self, endpoint: _Endpoint, method: str, request: object, what: str) -> Any:
        return call_with_retry(
            lambda: getattr(endpoint.stub, method)(request, timeout=self.call_timeout),
            what,
            self.retry_timeout,
            on_retry=self._maybe_readdress,
        )

    def _maybe_readdress(self, failing_for: float) -> None:
        if not self.readdress or failing_for < READDRESS_AFTER:
            return
        with self._readdress_lock:
            now = time.monotonic()
            if now - self._readdressed_at < READDRESS_AFTER:
                return
            self._readdressed_at = now
            self.refresh_addresses()

    def refresh_addresses(self) -> list[str]:
        """Read the addresses again (env, else stack.json) and reconnect whatever moved;
        the names of the settings that changed."""
        fresh = Settings.from_env()
        changed = [
            e.field for e in self._endpoints if getattr(fresh, e.field) != e.addr
        ]
        for endpoint in self._endpoints:
            old = endpoint.connect(fresh)
            if old is not None:
                self._retired.append(old)
        if fresh.kafka_bootstrap != self.settings.kafka_bootstrap:
            changed.append("kafka_bootstrap")
            producer, self._producer = self._producer, None  # the next report makes one
            if producer is not None:
                producer.close()
        if changed:
            log.warning("addresses changed (%s); reconnected", ", ".join(changed))
        self.settings = fresh
        return changed

    @property
    def producer(self) -> Any:
        with self._producer_lock:
            if self._producer is None:
                from ladder.bus import EventProducer  # Kafka only when metrics are sent

                # A report waits for the broker as long as a call waits for a service:
                # a broker restart within the retry budget loses no metric point.
                self._producer = EventProducer(
                    self.settings,
                    self._producer_name,
                    delivery_timeout_s=max(30.0, self.retry_timeout),
                )
            return self._producer

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every metric report sent so far is acknowledged by the broker."""
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for channel in self._retired + [e.channel for e in self._endpoints if e.channel]:
            channel.close()

    def __enter__(self) -> LadderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- studies (suggest service)

    def create_study(
        self,
        config: study_pb2.StudyConfig | Mapping[str, Any],
        study_id: str | None = None,
    ) -> study_pb2.Study:
        """Create a study. ``config`` may be a StudyConfig or :func:`study_config`'s
        arguments as a dict. Repeating it with the same ``study_id`` and config returns
        the existing study (ALREADY_EXISTS when the configs differ)."""
        if not isinstance(config, study_pb2.StudyConfig):
            config = dict(config)
            config = study_config(config.pop("space"), **config)
        request = suggest_pb2.CreateStudyRequest(config=config, study_id=study_id or "")
        return self._call(self._suggest, "CreateStudy", request, "CreateStudy")

    def get_study(self, study_id: str) -> study_pb2.Study:
        return self._call(
            self._suggest, "GetStudy", suggest_pb2.GetStudyRequest(study_id=study_id), "GetStudy"
        )

    def list_studies(self) -> list[study_pb2.Study]:
        reply = self._call(
            self._suggest, "ListStudies", suggest_pb2.ListStudiesRequest(), "ListStudies"
        )
        return list(reply.studies)

    def stop_study(
        self, study_id: str, stop_running_trials: bool = False, reason: str = ""
    ) -> study_pb2.Study:
        """Hand out no new trials of the study: running trials finish (resumable ones
        may), or with ``stop_running_trials`` they are told to STOP and end PRUNED with
        ``reason``. Repeating it changes nothing. FAILED_PRECONDITION for a COMPLETED or
        CANCELLED study."""
        request = suggest_pb2.StopStudyRequest(
            study_id=study_id, stop_running_trials=stop_running_trials, reason=reason
        )
        return self._call(self._suggest, "StopStudy", request, "StopStudy")

    def resume_study(self, study_id: str) -> study_pb2.Study:
        """Undo :meth:`stop_study` or :meth:`pause_study`: Suggest hands out trials
        again, those the pause parked first."""
        request = suggest_pb2.ResumeStudyRequest(study_id=study_id)
        return self._call(self._suggest, "ResumeStudy", request, "ResumeStudy")

    def pause_study(self, study_id: str) -> study_pb2.Study:
        """Hand out nothing (not even resumable trials); running trials checkpoint and
        wait PAUSED until :meth:`resume_study`."""
        request = suggest_pb2.PauseStudyRequest(study_id=study_id)
        return self._call(self._suggest, "PauseStudy", request, "PauseStudy")

    def cancel_study(self, study_id: str, reason: str = "") -> study_pb2.Study:
        """End the study for good (CANCELLED): no trial is handed out, every unfinished
        one is stopped with ``reason``."""
        request = suggest_pb2.CancelStudyRequest(study_id=study_id, reason=reason)
        return self._call(self._suggest, "CancelStudy", request, "CancelStudy")

    def update_study(
        self, study_id: str, max_trials: int | None = None,
        max_parallel_trials: int | None = None,
        max_wall_clock_seconds: float | None = None,
        max_trial_hours: float | None = None,
        max_gpu_hours: float | None = None,
    ) -> study_pb2.Study:
        """Change the running study's budgets and / or parallelism (None: unchanged; 0:
        unbounded). INVALID_ARGUMENT for a budget below the trials already handed out,
        or a max_gpu_hours on a study whose trials declare no GPUs."""
        request = suggest_pb2.UpdateStudyRequest(
            study_id=study_id, max_trials=max_trials, max_parallel_trials=max_parallel_trials,
            max_wall_clock_seconds=max_wall_clock_seconds, max_trial_hours=max_trial_hours,
            max_gpu_hours=max_gpu_hours,
        )
        return self._call(self._suggest, "UpdateStudy", request, "UpdateStudy")

    def suggest(
        self,
        study_id: str,
        worker_id: str,
        count: int = 1,
        start: evaluate_pb2.StartTrialRequest | None = None,
    ) -> list[suggest_pb2.Suggestion]:
        """Trials to run: a resumable one (lease expired) first, else new ones.

        With ``start`` (StartTrial's fields but the trial: an attempt id, the hostname,
        the run environment; count 1) the suggestion is started in the same call, one
        round trip instead of two: its ``started`` is what :meth:`start_trial` would
        have answered. A suggestion without ``started`` (an older server, or the trial
        was taken meanwhile) is started with :meth:`start_trial` as before.

        Raises :class:`BudgetExhausted` when the study hands out no more trials (its
        budget is spent, or it is stopped or cancelled: the message says which); its
        :class:`StudyPaused` while the study is paused (a worker waits for the resume).
        """
        request = suggest_pb2.SuggestRequest(
            study_id=study_id, worker_id=worker_id, count=count, start=start
        )
        try:
            reply = self._call(self._suggest, "Suggest", request, "Suggest")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                details = exc.details() or "budget exhausted"
                if lifecycle.paused_refusal(details):
                    raise errors.StudyPaused(None, details) from exc
                raise BudgetExhausted(None, details) from exc
            raise
        return list(reply.suggestions)

    def request_work(
        self, node: suggest_pb2.NodeOffer, worker_id: str = ""
    ) -> suggest_pb2.RequestWorkResponse:
        """A node agent's request: trials of any tenant's studies that the scheduler
        places on ``node``'s free resources, and the trials running there to pause
        (admin token, or auth off)."""
        request = suggest_pb2.RequestWorkRequest(node=node, worker_id=worker_id)
        return self._call(self._suggest, "RequestWork", request, "RequestWork")

    # -- the trial lifecycle (evaluate service)

    def start_trial(
        self,
        trial_id: str,
        worker_id: str,
        attempt_id: str,
        hostname: str = "",
        environment: str = "",
        run_environment: trial_pb2.RunEnvironment | None = None,
    ) -> evaluate_pb2.StartTrialResponse:
        """Start an attempt; ``run_environment`` (``ladder.runenv.capture``) is what
        lineage records of it."""
        request = evaluate_pb2.StartTrialRequest(
            trial_id=trial_id, worker_id=worker_id, attempt_id=attempt_id,
            hostname=hostname, environment=environment, run_environment=run_environment,
        )
        return self._call(self._evaluate, "StartTrial", request, "StartTrial")

    def heartbeat(
        self, trial_id: str, attempt_id: str, step: float
    ) -> evaluate_pb2.HeartbeatResponse:
        """Renew the lease; the reply's ``action`` is CONTINUE, STOP or PROMOTE."""
        request = evaluate_pb2.HeartbeatRequest(trial_id=trial_id, attempt_id=attempt_id,
                                                step=step)
        return self._call(self._evaluate, "Heartbeat", request, "Heartbeat")

    def checkpoint(
        self,
        trial_id: str,
        attempt_id: str,
        uri: str,
        step: float,
        save_seconds: float = 0.0,
        train_seconds: float = 0.0,
    ) -> trial_pb2.Trial:
        """Record the checkpoint ``uri`` of ``step`` (the next attempt resumes after it).
        ``save_seconds``: what writing and uploading it took; ``train_seconds``: training
        since this attempt's previous checkpoint (or its start): the trial's overhead."""
        request = evaluate_pb2.ReportCheckpointRequest(
            trial_id=trial_id, attempt_id=attempt_id, uri=uri, step=step,
            save_seconds=save_seconds, train_seconds=train_seconds,
        )
        return self._call(self._evaluate, "ReportCheckpoint", request, "ReportCheckpoint")

    def complete(self, trial_id: str, attempt_id: str, value: float, step: float
                 ) -> trial_pb2.Trial:
        request = evaluate_pb2.CompleteTrialRequest(
            trial_id=trial_id, attempt_id=attempt_id, value=value, step=step
        )
        return self._call(self._evaluate, "CompleteTrial", request, "CompleteTrial")

    def prune(self, trial_id: str, attempt_id: str, step: float, last_value: float
              ) -> trial_pb2.Trial:
        """Record that this attempt obeyed a STOP."""
        request = evaluate_pb2.PruneTrialRequest(
            trial_id=trial_id, attempt_id=attempt_id, step=step, last_value=last_value
        )
        return self._call(self._evaluate, "PruneTrial", request, "PruneTrial")

    def pause(self, trial_id: str, attempt_id: str, step: float, rung: int
              ) -> trial_pb2.Trial:
        """Record that this attempt obeyed a PAUSE (ASHA promotion form) after
        checkpointing ``step``; the trial waits PAUSED until promoted."""
        request = evaluate_pb2.PauseTrialRequest(
            trial_id=trial_id, attempt_id=attempt_id, step=step, rung=rung
        )
        return self._call(self._evaluate, "PauseTrial", request, "PauseTrial")

    def fail(
        self,
        trial_id: str,
        attempt_id: str,
        reason: str,
        retryable: bool | None = None,
        kind: failures.FailureKind = 0,
    ) -> trial_pb2.Trial:
        """End the attempt as failed. ``kind`` (``ladder.failures``: INFRASTRUCTURE,
        USER_ERROR, DIVERGED, OUT_OF_MEMORY, TIMEOUT, PREEMPTED) decides what the trial
        becomes; ``retryable`` is what servers that predate kinds read (default: whether
        the kind is retried; True without a kind)."""
        if retryable is None:
            retryable = (
                failures.disposition(kind, OomPolicy.RETRY_ONCE, False).retry if kind else True
            )
        request = evaluate_pb2.FailTrialRequest(
            trial_id=trial_id, attempt_id=attempt_id, reason=reason, retryable=retryable,
            kind=kind,
        )
        return self._call(self._evaluate, "FailTrial", request, "FailTrial")

    def get_trial(self, trial_id: str) -> trial_pb2.Trial:
        return self._call(
            self._evaluate, "GetTrial", evaluate_pb2.GetTrialRequest(trial_id=trial_id), "GetTrial"
        )

    def stop_trial(self, trial_id: str, reason: str) -> trial_pb2.Trial:
        """An operator's stop: a running trial's next heartbeat answers STOP, any other
        unfinished one is PRUNED now; ``reason`` is recorded (``Trial.stop_reason``,
        lineage)."""
        request = evaluate_pb2.StopTrialRequest(trial_id=trial_id, reason=reason)
        return self._call(self._evaluate, "StopTrial", request, "StopTrial")

    # -- metrics (Kafka)

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
    ) -> events_pb2.MetricReport:
        """Produce a MetricReport to the metrics topic, keyed by trial id.

        Asynchronous unless ``wait``; :meth:`flush` waits for everything sent so far.
        A NaN or infinite ``value`` tells early stopping that the run diverged; a field
        over its limit (``ladder.limits``) raises ``InvalidArgument`` before anything
        is sent.
        """
        report = events_pb2.MetricReport(
            study_id=study_id, trial_id=trial_id, attempt_id=attempt_id, worker_id=worker_id,
            metric=metric, step=step, value=value, ts_ms=int(time.time() * 1000),
        )
        limits.check(report)  # a record over the broker's size could never be delivered
        self.producer.send(self.settings.topics.metrics, trial_id, report, wait=wait)
        return report

    # -- lineage queries

    def lineage(self, trial_id: str) -> lineage_pb2.TrialLineage:
        request = lineage_pb2.GetTrialLineageRequest(trial_id=trial_id)
        return self._call(self._lineage, "GetTrialLineage", request, "GetTrialLineage")

    def list_trials(self, study_id: str) -> list[lineage_pb2.TrialSummary]:
        request = lineage_pb2.ListTrialsRequest(study_id=study_id)
        return list(self._call(self._lineage, "ListTrials", request, "ListTrials").trials)

    def best(self, study_id: str) -> lineage_pb2.TrialLineage | None:
        """The best completed trial's lineage, or None while there is none."""
        request = lineage_pb2.GetBestTrialRequest(study_id=study_id)
        try:
            return self._call(self._lineage, "GetBestTrial", request, "GetBestTrial")
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                return None
            raise

    def recommended(
        self, study_id: str, study: study_pb2.Study | None = None
    ) -> lineage_pb2.TrialLineage | None:
        """The completed trial whose posterior mean, under a GP fitted here to every
        completed trial's final value, is best (``ladder.samplers.recommend``: on a
        noisy metric the best observed value rewards a lucky draw); None while no trial
        has completed. ``study``: its record when the caller has just read it."""
        from ladder.params import params_to_dict
        from ladder.samplers.base import Observation
        from ladder.samplers.recommend import best_by_posterior_mean
        from ladder.space import Space

        study = study or self.get_study(study_id)
        try:
            summaries = self.list_trials(study_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # lineage has not seen it yet
                return None
            raise
        completed = [
            Observation(s.trial_id, params_to_dict(s.params), s.final_value)
            for s in summaries
            if s.state == "COMPLETED" and s.has_final_value
        ]
        if not completed:
            return None
        maximize = study.config.direction == study_pb2.MAXIMIZE
        pick = best_by_posterior_mean(Space.from_proto(study.config.space), completed, maximize)
        return self.lineage(pick.trial_id)

    def summary(self, study_id: str) -> lineage_pb2.StudySummary:
        request = lineage_pb2.GetStudySummaryRequest(study_id=study_id)
        return self._call(self._lineage, "GetStudySummary", request, "GetStudySummary")


def wait_until(
    condition: Callable[[], T], timeout: float, every: float = 0.2
) -> T | None:
    """Poll ``condition`` until it returns something truthy; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)
