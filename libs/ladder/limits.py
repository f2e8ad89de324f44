"""Hard size limits on every string, bytes and repeated field of every gRPC request
and every event Ladder produces, and the one checker that enforces them.

``check(message)`` walks a protobuf message by its descriptor and raises
``ladder.errors.InvalidArgument`` naming the first field over its limit (``reason:
2097152 characters, at most 4096``). The gRPC edge (``ladder.grpcserver``) runs it on
every request before the handler, so nothing oversize is ever stored, and a request
that passes yields events that fit in one broker record (``BROKER_RECORD_BYTES``):
a trial's event copies its reason, URI, hostname and params from requests that
passed; a study's event carries a config under ``STUDY_CONFIG_BYTES``.

A field's limit is looked up by its full name (``ladder.v1.FailTrialRequest.reason``,
a per-field override) and then by its plain name (``reason``); a field with neither
gets ``DEFAULT_TEXT`` / ``DEFAULT_COUNT`` so no field is ever unbounded
(``tests/unit/test_size_limits.py`` checks that every field of every request and event
has a rule of its own). Strings count characters, bytes count bytes; a repeated
field or map has a count limit and a limit per element (map keys too).

| fields (by plain name, in any message)                           | limit               |
|------------------------------------------------------------------|---------------------|
| ids: study_id, trial_id, attempt_id, worker_id, from_study_id,   | 128 chars (`ID`)    |
| ended_attempt_id, tenant, node_id                                |                     |
| name, metric, parent, scheduler, algorithm, hostname,            | 256 chars (`NAME`)  |
| code_commit, source_topic, service, gpu_type                     |                     |
| dataset_id, environment, entry_point                             | 1024 chars (`TEXT`) |
| reason (FailTrial, trial events, decisions, dead letters)        | 4096 chars          |
| stop_reason, state_reason; the reason of StopTrial, StopStudy,   | 1024 chars (`TEXT`) |
|   CancelStudy                                                    |                     |
|   (it is quoted inside event reasons, which must stay in theirs) |                     |
| uri, checkpoint_uri                                              | 2048 chars          |
| space.parameters; params (of a trial, of a known configuration)  | 128; keys 256 chars |
| categorical.choices, condition.parent_values                     | 1024; each 256 chars|
| ordinal.values                                                   | 1024                |
| str_value (a categorical parameter's value)                      | 256 chars           |
| labels                                                           | 64; key 256, value 1024 chars |
| warm_start.configurations                                        | 1000                |
| payload (of a dead letter)                                       | 64 KiB              |
| packages (of a run environment: "name==version")                 | 2048; each 128 chars|
| python, os, cpu_model, gpu_model, packages_hash                  | 256 chars (`NAME`)  |
| a whole StudyConfig, serialized                                  | 256 KiB             |

Beyond what the fields allow, the servers refuse a request over
``MAX_REQUEST_BYTES`` (4 MiB) before decoding it (RESOURCE_EXHAUSTED); it is well above
the largest valid request, so an oversize field up to there gets the precise
INVALID_ARGUMENT naming it. Answers may reach ``MAX_RESPONSE_BYTES`` (64 MiB: a
``ListTrials`` of a study with many trials); the SDK's channels use the same pair.

Pure code (no I/O).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ladder.errors import InvalidArgument

ID = 128
NAME = 256
TEXT = 1024
REASON = 4096
URI = 2048
PARAMETERS = 128
CHOICES = 1024
LABELS = 64
KNOWN_CONFIGURATIONS = 1000
PACKAGES = 2048
PACKAGE = 128
DEAD_LETTER_PAYLOAD = 64 * 1024
STUDY_CONFIG_BYTES = 256 * 1024
DEFAULT_TEXT = TEXT
DEFAULT_COUNT = CHOICES

# gRPC message sizes of every Ladder server and the SDK's channels.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# librdkafka's default message.max.bytes, which every Ladder producer keeps (a Kafka
# broker's default, 1048588, is larger): the most one event record may hold.
BROKER_RECORD_BYTES = 1_000_000


@dataclass(frozen=True)
class Limit:
    """The limit of one field: ``size`` per element (characters of a string, bytes
    of bytes), ``count`` of entries of a repeated field or map, ``key`` per map key."""

    size: int | None = None
    count: int | None = None
    key: int | None = None


# By plain field name, then overridden by full name (``ladder.v1.Message.field``).
RULES: Mapping[str, Limit] = {
    **{f: Limit(size=ID) for f in ("study_id", "trial_id", "attempt_id", "worker_id",
                                    "from_study_id", "ended_attempt_id", "tenant",
                                    "node_id")},
    **{f: Limit(size=NAME) for f in ("name", "metric", "parent", "scheduler", "algorithm",
                                      "hostname", "code_commit", "source_topic", "service",
                                      "python", "os", "cpu_model", "gpu_model",
                                      "packages_hash", "gpu_type")},
    "dataset_id": Limit(size=TEXT),
    "environment": Limit(size=TEXT),
    "entry_point": Limit(size=TEXT),
    "reason": Limit(size=REASON),
    "stop_reason": Limit(size=TEXT),
    "state_reason": Limit(size=TEXT),
    **{f"ladder.v1.{m}.reason": Limit(size=TEXT)
       for m in ("StopTrialRequest", "StopStudyRequest", "CancelStudyRequest")},
    "uri": Limit(size=URI),
    "checkpoint_uri": Limit(size=URI),
    "parameters": Limit(count=PARAMETERS),
    "params": Limit(count=PARAMETERS, key=NAME),
    "choices": Limit(count=CHOICES, size=NAME),
    "values": Limit(count=CHOICES),
    "parent_values": Limit(count=CHOICES, size=NAME),
    "str_value": Limit(size=NAME),
    "labels": Limit(count=LABELS, key=NAME, size=TEXT),
    "configurations": Limit(count=KNOWN_CONFIGURATIONS),
    "payload": Limit(size=DEAD_LETTER_PAYLOAD),
    "packages": Limit(count=PACKAGES, size=PACKAGE),
}

# Whole messages whose serialized size is bounded: the product of their field limits
# would allow far more than one broker record.
MESSAGE_BYTES: Mapping[str, int] = {"ladder.v1.StudyConfig": STUDY_CONFIG_BYTES}

_DEFAULT = Limit(size=DEFAULT_TEXT, count=DEFAULT_COUNT, key=DEFAULT_TEXT)


def rule(field: FieldDescriptor) -> Limit | None:
    """The field's own rule (override, then plain name); None when it has none."""
    return RULES.get(field.full_name) or RULES.get(field.name)


