"""Evaluate service: ``python -m services.evaluate [--port N]``.

The trial lifecycle for workers: StartTrial, Heartbeat (CONTINUE / STOP /
PROMOTE / PAUSE), ReportCheckpoint, CompleteTrial, PruneTrial, PauseTrial, FailTrial,
GetTrial. A PROMOTE decision for a PAUSED trial (ASHA promotion form) makes it
RESUMABLE, so the next Suggest hands it out with its checkpoint.

| env var / flag                     | default | meaning                                    |
|------------------------------------|---------|--------------------------------------------|
| ``--port`` / LADDER_EVALUATE_PORT  | 50052   | gRPC port (health service included)        |
| ``--read-interval-ms`` /           | 100     | once caught up, read decisions at most     |
| LADDER_EVALUATE_READ_INTERVAL_MS   |         | this often (0: as they arrive)             |
| LADDER_LEASE_SECONDS               | 8       | lease granted by StartTrial / Heartbeat;   |
|                                    |         | workers renew it every lease/4, so a dead  |
|                                    |         | worker's trial is RESUMABLE about one      |
|                                    |         | lease + one sweep after its last beat      |
| LADDER_MAX_ATTEMPTS                | 3       | counted failures before a trial is FAILED, |
|                                    |         | for studies whose trial_policy does not    |
|                                    |         | set max_failures (preemptions, lease       |
|                                    |         | expiries, stalls and pauses never count)   |
| LADDER_SWEEP_SECONDS               | lease/4 | sweeper period: leases, running-time       |
|                                    |         | limits and the outbox (capped to 0.1..1 s);|
|                                    |         | after no pass for over a lease (evaluate   |
|                                    |         | was away) leases are extended by a lease   |
|                                    |         | before any expires                         |
| LADDER_OUTBOX_RETRY_SECONDS        | 10      | re-publish events not acknowledged by then |
| LADDER_PUBLISH_WAIT_SECONDS        | 0       | a request waits this long at most for the  |
|                                    |         | broker to acknowledge its event (it is in  |
|                                    |         | the outbox already; the sweeper never      |
|                                    |         | waits); keep it a fraction of the lease.   |
|                                    |         | A waiting answer holds a gRPC thread: at   |
|                                    |         | 1,000 workers 1 s queued calls for seconds |
| LADDER_LOG_LEVEL                   | INFO    | log level (JSON logs on stderr)            |
| OTEL_EXPORTER_OTLP_ENDPOINT        | unset   | export spans over OTLP when set            |

plus the shared ``Settings`` (LADDER_KAFKA_BOOTSTRAP, LADDER_REDIS_URL,
LADDER_TOPIC_PREFIX, ...; see ``ladder.config``).

Consumes every partition of the decisions topic (progress kept in Redis, see
``ladder.state.offsets``; no consumer group) and publishes a
TrialEvent for every transition on the trials topic.
"""

from __future__ import annotations

import logging
import os

from ladder import telemetry
from ladder.bus import ConsumerLoop, EventProducer, Record, health_of
from ladder.config import LEASE_SECONDS, Settings, service_parser
from ladder.failures import MAX_FAILURES
from ladder.grpcserver import ServiceHost
from ladder.state import ConsumerOffsets, open_state
from ladder.transitions import PUBLISH_WAIT_SECONDS, TransitionPublisher
from ladder.v1 import evaluate_pb2_grpc

from services.evaluate.service import EvaluateServicer
from services.evaluate.sweeper import LeaseSweeper

log = logging.getLogger("ladder.evaluate")


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = service_parser("evaluate", __doc__, 50052, read_interval_ms=100)
    parser.add_argument(
        "--lease-seconds", type=float, default=float(env("LADDER_LEASE_SECONDS", LEASE_SECONDS))
    )
    parser.add_argument(
        "--max-attempts", type=int, default=int(env("LADDER_MAX_ATTEMPTS", MAX_FAILURES))
    )
    parser.add_argument(
        "--sweep-seconds", type=float, default=float(env("LADDER_SWEEP_SECONDS", 0))
    )
    parser.add_argument(
        "--outbox-retry-seconds",
        type=float,
        default=float(env("LADDER_OUTBOX_RETRY_SECONDS", 10)),
    )
    parser.add_argument(
        "--publish-wait-seconds",
        type=float,
        default=float(env("LADDER_PUBLISH_WAIT_SECONDS", PUBLISH_WAIT_SECONDS)),
    )
    args = parser.parse_args(argv)
    if args.publish_wait_seconds < 0:
        parser.error("publish wait seconds must be >= 0")
    if args.lease_seconds <= 0:
        parser.error("lease seconds must be > 0")
    if args.max_attempts < 1:
        parser.error("max attempts must be >= 1")
    # A short period: the time from a worker's death to its trial being handed out
    # again is its lease plus up to one sweep.
    sweep = args.sweep_seconds or min(1.0, max(0.1, args.lease_seconds / 4))

    telemetry.setup("ladder-evaluate")
    settings = Settings.from_env()
    state = open_state(settings)
    # The store keeps an old TRIAL_SUGGESTED ahead of the next event after this long,
    # the age at which the relay re-publishes it too.
    state.trials.outbox_retry_seconds = args.outbox_retry_seconds
    state.client.ping()  # fail fast (and visibly) when Redis is unreachable
    producer = EventProducer(settings, "evaluate")
    publisher = TransitionPublisher(
        settings, producer, state.trials, args.publish_wait_seconds
    )
    servicer = EvaluateServicer(state, publisher, args.lease_seconds, args.max_attempts)
    # Every evaluate process reads every decisions partition (decisions are few: one
    # per rung crossing) and applies them idempotently to the shared Redis, so there
    # is no consumer-group rebalance to wait out when a process starts or dies.
    offsets = ConsumerOffsets(state.client, state.keys, "evaluate-decisions")

    def passed(record: Record) -> None:
        # Handled or dead-lettered: never read again after a restart.
        offsets.advance(record.topic, record.partition, record.offset + 1)

    host = ServiceHost("ladder.v1.EvaluateService", args.port, host=settings.bind_host)
    consumer = ConsumerLoop(
        settings,
        "evaluate",
        [settings.topics.decisions],
        servicer.on_decision,
        producer,
        group_id=None,
        start_offsets=offsets.load,
        pace_s=args.read_interval_ms / 1000,
        on_done=passed,
        on_health=health_of(host),
    ).start()
    sweeper = LeaseSweeper(
        state.trials, publisher, sweep, args.outbox_retry_seconds, args.lease_seconds
    ).start()

    evaluate_pb2_grpc.add_EvaluateServiceServicer_to_server(servicer, host.server)

    def on_stop() -> None:
        sweeper.stop()
        consumer.stop()
        producer.close()
        state.close()

    log.info(
        "evaluate: lease %.1fs, max failures %d (unless a study sets its own), sweep every "
        "%.2fs, redis %s, kafka %s",
        args.lease_seconds,
        args.max_attempts,
        sweep,
        settings.redis_url,
        settings.kafka_bootstrap,
    )
    host.run(on_stop)


if __name__ == "__main__":
    main()
