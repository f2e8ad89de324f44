"""Suggest service: ``python -m services.suggest [--port N]``.

Creates studies and answers Suggest with resumable or new trials.

| env var / flag                 | default | meaning                                        |
|--------------------------------|---------|------------------------------------------------|
| ``--port`` / LADDER_SUGGEST_PORT | 50051 | gRPC port (health service included)             |
| LADDER_CLAIM_SECONDS           | 120     | a handed-out trial not started within this     |
|                                |         | becomes resumable again (evaluate's sweeper)   |
| LADDER_LOG_LEVEL               | INFO    | log level (JSON logs on stderr)                |
| OTEL_EXPORTER_OTLP_ENDPOINT    | unset   | export spans over OTLP when set                |

plus the shared ``Settings`` (LADDER_KAFKA_BOOTSTRAP, LADDER_REDIS_URL,
LADDER_TOPIC_PREFIX, ...; see ``ladder.config``).

Consumes the trials topic (every process reads all of it, no group) to feed
completed observations to the samplers; publishes StudyEvents and
TRIAL_SUGGESTED events.
"""

from __future__ import annotations

import argparse
import logging
import os

from ladder import telemetry
from ladder.bus import ConsumerLoop, EventProducer
from ladder.config import Settings
from ladder.grpcserver import ServiceHost
from ladder.state import open_state
from ladder.v1 import suggest_pb2_grpc

from services.suggest.service import SuggestServicer

log = logging.getLogger("ladder.suggest")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.suggest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("LADDER_SUGGEST_PORT", 50051))
    )
    parser.add_argument(
        "--claim-seconds", type=float, default=float(os.environ.get("LADDER_CLAIM_SECONDS", 120))
    )
    args = parser.parse_args(argv)

    telemetry.setup("ladder-suggest")
    settings = Settings.from_env()
    state = open_state(settings)
    state.client.ping()  # fail fast (and visibly) when Redis is unreachable
    producer = EventProducer(settings, "suggest")
    servicer = SuggestServicer(settings, state, producer, claim_seconds=args.claim_seconds)
    consumer = ConsumerLoop(
        settings,
        "suggest",
        [settings.topics.trials],
        servicer.on_trial_event,
        producer,
        group_id=None,
    ).start()

    host = ServiceHost("ladder.v1.SuggestService", args.port)
    suggest_pb2_grpc.add_SuggestServiceServicer_to_server(servicer, host.server)

    def on_stop() -> None:
        consumer.stop()
        producer.close()
        state.close()

    log.info(
        "suggest: redis %s, kafka %s, topic prefix %r",
        settings.redis_url,
        settings.kafka_bootstrap,
        settings.topics.prefix,
    )
    host.run(on_stop)


if __name__ == "__main__":
    main()
