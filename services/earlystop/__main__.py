"""Early-stop service: ``python -m services.earlystop [--port N]``.

A Faust stream processor in two stages (README.md, "Architecture"):

- stage 1, agent ``earlystop-stage1`` on ``<prefix>metrics`` (key trial id; protobuf
  MetricReport or the documented JSON form): smooths each trial's curve (table
  ``trial_curves``) and emits a RungCrossing on ``<prefix>rungs`` (key study id) only
  when a rung milestone is crossed, or when the metric diverged (NaN / inf);
- stage 2, agent ``earlystop-stage2`` on ``<prefix>rungs``: keeps the rung
  leaderboards (table ``rung_entries``), applies the study's rule (ASHA, median,
  Hyperband brackets; ``ladder.schedulers``) and emits a Decision (CONTINUE or STOP,
  with rung, cutoff, rank, population and reason) on ``<prefix>decisions`` (key
  trial id);
- every process reads the whole ``<prefix>studies`` topic itself (no group) into its
  study directory (``studies.StudyFeed``); agent ``earlystop-studies`` only validates
  it, so a malformed StudyEvent gets one dead letter.

Undecodable records, records a retry cannot fix (``ladder.poison``), rung crossings
and StudyEvents their producer did not sign (``ladder.signing``), metrics of a trial
that is unknown, of another study or not running (``--trial-check``), metrics of a
study that has no StudyEvent after ``--unknown-study-wait`` seconds (parked meanwhile,
not waited for: agents.py), and studies whose scheduler config is unusable go to
``<prefix>dead-letter`` with the reason and the payload (its first 64 KiB). Trace
context (W3C ``traceparent``) is read from every record's headers and written into
every record produced.

| env var / flag                                       | default           | meaning              |
|------------------------------------------------------|-------------------|----------------------|
| --port / LADDER_EARLYSTOP_HEALTH_PORT                | 50054             | gRPC health port     |
| --data-dir / LADDER_EARLYSTOP_DATA_DIR               | <state>/earlystop | Faust data directory |
| --web-port / LADDER_EARLYSTOP_WEB_PORT               | 0 (off)           | Faust web UI port    |
| --unknown-study-wait /                               | 10                | seconds a metric of  |
|   LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT                |                   | an unknown study     |
|                                                      |                   | waits for its study  |
|                                                      |                   | (once per study id)  |
| LADDER_CONSUMER_MAX_ATTEMPTS                         | 3                 | failures of a record |
|                                                      |                   | (not an outage)      |
|                                                      |                   | before dead-letter   |
| LADDER_CONSUMER_STUCK_SECONDS                        | 30                | one batch failing    |
|                                                      |                   | this long: health    |
|                                                      |                   | NOT_SERVING          |
| --producer-batch-bytes /                             | 16384             | Faust producer batch |
|   LADDER_EARLYSTOP_PRODUCER_BATCH_BYTES              |                   | size (1 = a record   |
|                                                      |                   | per batch; app.py)   |
| --producer-linger-ms /                               | 20                | producer linger      |
|   LADDER_EARLYSTOP_PRODUCER_LINGER_MS                |                   | (see app.py)         |
| --standby-replicas /                                 | 0                 | Faust standby table  |
|   LADDER_EARLYSTOP_STANDBY_REPLICAS                  |                   | copies (see app.py)  |
| --replication-factor /                               | 1                 | of the changelogs    |
|   LADDER_EARLYSTOP_REPLICATION_FACTOR                |                   |                      |
| --fetch-max-wait-ms /                                | the broker        | consumer long poll   |
|   LADDER_EARLYSTOP_FETCH_MAX_WAIT_MS                 | profile's (tansu  | (see app.py: tansu)  |
|                                                      | 100, kafka 500)   |                      |
| --curve-flush-ms /                                   | 5000              | how long stage 1     |
|   LADDER_EARLYSTOP_CURVE_FLUSH_MS                    |                   | coalesces curve-table|
|                                                      |                   | writes (0: per batch;|
|                                                      |                   | CurveWriteBehind)    |
| --trial-check / LADDER_EARLYSTOP_TRIAL_CHECK         | on                | a report counts only |
|                                                      |                   | for a real, reporting|
|                                                      |                   | trial of its study   |
|                                                      |                   | (Redis trial store;  |
|                                                      |                   | ladder.trialcheck);  |
|                                                      |                   | off: every report    |
| LADDER_LOG_LEVEL                                     | INFO              | JSON logs on stderr  |
| OTEL_EXPORTER_OTLP_ENDPOINT                          | unset             | OTLP span export     |

plus the shared ``Settings`` (LADDER_KAFKA_BOOTSTRAP, LADDER_TOPIC_PREFIX,
LADDER_STATE_DIR, LADDER_BROKER_PROFILE, LADDER_BIND_HOST, ...; see ``ladder.config``).
The Faust app id, which is also the consumer group and the prefix of the changelog
topics, is ``ladder-earlystop-<topic prefix>`` (``Topics.earlystop_group``).

The health service ("" and "ladder.earlystop") reports SERVING once the Faust worker
has joined the group and recovered its tables and the study directory has read the
studies topic to its end; NOT_SERVING while a stage is stuck (one batch failing for
more than LADDER_CONSUMER_STUCK_SECONDS: the broker away, say), the reason logged as an
error; SIGTERM / SIGINT flips it to NOT_SERVING, stops the worker (the group is left,
offsets committed) and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
from ladder import signing, telemetry
from ladder.config import Settings, service_parser
from ladder.kafkaacl import EARLYSTOP
from ladder.poison import PoisonPolicy
from ladder.state.keys import Keys
from ladder.trialcheck import TrialCheck, redis_lookup

from services.earlystop.agents import EarlyStopAgents
from services.earlystop.app import (
    EarlyStopOptions,
    create_app,
    end_offsets_reader,
    topic_partitions,
)
from services.earlystop.health import HealthServer, StageHealth
from services.earlystop.studies import StudyDirectory, StudyFeed
from services.earlystop.tables import LeaderboardView, declare_tables

# Allocations between young-generation collections (CPython: 700); a stream
# processor allocates many short-lived objects per record.
GC_GEN0_THRESHOLD = 20_000
# How often the worker compares the stages' state with the health status.
HEALTH_CHECK_S = 1.0
log = logging.getLogger("ladder.earlystop")


class EarlyStopWorker(faust.Worker):
    """A Faust worker that drives the health status and keeps our JSON logging."""

    logger = logging.getLogger("faust.earlystop")

    def __init__(
        self,
        app: faust.App,
        health: HealthServer,
        started: float,
        studies: StudyDirectory,
        stages: StageHealth,
    ) -> None:
        super().__init__(
            app,
            quiet=True,
            override_logging=False,  # telemetry.setup() owns the root logger
            redirect_stdouts=False,
            loglevel=logging.getLogger().level,
        )
        self.spinner = None  # no terminal spinner escapes in the log
        self.health = health
        self.started_at = started
        self.studies = studies
        self.stages = stages
        self._serving: asyncio.Task[None] | None = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        # What exists now (modules, the app, recovered tables) lives as long as the
        # process: out of the collector's sight, and full collections rarer: a gen-2
        # collection would pause the loop tens of ms and free nothing
        # (bench/README.md, "Early-stop scale").
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)
        self._serving = asyncio.ensure_future(self._serve_once_studies_read())

    async def _serve_once_studies_read(self) -> None:
        await self.studies.wait_caught_up()
        if self.should_stop:
            return  # SIGTERM came first: stay NOT_SERVING
        self.health.set_serving(True)
        log.info("earlystop ready in %.1fs", time.monotonic() - self.started_at)
        await self._watch_stages()

    async def _watch_stages(self) -> None:
        """NOT_SERVING while a stage is stuck, with the reason; SERVING once it moved on.
        Polled: a stuck stage is one where nothing happens."""
        stuck: list[str] = []
        while not self.should_stop:
            now_stuck = self.stages.stuck()
            if [line.split(":")[0] for line in now_stuck] != [
                line.split(":")[0] for line in stuck
            ]:
                if now_stuck:
                    log.error("earlystop NOT_SERVING: %s", "; ".join(now_stuck))
                else:
                    log.info("earlystop SERVING again: its stages move on")
                self.health.set_serving(not now_stuck and not self.should_stop)
            stuck = now_stuck
            await asyncio.sleep(HEALTH_CHECK_S)

    def _on_sigterm(self) -> None:
        self.health.set_serving(False)
        log.info("earlystop: SIGTERM, stopping")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.health.set_serving(False)
        log.info("earlystop: SIGINT, stopping")
        super()._on_sigint()


# Integer options: flag, env var, default (None: the broker profile's), smallest value
# allowed (see the table above).
INT_OPTIONS: tuple[tuple[str, str, int | None, int], ...] = (
    ("--producer-batch-bytes", "LADDER_EARLYSTOP_PRODUCER_BATCH_BYTES", 16384, 1),
    ("--producer-linger-ms", "LADDER_EARLYSTOP_PRODUCER_LINGER_MS", 20, 0),
    ("--standby-replicas", "LADDER_EARLYSTOP_STANDBY_REPLICAS", 0, 0),
    ("--replication-factor", "LADDER_EARLYSTOP_REPLICATION_FACTOR", 1, 1),
    ("--fetch-max-wait-ms", "LADDER_EARLYSTOP_FETCH_MAX_WAIT_MS", None, 0),
    ("--curve-flush-ms", "LADDER_EARLYSTOP_CURVE_FLUSH_MS", 5000, 0),
)


def parse_options(argv: list[str] | None, settings: Settings) -> EarlyStopOptions:
    env = os.environ.get
    parser = service_parser("earlystop", __doc__, 50054, port_env="LADDER_EARLYSTOP_HEALTH_PORT")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("LADDER_EARLYSTOP_DATA_DIR") or settings.state_dir / "earlystop"),
    )
    parser.add_argument("--web-port", type=int, default=int(env("LADDER_EARLYSTOP_WEB_PORT", 0)))
    parser.add_argument(
        "--unknown-study-wait",
        type=float,
        default=float(env("LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT", 10)),
    )
    for flag, env_var, default, _lowest in INT_OPTIONS:
        fallback = settings.broker.fetch_max_wait_ms if default is None else default
        parser.add_argument(flag, type=int, default=int(env(env_var, fallback)))
    parser.add_argument(
        "--trial-check",
        choices=("on", "off"),
        default=env("LADDER_EARLYSTOP_TRIAL_CHECK", "on").strip().lower(),
    )
    args = parser.parse_args(argv)
    if args.unknown_study_wait < 0:
        parser.error("--unknown-study-wait must be >= 0")
    for flag, _env_var, _default, lowest in INT_OPTIONS:
        if getattr(args, flag[2:].replace("-", "_")) < lowest:
            parser.error(f"{flag} must be >= {lowest}")
    return EarlyStopOptions(
        health_port=args.port,
        data_dir=args.data_dir.resolve(),
        web_port=args.web_port,
        web_bind=settings.bind_host,
        unknown_study_wait=args.unknown_study_wait,
        producer_batch_bytes=args.producer_batch_bytes,
        producer_linger_ms=args.producer_linger_ms,
        standby_replicas=args.standby_replicas,
        replication_factor=args.replication_factor,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        curve_flush_ms=args.curve_flush_ms,
        trial_check=args.trial_check == "on",
    )


def build(settings: Settings, options: EarlyStopOptions) -> tuple[faust.App, EarlyStopAgents]:
    topics = settings.topics
    partitions = topic_partitions(settings, [topics.metrics, topics.rungs])
    app = create_app(settings, options)
    tables = declare_tables(app, partitions[topics.metrics], partitions[topics.rungs])
    directory = StudyDirectory(options.unknown_study_wait)
    keyring = signing.keyring(settings.state_dir)
    security = settings.kafka_security(EARLYSTOP)
    feed = StudyFeed(
        settings.kafka_bootstrap,
        topics.studies,
        directory,
        end_offsets_reader(settings.broker, security),
        options.fetch_max_wait_ms,
        keyring,
        security,
    )
    app.task(feed.run)
    leaderboards = LeaderboardView(tables.entries)
    agents = EarlyStopAgents(
        app,
        settings,
        tables,
        directory,
        leaderboards,
        options.curve_flush_ms / 1000.0,
        PoisonPolicy.from_env(),
        TrialCheck(redis_lookup(settings.redis_url, Keys.for_prefix(topics.prefix).trial))
        if options.trial_check
        else None,
        keyring,
    )

    async def forget_index(*_args: Any, **_kwargs: Any) -> None:
        # Partitions moved: the next stage-2 event rebuilds the leaderboards from the
        # recovered table, and the records parked are read again by their partition's
        # owner from the committed offset (they were never acked).
        leaderboards.invalidate()
        agents.forget_parked()

    app.on_partitions_revoked.connect(forget_index)
    app.on_partitions_assigned.connect(forget_index)
    agents.register()
    return app, agents


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    telemetry.setup("ladder-earlystop")
    settings = Settings.from_env()
    options = parse_options(argv, settings)
    app, agents = build(settings, options)
    health = HealthServer(options.health_port, settings.bind_host).start()
    log.info(
        "earlystop: app %s, kafka %s, topics %s*, health port %d",
        app.conf.id,
        settings.kafka_bootstrap,
        settings.topics.prefix,
        health.port,
    )
    worker = EarlyStopWorker(app, health, started, agents.studies, agents.health)
    code: Any = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
    finally:
        health.stop()
        telemetry.shutdown()
        log.info("earlystop stopped (exit %s)", code)
    sys.exit(code)


if __name__ == "__main__":
    main()
