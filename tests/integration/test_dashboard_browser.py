"""The dashboard in a real browser: headless Chromium (the machine's own, driven by
Playwright) on the pages of a dashboard process that reads a real lineage service,
while worker threads run a real ASHA study through suggest, evaluate and early-stop.

The study page is opened before any trial runs and watched while the study runs
(``watched``); then every page is loaded again, a pruned trial's reason looked for,
and the CSV download compared with lineage's ListTrials. Chromium missing is a
failure, not a skip (CI installs it: .ci/run).
"""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ladder
import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.testing import wait_for, wait_for_found
from ladder.testing.browser import (
    READY_AT,
    ChromiumMissing,
    DashboardProcess,
    PageErrors,
    chromium_path,
    chromium_profile,
    start_dashboard,
    wait_drawn,
)
from ladder.testing.services import start_services
from ladder.testing.workers import WorkerThreads
from ladder.v1 import lineage_pb2

pytestmark = pytest.mark.integration

BUDGET = 12
WORKERS = 3
MAX_STEPS = 9
# A step of "training": long enough for a STOP to come back in time, and the study long
# enough (12 trials on 3 workers) for the page to show a change while it runs: lineage
# and the page's 1-s live read lag it by a few seconds on a loaded host.
STEP_SECONDS = 0.3
COUNTS = ("suggested", "running", "pruned", "completed", "failed")
DRAW_TIMEOUT = 60.0
# The page's counts, as numbers, by name.
SHOWN_COUNTS = """(names) => Object.fromEntries(names.map(
  n => [n, Number(document.getElementById("progress-" + n).textContent)]))"""


