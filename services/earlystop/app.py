"""The Faust application object, configured for the embedded tansu broker and for Kafka.

What differs between the two comes from the broker profile (``Settings.broker``,
``ladder.config.BrokerProfile``); on the kafka profile none of the tansu workarounds
below runs. The figures behind each choice are in bench/README.md ("Early-stop on the
embedded broker").

- Short group timeouts (rebalance 5 s, session 6 s, heartbeat 1 s; Faust: 60, 60, 3 s),
  as the architecture asks for tansu: a worker that dies without leaving the group
  holds its partitions until its session expires, and a rebalance waits up to the
  rebalance timeout for slow members.
- Batched produce with a corrected end offset: tansu answers ListOffsets with the base
  offset of a partition's last batch + 1, while the high watermark in its Fetch
  responses is right. Faust's table recovery reads ListOffsets, so it would stop short
  of a changelog's end and crash with ``ConsistencyError`` on takeover. ``_highwaters``
  below confirms the end with a fetch (``end_offset_probe``). One record per batch
  would avoid the bug too, but aiokafka sends one batch per partition per request with
  one request in flight, which caps the app far below the fleet's report rate.
- Producer linger 20 ms (Faust: 0): a produce request costs more in the socket write
  than everything else the app does for it, so lingering puts the records of many
  handlers (crossings, decisions, table writes) into one request, at the price of up
  to 20 ms on each of the two hops (metric -> crossing -> decision).
- No standby table replicas (Faust: 1): each worker would consume and apply the
  others' changelogs (a table write per metric point), which costs more than a second
  worker gains; a worker taking partitions over restores them from the changelog.
- No transactions (``processing_guarantee`` at_least_once): tansu answers aiokafka's
  InitProducerId with an error. Every handler is idempotent instead.
- Fetch long poll from the profile (``fetch_max_wait_ms``, 100 ms on tansu) instead of
  Faust's hard-coded 1500 ms: tansu does not answer a pending aiokafka fetch when
  records arrive, so each hop would wait for the long poll to expire. On Kafka the
  broker answers as soon as data arrives, and the kafka profile's 500 ms only bounds
  idle fetches.
- A fetch that skipped offsets of a topic without compaction is read again from the
  first one missing (``ladder.gaps``): tansu can hand a tailing consumer a batch from
  beyond records of another producer that are stored and acknowledged.
- After a rebalance a partition the group never committed goes back to its start
  (``committed_seeks``): aiokafka's seek to committed offsets skips such a partition.
- Internal topics (changelogs, the assignor's leader topic) are declared by Faust
  itself (``topic_allow_declare``); tansu's CreateTopics accepts them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import faust
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from ladder.config import BrokerProfile, Settings
from ladder.gaps import GapGuard
from ladder.kafkaacl import EARLYSTOP
from ladder.kafkasecurity import KafkaSecurity, login_refused

from services.earlystop.studies import EndOffsets


@dataclass(frozen=True)
class EarlyStopOptions:
    health_port: int = 50054
    data_dir: Path = Path(".ladder/earlystop")
    web_port: int = 0  # 0: Faust's web server is off
    web_bind: str = "127.0.0.1"
    unknown_study_wait: float = 10.0
    producer_batch_bytes: int = 16384
    producer_linger_ms: int = 20
    standby_replicas: int = 0
    replication_factor: int = 1
    store: str = "memory://"
    fetch_max_wait_ms: int = 100
    curve_flush_ms: int = 5000
    # Reports count only for real, reporting trials of their study (ladder.trialcheck).
    trial_check: bool = True


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def topic_partitions(
    settings: Settings, topics: list[str], timeout: float = 60.0
) -> dict[str, int]:
    """Partition counts of ``topics``; the stack (or the topics job) creates them.

    Faust tables must have as many partitions as the topic their agent reads, so the
    counts are taken from the broker instead of being configured twice.
    """
    security = settings.kafka_security(EARLYSTOP)
    errors: list[KafkaError] = []
    admin = AdminClient({
        "bootstrap.servers": settings.kafka_bootstrap, "client.id": "ladder-earlystop-meta",
        "error_cb": errors.append, **security.confluent(),
    })
    deadline = time.monotonic() + timeout
    while True:
        # Metadata of every topic: asking for one by name may auto-create it on a broker.
        try:
            listed = admin.list_topics(
                timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException:
            admin.poll(0)  # serves error_cb
            refused = login_refused(errors, security, settings.kafka_bootstrap)
            if refused:
                raise SystemExit(f"earlystop: {refused}") from None
            raise
        found = {
            topic: len(meta.partitions)
            for topic, meta in listed.topics.items()
            if topic in topics and meta.error is None and meta.partitions
        }
        missing = [t for t in topics if t not in found]
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(
                f"earlystop: topics {missing} do not exist on {settings.kafka_bootstrap}"
                " (create them with `ladder up`)"
            )
        time.sleep(0.5)  # polling broker metadata until the deadline


# mode names a service's logger after the module of its class; keep the subclasses'
# chatter under "faust" (WARNING and up, see ladder.telemetry.setup).
_FAUST_LOG = logging.getLogger("faust.earlystop")


class _ShortPollConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    logger = _FAUST_LOG

    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500 with no setting to change it; the
        # consumer reads the attribute when it starts its fetcher.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 1500)
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        # Faust's perform_seek after a rebalance; see committed_seeks.
        return await self.call_thread(self._seek_to_committed_or_start)

    async def _seek_to_committed_or_start(self) -> dict[TP, int | None]:
        consumer = self._ensure_consumer()
        committed: dict[TP, int | None] = {}
        for tp in sorted(consumer.assignment()):
            committed[tp] = await consumer.committed(tp)
        # Asked one by one: partitions revoked meanwhile are left out, not an error.
        to_offset, to_start = committed_seeks(
            committed,
            consumer.assignment(),
            self.app.tables.changelog_topics,
            self.app.conf.consumer_auto_offset_reset == "earliest",
        )
        for tp, offset in to_offset.items():
            consumer.seek(tp, offset)
        if to_start:
            await consumer.seek_to_beginning(*to_start)
        return {tp: offset for tp, offset in committed.items() if tp in consumer.assignment()}

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Table recovery reads changelogs up to these offsets (see the module docstring).
        listed = await super()._highwaters(partitions)
        bootstrap = getattr(self.app, "bootstrap_servers", "")
        if not bootstrap or self.consumer.in_transaction:
            return listed
        security = getattr(self.app, "kafka_security", None) or KafkaSecurity()
        return await fetched_end_offsets(bootstrap, listed, security=security)


def committed_seeks(
    committed: Mapping[Any, int | None],
    assigned: Collection[Any],
    changelog_topics: Collection[str],
    from_earliest: bool,
) -> tuple[dict[Any, int], list[Any]]:
    """Where Faust's seek after a rebalance must put each assigned partition: to its
    committed offset, or, for a stream partition the group never committed, back to
    its start (what ``auto_offset_reset=earliest`` gave the first time).

    Faust drops records fetched for a partition it paused, and reads them again only
    because this seek goes back. aiokafka's ``seek_to_committed`` leaves a partition
    without a committed offset where it is, so the first records ever published on a
    partition, fetched while a rebalance paused it, were never read again. Measured: a
    StudyEvent at offset 0 fetched as recovery ended and dropped (its study then
    unknown to every process). Changelog partitions are never committed by the group;
    Faust's recovery positions them itself.
    """
    to_offset: dict[Any, int] = {}
    to_start: list[Any] = []
    for tp, offset in committed.items():
        if tp not in assigned:
            continue
        if offset is not None and offset > 0:
            to_offset[tp] = offset
        elif from_earliest and tp.topic not in changelog_topics:
            to_start.append(tp)
    return to_offset, to_start


async def listed_end_offsets(bootstrap: str, listed: Mapping[TP, int]) -> dict[TP, int]:
    """End offsets as ListOffsets answered them (a broker that answers them right)."""
    return dict(listed)


def end_offsets_reader(
    broker: BrokerProfile, security: KafkaSecurity | None = None
) -> EndOffsets:
    """How this process learns a partition's end offset on ``broker`` (its probe
    consumer authenticating with ``security``)."""
    if not broker.end_offset_probe:
        return listed_end_offsets
    if security is None or security.plain:
        return fetched_end_offsets
    return functools.partial(fetched_end_offsets, security=security)


async def fetched_end_offsets(
    bootstrap: str, listed: Mapping[TP, int], timeout: float = 10.0,
    security: KafkaSecurity | None = None,
) -> dict[TP, int]:
    """End offsets of ``listed`` (ListOffsets answers) corrected for tansu 0.6.

    Fetching from ``listed - 1`` (inside the partition's last batch) returns the high
    watermark the broker keeps right; the larger of the two is the end. Partitions
    whose probe gets no answer in time keep their listed value.
    """
    ends = dict(listed)
    probe_tps = {
        aiokafka.TopicPartition(tp.topic, tp.partition): tp
        for tp, end in listed.items()
        if end is not None and end > 0
    }
    if not probe_tps:
        return ends
    probe = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,  # only run on tansu (end_offset_probe)
        client_id="ladder-earlystop-end-offsets",
        **(security or KafkaSecurity()).aiokafka(),
    )
    await probe.start()
    try:
        probe.assign(list(probe_tps))
        for probe_tp, tp in probe_tps.items():
            probe.seek(probe_tp, listed[tp] - 1)
        pending = set(probe_tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and asyncio.get_running_loop().time() < deadline:
            await probe.getmany(*pending, timeout_ms=200)
            for probe_tp in list(pending):
                highwater = probe.highwater(probe_tp)
                if highwater is not None:
                    tp = probe_tps[probe_tp]
                    ends[tp] = max(listed[tp], highwater)
                    pending.discard(probe_tp)
        if pending:
            _FAUST_LOG.warning("end offsets not confirmed by a fetch: %s", sorted(pending))
    finally:
        await probe.stop()
    return ends


class _ShortPollConsumer(faust_aiokafka.Consumer):
    logger = _FAUST_LOG

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's records, minus any that follow offsets the broker's fetch skipped on
        a contiguous topic: that partition is read again from the first one missing
        (``ladder.gaps.GapGuard``)."""
        contiguous = getattr(self.app, "contiguous_topics", frozenset())
        guard = self._gap_guard()
        async for tp, message in super().getmany(timeout):
            if tp.topic in contiguous and not guard.admit(tp, message.offset):
                continue
            yield tp, message
        for tp, offset in guard.end_batch():
            await self.seek(tp, offset)

    async def perform_seek(self) -> None:
        # A rebalance: every position comes from the committed offsets again.
        self._gap_guard().forget()
        await super().perform_seek()

    def _gap_guard(self) -> GapGuard:
        guard: GapGuard | None = getattr(self, "_gaps", None)
        if guard is None:
            guard = self._gaps = GapGuard()
        return guard


class _ShortPollTransport(faust_aiokafka.Transport):
    Consumer = _ShortPollConsumer


class _PausingRecovery(Recovery):
    """Faust's recovery, but active-only changelog partitions are paused when it ends.

    Faust 0.15 pauses them only when there was something to recover; after a recovery
    that found the changelogs already read (a fresh worker, for one) they stay
    assigned and unpaused, so the worker would fetch back every table write it makes,
    decode it and apply it again, and the metrics and rungs topics would wait behind
    those fetches (bench/README.md, "Early-stop on the embedded broker").
    """

    logger = _FAUST_LOG

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        active_only = {
            tp
            for tp in self.active_tps - self.standby_tps
            if self.tp_to_table[tp].recovery_buffer_size != 1  # Faust resumes these
        }
        if active_only:
            self.app.consumer.pause_partitions(active_only)
        await super().on_recovery_completed(generation_id)


class _TableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _PausingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class EarlyStopApp(faust.App):
    """faust.App whose Kafka consumer uses a configurable fetch long poll."""

    logger = _FAUST_LOG

    fetch_max_wait_ms: int = 1500
    # For the end-offset correction (the broker profile's end_offset_probe); "": off.
    bootstrap_servers: str = ""
    # Topics read again where a fetch skipped offsets (ladder.gaps): no compaction there.
    contiguous_topics: frozenset[str] = frozenset()
    # How its own probe consumers authenticate (the Faust clients: broker_credentials).
    kafka_security: KafkaSecurity | None = None

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _ShortPollTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings, options: EarlyStopOptions) -> faust.App:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    broker = settings.broker
    security = settings.kafka_security(EARLYSTOP)
    app = EarlyStopApp(
        settings.topics.earlystop_group,
        broker=broker_urls(settings.kafka_bootstrap),
        broker_client_id="ladder-earlystop",
        broker_credentials=security.faust_credentials(),
        store=options.store,
        datadir=str(options.data_dir),
        autodiscover=False,
        # Every topic carries protobuf or JSON bytes; tables choose their own codecs.
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=broker.rebalance_timeout_ms / 1000.0,
        broker_session_timeout=broker.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=broker.heartbeat_interval_ms / 1000.0,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_batch_size=options.producer_batch_bytes,
        producer_linger=options.producer_linger_ms / 1000.0,
        processing_guarantee="at_least_once",
        topic_replication_factor=options.replication_factor,
        topic_allow_declare=True,
        web_enabled=options.web_port > 0,
        web_port=options.web_port or 6066,
        web_bind=options.web_bind,
        web_host=options.web_bind,
        worker_redirect_stdouts=False,
        TableManager=_TableManager,
        table_standby_replicas=options.standby_replicas,
    )
    app.fetch_max_wait_ms = options.fetch_max_wait_ms
    app.bootstrap_servers = settings.kafka_bootstrap if broker.end_offset_probe else ""
    app.contiguous_topics = settings.gap_guarded_topics
    app.kafka_security = security
    return app
