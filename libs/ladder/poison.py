"""Poison records in the Faust (aiokafka) consumers: what a stage does with a record it
failed to handle, and the records it sets aside while their study is unknown.

The policy is ``ladder.bus``'s (``PoisonPolicy``, ``is_outage``, ``dead_letter_record``,
which cuts a dead letter's payload to 64 KiB) plus what the Faust consumers meet that
the librdkafka ones do not: aiokafka's errors. A failure is one of three kinds
(``classify``):

- ``BadRecord`` and the errors a retry cannot change (a value out of range for its
  protobuf field, a number too large for a float, text that is not UTF-8, a record
  too large for the broker): the record goes to dead-letter at once;
- an outage (the broker or Redis away, a timeout, a retriable Kafka error): retried
  with back-off for as long as it lasts, since skipping would lose a good record;
- anything else (a bug met by one record): tried ``PoisonPolicy.max_attempts`` times,
  then dead-lettered, so one record never holds its partition for ever.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka import errors as kafka_errors

from ladder.bus import is_outage
from ladder.codec import BadRecord

# Kafka errors aiokafka does not mark retriable but that a broker coming back cures.
_KAFKA_TRANSIENT = (kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError)
_PERMANENT = (
    BadRecord,
    ValueError,  # includes protobuf's "Value out of range" and UnicodeError
    OverflowError,
    TypeError,
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
)


class Failure(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


def classify(exc: BaseException) -> Failure:
    if is_outage(exc) or isinstance(exc, _KAFKA_TRANSIENT):
        return Failure.TRANSIENT
    if isinstance(exc, _PERMANENT):
        return Failure.PERMANENT
    if isinstance(exc, kafka_errors.KafkaError):
        return Failure.TRANSIENT if exc.retriable else Failure.PERMANENT
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
    their deadline passes, at most ``per_key`` per key, handed back in arrival order."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._lots: OrderedDict[K, list[_Parked[T]]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(lot) for lot in self._lots.values())

    def __contains__(self, key: object) -> bool:
        return key in self._lots

    def room(self, key: K) -> int:
        """How many more items ``key`` may park."""
        return self.per_key - len(self._lots.get(key, ()))

    def park(self, key: K, item: T, deadline: float) -> bool:
        """Set ``item`` aside; False (nothing parked) when ``key`` already has
        ``per_key`` items."""
        lot = self._lots.setdefault(key, [])
        if len(lot) >= self.per_key:
            return False
        lot.append(_Parked(item, deadline))
        return True

    def next_deadline(self) -> float | None:
        deadlines = [p.deadline for lot in self._lots.values() for p in lot]
        return min(deadlines) if deadlines else None

    def release(self, known: Callable[[K], bool], now: float) -> list[T]:
        """Every item whose key is ``known`` now, and every key's items once one of
        them is past its deadline (a key's items leave together: in order)."""
        out: list[T] = []
        for key in list(self._lots):
            lot = self._lots[key]
            if known(key) or lot[0].deadline <= now:
                out.extend(p.item for p in self._lots.pop(key))
        return out

    def clear(self) -> list[T]:
        out = [p.item for lot in self._lots.values() for p in lot]
        self._lots.clear()
        return out
