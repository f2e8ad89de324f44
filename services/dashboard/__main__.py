"""The dashboard: a web UI of every study, read from lineage's gRPC query API only
(never Redis or the topics). Pages: the studies, a study (live progress, optimisation
history, learning curves with the reason each trial was stopped, rungs, parallel
coordinates, importances, slices, compute per state, the trial table with its CSV) and
a trial (params, prediction, attempts, curve and decisions, lineage). See
docs/dashboard.md.

    python -m services.dashboard [--port N] [--host ADDR] [--lineage-addr HOST:PORT]

| env var                           | flag               | default                          |
|-----------------------------------|--------------------|----------------------------------|
| LADDER_DASHBOARD_PORT             | --port             | 8080                             |
| LADDER_DASHBOARD_HOST             | --host             | LADDER_BIND_HOST, else 127.0.0.1 |
| LADDER_LINEAGE_ADDR               | --lineage-addr     | stack.json, else 127.0.0.1:50053 |
| LADDER_DASHBOARD_LIVE_INTERVAL_MS | --live-interval-ms | 1000                             |

``--host 0.0.0.0`` serves other machines too (there is no login: do it on a trusted
network only). plotly.js is served from the ``plotly`` wheel, so the pages work
offline. ``GET /healthz`` answers 200 while the server runs, with lineage's gRPC
health in its body. SIGTERM / SIGINT stop it: open event streams end, in-flight
requests get ``SHUTDOWN_GRACE`` seconds. Logs are JSON lines (ladder.telemetry).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Sequence

from aiohttp import web
from ladder import telemetry
from ladder.config import Settings, service_parser

from services.dashboard.app import build_app

log = logging.getLogger("ladder.dashboard")

DEFAULT_PORT = 8080
SHUTDOWN_GRACE = 5.0


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    parser = service_parser("dashboard", __doc__, DEFAULT_PORT)
    parser.add_argument(
        "--host", default=os.environ.get("LADDER_DASHBOARD_HOST") or settings.bind_host,
        help="address to listen on (default loopback only)",
    )
    parser.add_argument("--lineage-addr", default=settings.lineage_addr,
                        help="lineage's gRPC address (host:port)")
    parser.add_argument(
        "--live-interval-ms", type=int,
        default=int(os.environ.get("LADDER_DASHBOARD_LIVE_INTERVAL_MS", 1000)),
        help="how often a study page's live progress is read",
    )
    return parser.parse_args(argv)


def _warm_up() -> None:
    # scikit-learn takes a second or two to import: not on the first study page's clock.
    import sklearn.ensemble  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    telemetry.setup("ladder-dashboard")
    settings = Settings.from_env()
    args = parse_args(argv, settings)
    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    app = build_app(args.lineage_addr, live_interval=args.live_interval_ms / 1000,
                    interceptors=list(aio_client_interceptors()))
    log.info("dashboard on http://%s:%d reading lineage at %s",
             args.host, args.port, args.lineage_addr)
    try:
        web.run_app(
            app, host=args.host, port=args.port, shutdown_timeout=SHUTDOWN_GRACE,
            access_log=logging.getLogger("ladder.dashboard.access"), print=None,
        )
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.host, args.port, exc)
        return 1
    log.info("dashboard stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
