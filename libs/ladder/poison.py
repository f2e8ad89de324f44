"""Poison records: what every consumer does with a record it failed to handle (the
librdkafka ``ladder.bus.ConsumerLoop`` and the Faust stages of early-stop alike), and
the records early-stop sets aside while their study is unknown.

A dead letter's payload and reason are capped by ``ladder.bus.dead_letter_record``.
A failure is one of three kinds (``classify``):

- ``BadRecord`` and the errors a retry cannot change (a value out of range for its
  protobuf field, a number too large for a float, text that is not UTF-8, a record
  too large or malformed for the broker): the record goes to dead-letter at once;
- an outage (the broker or Redis away, a timeout, any other Kafka error, Redis out of
  memory, loading, busy with a script or without a master): retried with back-off
  for as long as it lasts, since skipping would lose a good record;
- anything else (a bug met by one record): tried ``PoisonPolicy.max_attempts`` times,
  then dead-lettered, so one record never holds its partition for ever.
"""

from __future__ import annotations

import enum
import heapq
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import confluent_kafka
import redis
from aiokafka import errors as kafka_errors

from ladder import errors
from ladder.codec import BadRecord

# Failures that say a dependency is away, not that the record is bad: the record is
# retried until it is back, never dropped.
OUTAGES: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # includes BusyLoadingError: LOADING, a restart reading its data
    redis.TimeoutError,
    redis.ReadOnlyError,  # a replica while a failover promotes it
    redis.exceptions.OutOfMemoryError,  # OOM: maxmemory reached, until memory is freed
    redis.exceptions.ClusterDownError,  # includes MasterDownError: MASTERDOWN
    redis.exceptions.TryAgainError,
    errors.Unavailable,
    confluent_kafka.KafkaException,  # but not the record-specific codes below
    ConnectionError,
    TimeoutError,  # SendResult.get: the broker did not acknowledge in time
    BufferError,
)

# Redis error codes that say the server cannot serve now, as the message of a plain
# ResponseError: BUSY (a script running past its time limit) has no class of its own,
# and a Lua script's redis.call failing with one comes back as "... -OOM command ...".
_REDIS_BUSY = re.compile(r"(?:^|-)(?:OOM|BUSY|LOADING|MASTERDOWN) ")

# librdkafka errors that a retry of the same record cannot change: the record (or what
# the handler made of it) is too large or malformed for the broker. Matched by code,
# since confluent-kafka's delivery reports do not set KafkaError.retriable(): a
# timed-out record and an oversize one alike say False there.
_KAFKA_RECORD_ERRORS = frozenset(
    {
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        confluent_kafka.KafkaError.INVALID_MSG,
        confluent_kafka.KafkaError.INVALID_MSG_SIZE,
        confluent_kafka.KafkaError.INVALID_RECORD,
        confluent_kafka.KafkaError.INVALID_TIMESTAMP,
        confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
        confluent_kafka.KafkaError._BAD_MSG,
        confluent_kafka.KafkaError._INVALID_ARG,
        confluent_kafka.KafkaError._KEY_SERIALIZATION,
        confluent_kafka.KafkaError._VALUE_SERIALIZATION,
    }
)


def _kafka_record_error(exc: BaseException) -> bool:
    """A confluent-kafka error about the record itself, not about the broker."""
    if not isinstance(exc, confluent_kafka.KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    if not isinstance(error, confluent_kafka.KafkaError) or error.retriable():
        return False
    return error.code() in _KAFKA_RECORD_ERRORS


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, redis.ResponseError) and not isinstance(exc, OUTAGES):
        return _REDIS_BUSY.search(str(exc)) is not None
    return isinstance(exc, OUTAGES) and not _kafka_record_error(exc)


@dataclass(frozen=True)
class PoisonPolicy:
    """How long a record may fail before it is dead-lettered or the service's health
    says so.

    | env var                        | default | meaning                                  |
    |--------------------------------|---------|------------------------------------------|
    | LADDER_CONSUMER_MAX_ATTEMPTS   | 3       | handler failures of an unknown kind      |
    |                                |         | before a record is dead-lettered         |
    | LADDER_CONSUMER_STUCK_SECONDS  | 30      | a record held this long: health degraded |
    """

    max_attempts: int = 3
    stuck_after_s: float = 30.0

    @classmethod
    def from_env(cls) -> PoisonPolicy:
        policy = cls(
            max_attempts=int(os.environ.get("LADDER_CONSUMER_MAX_ATTEMPTS", cls.max_attempts)),
            stuck_after_s=float(
                os.environ.get("LADDER_CONSUMER_STUCK_SECONDS", cls.stuck_after_s)
            ),
        )
        if policy.max_attempts < 1 or policy.stuck_after_s <= 0:
            raise ValueError(
                f"LADDER_CONSUMER_MAX_ATTEMPTS must be >= 1 and "
                f"LADDER_CONSUMER_STUCK_SECONDS > 0: {policy}"
            )
        return policy


