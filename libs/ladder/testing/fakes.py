"""In-memory stand-ins for what a unit test cannot run: a Redis counter, a gRPC error,
a Faust app with its topics and tables, the events a Faust agent is handed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc


class FakeDraws:
    """Stands in for TrialStore.reserve_draws (a Redis INCRBY per partition)."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def reserve_draws(self, study_id: str, partition: int, count: int) -> int:
        first = self.next.get((study_id, partition), 0)
        self.next[(study_id, partition)] = first + count
        return first


class RpcStatus(grpc.RpcError):
    """A gRPC error as a stub raises it; ``details`` defaults to the code's name."""

    def __init__(self, code: grpc.StatusCode, details: str | None = None) -> None:
        self._code = code
        self._details = str(code) if details is None else details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeChangelog:
    """A Faust changelog topic: records what was sent; ``fail`` makes sends raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any, int]] = []
        self.fail = False

    async def send(self, *, key: Any, value: Any, partition: int, **_: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((key, value, partition))


class FakeTable:
    """A Faust table: a dict plus its changelog topic."""

    key_serializer = value_serializer = "json"

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.changelog_topic = FakeChangelog()

    def get(self, key: Any) -> Any:
        return self.data.get(key)

    def values(self) -> Any:
        return self.data.values()


class FakeTopic:
    """A Faust topic: records the values sent; every send is acknowledged at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[bytes] = []

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, *, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


class FakeApp:
    """A Faust app as far as agents use it: one FakeTopic per name, made on first use."""

    def __init__(self) -> None:
        self.topics: dict[str, FakeTopic] = {}

    def topic(self, name: str, **_: Any) -> FakeTopic:
        return self.topics.setdefault(name, FakeTopic(name))


@dataclass
class FakeEvent:
    """A Faust event: the record's value and the message it came in."""

    value: bytes
    message: SimpleNamespace
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def fake_event(topic: str, offset: int, value: bytes) -> FakeEvent:
    """The event of the record at ``offset`` of partition 0 of ``topic``."""
    message = SimpleNamespace(topic=topic, partition=0, offset=offset, timestamp=1.0, headers=[])
    return FakeEvent(value, message)