@pytest.fixture(scope="module")
def stack(infra: Settings, start_module_service: Callable[..., Any],
          tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return start_services(start_module_service, infra,
                          tmp_path_factory.mktemp("dashboard-browser"))


@pytest.fixture(scope="module")
def dashboard(stack: Settings, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[DashboardProcess]:
    process = start_dashboard(stack.lineage_addr, tmp_path_factory.mktemp("dashboard"),
                              args=["--live-interval-ms", "250"])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a profile (as a person's browser has):
    plotly.js is read and compiled once, not on every page."""
    try:
        chromium_path()
    except ChromiumMissing as missing:
        pytest.fail(f"the dashboard's browser tests need Chromium: {missing}", pytrace=False)
    with chromium_profile(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(scope="module")
def client(stack: Settings) -> Iterator[LadderClient]:
    with LadderClient(stack) as client:
        yield client


@dataclass
class Watched:
    """What the study page showed while the study ran, without being reloaded."""

    study_id: str
    before: dict[str, int]  # drawn, before any worker started
    during: dict[str, int]  # the first change, while workers were still running
    workers_running: bool  # at that moment
    after: dict[str, int]  # once the page showed what lineage finally holds
    summary: lineage_pb2.StudySummary
    same_document: bool  # no reload in between
    errors: list[str] = field(default_factory=list)


def _curve(trial: Any, step: int) -> float:
    """x + 1/step: ASHA stops the trials with a large x."""
    return trial["x"] + 1 / step


def _api(dashboard: DashboardProcess, path: str) -> Any:
    try:
        with urllib.request.urlopen(dashboard.url + path, timeout=10) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


@pytest.fixture(scope="module")
def watched(stack: Settings, dashboard: DashboardProcess, browser: Any, client: LadderClient,
            tmp_path_factory: pytest.TempPathFactory) -> Watched:
    study = ladder.create_study(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}}, metric="loss",
        scheduler={"kind": "asha", "min_resource": 1, "reduction_factor": 3,
                   "min_population": 2, "smoothing": "none"},
        max_steps=MAX_STEPS, max_trials=BUDGET, algorithm="random", seed=16,
        name="browser-test", dataset_id="ds-browser", client=client,
    )
    sid = study.study_id
    wait_for(lambda: _api(dashboard, f"/api/studies/{sid}/progress"), 30,
             "lineage (through the dashboard) to know the study")
    errors = PageErrors()
    page = errors.watch(browser.new_page())
    try:
        page.goto(f"{dashboard.url}/studies/{sid}")
        wait_drawn(page, DRAW_TIMEOUT)
        page.evaluate("window.__sameDocument = true")
        before = page.evaluate(SHOWN_COUNTS, COUNTS)

        checkpoints = tmp_path_factory.mktemp("checkpoints").as_uri()
        workers = WorkerThreads(WORKERS, stack, sid, _curve, STEP_SECONDS, checkpoints,
                                prefix="browser-w").start()
        page.wait_for_function(
            "() => ['completed', 'pruned'].some("
            "n => document.getElementById('progress-' + n).textContent !== '0')",
            timeout=90_000)
        during = page.evaluate(SHOWN_COUNTS, COUNTS)
        workers_running = workers.alive()
        workers.join(120)
        summary = wait_for(
            lambda: (s := client.summary(sid)).completed + s.pruned + s.failed == BUDGET
            and s.running == 0 and s,
            60, f"lineage to record all {BUDGET} trials ended",
        )
        # "suggested" on the page is the trials handed out (all of the budget by now);
        # the other counts are lineage's trials in that state.
        final = {k: getattr(summary, k) for k in COUNTS} | {"suggested": BUDGET}
        page.wait_for_function(f"(want) => JSON.stringify(({SHOWN_COUNTS})(Object.keys(want)))"
                               " === JSON.stringify(want)", arg=final, timeout=30_000)
        after = page.evaluate(SHOWN_COUNTS, COUNTS)
        same_document = page.evaluate("window.__sameDocument === true")
    finally:
        page.close()
    return Watched(sid, before, during, workers_running, after, summary, same_document,
                   errors.found)


@dataclass
class Viewer:
    """A fresh tab on the dashboard, the watched study, and what the tab logs as errors."""

    page: Any
    errors: PageErrors
    base: str
    study_id: str

    def open(self, path: str) -> Any:
        """Go to ``path`` and wait until the page has drawn everything."""
        self.page.goto(self.base + path)
        wait_drawn(self.page, DRAW_TIMEOUT)
        return self.page


@pytest.fixture
def viewer(watched: Watched, dashboard: DashboardProcess, browser: Any) -> Iterator[Viewer]:
    errors = PageErrors()
    page = errors.watch(browser.new_page())
    page.add_init_script(READY_AT)
    try:
        yield Viewer(page, errors, dashboard.url, watched.study_id)
    finally:
        page.close()


def _wait_for_every_trial(page: Any) -> None:
    """The study page may open on a read of the study a moment old (the dashboard's
    cache) and redraws itself once its live progress says there is more: wait for
    the table to hold every trial of the budget."""
    page.wait_for_function(
        "(want) => document.getElementById('trial-count').textContent"
        ".startsWith(want + ' of ' + want + ' ')", arg=BUDGET, timeout=30_000)


def _trials(client: LadderClient, study_id: str) -> list[lineage_pb2.TrialSummary]:
    return client.list_trials(study_id)


def test_the_study_page_shows_progress_change_while_the_study_runs(watched: Watched) -> None:
    assert watched.before["completed"] == watched.before["pruned"] == 0, watched.before
    changed = watched.during["completed"] + watched.during["pruned"]
    assert 0 < changed < BUDGET, watched.during
    assert watched.workers_running, "the change was seen only after the study ended"
    # Handed out covers at least every trial the page counts in some state, while the
    # study runs too (lineage's study record says 0 until the study completes).
    assert watched.during["suggested"] >= sum(
        watched.during[k] for k in ("running", "pruned", "completed", "failed")), watched.during
    summary = watched.summary
    assert watched.after["completed"] == summary.completed
    assert watched.after["pruned"] == summary.pruned and summary.pruned >= 1, watched.after
    assert watched.after["completed"] + watched.after["pruned"] + watched.after["failed"] \
        == BUDGET
    assert watched.same_document, "the page was reloaded: it should update itself"
    assert watched.errors == []


def test_every_page_loads_and_draws_without_console_errors(
    viewer: Viewer, watched: Watched, client: LadderClient,
) -> None:
    sid = watched.study_id
    trials = _trials(client, sid)
    pruned = next(t for t in trials if t.state == "PRUNED")
    completed = next(t for t in trials if t.state == "COMPLETED")

    page = viewer.open("/studies")
    row = f'[data-testid="study-row"][data-study-id="{sid}"]'
    assert page.locator(row).count() == 1
    # The page refreshes its counts itself (every 5 s); the first may be a moment old.
    page.wait_for_function(
        "([row, want]) => document.querySelector(row + ' [data-testid=\"count-pruned\"]')"
        ".textContent === want", arg=[row, str(watched.summary.pruned)], timeout=15_000)

    page = viewer.open(f"/studies/{sid}")
    for name in ("history", "curves", "rungs", "compute", "parallel", "importance", "slices"):
        plot = page.locator(f'[data-testid="plot-{name}"]')
        assert plot.locator(".main-svg").count() >= 1, f"plot {name} not drawn"
    # The first screen's plots are drawn before the page says it is shown, the ones far
    # below it after.
    first_screen = page.evaluate("window.__ladderShownPlots")
    assert "plot-history" in first_screen and "plot-slices" not in first_screen, first_screen
    assert 0 < page.evaluate("window.__ladderShownAt") <= page.evaluate("window.__ladderReadyAt")
    _wait_for_every_trial(page)
    assert page.locator('[data-testid="trial-row"]').count() == BUDGET
    # The noise-aware pick (a GP fit on the server) links to one of the completed trials.
    link = page.locator('[data-testid="progress-recommended"] a')
    link.wait_for(timeout=15_000)
    picked = (link.get_attribute("href") or "").rsplit("/", 1)[-1]
    assert picked in {t.trial_id for t in _trials(client, sid) if t.state == "COMPLETED"}

    for trial in (pruned, completed):
        page = viewer.open(f"/trials/{trial.trial_id}")
        assert page.locator('[data-testid="trial-state"]').inner_text() == trial.state
        assert page.locator('[data-testid="plot-trial-curve"] .main-svg').count() >= 1
    assert viewer.errors.found == []


# Hover the learning curves' mark where the trial was stopped; the hover label's text.
HOVER_STOP_MARK = """(trialId) => {
  const plot = document.getElementById("plot-curves");
  const curve = plot.data.findIndex(t => t.name === "stopped here");
  if (curve < 0) return null;
  const point = plot.data[curve].customdata.findIndex(c => c[0] === trialId);
  if (point < 0) return null;
  Plotly.Fx.hover(plot, [{curveNumber: curve, pointNumber: point}]);
  const layer = plot.querySelector(".hoverlayer");  // absent while a refresh redraws
  return layer && layer.textContent ? layer.textContent : null;
}"""


def test_a_pruned_trial_shows_why_it_was_stopped(
    viewer: Viewer, watched: Watched, client: LadderClient,
) -> None:
    sid = watched.study_id
    pruned = [t for t in _trials(client, sid) if t.state == "PRUNED"]
    assert pruned and all(t.stop_reason for t in pruned), "lineage has no reason to show"
    reasons = {t.trial_id: t.stop_reason for t in pruned}

    first = pruned[0]
    page = viewer.open(f"/trials/{first.trial_id}")
    assert page.locator('[data-testid="stop-reason"]').inner_text() == first.stop_reason
    assert "rung" in first.stop_reason

    # The study page: the table filtered to the pruned trials, and the learning
    # curves' mark where the trial was stopped, hovered.
    page = viewer.open(f"/studies/{sid}")
    _wait_for_every_trial(page)
    page.fill('[data-testid="trial-filter"]', "state=pruned")
    rows = page.locator('[data-testid="trial-row"]')
    wait_for(lambda: rows.count() == len(pruned), 10, "the table filtered to pruned trials")
    shown = {rows.nth(i).get_attribute("data-trial-id"):
             rows.nth(i).locator('[data-testid="stop-reason"]').inner_text()
             for i in range(rows.count())}
    assert shown == reasons

    hovered = wait_for_found(lambda: page.evaluate(HOVER_STOP_MARK, first.trial_id), 10,
                             "the learning curves' stop mark of the trial, hovered")
    assert first.trial_id in hovered and first.stop_reason in hovered, hovered
    assert viewer.errors.found == []


def test_the_csv_download_matches_list_trials(
    viewer: Viewer, watched: Watched, client: LadderClient, tmp_path: Path,
) -> None:
    page = viewer.open(f"/studies/{watched.study_id}")
    with page.expect_download() as download:
        page.click('[data-testid="csv-link"]')
    saved = tmp_path / "trials.csv"
    download.value.save_as(saved)
    with saved.open(newline="") as f:
        rows = list(csv.DictReader(f))

    trials = _trials(client, watched.study_id)
    assert len(rows) == BUDGET
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == trial.state
        if trial.has_final_value:
            assert float(row["value"]) == trial.final_value
        else:
            assert row["value"] == ""
        assert row["stop_reason"] == trial.stop_reason
        assert float(row["params.x"]) == trial.params["x"].float_value
    assert viewer.errors.found == []
