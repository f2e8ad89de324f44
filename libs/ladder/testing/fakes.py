"""In-memory stand-ins for what a unit test cannot run: a Redis counter, a gRPC error,
a Faust table with its changelog."""

from __future__ import annotations

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
