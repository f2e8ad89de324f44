"""Fixtures for integration tests: a real tansu broker and redis-server (started
by the project's own ``ladder up --no-services``) and real service processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ladder.config import Settings, Topics
from waiting import wait_for

PORT_ENV = {
    "services.suggest": "LADDER_SUGGEST_PORT",
    "services.evaluate": "LADDER_EVALUATE_PORT",
    "services.lineage": "LADDER_LINEAGE_PORT",
    "services.earlystop": "LADDER_EARLYSTOP_HEALTH_PORT",
}
ADDR_ENV = {
    "services.suggest": "LADDER_SUGGEST_ADDR",
    "services.evaluate": "LADDER_EVALUATE_ADDR",
    "services.lineage": "LADDER_LINEAGE_ADDR",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class ServiceProcess:
    module: str
    addr: str
    proc: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture(scope="session")
def infra_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("ladder-state")
    env = dict(os.environ)
    env["LADDER_STATE_DIR"] = str(state)
    env["LADDER_TOPIC_PREFIX"] = f"t{uuid.uuid4().hex[:6]}."
    env.pop("LADDER_KAFKA_BOOTSTRAP", None)
    env.pop("LADDER_REDIS_URL", None)
    ladder = [sys.executable, "-m", "ladder.cli"]
    up = subprocess.run(
        [*ladder, "up", "--no-services", "--state-dir", str(state)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    if up.returncode != 0:
        pytest.fail(f"ladder up failed:\n{up.stdout}\n{up.stderr}")
    stack = json.loads((state / "stack.json").read_text())
    env["LADDER_KAFKA_BOOTSTRAP"] = stack["kafka_bootstrap"]
    env["LADDER_REDIS_URL"] = stack["redis_url"]
    try:
        yield env
    finally:
        subprocess.run(
            [*ladder, "down", "--state-dir", str(state)], env=env, timeout=120, check=False
        )


@pytest.fixture(scope="session")
def infra(infra_env: dict[str, str]) -> Settings:
    return Settings(
        kafka_bootstrap=infra_env["LADDER_KAFKA_BOOTSTRAP"],
        redis_url=infra_env["LADDER_REDIS_URL"],
        topics=Topics(infra_env["LADDER_TOPIC_PREFIX"]),
        state_dir=Path(infra_env["LADDER_STATE_DIR"]),
    )


@pytest.fixture
def start_service(
    infra_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(module: str, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        port = free_port()
        env = dict(infra_env)
        env[PORT_ENV[module]] = str(port)
        env.update(extra_env or {})
        log_path = tmp_path / f"{module.rsplit('.', 1)[-1]}-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        service = ServiceProcess(module, f"127.0.0.1:{port}", proc, log_path)
        started.append(service)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{module} exited with {proc.returncode}:\n{service.log_text()[-4000:]}"
                )
            return is_serving(service.addr)

        wait_for(ready, 120, f"{module} health SERVING", every=0.25)
        if module in ADDR_ENV:
            infra_env[ADDR_ENV[module]] = service.addr
        return service

    yield start
    for service in reversed(started):
        service.stop()
