"""The dashboard's HTTP layer against a lineage gRPC server answering from made-up
studies (``ladder.testing.dashboard.FakeLineage``) in this process: every route, the
elements tests and people rely on, the errors a viewer sees, the live stream, caching.
The real lineage service and process are tests/integration/test_dashboard_service.py's."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from grpc_health.v1 import health, health_pb2_grpc
from ladder.dashboard.study import FIGURES
from ladder.stack.ports import free_port
from ladder.testing.dashboard import FakeLineage, synthetic_study
from ladder.v1 import lineage_pb2_grpc

from services.dashboard.app import build_app


@pytest.fixture
def fake() -> Iterator[tuple[FakeLineage, str]]:
    lineage = FakeLineage([synthetic_study("s-big", trials=300, seed=1),
                           synthetic_study("s-small", trials=20, seed=2)])
    server, addr = _serve(lineage)
    yield lineage, addr
    server.stop(0)


def _serve(servicer: lineage_pb2_grpc.LineageServiceServicer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    lineage_pb2_grpc.add_LineageServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def run(addr: str, scenario: Callable[[TestClient], Awaitable[Any]], **app: Any) -> Any:
    async def main() -> Any:
        client = TestClient(TestServer(build_app(addr, **app)))
        await client.start_server()
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def text(client: TestClient, path: str, status: int = 200) -> str:
    response = await client.get(path)
    body = await response.text()
    assert response.status == status, body
    return body


def test_studies_page_lists_every_study_with_state_progress_and_best(fake) -> None:
    lineage, addr = fake
    big = lineage.studies["s-big"]
    page = run(addr, lambda c: text(c, "/studies"))
    assert page.count('data-testid="study-row"') == 2
    assert 'href="/studies/s-big"' in page and 'href="/studies/s-small"' in page
    assert f'data-testid="count-pruned">{big.summary.pruned}<' in page
    assert f"{big.summary.best_value:.6g}" in page
    assert "asha" in page and "tpe" in page and "active" in page


def test_study_page_has_progress_counts_plot_containers_table_and_csv_link(fake) -> None:
    lineage, addr = fake
    summary = lineage.studies["s-big"].summary
    page = run(addr, lambda c: text(c, "/studies/s-big"))
    for count in ("running", "pruned", "completed", "failed"):
        assert f'data-testid="progress-{count}">{getattr(summary, count)}<' in page
    for name in FIGURES:
        assert f'id="plot-{name}" data-testid="plot-{name}"' in page
    assert 'data-testid="trial-table"' in page
    assert 'data-testid="csv-link" href="/studies/s-big/trials.csv"' in page
    # plotly.js from the wheel, never a CDN.
    assert 'src="/static/plotly-' in page and "cdn" not in page.lower()


def unpack(column: list | dict) -> list:
    """A table column as the page's script unpacks it (ladder.dashboard.table.packed)."""
    if isinstance(column, list):
        return column
    if "codes" in column:
        return [None if i is None else column["values"][i] for i in column["codes"]]
    return [column["prefix"] + rest for rest in column["rest"]]


def test_figures_and_table_json(fake) -> None:
    lineage, addr = fake

    async def scenario(client: TestClient) -> tuple[dict, dict]:
        figures = await (await client.get("/api/studies/s-big/figures")).json()
        trials = await (await client.get("/api/studies/s-big/trials")).json()
        return figures, trials

    figures, trials = run(addr, scenario)
    assert set(figures["figures"]) == set(FIGURES)
    for figure in figures["figures"].values():
        assert {"data", "layout"} <= set(figure)
    assert figures["progress"]["completed"] == lineage.studies["s-big"].summary.completed
    assert trials["count"] == 300
    columns = dict(zip(trials["columns"], map(unpack, trials["data"]), strict=True))
    assert columns["trial_id"] == [t.trial_id for t in lineage.studies["s-big"].trials]
    assert columns["state"] == [t.state for t in lineage.studies["s-big"].trials]
    assert isinstance(trials["data"][trials["columns"].index("state")], dict)  # packed


