"""The gRPC health endpoint of the early-stop app (it has no other gRPC API).

Runs ``ladder.grpcserver.ServiceHost``'s server in its own threads beside Faust's
event loop; NOT_SERVING until the Faust worker finished table recovery, NOT_SERVING
again as soon as a stop begins, and NOT_SERVING while a stage is stuck
(``StageHealth``: one batch failing for longer than ``stuck_after`` seconds, the broker
away for one), with the reason logged; SERVING again once it moves on.
"""

from __future__ import annotations

import logging
import time

from ladder.grpcserver import ServiceHost

log = logging.getLogger("ladder.earlystop")

HEALTH_SERVICE = "ladder.earlystop"


class HealthServer:
    def __init__(self, port: int, bind_host: str) -> None:
        # ServiceHost brings OTel interceptors and the health servicer; its run() is not
        # used because Faust owns the signals and the main thread.
        self.host = ServiceHost(HEALTH_SERVICE, port, host=bind_host)
        self.port = self.host.port
        self._started = False

    def start(self) -> HealthServer:
        self.host.server.start()
        self._started = True
        self.host.set_serving(False)
        log.info("earlystop health server on port %d", self.port)
        return self

    def set_serving(self, serving: bool) -> None:
        self.host.set_serving(serving)

    def stop(self, grace: float = 1.0) -> None:
        if not self._started:
            return
        self._started = False
        self.host.set_serving(False)
        self.host.server.stop(grace).wait()


class StageHealth:
    """Which stages are failing the same batch, since when, and why (agents.py reports,
    the worker's health check reads ``stuck``)."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self._failing: dict[str, tuple[float, str]] = {}

    def failing(self, stage: str, reason: str) -> None:
        """``stage`` failed its current batch (again): the first failure dates it."""
        since = self._failing.get(stage, (time.monotonic(), ""))[0]
        self._failing[stage] = (since, reason)

    def moved_on(self, stage: str) -> None:
        self._failing.pop(stage, None)

    def stuck(self) -> list[str]:
        """One line per stage stuck for longer than ``stuck_after``; [] when none."""
        now = time.monotonic()
        return [
            f"{stage} stuck for {now - since:.0f}s: {reason}"
            for stage, (since, reason) in sorted(self._failing.items())
            if now - since > self.stuck_after
        ]
