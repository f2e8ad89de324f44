"""Size limits: every field of every request and event has one, each trips with
InvalidArgument naming the field, the gRPC edge refuses before any handler runs, and
a request that passes yields events that fit in one broker record."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from ladder import limits
from ladder.errors import InvalidArgument
from ladder.grpcserver import ServiceHost
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    lineage_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    trial_pb2,
)

# Four bytes in UTF-8: the largest string of n characters.
WIDE = "\U0001f600"


def _requests() -> Iterator[Descriptor]:
    for module in (suggest_pb2, evaluate_pb2, lineage_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield method.input_type


EVENTS = [events_pb2.MetricReport, events_pb2.RungCrossing, events_pb2.Decision,
          events_pb2.TrialEvent, events_pb2.StudyEvent, events_pb2.DeadLetter]


def test_every_field_of_every_request_and_event_has_a_rule_of_its_own() -> None:
    descriptors = [*_requests(), *(cls.DESCRIPTOR for cls in EVENTS)]
    fields = [(d.name, path, field) for d in descriptors
              for path, field in limits.limited_fields(d)]
    assert len(fields) > 50  # the walk reaches nested configs, params and maps
    unruled = [f"{name}.{path}" for name, path, field in fields if limits.rule(field) is None]
    assert unruled == []


def _param(name: str = "p", choices: list[str] | None = None) -> space_pb2.Parameter:
    return space_pb2.Parameter(
        name=name, categorical=space_pb2.Categorical(choices=choices or ["a", "b"])
    )


def _create(
    parameters: list[space_pb2.Parameter] | None = None, **config: object
) -> suggest_pb2.CreateStudyRequest:
    config.setdefault("metric", "loss")
    space = space_pb2.SearchSpace(parameters=parameters or [_param()])
    return suggest_pb2.CreateStudyRequest(config=study_pb2.StudyConfig(space=space, **config))


def _known(**params: space_pb2.ParamValue) -> study_pb2.KnownConfiguration:
    return study_pb2.KnownConfiguration(params=params)


# (message just over one limit, the field named, the limit named)
OVER: list[tuple[str, Callable[[], Message], str, int]] = [
    ("fail reason", lambda: evaluate_pb2.FailTrialRequest(trial_id="t", reason="x" * 4097),
     "reason: 4097 characters", limits.REASON),
    ("trial id", lambda: evaluate_pb2.HeartbeatRequest(trial_id="t" * 129),
     "trial_id: 129 characters", limits.ID),
    ("worker id", lambda: suggest_pb2.SuggestRequest(study_id="s", worker_id="w" * 129),
     "worker_id: 129 characters", limits.ID),
    ("checkpoint uri", lambda: evaluate_pb2.ReportCheckpointRequest(uri="s3://" + "u" * 2044),
     "uri: 2049 characters", limits.URI),
    ("hostname", lambda: evaluate_pb2.StartTrialRequest(hostname=WIDE * 257),
     "hostname: 257 characters", limits.NAME),
    ("environment", lambda: evaluate_pb2.StartTrialRequest(environment="e" * 1025),
     "environment: 1025 characters", limits.TEXT),
    ("lineage study id", lambda: lineage_pb2.ListTrialsRequest(study_id="s" * 129),
     "study_id: 129 characters", limits.ID),
    ("study name", lambda: _create(name="n" * 257),
     "config.name: 257 characters", limits.NAME),
    ("metric", lambda: _create(metric="m" * 257), "config.metric: 257 characters", limits.NAME),
    ("dataset", lambda: _create(dataset_id="d" * 1025),
     "config.dataset_id: 1025 characters", limits.TEXT),
    ("parameter count", lambda: _create(parameters=[_param(f"p{i}") for i in range(129)]),
     "config.space.parameters: 129 entries", limits.PARAMETERS),
    ("parameter name", lambda: _create(parameters=[_param("p" * 257)]),
     "config.space.parameters[0].name: 257 characters", limits.NAME),
    ("choice count", lambda: _create(parameters=[_param(choices=[str(i) for i in range(1025)])]),
     "config.space.parameters[0].categorical.choices: 1025 entries", limits.CHOICES),
    ("choice text", lambda: _create(parameters=[_param(choices=["a", "c" * 257])]),
     "config.space.parameters[0].categorical.choices[1]: 257 characters", limits.NAME),
    ("ordinal values", lambda: _create(parameters=[space_pb2.Parameter(
        name="o", ordinal=space_pb2.Ordinal(values=range(1025)))]),
     "config.space.parameters[0].ordinal.values: 1025 entries", limits.CHOICES),
    ("parent values", lambda: _create(parameters=[space_pb2.Parameter(
        name="c", float_range=space_pb2.FloatRange(high=1),
        condition=space_pb2.Condition(parent="p", parent_values=["v" * 257]))]),
     "config.space.parameters[0].condition.parent_values[0]: 257 characters", limits.NAME),
    ("label count", lambda: _create(labels={f"k{i}": "v" for i in range(65)}),
     "config.labels: 65 entries", limits.LABELS),
    ("label key", lambda: _create(labels={"k" * 257: "v"}),
     "config.labels key 'kkk", limits.NAME),
    ("label value", lambda: _create(labels={"team": "v" * 1025}),
     "config.labels['team']: 1025 characters", limits.TEXT),
    ("known configurations", lambda: _create(warm_start=study_pb2.WarmStart(
        configurations=[_known()] * 1001)),
     "config.warm_start.configurations: 1001 entries", limits.KNOWN_CONFIGURATIONS),
    ("known value text", lambda: _create(warm_start=study_pb2.WarmStart(
        configurations=[_known(p=space_pb2.ParamValue(str_value="s" * 257))])),
     "config.warm_start.configurations[0].params['p'].str_value: 257 characters", limits.NAME),
    ("warm-start source", lambda: _create(warm_start=study_pb2.WarmStart(
        from_study_id="s" * 129)), "config.warm_start.from_study_id: 129", limits.ID),
    ("whole config", lambda: _create(
        parameters=[_param(f"p{i}", [f"{i}-{j}-" + "c" * 240 for j in range(10)])
                    for i in range(120)]),
     "config: ", limits.STUDY_CONFIG_BYTES),
    ("dead-letter payload", lambda: events_pb2.DeadLetter(payload=b"\0" * (64 * 1024 + 1)),
     "payload: 65537 bytes", limits.DEAD_LETTER_PAYLOAD),
    ("metric report", lambda: events_pb2.MetricReport(metric="m" * 257),
     "metric: 257 characters", limits.NAME),
]


@pytest.mark.parametrize(("make", "named", "limit"), [case[1:] for case in OVER],
                         ids=[case[0] for case in OVER])
def test_each_limit_trips_naming_the_field_and_the_limit(
    make: Callable[[], Message], named: str, limit: int
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        limits.check(make())
    message = str(refused.value)
    assert message.startswith(named) and message.endswith(f"at most {limit}")


def test_a_request_at_every_limit_passes() -> None:
    limits.check(evaluate_pb2.FailTrialRequest(trial_id="t" * 128, reason=WIDE * 4096))
    limits.check(_create(
        name="n" * 256,
        parameters=[_param(f"p{i}", ["a", "c" * 256]) for i in range(128)],
        labels={f"k{i:0>253}": "v" * 1024 for i in range(64)},
    ))
    limits.check(b"not a message")  # raw-bytes handlers have nothing to check


def _largest_trial_event() -> events_pb2.TrialEvent:
    """A trial event with every field a request fills at its limit, in 4-byte characters."""
    trial = trial_pb2.Trial(
        trial_id=WIDE * limits.ID, study_id=WIDE * limits.ID, attempt_id=WIDE * limits.ID,
        worker_id=WIDE * limits.ID, checkpoint_uri=WIDE * limits.URI,
        params={f"{i:0>3}" + WIDE * (limits.NAME - 3): space_pb2.ParamValue(
            str_value=WIDE * limits.NAME) for i in range(limits.PARAMETERS)},
    )
    return events_pb2.TrialEvent(
        trial=trial, reason=WIDE * limits.REASON, algorithm=WIDE * limits.NAME,
        hostname=WIDE * limits.NAME, environment=WIDE * limits.TEXT,
    )


def _largest_study_event() -> events_pb2.StudyEvent:
    """A study whose config is as large as a CreateStudy may send, defaults filled."""
    config = study_pb2.StudyConfig(metric="loss")
    config.space.parameters.append(_param("p", ["c"]))
    choices = config.space.parameters[0].categorical.choices
    while config.ByteSize() < limits.STUDY_CONFIG_BYTES - limits.NAME * 4 - 8:
        choices.append(WIDE * limits.NAME)
    limits.check(config)
    config.scheduler.CopyFrom(study_pb2.SchedulerConfig(
        kind=study_pb2.ASHA, min_resource=1, max_resource=81, reduction_factor=3,
        grace_period=1, min_population=3, smoothing=study_pb2.EMA, ema_alpha=0.5, window=3))
    return events_pb2.StudyEvent(
        study=study_pb2.Study(study_id=WIDE * limits.ID, config=config, state=1,
                              created_unix_ms=2**62, trials_suggested=2**62), ts_ms=2**62)


LARGEST_EVENTS: list[tuple[str, Callable[[], Message]]] = [
    ("trial event", _largest_trial_event),
    ("study event", _largest_study_event),
    ("metric report", lambda: events_pb2.MetricReport(
        study_id=WIDE * limits.ID, trial_id=WIDE * limits.ID, attempt_id=WIDE * limits.ID,
        worker_id=WIDE * limits.ID, metric=WIDE * limits.NAME, step=1, value=1, ts_ms=2**62)),
    ("decision", lambda: events_pb2.Decision(
        study_id=WIDE * limits.ID, trial_id=WIDE * limits.ID, reason=WIDE * limits.REASON,
        scheduler=WIDE * limits.NAME, action=events_pb2.STOP, rung=2**30, ts_ms=2**62)),
    ("dead letter", lambda: events_pb2.DeadLetter(
        source_topic=WIDE * limits.NAME, reason=WIDE * limits.REASON,
        payload=b"\xff" * limits.DEAD_LETTER_PAYLOAD, service=WIDE * limits.NAME)),
]


@pytest.mark.parametrize("make", [make for _, make in LARGEST_EVENTS],
                         ids=[name for name, _ in LARGEST_EVENTS])
def test_the_largest_event_requests_allow_fits_in_one_broker_record(
    make: Callable[[], Message],
) -> None:
    event = make()
    limits.check(event)
    # Room left for the key, headers (traceparent) and the record's framing.
    assert event.ByteSize() < limits.BROKER_RECORD_BYTES - 16 * 1024


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, list[object]]]:
    """A real ServiceHost with one FailTrial-shaped method recording what reached it."""
    reached: list[object] = []

    def fail(request: evaluate_pb2.FailTrialRequest, context: object) -> trial_pb2.Trial:
        reached.append(request)
        return trial_pb2.Trial(trial_id=request.trial_id)

    host = ServiceHost("test.Limits", 0, workers=2)
    host.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Limits", {"Fail": grpc.unary_unary_rpc_method_handler(
            fail,
            request_deserializer=evaluate_pb2.FailTrialRequest.FromString,
            response_serializer=trial_pb2.Trial.SerializeToString,
        )}),))
    host.server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield channel, reached
    finally:
        channel.close()
        host.server.stop(0).wait()


def _fail(channel: grpc.Channel, reason: str) -> object:
    call = channel.unary_unary(
        "/test.Limits/Fail",
        request_serializer=evaluate_pb2.FailTrialRequest.SerializeToString,
        response_deserializer=trial_pb2.Trial.FromString,
    )
    return call(evaluate_pb2.FailTrialRequest(trial_id="t1", reason=reason), timeout=10)


def test_the_edge_refuses_an_oversize_field_before_the_handler_runs(
    served: tuple[grpc.Channel, list[object]],
) -> None:
    channel, reached = served
    with pytest.raises(grpc.RpcError) as refused:
        _fail(channel, "r" * (2 * 1024 * 1024))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "reason: 2097152 characters, at most 4096"
    assert reached == []
    _fail(channel, "r" * limits.REASON)
    assert len(reached) == 1


def test_a_request_over_the_servers_message_size_is_resource_exhausted(
    served: tuple[grpc.Channel, list[object]],
) -> None:
    channel, reached = served
    with pytest.raises(grpc.RpcError) as refused:
        _fail(channel, "r" * (limits.MAX_REQUEST_BYTES + 1))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reached == []
