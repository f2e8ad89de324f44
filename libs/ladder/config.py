"""Configuration shared by every Ladder process.

Everything is read from environment variables with documented defaults; services
add their own flags on top (see each service's ``__main__``). When no explicit
endpoints are set, the addresses written by ``ladder up`` into the state folder
(``<state>/stack.json``) are used, so a process started beside the embedded stack
needs no configuration at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladder import kafkasecurity

TOPIC_NAMES = ("metrics", "rungs", "decisions", "trials", "studies", "dead-letter")
# The one-partition topic ``ladder up`` writes and reads back before it calls the broker
# ready (``ladder.stack.probes.kafka_roundtrip``).
STACK_PROBE_TOPIC = "stack-probe"
# The lease evaluate grants (its --lease-seconds / LADDER_LEASE_SECONDS default); a worker
# whose StartTrial names none keeps alive for this one. Workers renew it every quarter
# (2 s), so a dead worker's trial is resumable 8-10 s after its last beat and running
# again within 15 s (bench-chaos); the load simulator beats every 5 reports, 5 s apart
# at its default pace, which still fits.
LEASE_SECONDS = 8.0


def state_dir() -> Path:
    """LADDER_STATE_DIR, default ``.ladder`` in the current directory."""
    return Path(os.environ.get("LADDER_STATE_DIR", ".ladder")).resolve()


def service_parser(
    service: str,
    doc: str | None,
    port: int,
    port_env: str = "",
    read_interval_ms: int | None = None,
) -> argparse.ArgumentParser:
    """The command line every service starts from: ``python -m services.<service>``
    with its module docstring as ``--help``, ``--port`` (default: ``port_env``, else
    LADDER_<SERVICE>_PORT, else ``port``) and, for the services whose ConsumerLoop
    is paced, ``--read-interval-ms`` (LADDER_<SERVICE>_READ_INTERVAL_MS, else
    ``read_interval_ms``). Each service adds its own flags."""
    env = f"LADDER_{service.upper()}"
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get(port_env or f"{env}_PORT", port))
    )
    if read_interval_ms is not None:
        parser.add_argument(
            "--read-interval-ms",
            type=int,
            default=int(os.environ.get(f"{env}_READ_INTERVAL_MS", read_interval_ms)),
            help="once caught up, read the topics at most this often: fewer, fuller "
            "broker fetches (0: as records arrive)",
        )
    return parser


def stack_file(base: Path | None = None) -> Path:
    return (base or state_dir()) / "stack.json"


def token_file(base: Path | None = None) -> Path:
    """Where the embedded stack writes the default tenant's API token (mode 0600)."""
    return (base or state_dir()) / "token"


def _token(base: Path) -> str:
    """LADDER_TOKEN, else the state folder's token file, else none."""
    value = os.environ.get("LADDER_TOKEN", "").strip()
    if value:
        return value
    try:
        return token_file(base).read_text().strip()
    except OSError:
        return ""


_ON = frozenset({"1", "on", "true", "yes"})
_OFF = frozenset({"0", "off", "false", "no"})


def env_flag(name: str, default: bool) -> bool:
    """An on/off variable (1/on/true/yes, 0/off/false/no); ValueError names it."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _ON | _OFF:
        return value in _ON
    raise ValueError(f"{name}={value!r}: expected on or off")


@dataclass(frozen=True)
class Tls:
    """PEM files of the gRPC services' TLS (``ladder.channels``); empty: not used.

    A server with ``cert`` and ``key`` serves TLS only; with ``client_ca`` too it also
    requires a client certificate signed by it (mutual TLS). A client with ``ca`` (or a
    ``cert``/``key`` pair and no ``ca``: the system roots) connects with TLS, presenting
    ``client_cert``/``client_key`` when given; ``server_name`` overrides the name the
    server's certificate must carry (default: the address's host)."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    ca: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = ""

    @property
    def serves(self) -> bool:
        return bool(self.cert and self.key)

    @property
    def connects(self) -> bool:
        return bool(self.ca or self.client_cert)

    @classmethod
    def from_env(cls) -> Tls:
        return cls(**{
            name: os.environ.get(f"LADDER_TLS_{name.upper()}", "")
            for name in cls.__dataclass_fields__
        })


def stack_values(base: Path | None = None) -> dict[str, Any]:
    """The ``stack.json`` of the state folder ``base`` (default LADDER_STATE_DIR) as a
    dict; empty when there is none or it cannot be read."""
    path = stack_file(base)
    if path.exists():
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return values if isinstance(values, dict) else {}
    return {}


