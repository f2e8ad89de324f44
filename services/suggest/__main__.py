"""Suggest service: ``python -m services.suggest [--port N]``.

Creates studies and answers Suggest with resumable or new trials.

| env var / flag                 | default | meaning                                        |
|--------------------------------|---------|------------------------------------------------|
| ``--port`` / LADDER_SUGGEST_PORT | 50051 | gRPC port (health service included)             |
| ``--read-interval-ms`` /       | 200     | once caught up, read trials and decisions at   |
| LADDER_SUGGEST_READ_INTERVAL_MS |        | most this often (0: as they arrive)            |
| LADDER_CLAIM_SECONDS           | 120     | a handed-out trial not started within this     |
|                                |         | becomes resumable again (evaluate's sweeper)   |
| LADDER_LEASE_SECONDS           | 8       | the lease of an attempt Suggest starts (its    |
|                                |         | ``start``): set it as for evaluate, whose      |
|                                |         | StartTrial grants the same                     |
| ``--buffer`` / LADDER_SUGGEST_BUFFER | 8 | the fewest ready model-based suggestions a   |
|                                |         | refit asks for per (study, partition); TPE at  |
|                                |         | least 17 (one candidate pool, cheaper than 8)  |
| ``--buffer-max`` /             | 1024    | the most; between the two a refit asks for the |
| LADDER_SUGGEST_BUFFER_MAX      |         | most points taken within one refit cycle over  |
|                                |         | the last 60 s x 2 (``ladder.samplers.sizing``) |
| LADDER_SUGGEST_REFIT           | process | ``process``: model-based samplers run in child |
|                                |         | processes (refits never hold this process'     |
|                                |         | GIL); ``thread``: on the refit threads here    |
| LADDER_REFIT_PROCESSES         | 2       | refit child processes at most: refits of       |
|                                |         | different partitions run in parallel           |
| LADDER_REFIT_NICE              | 5       | CPU niceness added to the refit process        |
| ``--settle-seconds`` /         | 10      | a study whose budget is spent, with nothing    |
| LADDER_STUDY_SETTLE_S          |         | left to run but PAUSED trials, completes once  |
|                                |         | no trial event of it came for this long (a     |
|                                |         | PROMOTE may be under way; ``ladder.lifecycle``)|
| LADDER_SUGGEST_LEASES          | 0       | 1: owned partitions, for several replicas: each|
|                                |         | model-based (study, partition) is fitted by the|
|                                |         | one replica holding its Redis lease, its ready |
|                                |         | suggestions kept in Redis for every replica    |
|                                |         | (``ownership.py``); 0: this process fits and   |
|                                |         | holds every partition (one replica)            |
| LADDER_SUGGEST_LEASE_TTL_S     | 3       | a partition lease not renewed for this long is |
|                                |         | taken by another replica (keep it under 4: a   |
|                                |         | dead owner's partitions move within ttl + renew|
|                                |         | interval, under 5 s)                           |
| LADDER_SUGGEST_LEASE_RENEW_S   | 1       | how often leases are renewed and partitions    |
|                                |         | rebalanced (< ttl)                             |
| LADDER_SWITCH_INTERVAL_MS      | 1       | Python GIL switch interval (``thread`` mode)   |
| LADDER_LOG_LEVEL               | INFO    | log level (JSON logs on stderr)                |
| OTEL_EXPORTER_OTLP_ENDPOINT    | unset   | export spans over OTLP when set                |

plus the shared ``Settings`` (LADDER_KAFKA_BOOTSTRAP, LADDER_REDIS_URL,
LADDER_TOPIC_PREFIX, ...; see ``ladder.config``).

At start, every study stored in Redis is published to the studies topic again (a
restarted embedded broker starts empty; the topic is compacted, so this is harmless).

Study lifecycle (``ladder.lifecycle``): StopStudy / ResumeStudy switch a study between
ACTIVE and STOPPED (a stopped study hands out resumable trials only); a study whose
``max_trials`` are handed out and all ended becomes COMPLETED, checked every second by
a sweep thread (``completion.py``); each change is published as a StudyEvent.

Consumes the trials topic (completed trials, and FAILED ones as failed
observations: counted in ``ladder.suggest.failed_observations`` and logged with
the study's totals) and the decisions topic (rung values, lower fidelity) —
every process reads all of both, no group — to feed observations to the
samplers; publishes StudyEvents and TRIAL_SUGGESTED events.

Model-based studies (GP, TPE, AUTO) are answered from the ready buffer of a
suggestion policy per (study, partition) that a background refit loop keeps
full (``ladder.samplers.policy``); new observations do not empty the buffer (its
points serve until the refit with them lands), and each suggestion says which
model chose it and how stale it was (``Suggestion.model_observations``,
``unseen_observations``, ``model_age_seconds``; metric ``ladder.suggest.served_by``).
A request never waits for a refit: a miss is answered by TPE in this process
("tpe-fallback") once it can fit, by the quasi-random fallback ("sobol-fallback")
before, and counted.
Several replicas (LADDER_SUGGEST_LEASES=1, ``ladder.state.leases``): each process
owns a fair share of the partitions (leases with fencing tokens, renewed every
second); the owner refits and pushes ready suggestions to the partition's Redis list,
and every replica pops from it (a miss is answered by the fallbacks, as above). A
dead owner's partitions are owned by a survivor within about ttl + renew seconds.
On SIGTERM the gRPC server drains, then the leases are handed back and the refit
loops are stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid

from ladder import lifecycle, telemetry
from ladder.bus import ConsumerLoop, EventProducer, health_of
from ladder.config import LEASE_SECONDS, Settings, service_parser
from ladder.grpcserver import ServiceHost
from ladder.state import State, open_state
from ladder.state.leases import LeaseSettings, PartitionLeases
from ladder.v1 import suggest_pb2_grpc

from services.suggest.ownership import PartitionOwnership
from services.suggest.refit import RefitProcess
from services.suggest.service import SuggestServicer

log = logging.getLogger("ladder.suggest")


def main(argv: list[str] | None = None) -> None:
    parser = service_parser("suggest", __doc__, 50051, read_interval_ms=200)
    parser.add_argument(
        "--claim-seconds", type=float, default=float(os.environ.get("LADDER_CLAIM_SECONDS", 120))
    )
    parser.add_argument(
        "--buffer", type=int, default=int(os.environ.get("LADDER_SUGGEST_BUFFER", 8))
    )
    parser.add_argument(
        "--buffer-max", type=int, default=int(os.environ.get("LADDER_SUGGEST_BUFFER_MAX", 1024))
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=float(
            os.environ.get("LADDER_STUDY_SETTLE_S", lifecycle.DEFAULT_SETTLE_SECONDS)
        ),
    )
    parser.add_argument(
        "--refit",
        choices=("process", "thread"),
        default=os.environ.get("LADDER_SUGGEST_REFIT", "process"),
    )
    args = parser.parse_args(argv)
    if args.buffer < 1:
        parser.error(f"--buffer must be >= 1 (got {args.buffer})")
    if args.buffer_max < args.buffer:
        parser.error(f"--buffer-max must be >= --buffer (got {args.buffer_max} < {args.buffer})")
    # A refit thread holds the GIL for long stretches of Python (BoTorch); the
    # default 5 ms switch interval would add up to 5 ms to every blocking call a
    # request makes. 1 ms keeps the request threads' waits short.
    sys.setswitchinterval(float(os.environ.get("LADDER_SWITCH_INTERVAL_MS", 1)) / 1000)

    telemetry.setup("ladder-suggest")
    settings = Settings.from_env()
    state = open_state(settings)
    state.client.ping()  # fail fast (and visibly) when Redis is unreachable
    # A short linger: TRIAL_SUGGESTED should reach the topic before the worker's
    # TRIAL_STARTED, which evaluate sends with the longer default (see publisher.py).
    producer = EventProducer(settings, "suggest", linger_ms=min(10, settings.kafka_linger_ms))
    refit = None
    if args.refit == "process":
        refit = RefitProcess(
            settings,
            nice=int(os.environ.get("LADDER_REFIT_NICE", 5)),
            processes=int(os.environ.get("LADDER_REFIT_PROCESSES", 2)),
        )
    servicer = SuggestServicer(
        settings,
        state,
        producer,
        claim_seconds=args.claim_seconds,
        buffer_capacity=args.buffer,
        buffer_max=args.buffer_max,
        refit_process=refit,
        settle_seconds=args.settle_seconds,
        lease_seconds=float(os.environ.get("LADDER_LEASE_SECONDS", LEASE_SECONDS)),
    )
    try:
        count = servicer.republish_studies()
        log.info("republished %d stored studies to %s", count, settings.topics.studies)
    except Exception:  # noqa: BLE001 - serving matters more; the next start tries again
        log.exception("could not republish the stored studies; early stopping may not "
                      "know the studies created before this start")
    host = ServiceHost("ladder.v1.SuggestService", args.port, host=settings.bind_host)
    consumer = ConsumerLoop(
        settings,
        "suggest",
        [settings.topics.trials, settings.topics.decisions],
        servicer.on_event,
        producer,
        group_id=None,
        pace_s=args.read_interval_ms / 1000,
        on_health=health_of(host),
    ).start()

    ownership = None
    if os.environ.get("LADDER_SUGGEST_LEASES", "0") == "1":
        ownership = owned_partitions(state, servicer)
    suggest_pb2_grpc.add_SuggestServiceServicer_to_server(servicer, host.server)
    servicer.completion.start()

    def on_stop() -> None:
        if ownership is not None:
            ownership.stop()
        servicer.completion.stop()
        consumer.stop()
        servicer.pool.stop()
        producer.close()  # flushes: the last deliveries queue their outbox acks
        servicer.publisher.close()
        state.close()

    log.info(
        "suggest: redis %s, kafka %s, topic prefix %r",
        settings.redis_url,
        settings.kafka_bootstrap,
        settings.topics.prefix,
    )
    host.run(on_stop)


def owned_partitions(state: State, servicer: SuggestServicer) -> PartitionOwnership:
    """Owned partitions (module docstring): leases taken now, before serving."""
    lease_settings = LeaseSettings(
        ttl=float(os.environ.get("LADDER_SUGGEST_LEASE_TTL_S", 3)),
        renew=float(os.environ.get("LADDER_SUGGEST_LEASE_RENEW_S", 1)),
    )
    member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    leases = PartitionLeases(state.client, state.keys, member, lease_settings)
    ownership = PartitionOwnership(leases, state.studies, servicer.pool.policy)
    servicer.pool.share(ownership.buffer)
    log.info("owned partitions: member %s, lease ttl %.1f s, renewed every %.1f s",
             member, lease_settings.ttl, lease_settings.renew)
    return ownership.start()


if __name__ == "__main__":
    main()
