"""ConsumerLoop reads again what a fetch skipped (ladder.gaps), record by record."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ladder.bus import ConsumerLoop
from ladder.config import KAFKA_PROFILE, BrokerProfile, Settings, Topics


@dataclass
class Raw:
    """What ConsumerLoop reads of a confluent_kafka.Message."""

    _topic: str
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class Seeks:
    def __init__(self) -> None:
        self.to: list[tuple[str, int, int]] = []

    def seek(self, tp: object) -> None:
        self.to.append((tp.topic, tp.partition, tp.offset))  # type: ignore[attr-defined]


TOPICS = Topics("t.")


HANDLED: list[int] = []


def loop(broker: BrokerProfile | None = None) -> ConsumerLoop:
    settings = Settings(kafka_bootstrap="unused:0", redis_url="redis://unused", topics=TOPICS)
    if broker is not None:
        settings = replace(settings, broker=broker)
    return ConsumerLoop(
        settings,
        "test",
        [TOPICS.decisions],
        lambda record: HANDLED.append(record.offset),
        None,  # type: ignore[arg-type]
        None,
        untraced_topics=TOPICS.all(),
    )


def handled(consumer_loop: ConsumerLoop, seeks: Seeks, batch: list[Raw]) -> list[int]:
    HANDLED.clear()
    consumer_loop._handle_batch(seeks, batch)  # type: ignore[arg-type]
    return list(HANDLED)


def test_a_skipped_range_is_read_again_before_anything_after_it() -> None:
    consumer_loop, seeks = loop(), Seeks()
    decisions, other = TOPICS.decisions, TOPICS.metrics
    first = [Raw(decisions, 1, 10), Raw(decisions, 1, 14), Raw(other, 0, 3), Raw(decisions, 1, 15)]
    assert handled(consumer_loop, seeks, first) == [10, 3]
    assert seeks.to == [(decisions, 1, 11)]
    assert consumer_loop._gaps.rereading  # no commit while 11..13 are not read again

    again = [Raw(decisions, 1, offset) for offset in (11, 12, 13, 14, 15)]
    assert handled(consumer_loop, seeks, again) == [11, 12, 13, 14, 15]
    assert not consumer_loop._gaps.rereading and seeks.to == [(decisions, 1, 11)]


def test_compacted_topics_have_gaps_by_design() -> None:
    consumer_loop, seeks = loop(), Seeks()
    studies = [Raw(TOPICS.studies, 0, 2), Raw(TOPICS.studies, 0, 9)]
    assert handled(consumer_loop, seeks, studies) == [2, 9] and seeks.to == []


def test_only_the_studies_topic_is_compacted() -> None:
    assert TOPICS.contiguous == frozenset(TOPICS.all()) - {TOPICS.studies}


def test_on_kafka_the_gap_guard_is_not_used() -> None:
    consumer_loop, seeks = loop(KAFKA_PROFILE), Seeks()
    decisions = TOPICS.decisions
    batch = [Raw(decisions, 1, 10), Raw(decisions, 1, 14), Raw(decisions, 1, 15)]
    assert handled(consumer_loop, seeks, batch) == [10, 14, 15] and seeks.to == []
    assert consumer_loop._gaps.rereads == 0 and not consumer_loop._gaps.rereading


def test_on_kafka_consumers_are_not_paced() -> None:
    settings = Settings(kafka_bootstrap="unused:0", redis_url="redis://unused", topics=TOPICS)
    paced = ConsumerLoop(settings, "test", [TOPICS.trials], print, None, None, pace_s=0.2)
    assert paced.pace_s == 0.2
    on_kafka = replace(settings, broker=KAFKA_PROFILE)
    unpaced = ConsumerLoop(on_kafka, "test", [TOPICS.trials], print, None, None, pace_s=0.2)
    assert unpaced.pace_s == 0.0


class Pausing(Seeks):
    def __init__(self) -> None:
        super().__init__()
        self.paused: list[tuple[str, int]] = []

    def pause(self, tps: list) -> None:
        self.paused.extend((tp.topic, tp.partition) for tp in tps)


def test_a_failing_record_holds_its_partition_only() -> None:
    failing = {(TOPICS.metrics, 7)}

    def handler(record: object) -> None:
        if (record.topic, record.offset) in failing:  # type: ignore[attr-defined]
            raise KeyError("a bug one record meets")
        HANDLED.append(record.offset)  # type: ignore[attr-defined]

    consumer_loop = loop()
    consumer_loop.handler = handler
    consumer = Pausing()
    batch = [Raw(TOPICS.metrics, 0, 7), Raw(TOPICS.metrics, 0, 8), Raw(TOPICS.trials, 0, 3)]
    assert handled(consumer_loop, consumer, batch) == [3]
    assert consumer.paused == [(TOPICS.metrics, 0)] and consumer.to == [(TOPICS.metrics, 0, 7)]
