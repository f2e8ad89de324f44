"""The dashboard's HTTP routes (aiohttp): pages, their JSON, the CSV download, the
live progress stream, plotly.js from the ``plotly`` wheel and ``/healthz``.

| route                                  | answers                                        |
|----------------------------------------|------------------------------------------------|
| GET /studies (and /)                   | the studies page                               |
| GET /studies/{id}                      | a study's page                                 |
| GET /studies/{id}/trials.csv           | its trial table as CSV                         |
| GET /trials/{id}                       | a trial's page                                 |
| GET /api/studies                       | the studies page's rows (JSON)                 |
| GET /api/studies/{id}/figures          | every figure of the study page (Plotly JSON)   |
| GET /api/studies/{id}/trials           | the trial table (columns + rows)               |
| GET /api/studies/{id}/progress         | its progress counts (polling)                  |
| GET /api/studies/{id}/recommended      | its noise-aware pick beside its best trial     |
| GET /api/studies/{id}/events           | the same as server-sent events, on each change |
| GET /api/trials/{id}                   | a trial page's data                            |
| GET /healthz                           | ``{"status": "ok", "lineage": ...}``           |

An unknown study or trial is 404 with lineage's message; a lineage that cannot be
reached 503. Figures are computed off the event loop (a thread), so the live stream
and /healthz answer while a big study is drawn.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from ladder.dashboard import jsonout
from ladder.dashboard.listing import progress, study_row
from ladder.dashboard.study import StudyData, study_figures, study_overview, trial_csv, trial_table
from ladder.dashboard.trialview import trial_view
from ladder.v1 import lineage_pb2

from services.dashboard import live, pages
from services.dashboard.source import (
    STUDY_STALE,
    STUDY_TTL,
    LineageSource,
    SourceError,
    TtlCache,
)

log = logging.getLogger("ladder.dashboard")

STATIC = Path(__file__).parent / "static"


class PlotlyBundle:
    """plotly.min.js as shipped inside the ``plotly`` wheel (no CDN: the dashboard
    works offline), read once, served under a versioned URL so browsers keep it."""

    def __init__(self) -> None:
        import plotly.offline

        self.version = plotly.offline.get_plotlyjs_version()
        self.path = Path(str(importlib.resources.files("plotly") / "package_data"
                             / "plotly.min.js"))
        self.url = f"/static/plotly-{self.version}.min.js"
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self.path.read_bytes()
        return self._body


SOURCE = web.AppKey("source", LineageSource)
STOPPING = web.AppKey("stopping", asyncio.Event)
PLOTLY = web.AppKey("plotly", PlotlyBundle)
PRODUCTS = web.AppKey("products", TtlCache)
LIVE_INTERVAL = web.AppKey("live_interval", float)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=jsonout.dumps(data), status=status,
                        content_type="application/json")


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path.endswith(".csv")


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """A failed read answers its status with a message: JSON for the API, a page for
    people."""
    try:
        return await handler(request)
    except SourceError as exc:
        status, message = exc.status, str(exc)
    except web.HTTPNotFound:
        status, message = 404, f"no page at {request.path}"
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.path, message)
    if _wants_json(request):
        return json_response({"error": message, "status": status}, status)
    return web.Response(text=pages.error_page(status, message), status=status,
                        content_type="text/html")


def _source(request: web.Request) -> LineageSource:
    return request.app[SOURCE]


async def _off_loop(call: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, call)


class StudyProducts:
    """What one read of a study is turned into, each computed once, off the loop (the
    figures and the table side by side: the page asks for both at once)."""

    def __init__(self, source: LineageSource, data: StudyData) -> None:
        self.source = source
        self.data = data
        self._done: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def made(self) -> list[str]:
        """The products computed so far."""
        return list(self._done)

    async def get(self, name: str) -> Any:
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self._done:
                self._done[name] = await _off_loop(getattr(self, f"_{name}"))
            return self._done[name]

    def _figures(self) -> str:
        found = self.source.importances(self.data)
        return jsonout.dumps({**study_overview(self.data),
                              "figures": study_figures(self.data, found)})

    def _table(self) -> str:
        return jsonout.dumps(trial_table(self.data))

    def _recommended(self) -> str:
        return jsonout.dumps(self.source.recommendation(self.data))

    def _csv(self) -> str:
        return trial_csv(self.data)


async def _products(request: web.Request) -> StudyProducts:
    """The products of a study's latest read. A page load may get the previous read
    (at most STUDY_STALE old) while a new one is made in the background with what was
    asked of the previous one; ``?fresh=1`` (the live page's redraws, the CSV) waits
    for a read at most STUDY_TTL old."""
    study_id = request.match_info["study_id"]
    source = _source(request)
    cache = request.app[PRODUCTS]

    async def read() -> StudyProducts:
        made = StudyProducts(source, await source.study_data(study_id))
        previous = cache.peek(study_id)
        for name in previous.made if previous is not None else ():
            await made.get(name)
        return made

    fresh = request.query.get("fresh") == "1" or request.path.endswith(".csv")
    return await cache.get(study_id, read, fresh=fresh)


# --- pages -----------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/studies")


async def _study_rows(source: LineageSource) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [study_row(listing, now_ms) for listing in (await source.listings()).studies]


async def studies_page(request: web.Request) -> web.Response:
    rows = await _study_rows(_source(request))
    return web.Response(text=pages.studies_page(rows), content_type="text/html")


async def study_page(request: web.Request) -> web.Response:
    study_id = request.match_info["study_id"]
    source = _source(request)
    study = await source.study(study_id)
    listed = lineage_pb2.StudyListing(study=study, summary=await source.summary(study_id))
    row = study_row(listed, int(time.time() * 1000))
    return web.Response(text=pages.study_page(row, request.app[PLOTLY].url),
                        content_type="text/html")


async def trial_page(request: web.Request) -> web.Response:
    lineage = await _source(request).trial(request.match_info["trial_id"])
    view = await _off_loop(lambda: trial_view(lineage))
    return web.Response(text=pages.trial_page(view, request.app[PLOTLY].url),
                        content_type="text/html")


async def trials_csv(request: web.Request) -> web.Response:
    products = await _products(request)
    name = f"{request.match_info['study_id']}-trials.csv"
    return web.Response(
        text=await products.get("csv"), content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# --- JSON ------------------------------------------------------------------------------


async def api_studies(request: web.Request) -> web.Response:
    return json_response({"studies": await _study_rows(_source(request))})


async def api_figures(request: web.Request) -> web.Response:
    products = await _products(request)
    return web.Response(text=await products.get("figures"), content_type="application/json")


async def api_trials(request: web.Request) -> web.Response:
    products = await _products(request)
    return web.Response(text=await products.get("table"), content_type="application/json")


async def api_recommended(request: web.Request) -> web.Response:
    products = await _products(request)
    return web.Response(text=await products.get("recommended"), content_type="application/json")


async def study_progress(source: LineageSource, study_id: str) -> dict[str, Any]:
    study = await source.study(study_id)
    return progress(study, await source.summary(study_id))


async def api_progress(request: web.Request) -> web.Response:
    return json_response(await study_progress(_source(request), request.match_info["study_id"]))


async def api_events(request: web.Request) -> web.StreamResponse:
    study_id = request.match_info["study_id"]
    source = _source(request)
    await study_progress(source, study_id)  # an unknown study is a 404, not a stream
    return await live.stream(
        request, functools.partial(study_progress, source, study_id),
        request.app[STOPPING], request.app[LIVE_INTERVAL],
    )


async def api_trial(request: web.Request) -> web.Response:
    lineage = await _source(request).trial(request.match_info["trial_id"])
    return json_response(await _off_loop(lambda: trial_view(lineage)))


async def healthz(request: web.Request) -> web.Response:
    """Up as long as it serves HTTP; lineage's health is reported, not required (the
    pages say so themselves when lineage is down)."""
    source = _source(request)
    state = await source.health()
    return json_response({"status": "ok", "lineage": state, "lineage_addr": source.addr})


# --- static ----------------------------------------------------------------------------


async def plotly_js(request: web.Request) -> web.Response:
    bundle = request.app[PLOTLY]
    return web.Response(
        body=bundle.body, content_type="application/javascript",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ("dashboard.js", "dashboard.css"):
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


# --- the app ---------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/", index),
    ("/studies", studies_page),
    ("/studies/{study_id}", study_page),
    ("/studies/{study_id}/trials.csv", trials_csv),
    ("/trials/{trial_id}", trial_page),
    ("/api/studies", api_studies),
    ("/api/studies/{study_id}/figures", api_figures),
    ("/api/studies/{study_id}/trials", api_trials),
    ("/api/studies/{study_id}/progress", api_progress),
    ("/api/studies/{study_id}/recommended", api_recommended),
    ("/api/studies/{study_id}/events", api_events),
    ("/api/trials/{trial_id}", api_trial),
    ("/healthz", healthz),
    ("/static/{name}", static_file),
)


def build_app(lineage_addr: str, live_interval: float = live.INTERVAL,
              interceptors: list[Any] | None = None) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[PLOTLY] = PlotlyBundle()
    app[STOPPING] = asyncio.Event()
    app[LIVE_INTERVAL] = live_interval
    app[PRODUCTS] = TtlCache(STUDY_TTL, stale=STUDY_STALE)

    async def open_source(app: web.Application) -> Any:
        app[SOURCE] = LineageSource(lineage_addr, interceptors=interceptors)
        yield
        await app[SOURCE].close()

    async def stop_streams(app: web.Application) -> None:
        app[STOPPING].set()  # open event streams end, so shutdown does not wait on them

    app.cleanup_ctx.append(open_source)
    app.on_shutdown.append(stop_streams)
    app.router.add_get(app[PLOTLY].url, plotly_js)  # before /static/{name}
    for path, handler in ROUTES:
        app.router.add_get(path, handler)
    return app