def _limit(field: FieldDescriptor) -> Limit:
    return rule(field) or _DEFAULT


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` on newer protobuf; ``label`` is deprecated there.
    flag = getattr(field, "is_repeated", None)
    return flag if isinstance(flag, bool) else field.label == FieldDescriptor.LABEL_REPEATED


def _too_long(path: str, value: str | bytes, limit: int | None) -> None:
    if limit is not None and len(value) > limit:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        raise InvalidArgument(f"{path}: {len(value)} {unit}, at most {limit}")


def check(message: object, path: str = "") -> None:
    """Raise InvalidArgument naming the first field of ``message`` (a protobuf
    message; anything else passes) over its limit; ``path`` prefixes the names."""
    if isinstance(message, Message):
        _check(message, path)


@functools.cache
def _plan(descriptor: Descriptor) -> Mapping[int, tuple[Limit, bool, bool]]:
    """Per field number: its limit, whether it is a map, whether it is repeated. Cached
    per message type: the check runs on every request and every metric report."""
    return {f.number: (_limit(f), _is_map(f), _repeated(f)) for f in descriptor.fields}


def _check(message: Message, path: str) -> None:
    plan = _plan(message.DESCRIPTOR)
    for field, value in message.ListFields():
        limit, is_map, repeated = plan[field.number]
        if is_map:
            _check_map(field, value, _path(path, field), limit)
        elif repeated:
            if limit.count is not None and len(value) > limit.count:
                where = _path(path, field)
                raise InvalidArgument(f"{where}: {len(value)} entries, at most {limit.count}")
            for i, item in enumerate(value):
                _check_value(field, item, f"{_path(path, field)}[{i}]", limit)
        elif isinstance(value, Message):
            _check(value, _path(path, field))
        elif isinstance(value, str | bytes) and limit.size is not None:
            if len(value) > limit.size:
                _too_long(_path(path, field), value, limit.size)
    # After the fields, so a single oversize field is the one named.
    cap = MESSAGE_BYTES.get(message.DESCRIPTOR.full_name)
    if cap is not None:
        size = message.ByteSize()
        if size > cap:
            raise InvalidArgument(f"{path or message.DESCRIPTOR.name}: {size} bytes, at most {cap}")


def _path(path: str, field: FieldDescriptor) -> str:
    return f"{path}.{field.name}" if path else field.name


def _check_map(field: FieldDescriptor, value: Mapping, where: str, limit: Limit) -> None:
    if limit.count is not None and len(value) > limit.count:
        raise InvalidArgument(f"{where}: {len(value)} entries, at most {limit.count}")
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if isinstance(key, str):
            _too_long(f"{where} key {_shown(key)}", key, limit.key)
        _check_value(value_field, item, f"{where}[{_shown(key)}]", limit)


def _check_value(field: FieldDescriptor, value: object, where: str, limit: Limit) -> None:
    if isinstance(value, Message):
        _check(value, where)
    elif isinstance(value, str | bytes):
        _too_long(where, value, limit.size)


def _shown(key: object) -> str:
    """A map key as a message quotes it: at most 40 characters of it."""
    text = repr(key)
    return text if len(text) <= 40 else f"{text[:37]}..."


def limited_fields(descriptor: Descriptor) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every string, bytes, repeated or map field reachable from ``descriptor``, with
    its path (``config.space.parameters.name``): the fields a limit must cover."""
    yield from _walk(descriptor, "", frozenset())


def _walk(
    descriptor: Descriptor, path: str, seen: frozenset[str]
) -> Iterator[tuple[str, FieldDescriptor]]:
    if descriptor.full_name in seen:
        return
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        where = f"{path}.{field.name}" if path else field.name
        if _is_map(field):
            yield where, field
            value = field.message_type.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _walk(value.message_type, where, seen)
            continue
        if _repeated(field) or field.type in (FieldDescriptor.TYPE_STRING,
                                              FieldDescriptor.TYPE_BYTES):
            yield where, field
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _walk(field.message_type, where, seen)