def test_csv_download_matches_listtrials(fake) -> None:
    lineage, addr = fake

    async def scenario(client: TestClient) -> tuple[str, str]:
        response = await client.get("/studies/s-big/trials.csv")
        assert response.status == 200
        return response.headers["Content-Disposition"], await response.text()

    disposition, body = run(addr, scenario)
    assert 'filename="s-big-trials.csv"' in disposition
    rows = list(csv.DictReader(io.StringIO(body)))
    expected = lineage.studies["s-big"].trials
    assert [(r["trial_id"], r["state"]) for r in rows] == [(t.trial_id, t.state) for t in expected]
    assert [r["value"] for r in rows] == [repr(t.final_value) if t.has_final_value else ""
                                         for t in expected]


def test_trial_page_shows_a_pruned_trials_stop_reason_params_and_trace(fake) -> None:
    lineage, addr = fake
    pruned = next(t for t in lineage.studies["s-big"].trials if t.state == "PRUNED")
    page = run(addr, lambda c: text(c, f"/trials/{pruned.trial_id}"))
    assert f'data-testid="stop-reason">{pruned.stop_reason}<' in page
    assert 'data-testid="trial-params"' in page and "optimizer" in page
    assert f"ladder.trial_id={pruned.trial_id}" in page
    assert 'data-testid="plot-trial-curve"' in page


def test_unknown_study_or_trial_is_404_with_a_clear_message(fake) -> None:
    _, addr = fake

    async def scenario(client: TestClient) -> list[Any]:
        page = await text(client, "/studies/nope", 404)
        api = await client.get("/api/studies/nope/figures")
        csv_answer = await client.get("/studies/nope/trials.csv")
        trial = await text(client, "/trials/nope-t1", 404)
        events = await client.get("/api/studies/nope/events")
        return [page, api.status, await api.json(), csv_answer.status, trial, events.status]

    page, api_status, api, csv_status, trial, events_status = run(addr, scenario)
    assert "study &#x27;nope&#x27; not found" in page and 'data-testid="error-message"' in page
    assert api_status == 404 and api == {"error": "study 'nope' not found", "status": 404}
    assert csv_status == 404 and events_status == 404
    assert "trial &#x27;nope-t1&#x27; not found" in trial


def test_lineage_down_is_503_naming_its_address_and_healthz_still_answers() -> None:
    addr = f"127.0.0.1:{free_port()}"

    async def scenario(client: TestClient) -> tuple[str, dict]:
        page = await text(client, "/studies", 503)
        return page, await (await client.get("/healthz")).json()

    page, healthz = run(addr, scenario)
    assert f"lineage at {addr} is unreachable" in page
    assert healthz == {"status": "ok", "lineage": "UNREACHABLE", "lineage_addr": addr}


def test_an_older_lineage_without_the_dashboard_reads_is_named(fake) -> None:
    server, addr = _serve(lineage_pb2_grpc.LineageServiceServicer())  # every RPC UNIMPLEMENTED
    try:
        page = run(addr, lambda c: text(c, "/studies", 502))
    finally:
        server.stop(0)
    assert "does not answer ListStudyListings" in page


def test_live_stream_sends_progress_and_again_when_it_changes(fake) -> None:
    lineage, addr = fake
    summary = lineage.studies["s-small"].summary

    async def scenario(client: TestClient) -> list[dict]:
        response = await client.get("/api/studies/s-small/events")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen: list[dict] = []
        async for line in response.content:
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 1:
                    summary.completed += 1  # the study moves on
                    summary.running -= 1
                else:
                    break
        response.close()
        return seen

    first, second = run(addr, scenario, live_interval=0.05)
    assert second["completed"] == first["completed"] + 1
    assert second["running"] == first["running"] - 1


def test_progress_endpoint_for_polling(fake) -> None:
    lineage, addr = fake

    async def scenario(client: TestClient) -> dict:
        return await (await client.get("/api/studies/s-small/progress")).json()

    found = run(addr, scenario)
    assert found["study_id"] == "s-small" and found["max_trials"] == 20
    assert found["pruned"] == lineage.studies["s-small"].summary.pruned