def _pick(env: str, stack: Mapping[str, Any], stack_key: str, default: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    return stack.get(stack_key) or default


@dataclass(frozen=True)
class BrokerProfile:
    """What the Kafka clients of every Ladder process do differently per broker.

    The embedded broker (tansu 0.6) needs workarounds a Kafka cluster must not pay for;
    each knob says which behaviour of tansu it answers (see ``TANSU_PROFILE``)."""

    name: str
    # Read again the offsets a fetch skipped on a contiguous topic (``ladder.gaps``).
    gap_guard: bool
    # Consumer-group timeouts (librdkafka's and Faust's).
    session_timeout_ms: int
    heartbeat_interval_ms: int
    rebalance_timeout_ms: int
    max_poll_interval_ms: int
    # Producer linger of the services' event producers (LADDER_KAFKA_LINGER_MS overrides).
    producer_linger_ms: int
    # How long a fetch waits on the broker for records (the long poll).
    fetch_max_wait_ms: int
    # Honour a consumer's read interval (``bus.ConsumerLoop`` ``pace_s``).
    pace_consumers: bool
    # Correct ListOffsets answers with the high watermark a fetch reports.
    end_offset_probe: bool


# What tansu 0.6 needs (the figures are in bench/README.md):
# - a fetch can return a batch from beyond acknowledged records of another producer on
#   the same partition (bench/tansu_skip.py): the gap guard reads them again;
# - a group's first join waits for the rebalance timeout, and a member that died holds
#   its partitions until its session expires: short group timeouts;
# - a fetch's cost grows with the record batches a partition holds: 20 ms producer
#   linger (fewer, fuller batches) and paced consumers (fewer, fuller fetches);
# - a pending fetch is not answered when records arrive: a 100 ms long poll;
# - ListOffsets answers the base offset of the last batch + 1: the end offset is
#   confirmed by a fetch (services/earlystop/app.py).
TANSU_PROFILE = BrokerProfile(
    name="tansu",
    gap_guard=True,
    session_timeout_ms=6000,
    heartbeat_interval_ms=1000,
    rebalance_timeout_ms=5000,
    max_poll_interval_ms=6000,
    producer_linger_ms=20,
    fetch_max_wait_ms=100,
    pace_consumers=True,
    end_offset_probe=True,
)
# A Kafka cluster: the clients' own defaults (librdkafka, Kafka 3 and Faust).
KAFKA_PROFILE = BrokerProfile(
    name="kafka",
    gap_guard=False,
    session_timeout_ms=45_000,
    heartbeat_interval_ms=3000,
    rebalance_timeout_ms=60_000,
    max_poll_interval_ms=300_000,
    producer_linger_ms=5,
    fetch_max_wait_ms=500,
    pace_consumers=False,
    end_offset_probe=False,
)
BROKER_PROFILES = {profile.name: profile for profile in (TANSU_PROFILE, KAFKA_PROFILE)}


def broker_profile(name: str) -> BrokerProfile:
    """The preset called ``name``; ValueError names the known ones."""
    try:
        return BROKER_PROFILES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(BROKER_PROFILES))
        raise ValueError(f"LADDER_BROKER_PROFILE={name!r}: expected one of {known}") from None


def chosen_broker_profile(bootstrap: str, stack: Mapping[str, Any]) -> BrokerProfile:
    """LADDER_BROKER_PROFILE when set. Otherwise: the broker ``ladder up`` recorded in
    stack.json when ``bootstrap`` is that broker; kafka for any other broker given in
    LADDER_KAFKA_BOOTSTRAP; tansu, the embedded default, when none is given."""
    explicit = os.environ.get("LADDER_BROKER_PROFILE")
    if explicit:
        return broker_profile(explicit)
    if stack.get("kafka_bootstrap") == bootstrap:
        return recorded_broker_profile(stack)
    return KAFKA_PROFILE if os.environ.get("LADDER_KAFKA_BOOTSTRAP") else TANSU_PROFILE


def recorded_broker_profile(stack: Mapping[str, Any]) -> BrokerProfile:
    """The profile a stack.json records; one written without it used the embedded
    broker unless its Kafka was external."""
    name = stack.get("broker_profile")
    if name:
        return broker_profile(name)
    return KAFKA_PROFILE if (stack.get("external") or {}).get("kafka") else TANSU_PROFILE