_PERMANENT = (
    BadRecord,
    ValueError,  # includes protobuf's "Value out of range" and UnicodeError
    OverflowError,
    TypeError,
    # aiokafka's refusals of the record itself: the cases of _KAFKA_RECORD_ERRORS.
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
)


class Failure(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


def classify(exc: BaseException) -> Failure:
    if is_outage(exc):
        return Failure.TRANSIENT
    if isinstance(exc, _PERMANENT) or _kafka_record_error(exc):
        return Failure.PERMANENT
    if isinstance(exc, kafka_errors.KafkaError):
        # Any other aiokafka error is the broker's, whatever its ``retriable`` says:
        # tansu answers a produce it cannot store (its object store away) with
        # UNKNOWN_SERVER_ERROR, which aiokafka raises as an UnknownError it does not
        # call retriable; the record was good and must wait, not be dead-lettered.
        return Failure.TRANSIENT
    return Failure.UNKNOWN


def gives_up(exc: BaseException, attempts: int, max_attempts: int) -> bool:
    """Whether a record whose handling failed ``attempts`` times, the last with
    ``exc``, goes to dead-letter now rather than being tried again."""
    kind = classify(exc)
    if kind is Failure.PERMANENT:
        return True
    return kind is Failure.UNKNOWN and attempts >= max_attempts


def describe(exc: BaseException) -> str:
    """The reason a dead letter gives for ``exc``: its message, or for an error that is
    not a ``BadRecord`` its type too (an OverflowError says little on its own)."""
    if isinstance(exc, BadRecord):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class _Parked(Generic[T]):
    item: T
    deadline: float


class ParkingLot(Generic[K, T]):
    """Items set aside per key (a study not known yet) until the key becomes known or
    their deadline passes, at most ``per_key`` per key, handed back in arrival order.

    A key's items leave together when its first item's deadline passes, so one heap
    entry per key (its first deadline) finds the next to leave; counts are kept, not
    summed, since a flood of unknown keys must not make every pass walk them all.
    """

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._lots: OrderedDict[K, list[_Parked[T]]] = OrderedDict()
        self._size = 0
        # (first deadline of a key's lot, lot number, key); an entry whose lot number
        # is not the key's current one is stale (its lot left)
        self._deadlines: list[tuple[float, int, K]] = []
        self._lot_number: dict[K, int] = {}
        self._lots_opened = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        return key in self._lots

    def room(self, key: K) -> int:
        """How many more items ``key`` may park."""
        return self.per_key - len(self._lots.get(key, ()))

    def park(self, key: K, item: T, deadline: float, over_limit: bool = False) -> bool:
        """Set ``item`` aside; False (nothing parked) when ``key`` already has
        ``per_key`` items, unless ``over_limit`` (the caller knows the key will be
        released at once)."""
        lot = self._lots.get(key)
        if lot is None:
            lot = self._lots[key] = []
            self._lots_opened += 1
            self._lot_number[key] = self._lots_opened
            heapq.heappush(self._deadlines, (deadline, self._lots_opened, key))
        elif len(lot) >= self.per_key and not over_limit:
            return False
        lot.append(_Parked(item, deadline))
        self._size += 1
        return True

    def _drop_stale(self) -> None:
        while self._deadlines and self._lot_number.get(self._deadlines[0][2]) != (
            self._deadlines[0][1]
        ):
            heapq.heappop(self._deadlines)

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return self._deadlines[0][0] if self._deadlines else None

    def _pop(self, key: K) -> list[T]:
        lot = self._lots.pop(key)
        del self._lot_number[key]
        self._size -= len(lot)
        return [p.item for p in lot]

    def release(self, known: Callable[[K], bool] | None, now: float) -> list[T]:
        """Every item whose key is ``known`` now, and every key's items once one of
        them is past its deadline (a key's items leave together: in order).
        ``known`` None: only the deadlines are checked (no key became known since the
        last call), which costs nothing per key still waiting."""
        out: list[T] = []
        if known is not None:
            for key in [key for key in self._lots if known(key)]:
                out.extend(self._pop(key))
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            out.extend(self._pop(self._deadlines[0][2]))
        return out

    def clear(self) -> list[T]:
        out = [p.item for lot in self._lots.values() for p in lot]
        self._lots.clear()
        self._lot_number.clear()
        self._deadlines.clear()
        self._size = 0
        return out