def test_viewers_of_one_study_share_one_read_of_it(fake) -> None:
    lineage, addr = fake

    async def scenario(client: TestClient) -> None:
        await asyncio.gather(*(client.get(path) for path in (
            "/api/studies/s-big/figures", "/api/studies/s-big/trials",
            "/studies/s-big/trials.csv", "/api/studies/s-big/figures")))

    run(addr, scenario)
    assert lineage.calls.count("ListTrials") == 1
    assert lineage.calls.count("GetStudyCurves") == 1


def test_static_assets_come_from_this_package_and_the_plotly_wheel(fake) -> None:
    _, addr = fake

    async def scenario(client: TestClient) -> list[Any]:
        page = await text(client, "/studies/s-small")
        url = page.split('src="/static/plotly-', 1)[1].split('"', 1)[0]
        bundle = await client.get(f"/static/plotly-{url}")
        script = await client.get("/static/dashboard.js")
        missing = await client.get("/static/other.js")
        return [bundle.status, (await bundle.read())[:200], bundle.headers["Cache-Control"],
                script.status, missing.status]

    status, head, cache, script, missing = run(addr, scenario)
    assert status == 200 and b"plotly.js v" in head and "immutable" in cache
    assert script == 200 and missing == 404


def test_cache_shares_a_fetch_keeps_it_its_ttl_and_drops_what_expired() -> None:
    from services.dashboard.source import TtlCache

    now = [0.0]
    cache: TtlCache[str] = TtlCache(2.0, clock=lambda: now[0])
    fetched: list[str] = []

    async def fetch(key: str) -> str:
        fetched.append(key)
        await asyncio.sleep(0)
        return f"{key}@{now[0]}"

    async def scenario() -> None:
        first = await asyncio.gather(*(cache.get("a", lambda: fetch("a")) for _ in range(3)))
        assert first == ["a@0.0"] * 3 and fetched == ["a"]
        now[0] = 1.9
        assert await cache.get("a", lambda: fetch("a")) == "a@0.0"
        now[0] = 2.5
        await cache.get("b", lambda: fetch("b"))
        assert "a" not in cache._entries  # expired, dropped by the next fetch
        assert await cache.get("a", lambda: fetch("a")) == "a@2.5"

    asyncio.run(scenario())


def test_a_failed_fetch_leaves_nothing_in_the_cache() -> None:
    from services.dashboard.source import TtlCache

    cache: TtlCache[str] = TtlCache(2.0)

    async def unknown() -> str:
        raise LookupError("study 'x' not found")

    async def scenario() -> None:
        for n in range(50):
            with pytest.raises(LookupError):
                await cache.get(f"no-such-study-{n}", unknown)
        assert cache._locks == {} and cache._entries == {}

    asyncio.run(scenario())


def test_cache_answers_an_expired_value_while_it_renews_it_unless_asked_fresh() -> None:
    from services.dashboard.source import TtlCache

    now = [0.0]
    cache: TtlCache[str] = TtlCache(2.0, stale=10.0, clock=lambda: now[0])
    release = asyncio.Event()

    async def slow(tag: str) -> str:
        await release.wait()
        return tag

    async def scenario() -> None:
        release.set()
        assert await cache.get("k", lambda: slow("first")) == "first"
        release.clear()
        now[0] = 5.0  # expired, within the stale window
        assert await cache.get("k", lambda: slow("second")) == "first"  # at once
        waiting = asyncio.ensure_future(cache.get("k", lambda: slow("third"), fresh=True))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # fresh: waits for the renewal under way
        release.set()
        assert await waiting == "second"
        now[0] = 20.0  # past ttl + stale: fetched again, not answered
        assert await cache.get("k", lambda: slow("fourth")) == "fourth"

    asyncio.run(scenario())