@dataclass(frozen=True)
class Topics:
    prefix: str = "ladder."

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    @property
    def metrics(self) -> str:
        return self.name("metrics")

    @property
    def rungs(self) -> str:
        return self.name("rungs")

    @property
    def decisions(self) -> str:
        return self.name("decisions")

    @property
    def trials(self) -> str:
        return self.name("trials")

    @property
    def studies(self) -> str:
        return self.name("studies")

    @property
    def dead_letter(self) -> str:
        return self.name("dead-letter")

    def all(self) -> list[str]:
        return [self.name(t) for t in TOPIC_NAMES]

    @property
    def compacted(self) -> list[str]:
        """Topics kept compacted (the latest record per key): offsets there have gaps."""
        return [self.studies]

    @property
    def contiguous(self) -> frozenset[str]:
        """Topics whose offsets follow each other: a gap read there was skipped by the
        fetch, and is read again (``ladder.gaps``)."""
        return frozenset(self.all()) - frozenset(self.compacted)

    @property
    def earlystop_group(self) -> str:
        """``ladder-earlystop-<prefix>``: the early-stop Faust app id, its consumer group
        and the prefix of its changelog topics; one per topic namespace."""
        cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", self.prefix).strip("-_")
        return f"ladder-earlystop-{cleaned or 'default'}"


def _checked_kafka_env() -> tuple[tuple[str, str], ...]:
    """The LADDER_KAFKA_* variables, checked once here so a process with unusable Kafka
    security settings stops at start with the variable's name."""
    found = kafkasecurity.kafka_env(os.environ)
    kafkasecurity.from_env(dict(found))
    return found


