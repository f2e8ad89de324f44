"""The study directory: every early-stop process reads the whole studies topic itself.

Stage 1 is partitioned by trial, so the metrics of one study reach every process and
every process needs every study. ``StudyFeed`` reads all partitions of the compacted
``<prefix>studies`` topic from the beginning with its own consumer (no group: nothing
to rebalance, nothing shared) into ``StudyDirectory``.

Not a Faust GlobalTable: that would reach a process only through the owner of the
study's partition and then the table's changelog, both read by Faust's fetcher, which
drops records fetched just as their partition is paused and never re-reads a
partition that had no offset committed, so a new study can be missed by every process
(bench/README.md, "Early-stop scale"; faust-streaming/faust#283).

The studies agent still consumes the topic in the group: it validates each record
once, so a malformed StudyEvent gets exactly one dead letter, not one per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka
from ladder.codec import BadRecord, decode
from ladder.kafkasecurity import KafkaSecurity
from ladder.retry import retry_forever
from ladder.schedulers import SchedulerConfigError, SchedulerSpec
from ladder.signing import Headers, Keyring
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.earlystop")


# Most study ids remembered as missing (see StudyDirectory.lookup).
MISSED_MAX = 10_000
PRUNE_EVERY_S = 1.0


class StudyPending(Exception):  # noqa: N818 - not an error: the record waits
    """The study of a record is not known yet; it may arrive until ``deadline`` (event
    loop time), so the record is parked, not dead-lettered."""

    def __init__(self, study_id: str, deadline: float) -> None:
        super().__init__(f"study {study_id!r} not known yet")
        self.study_id = study_id
        self.deadline = deadline


@dataclass(frozen=True)
class StudyEntry:
    study_id: str
    spec: SchedulerSpec | None
    error: str = ""  # why the study's scheduler config cannot be used


def parse_study(study_id: str, raw: bytes) -> StudyEntry:
    try:
        event = decode(events_pb2.StudyEvent, raw)
        return StudyEntry(study_id, SchedulerSpec.from_study(event.study.config))
    except (BadRecord, SchedulerConfigError) as exc:
        return StudyEntry(study_id, None, str(exc))


def study_id_of(raw: bytes) -> str:
    """The study id of StudyEvent bytes; ``BadRecord`` when they are not one."""
    study_id = decode(events_pb2.StudyEvent, raw).study.study_id
    if not study_id:
        raise BadRecord("StudyEvent has no study.study_id")
    return study_id


class StudyDirectory:
    """Every study this process has read (StudyEvent bytes by id, parsed on first use),
    and for a study not read yet, how long its records may wait for it (``lookup``)."""

    def __init__(self, unknown_study_wait: float) -> None:
        self.unknown_study_wait = unknown_study_wait
        self._raw: dict[str, bytes] = {}
        self._parsed: dict[str, tuple[bytes, StudyEntry]] = {}
        self._first_missed: dict[str, float] = {}
        self._next_prune = 0.0  # event loop time
        # How many ``put`` calls so far: a stage re-checks its parked studies only
        # when this moved.
        self.arrivals = 0
        # Created lazily: they must belong to the worker's running loop.
        self._arrival: asyncio.Event | None = None
        self._caught_up: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._raw)

    def _arrival_event(self) -> asyncio.Event:
        if self._arrival is None:
            self._arrival = asyncio.Event()
        return self._arrival

    def _caught_up_event(self) -> asyncio.Event:
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
        return self._caught_up

    def put(self, study_id: str, raw: bytes | None) -> bool:
        """Store (``raw`` None: forget) a study; True if that changed anything.
        Sets ``next_arrival``."""
        if raw is None:
            changed = self._raw.pop(study_id, None) is not None
        else:
            changed = self._raw.get(study_id) != raw
            self._raw[study_id] = raw
        self.arrivals += 1
        # One event per generation of arrivals: the waiters of this one wake, later
        # waiters wait on the next.
        arrival, self._arrival = self._arrival_event(), asyncio.Event()
        arrival.set()
        return changed

    def mark_caught_up(self) -> None:
        self._caught_up_event().set()

    @property
    def caught_up(self) -> bool:
        return self._caught_up_event().is_set()

    async def wait_caught_up(self) -> None:
        await self._caught_up_event().wait()

    def get(self, study_id: str) -> StudyEntry | None:
        raw = self._raw.get(study_id)
        if raw is None:
            return None
        cached = self._parsed.get(study_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        entry = parse_study(study_id, raw)
        self._parsed[study_id] = (raw, entry)
        return entry

    def next_arrival(self) -> asyncio.Event:
        """Set when the next study arrives (or is forgotten)."""
        return self._arrival_event()

    async def lookup(self, study_id: str, published_unix: float | None = None) -> StudyEntry | None:
        """The study; ``StudyPending`` while it may still arrive (its StudyEvent can be
        overtaken by a metric: the two topics are read independently); None once it
        has been missing for ``unknown_study_wait`` seconds.

        Never waits for the study itself: a stage parks the record (agents.py) and
        goes on with the next one, so the reports of known studies are not held up.
        It does wait, at start, until the feed has read the studies topic to the end
        it found: a restarted process must not call a study unknown because it has
        not read that far yet.

        The wait counts once per study id (later reports of a study that never came
        do not wait again) and from when the record was published (``published_unix``,
        the Kafka timestamp), not from when it is read: a StudyEvent published with a
        record of a backlog older than the wait would have arrived by now."""
        entry = self.get(study_id)
        if entry is None and not self.caught_up:
            await self.wait_caught_up()
            entry = self.get(study_id)
        if entry is not None:
            self._first_missed.pop(study_id, None)
            return entry
        now = asyncio.get_running_loop().time()
        if len(self._first_missed) >= MISSED_MAX and now >= self._next_prune:
            # Ids that never came, by the thousand: forget those whose wait is over (a
            # later report of one of them waits once more, which costs it nothing).
            # At most once per PRUNE_EVERY_S: while they are all within their wait,
            # a rebuild per report would remove nothing and cost O(ids) each time.
            self._next_prune = now + PRUNE_EVERY_S
            self._first_missed = {
                s: t for s, t in self._first_missed.items() if t + self.unknown_study_wait > now
            }
        deadline = self._first_missed.setdefault(study_id, now) + self.unknown_study_wait
        if published_unix is not None and published_unix > 0:
            age = max(0.0, time.time() - published_unix)
            deadline = min(deadline, now + self.unknown_study_wait - age)
        if deadline <= now:
            return None
        raise StudyPending(study_id, deadline)


EndOffsets = Callable[[str, Mapping[Any, int]], Awaitable[Mapping[Any, int]]]


class StudyFeed:
    """Reads every partition of the studies topic from the beginning into a
    ``StudyDirectory``, for as long as the process runs; reconnects after any error
    (re-reading from the beginning is harmless: ``put`` of the same bytes is a no-op).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        directory: StudyDirectory,
        end_offsets: EndOffsets,
        fetch_max_wait_ms: int = 100,
        keyring: Keyring | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        # A StudyEvent its owner (suggest) did not sign is not read: a forged one
        # would rename a study or turn its early stopping off (the studies agent
        # dead-letters it, once).
        self.keyring = keyring or Keyring()
        self.topic = topic
        self.directory = directory
        # tansu answers ListOffsets short of the end (app.fetched_end_offsets).
        self.end_offsets = end_offsets
        self.fetch_max_wait_ms = fetch_max_wait_ms

    async def run(self) -> None:
        # _read_forever returns only by raising: the directory must keep being fed.
        await retry_forever(self._read_forever, f"reading {self.topic}", log, "reconnecting")

    async def _read_forever(self) -> None:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="ladder-earlystop-studies",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            **self.security.aiokafka(),
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await self.end_offsets(self.bootstrap, await consumer.end_offsets(partitions))
            started = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self.apply(record.key, record.value, record.headers)
                if not self.directory.caught_up and await self._reached(consumer, ends):
                    self.directory.mark_caught_up()
                    log.info(
                        "study directory caught up: %d studies in %.1fs",
                        len(self.directory),
                        time.monotonic() - started,
                    )
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: aiokafka.AIOKafkaConsumer) -> list[Any]:
        while True:
            ids = consumer.partitions_for_topic(self.topic)
            if ids:
                return [aiokafka.TopicPartition(self.topic, p) for p in sorted(ids)]
            await consumer.force_metadata_update()
            await asyncio.sleep(0.5)  # the topic is created by the stack; wait for it

    @staticmethod
    async def _reached(consumer: aiokafka.AIOKafkaConsumer, ends: Mapping[Any, int]) -> bool:
        for tp, end in ends.items():
            if end and await consumer.position(tp) < end:
                return False
        return True

    def apply(
        self, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        if self.keyring.problem(self.topic, key, value, headers) is not None:
            return  # the studies agent dead-letters it (once, in the group)
        if not value:
            # Tombstone on the compacted topic: the study is gone.
            if key:
                self.directory.put(key.decode("utf-8", "replace"), None)
            return
        try:
            study_id = study_id_of(value)
        except BadRecord:
            return  # the studies agent dead-letters it (once, in the group)
        if self.directory.put(study_id, value):
            log.info("study %s registered", study_id, extra={"study_id": study_id})