def test_a_page_load_gets_the_last_read_of_a_big_study_while_a_new_one_is_made(fake) -> None:
    lineage, addr = fake

    async def scenario(client: TestClient) -> None:
        app = client.server.app
        from services.dashboard import app as dashboard_app

        first = await (await client.get("/api/studies/s-small/figures")).json()
        # The read expires; the study moves on.
        for cache in (app[dashboard_app.PRODUCTS], app[dashboard_app.SOURCE]._studies):
            cache.clock = lambda: time.monotonic() + 30
        lineage.studies["s-small"].summary.completed += 5
        stale = await (await client.get("/api/studies/s-small/figures")).json()
        assert stale["progress"]["completed"] == first["progress"]["completed"]
        fresh = await (await client.get("/api/studies/s-small/figures?fresh=1")).json()
        assert fresh["progress"]["completed"] == first["progress"]["completed"] + 5

    run(addr, scenario)


def test_recommended_is_a_completed_trial_picked_by_the_studys_gp_beside_its_best(fake) -> None:
    from ladder.params import params_to_dict
    from ladder.samplers.base import Observation
    from ladder.samplers.recommend import best_by_posterior_mean
    from ladder.space import Space

    lineage, addr = fake
    study = lineage.studies["s-big"]

    async def scenario(client: TestClient) -> tuple[dict, dict, str]:
        figures = await (await client.get("/api/studies/s-big/figures")).json()
        recommended = await (await client.get("/api/studies/s-big/recommended")).json()
        page = await text(client, "/studies/s-big")
        return figures, recommended, page

    figures, recommended, page = run(addr, scenario)
    completed = [Observation(t.trial_id, params_to_dict(t.params), t.final_value)
                 for t in study.trials if t.state == "COMPLETED" and t.has_final_value]
    expected = best_by_posterior_mean(Space.from_proto(study.study.config.space), completed,
                                      maximize=figures["study"]["config"]["direction"]
                                      == "MAXIMIZE")
    assert recommended["recommended"]["trial_id"] == expected.trial_id
    assert recommended["recommended"]["value"] == pytest.approx(expected.value)
    assert recommended["best_trial_id"] == figures["best"]["trial_id"]
    assert 'data-testid="progress-recommended"' in page and "/recommended" in page


def test_a_study_with_no_completed_trial_has_no_recommendation() -> None:
    from ladder.dashboard.study import StudyData, recommendation
    from ladder.v1 import lineage_pb2

    made = synthetic_study("s-new", trials=5, seed=3)
    running = [t for t in made.trials if not t.has_final_value]
    data = StudyData(made.study, made.summary, running, lineage_pb2.StudyCurves(),
                     lineage_pb2.StudyRungs())
    assert recommendation(data) == {"best_trial_id": None, "recommended": None}


def test_a_kept_fit_is_reused_within_its_ttl_unless_it_had_nothing_to_show() -> None:
    from ladder.dashboard.study import StudyData
    from ladder.v1 import lineage_pb2

    from services.dashboard.source import LineageSource

    made = synthetic_study("s-live", trials=40, seed=4)
    done = [t for t in made.trials if t.has_final_value]
    assert len(done) >= 2

    def data(trials: list) -> StudyData:
        return StudyData(made.study, made.summary, trials, lineage_pb2.StudyCurves(),
                         lineage_pb2.StudyRungs())

    kept: dict = {}
    fits: list[int] = []

    def refit(study: StudyData, answer: dict) -> dict:
        def fit() -> dict:
            fits.append(len(study.trials))
            return answer
        return LineageSource._refitted(kept, 60.0, study, fit,
                                       lambda found: found["recommended"] is None)

    assert refit(data(done[:1]), {"recommended": None}) == {"recommended": None}
    # One more completed trial within the minute: what was kept showed nothing, refit.
    assert refit(data(done[:2]), {"recommended": "t"}) == {"recommended": "t"}
    # And another: the kept answer stands until the minute has passed.
    assert refit(data(done), {"recommended": "u"}) == {"recommended": "t"}
    assert fits == [1, 2]