@dataclass(frozen=True)
class Settings:
    """Endpoints of the shared infrastructure and the services.

    | env var                    | default                         |
    |----------------------------|---------------------------------|
    | LADDER_STATE_DIR           | ./.ladder                       |
    | LADDER_KAFKA_BOOTSTRAP     | stack.json, else 127.0.0.1:9092 |
    | LADDER_REDIS_URL           | stack.json, else redis://127.0.0.1:6379/0 |
    | LADDER_TOPIC_PREFIX        | ladder.                         |
    | LADDER_SUGGEST_ADDR        | stack.json, else 127.0.0.1:50051 |
    | LADDER_EVALUATE_ADDR       | stack.json, else 127.0.0.1:50052 |
    | LADDER_LINEAGE_ADDR        | stack.json, else 127.0.0.1:50053 |
    | LADDER_BROKER_PROFILE      | see ``chosen_broker_profile``   |
    | LADDER_KAFKA_LINGER_MS     | the profile's (tansu 20, kafka 5) |
    | LADDER_BIND_HOST           | 127.0.0.1                       |
    | LADDER_AUTH                | off (`ladder up`'s services: on): on, RPCs need a token |
    | LADDER_AUTH_CACHE_S        | 2 (a revoked token works at most this much longer) |
    | LADDER_SCHEDULER_POLICY    | fair (RequestWork by fair share); fifo: study order (baseline) |
    | LADDER_RESERVE_FRACTION    | 0.05: RequestWork holds at most this part of nodes (0: none) |
    | LADDER_RESERVE_SECONDS     | 600: a node reservation lapses this long after it was made |
    | LADDER_SCHED_VIEW_SECONDS  | 1: RequestWork reuses its read of the node offers this long |
    | LADDER_TOKEN               | the state folder's `token` file (written by `ladder up`) |
    | LADDER_TLS_CERT, LADDER_TLS_KEY | none; set: the services serve TLS only (PEM paths) |
    | LADDER_TLS_CLIENT_CA       | none; set: services require client certs it signed |
    | LADDER_TLS_CA              | none; set: clients connect with TLS, trusting this CA |
    | LADDER_TLS_CLIENT_CERT, LADDER_TLS_CLIENT_KEY | none; the cert clients present (mTLS) |
    | LADDER_TLS_SERVER_NAME     | the address's host; the name the services' certificate carries |
    | LADDER_BUS_SIGNING_KEYS    | `<state>/bus-signing-keys.json`; `kid:hex,...` (bus-security) |
    | LADDER_BUS_SIGNING_KEY     | none; one hex secret (key id `default`) |
    | LADDER_KAFKA_SECURITY_PROTOCOL | PLAINTEXT; SSL, SASL_PLAINTEXT, SASL_SSL (kafkasecurity) |
    | LADDER_KAFKA_SASL_MECHANISM | SCRAM-SHA-512; SCRAM-SHA-256, PLAIN |
    | LADDER_KAFKA_USER, LADDER_KAFKA_PASSWORD | none; the SASL principal and its password |
    | LADDER_KAFKA_PASSWORD_FILE | none; a file holding the password (a mounted secret) |
    | LADDER_KAFKA_<SERVICE>_USER | LADDER_KAFKA_USER; that service's own (`_EARLYSTOP_USER`) |
    | LADDER_KAFKA_<SERVICE>_PASSWORD[_FILE] | the shared ones; that service's own password |
    | LADDER_KAFKA_CA            | the system's CAs; PEM file the broker's cert is checked with |
    | LADDER_KAFKA_CERT, LADDER_KAFKA_KEY | none; client certificate and key (mutual TLS) |
    """

    kafka_bootstrap: str
    redis_url: str
    topics: Topics = field(default_factory=Topics)
    suggest_addr: str = "127.0.0.1:50051"
    evaluate_addr: str = "127.0.0.1:50052"
    lineage_addr: str = "127.0.0.1:50053"
    state_dir: Path = field(default_factory=state_dir)
    # Producer linger of the services' event producers (suggest lingers less: its
    # TRIAL_SUGGESTED should reach the topic before the worker's TRIAL_STARTED).
    kafka_linger_ms: int = TANSU_PROFILE.producer_linger_ms
    broker: BrokerProfile = TANSU_PROFILE
    # Interface the services' servers listen on.
    bind_host: str = "127.0.0.1"
    # Authentication and authorisation of every RPC (ladder.auth), TLS (ladder.channels).
    auth: bool = False
    auth_cache_s: float = 2.0
    token: str = ""
    # RequestWork's policy (ladder.scheduling.work.Policy): "fair" or "fifo".
    scheduler_policy: str = "fair"
    # RequestWork's node reservations (ladder.scheduling.reservation): the most nodes
    # held at once for short tenants, as a part of the nodes, and how long one lasts.
    reserve_fraction: float = 0.05
    reserve_seconds: float = 600.0
    sched_view_seconds: float = 1.0
    tls: Tls = field(default_factory=Tls)
    # The LADDER_KAFKA_* variables: each Kafka client's security (``kafka_security``).
    kafka_env: tuple[tuple[str, str], ...] = ()

    def kafka_security(self, service: str = "") -> kafkasecurity.KafkaSecurity:
        """How ``service``'s Kafka clients authenticate (``ladder.kafkasecurity``):
        its own principal when LADDER_KAFKA_<SERVICE>_USER names one, else the shared."""
        return kafkasecurity.from_env(dict(self.kafka_env), service)

    @property
    def gap_guarded_topics(self) -> frozenset[str]:
        """Topics whose consumers read again what a fetch skipped (``ladder.gaps``):
        the contiguous ones, on a broker whose profile asks for it."""
        return self.topics.contiguous if self.broker.gap_guard else frozenset()

    @classmethod
    def from_env(cls) -> Settings:
        stack = stack_values()
        bootstrap = _pick("LADDER_KAFKA_BOOTSTRAP", stack, "kafka_bootstrap", "127.0.0.1:9092")
        broker = chosen_broker_profile(bootstrap, stack)
        return cls(
            kafka_bootstrap=bootstrap,
            redis_url=_pick("LADDER_REDIS_URL", stack, "redis_url", "redis://127.0.0.1:6379/0"),
            topics=Topics(os.environ.get("LADDER_TOPIC_PREFIX", "ladder.")),
            suggest_addr=_pick("LADDER_SUGGEST_ADDR", stack, "suggest_addr", "127.0.0.1:50051"),
            evaluate_addr=_pick("LADDER_EVALUATE_ADDR", stack, "evaluate_addr", "127.0.0.1:50052"),
            lineage_addr=_pick("LADDER_LINEAGE_ADDR", stack, "lineage_addr", "127.0.0.1:50053"),
            state_dir=state_dir(),
            kafka_linger_ms=int(
                os.environ.get("LADDER_KAFKA_LINGER_MS", broker.producer_linger_ms)
            ),
            broker=broker,
            bind_host=os.environ.get("LADDER_BIND_HOST", "127.0.0.1"),
            auth=env_flag("LADDER_AUTH", False),
            auth_cache_s=float(os.environ.get("LADDER_AUTH_CACHE_S", 2.0)),
            scheduler_policy=os.environ.get("LADDER_SCHEDULER_POLICY", "fair").strip().lower(),
            reserve_fraction=float(os.environ.get("LADDER_RESERVE_FRACTION", 0.05)),
            reserve_seconds=float(os.environ.get("LADDER_RESERVE_SECONDS", 600.0)),
            sched_view_seconds=float(os.environ.get("LADDER_SCHED_VIEW_SECONDS", 1.0)),
            token=_token(state_dir()),
            tls=Tls.from_env(),
            kafka_env=_checked_kafka_env(),
        )
