"""The Faust application object, configured for the embedded tansu broker and for Kafka.

Settings that matter on tansu (the embedded Kafka-protocol broker), found by running
against it:

- ``broker_rebalance_timeout`` 5 s, ``broker_session_timeout`` 6 s, heartbeat 1 s
  (Faust: 60 s, 60 s, 3 s), as ARCHITECTURE.md asks for tansu: a worker that dies
  without leaving the group holds its partitions until its session expires, and a
  rebalance waits up to the rebalance timeout for slow members. Measured on tansu
  0.6: a fresh worker is SERVING ~4.7 s after spawn (~3 s of it is the group join),
  a worker restarted after SIGKILL ~13 s.
- ``producer_max_batch_size`` 1 byte (one record per produce batch): tansu 0.6 sets a
  partition's high watermark to *base offset of the last batch + 1*, so after a
  batch of n records ListOffsets reports n - 1 too few. Faust table recovery
  compares its changelog position with that high watermark and crashes with
  ``ConsistencyError`` ("persisted offset ... is higher than the last offset") when
  a second worker joins. With one record per batch the watermark is right. On a
  real Kafka cluster raise it (``LADDER_EARLYSTOP_PRODUCER_BATCH_BYTES``).
- no transactions (``processing_guarantee`` at_least_once): tansu answers aiokafka's
  InitProducerId with an error. Every handler is idempotent instead.
- fetch long poll 100 ms instead of Faust's hard-coded 1500 ms: tansu does not
  answer a pending aiokafka fetch when records arrive (kafka-python's fetches it
  does answer), so each of the two hops metric -> rung -> decision waited for the
  long poll to expire: ~1 s report-to-decision instead of a few ms. On Kafka the
  broker answers as soon as data arrives and the setting only adds idle fetches.
- internal topics (changelogs, the assignor's leader topic) are declared by Faust
  itself (``topic_allow_declare``); tansu's CreateTopics accepts them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from kafka import KafkaConsumer
from ladder.config import Settings

# Group timeouts short enough for tansu (see the module docstring).
REBALANCE_TIMEOUT_S = 5.0
SESSION_TIMEOUT_S = 6.0
HEARTBEAT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class EarlyStopOptions:
    health_port: int = 50054
    data_dir: Path = Path(".ladder/earlystop")
    web_port: int = 0  # 0: Faust's web server is off
    web_bind: str = "127.0.0.1"
    unknown_study_wait: float = 10.0
    producer_batch_bytes: int = 1
    replication_factor: int = 1
    store: str = "memory://"
    fetch_max_wait_ms: int = 100


def app_id(topic_prefix: str) -> str:
    """``ladder-earlystop-<prefix>``: one consumer group per topic namespace."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", topic_prefix).strip("-_")
    return f"ladder-earlystop-{cleaned or 'default'}"


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def topic_partitions(
    settings: Settings, topics: list[str], timeout: float = 60.0
) -> dict[str, int]:
    """Partition counts of ``topics``; the stack (or the topics job) creates them.

    Faust tables must have as many partitions as the topic their agent reads, so the
    counts are taken from the broker instead of being configured twice.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="ladder-earlystop-meta",
        enable_auto_commit=False,
    )
    try:
        deadline = time.monotonic() + timeout
        found: dict[str, int] = {}
        while True:
            for topic in topics:
                if topic not in found:
                    partitions = consumer.partitions_for_topic(topic)
                    if partitions:
                        found[topic] = len(partitions)
            missing = [t for t in topics if t not in found]
            if not missing:
                return found
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"earlystop: topics {missing} do not exist on {settings.kafka_bootstrap}"
                    " (create them with `ladder up`)"
                )
            time.sleep(0.5)  # polling broker metadata until the deadline
    finally:
        consumer.close()


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


class _ShortPollConsumer(faust_aiokafka.Consumer):
    logger = _FAUST_LOG

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ShortPollTransport(faust_aiokafka.Transport):
    Consumer = _ShortPollConsumer


class EarlyStopApp(faust.App):
    """faust.App whose Kafka consumer uses a configurable fetch long poll."""

    logger = _FAUST_LOG

    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _ShortPollTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings, options: EarlyStopOptions) -> faust.App:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    app = EarlyStopApp(
        app_id(settings.topics.prefix),
        broker=broker_urls(settings.kafka_bootstrap),
        broker_client_id="ladder-earlystop",
        store=options.store,
        datadir=str(options.data_dir),
        autodiscover=False,
        # Every topic carries protobuf or JSON bytes; tables choose their own codecs.
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_batch_size=options.producer_batch_bytes,
        processing_guarantee="at_least_once",
        topic_replication_factor=options.replication_factor,
        topic_allow_declare=True,
        web_enabled=options.web_port > 0,
        web_port=options.web_port or 6066,
        web_bind=options.web_bind,
        web_host=options.web_bind,
        worker_redirect_stdouts=False,
    )
    app.fetch_max_wait_ms = options.fetch_max_wait_ms
    return app
