"""EventProducer.send(wait=True) waits as long as the producer's delivery timeout."""

from __future__ import annotations

import time
from typing import Any

import pytest
from ladder import bus
from ladder.config import Settings


class FakeProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def produce(self, topic: str, key: bytes, value: bytes, headers: Any, on_delivery: Any) -> None:
        on_delivery(None, "metadata")

    def poll(self, timeout: float) -> None:
        time.sleep(timeout)

    def flush(self, timeout: float) -> None:
        return None


def test_a_waiting_send_waits_for_the_producers_own_delivery_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bus.confluent_kafka, "Producer", FakeProducer)
    waited: list[float] = []
    real_get = bus.SendResult.get

    def get(self: bus.SendResult, timeout: float) -> object:
        waited.append(timeout)
        return real_get(self, timeout)

    monkeypatch.setattr(bus.SendResult, "get", get)
    producer = bus.EventProducer(Settings("k:9092", "redis://r"), "sdk", delivery_timeout_s=300)
    try:
        producer.send("t.metrics", "trial", b"report", wait=True)
    finally:
        producer.close()
    assert producer._producer.config["delivery.timeout.ms"] == 300_000
    # Not a fixed 30 s: the record may still be delivered up to 300 s after the send.
    assert waited and waited[0] >= 300
