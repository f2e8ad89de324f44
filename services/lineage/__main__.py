"""The lineage service: records every event into SQLite and answers lineage queries.

    python -m services.lineage [--port N] [--db PATH]

| env var               | flag   | default                               |
|-----------------------|--------|---------------------------------------|
| LADDER_LINEAGE_PORT   | --port | 50053                                 |
| LADDER_LINEAGE_DB     | --db   | <LADDER_STATE_DIR>/lineage.sqlite3    |
| LADDER_LINEAGE_HOST   | --host | LADDER_BIND_HOST, else 127.0.0.1      |
| LADDER_LINEAGE_READ_INTERVAL_MS | --read-interval-ms | 500 (0: read as records arrive) |
| LADDER_KAFKA_BOOTSTRAP, LADDER_TOPIC_PREFIX, LADDER_STATE_DIR | | see ladder.config |

One group-less consumer reads every topic (studies, trials, metrics, rungs,
decisions, dead-letter) and resumes from the offsets stored in SQLite with the
data, so ingestion is exactly-once across restarts (see store.py). gRPC health
"" is SERVING once the server listens, NOT_SERVING while the consumer is stuck on a
record (ladder.bus); SIGTERM stops gRPC, the consumer, then
the writer after it committed what it had queued.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from ladder import telemetry
from ladder.bus import ConsumerLoop, EventProducer, health_of
from ladder.config import Settings, service_parser
from ladder.grpcserver import ServiceHost
from ladder.v1 import lineage_pb2, lineage_pb2_grpc

from services.lineage.ingest import Ingestor, RecordHandler, dead_letter_unstorable
from services.lineage.queries import LineageQueries
from services.lineage.schema import connect
from services.lineage.service import LineageServicer
from services.lineage.store import LineageStore

log = logging.getLogger("ladder.lineage")

SERVICE_NAME = lineage_pb2.DESCRIPTOR.services_by_name["LineageService"].full_name


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    parser = service_parser("lineage", __doc__, 50053, read_interval_ms=500)
    parser.add_argument(
        "--host", default=os.environ.get("LADDER_LINEAGE_HOST") or settings.bind_host
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path(os.environ.get("LADDER_LINEAGE_DB") or settings.state_dir / "lineage.sqlite3"),
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    telemetry.setup("ladder-lineage")
    settings = Settings.from_env()
    args = parse_args(argv, settings)
    args.db.parent.mkdir(parents=True, exist_ok=True)

    store = LineageStore(connect(args.db))  # creates / migrates the schema

    def stored_offsets() -> dict[tuple[str, int], int]:
        with closing(LineageQueries(connect(args.db, readonly=True))) as queries:
            return queries.offsets()

    producer = EventProducer(settings, "lineage")
    ingestor = Ingestor(store, on_poison=dead_letter_unstorable(producer)).start()
    host = ServiceHost(SERVICE_NAME, args.port, host=args.host)
    consumer = ConsumerLoop(
        settings,
        "lineage",
        settings.topics.all(),
        RecordHandler(settings.topics, ingestor, producer),
        producer,
        group_id=None,
        start_offsets=stored_offsets,
        # Metric points are stored, not traced one by one (early-stop traces the ones
        # that cross a rung); every other topic's records get their CONSUMER span.
        untraced_topics=[settings.topics.metrics],
        pace_s=args.read_interval_ms / 1000,
        on_health=health_of(host),
    )
    servicer = LineageServicer(lambda: LineageQueries(connect(args.db, readonly=True)))
    lineage_pb2_grpc.add_LineageServiceServicer_to_server(servicer, host.server)

    def on_stop() -> None:
        consumer.stop()
        ingestor.stop()
        producer.close()
        servicer.close()
        with closing(LineageQueries(connect(args.db, readonly=True))) as queries:
            counters = queries.counters()
        store.connection.close()
        log.info(
            "lineage stopped; %d records applied this run; counters %s", ingestor.applied, counters
        )

    log.info("lineage store at %s; consuming %s", args.db, ", ".join(settings.topics.all()))
    consumer.start()
    host.run(on_stop=on_stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
