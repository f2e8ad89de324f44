"""The gRPC health endpoint of the early-stop app (it has no other gRPC API).

Runs ``ladder.grpcserver.ServiceHost``'s server in its own threads beside Faust's
event loop; NOT_SERVING until the Faust worker finished table recovery, NOT_SERVING
again as soon as a stop begins.
"""

from __future__ import annotations

import logging

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
