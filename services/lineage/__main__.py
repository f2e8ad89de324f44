"""The lineage service: records every event into its store (SQLite or PostgreSQL) and
answers lineage queries.

    python -m services.lineage [--port N] [--db PATH_OR_URL]

| env var               | flag   | default                               |
|-----------------------|--------|---------------------------------------|
| LADDER_LINEAGE_PORT   | --port | 50053                                 |
| LADDER_LINEAGE_DB     | --db   | <LADDER_STATE_DIR>/lineage.sqlite3 (path or URL: below) |
| LADDER_LINEAGE_HOST   | --host | LADDER_BIND_HOST, else 127.0.0.1      |
| LADDER_LINEAGE_READ_INTERVAL_MS | --read-interval-ms | 500 (0: read as records arrive) |
| LADDER_KAFKA_BOOTSTRAP, LADDER_TOPIC_PREFIX, LADDER_STATE_DIR | | see ladder.config |

The store (LADDER_LINEAGE_DB / --db): a file path or ``sqlite:///PATH`` is an embedded
SQLite database (the default); ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``
(libpq URL, query parameters such as ``sslmode`` allowed) is a PostgreSQL database,
whose tables the service creates or upgrades at start-up. Anything else stops the
service at start-up with an error naming these forms (exit status 2).

One group-less consumer reads every topic (studies, trials, metrics, rungs,
decisions, dead-letter) and resumes from the offsets stored with the data, in the
same transactions, so ingestion is exactly-once across restarts (see store.py). gRPC health
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

from ladder import telemetry
from ladder.bus import ConsumerLoop, EventProducer, health_of
from ladder.config import Settings, service_parser
from ladder.grpcserver import ServiceHost
from ladder.v1 import lineage_pb2, lineage_pb2_grpc

from services.lineage.db import (
    TRANSIENT,
    Location,
    LocationError,
    open_database,
    parse_location,
)
from services.lineage.ingest import Ingestor, RecordHandler, dead_letter_unstorable
from services.lineage.queries import LineageQueries
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
        default=os.environ.get("LADDER_LINEAGE_DB") or str(settings.state_dir / "lineage.sqlite3"),
    )
    args = parser.parse_args(argv)
    try:
        args.db = parse_location(args.db)
    except LocationError as exc:
        parser.error(f"LADDER_LINEAGE_DB / --db: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    telemetry.setup("ladder-lineage")
    settings = Settings.from_env()
    args = parse_args(argv, settings)
    location: Location = args.db

    try:
        store = LineageStore(open_database(location))  # creates / migrates the schema
    except TRANSIENT as exc:
        log.error("cannot open the lineage store at %s: %s", location, exc)
        return 1

    def read_only() -> LineageQueries:
        return LineageQueries(open_database(location, readonly=True))

    def stored_offsets() -> dict[tuple[str, int], int]:
        with closing(read_only()) as queries:
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
    servicer = LineageServicer(read_only)
    lineage_pb2_grpc.add_LineageServiceServicer_to_server(servicer, host.server)

    def on_stop() -> None:
        consumer.stop()
        ingestor.stop()
        producer.close()
        servicer.close()
        with closing(read_only()) as queries:
            counters = queries.counters()
        store.database.close()
        log.info(
            "lineage stopped; %d records applied this run; counters %s", ingestor.applied, counters
        )

    log.info(
        "lineage store at %s (%s); consuming %s",
        location, location.engine, ", ".join(settings.topics.all()),
    )
    consumer.start()
    host.run(on_stop=on_stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
