"""The processes of an integration stack: a broker and Redis started by the project's
own ``ladder up --no-services``, and service processes health-checked until SERVING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ladder import signing
from ladder.stack.ports import free_port
from ladder.stack.probes import serving
from ladder.testing.waiting import wait_for

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
_LADDER = [sys.executable, "-m", "ladder.cli"]


@contextmanager
def embedded_infra(state_dir: Path) -> Iterator[dict[str, str]]:
    """A fresh broker and Redis (no services) in ``state_dir``, under a topic prefix of
    its own; yields the environment a service process needs, stops both on exit."""
    env = dict(os.environ)
    env["LADDER_STATE_DIR"] = str(state_dir)
    env["LADDER_TOPIC_PREFIX"] = f"t{uuid.uuid4().hex[:6]}."
    env.pop("LADDER_KAFKA_BOOTSTRAP", None)
    env.pop("LADDER_REDIS_URL", None)
    up = subprocess.run(
        [*_LADDER, "up", "--no-services", "--state-dir", str(state_dir)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    if up.returncode != 0:
        raise RuntimeError(f"ladder up failed:\n{up.stdout}\n{up.stderr}")
    stack = json.loads((state_dir / "stack.json").read_text())
    env["LADDER_KAFKA_BOOTSTRAP"] = stack["kafka_bootstrap"]
    env["LADDER_REDIS_URL"] = stack["redis_url"]  # with the stack's Redis password
    # The services a test starts sign and check events with the stack's keys.
    env["LADDER_BUS_SIGNING_KEYS"] = signing.ensure_keyring(state_dir)
    try:
        yield env
    finally:
        subprocess.run(
            [*_LADDER, "down", "--state-dir", str(state_dir)], env=env, timeout=120, check=False
        )


def own_topics(infra_env: dict[str, str], label: str) -> dict[str, str]:
    """``infra_env`` under a fresh topic prefix whose topics exist on its broker: the
    services started with it share the broker and Redis but see only this prefix's
    studies, trials and keys (a test that counts what is owned must not see the studies
    the session's earlier tests left)."""
    import time

    from ladder.config import Topics
    from ladder.stack.launcher import ensure_stack_topics

    topics = Topics(f"{label}{uuid.uuid4().hex[:6]}.")
    ensure_stack_topics(infra_env["LADDER_KAFKA_BOOTSTRAP"], topics, time.monotonic() + 60)
    return {**infra_env, "LADDER_TOPIC_PREFIX": topics.prefix}


@contextmanager
def temporary_stack(prefix: str, timeout: float = 180, **up: object
                    ) -> Iterator[tuple[Path, float]]:
    """A whole embedded stack (``ladder.stack.launcher.up``, ``up``'s keywords) in a fresh
    temporary state folder, named in LADDER_STATE_DIR for what this process starts; yields
    the folder and the seconds the stack took to come up, stops it on exit. The services
    inherit this process's environment (LADDER_* set before the call configure them)."""
    import tempfile
    import time

    from ladder.stack import launcher

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        state = Path(tmp)
        os.environ["LADDER_STATE_DIR"] = str(state)
        began = time.monotonic()
        launcher.up(state, timeout=timeout, **up)  # type: ignore[arg-type]
        try:
            yield state, round(time.monotonic() - began, 1)
        finally:
            launcher.down(state)


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


class ServiceGroup:
    """Service processes started against ``env`` (each on a free port, its log in
    ``log_dir``) and stopped together, last started first."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(
        self, module: str, extra_env: dict[str, str] | None = None, port: int = 0
    ) -> ServiceProcess:
        """Start ``module`` on ``port`` (0: a free one; a restart passes the port it
        had, so its clients find it again) and wait until it is SERVING."""
        port = port or free_port()
        env = dict(self.env)
        env[PORT_ENV[module]] = str(port)
        env.update(extra_env or {})
        log_path = self.log_dir / f"{module.rsplit('.', 1)[-1]}-{port}.log"
        with open(log_path, "ab") as log:  # a restart on the same port appends
            proc = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        service = ServiceProcess(module, f"127.0.0.1:{port}", proc, log_path)
        self.started.append(service)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{module} exited with {proc.returncode}:\n{service.log_text()[-4000:]}"
                )
            return serving(service.addr)

        wait_for(ready, 120, f"{module} health SERVING", every=0.25)
        if module in ADDR_ENV:
            # Clients started later from this environment (CLI, workers) find it.
            self.env[ADDR_ENV[module]] = service.addr
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()
