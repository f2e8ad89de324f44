"""Run a gRPC service the Ladder way: OTel server spans, the standard health
service, and a graceful stop on SIGTERM / SIGINT (health flips to NOT_SERVING,
in-flight calls get ``grace`` seconds, then ``on_stop`` releases the rest)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ladder import telemetry

log = logging.getLogger("ladder.grpc")


class ServiceHost:
    def __init__(
        self, name: str, port: int, host: str | None = None, workers: int = 16
    ) -> None:
        # Loopback by default; containers set LADDER_BIND_HOST=0.0.0.0.
        host = host or os.environ.get("LADDER_BIND_HOST", "127.0.0.1")
        self.name = name
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
            interceptors=telemetry.grpc_server_interceptors(),
            options=[("grpc.so_reuseport", 0)],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise SystemExit(f"{name}: cannot bind {host}:{port}")
        self.stopped = threading.Event()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.health.set(self.name, status)

    def run(self, on_stop: Callable[[], None] | None = None, grace: float = 5.0) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully. Blocks."""

        def _signal(signum: int, _frame: object) -> None:
            log.info("%s: signal %d, stopping", self.name, signum)
            self.stopped.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.server.start()
        self.set_serving(True)
        log.info("%s serving on port %d", self.name, self.port)
        self.stopped.wait()
        self.set_serving(False)
        self.server.stop(grace).wait()
        if on_stop:
            on_stop()
        telemetry.shutdown()
        log.info("%s stopped", self.name)
