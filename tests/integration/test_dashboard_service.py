"""The dashboard as a real process (``python -m services.dashboard``) reading a real
lineage service, after real records went through the broker: every page and endpoint
over HTTP, the CSV equal to ListTrials, a pruned trial's reason, unknown ids 404 with
a clear message, the live stream changing while the study runs, and a graceful stop
on SIGTERM with a stream open."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ladder.bus import EventProducer
from ladder.config import Settings
from ladder.dashboard.study import FIGURES
from ladder.params import fill_params
from ladder.stack.ports import free_port
from ladder.testing import ServiceProcess, wait_for
from ladder.v1 import (
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    trial_pb2,
)

pytestmark = pytest.mark.integration

TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind
STOP_REASON = "rung 1 (resource 3): rank 3 of 3, below the cutoff 0.7"


class Published:
    """One study published to the real topics: t1 completed, t2 stopped at rung 1,
    t3 running (``finish_t3`` completes it); ids unique per module."""

    def __init__(self, settings: Settings) -> None:
        self.topics = settings.topics
        self.producer = EventProducer(settings, "dashboard-test")
        self.study_id = f"dash-{uuid.uuid4().hex[:8]}"
        self.t1, self.t2, self.t3 = (f"{self.study_id}-t{i}" for i in (1, 2, 3))

    def send(self, topic: str, key: str, message: Any) -> None:
        self.producer.send(topic, key, message, wait=True)

    def study(self) -> None:
        space = space_pb2.SearchSpace(parameters=[
            space_pb2.Parameter(name="lr", float_range=space_pb2.FloatRange(
                low=1e-4, high=1e-1, scale=space_pb2.SCALE_LOG)),
            space_pb2.Parameter(name="optimizer", categorical=space_pb2.Categorical(
                choices=["adam", "sgd"])),
        ])
        config = study_pb2.StudyConfig(
            name="dashboard-it", space=space, direction=study_pb2.MAXIMIZE, metric="acc",
            max_trials=6, dataset_id="digits@1", code_commit="abc123",
            algorithm=study_pb2.GP,
            scheduler=study_pb2.SchedulerConfig(kind=study_pb2.ASHA, min_resource=1,
                                                max_resource=9, reduction_factor=3),
        )
        study = study_pb2.Study(study_id=self.study_id, config=config,
                                state=study_pb2.STUDY_ACTIVE,
                                created_unix_ms=int(time.time() * 1000), trials_suggested=3)
        self.send(self.topics.studies, self.study_id, events_pb2.StudyEvent(study=study,
                                                                            ts_ms=1_000))

    def event(self, trial_id: str, kind: str, state: str, ts_ms: int, params: dict,
              **fields: Any) -> None:
        started = kind != "TRIAL_SUGGESTED"
        trial = trial_pb2.Trial(
            trial_id=trial_id, study_id=self.study_id, state=TS.Value(state), seed=11,
            attempt_id=f"{trial_id}-a1" if started else "", attempt_number=int(started),
            worker_id="w1" if started else "",
        )
        fill_params(trial.params, params)
        if kind == "TRIAL_COMPLETED":
            trial.has_final_value, trial.final_value = True, fields.pop("final")
            trial.checkpoint_uri = f"file:///ckpt/{trial_id}/9"
        self.send(self.topics.trials, self.study_id,
                  events_pb2.TrialEvent(kind=KIND.Value(kind), trial=trial, ts_ms=ts_ms,
                                        **fields))

    def metrics(self, trial_id: str, values: list[float]) -> None:
        for step, value in enumerate(values, start=1):
            self.send(self.topics.metrics, trial_id, events_pb2.MetricReport(
                study_id=self.study_id, trial_id=trial_id, attempt_id=f"{trial_id}-a1",
                worker_id="w1", metric="acc", step=step, value=value, ts_ms=2_000 + step))

    def decision(self, trial_id: str, action: int, rung: int, reason: str) -> None:
        self.send(self.topics.decisions, trial_id, events_pb2.Decision(
            study_id=self.study_id, trial_id=trial_id, action=action, rung=rung,
            resource=3**rung, smoothed_value=0.5, cutoff=0.7, rank=3, population=3,
            reason=reason, scheduler="asha", ts_ms=3_000 + rung))

    def publish(self) -> None:
        self.study()
        p1 = {"lr": 0.01, "optimizer": "adam"}
        p2 = {"lr": 0.0003, "optimizer": "sgd"}
        p3 = {"lr": 0.05, "optimizer": "adam"}
        for trial_id, params in ((self.t1, p1), (self.t2, p2), (self.t3, p3)):
            self.event(trial_id, "TRIAL_SUGGESTED", "SUGGESTED", 1_100, params,
                       algorithm="gp", predicted_mean=0.8, predicted_std=0.05)
            self.event(trial_id, "TRIAL_STARTED", "RUNNING", 1_200, params,
                       hostname="gpu-1", environment="python=3.11")
        self.metrics(self.t1, [0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.905, 0.91])
        self.decision(self.t1, events_pb2.PROMOTE, 0, "rung 0 (resource 1): rank 1 of 3")
        self.event(self.t1, "TRIAL_COMPLETED", "COMPLETED", 5_000, p1, final=0.91)
        self.metrics(self.t2, [0.3, 0.35, 0.4])
        self.decision(self.t2, events_pb2.STOP, 1, STOP_REASON)
        self.event(self.t2, "TRIAL_PRUNED", "PRUNED", 5_100, p2, reason=STOP_REASON)
        self.metrics(self.t3, [0.6, 0.7])

    def finish_t3(self) -> None:
        self.event(self.t3, "TRIAL_COMPLETED", "COMPLETED", 6_000, {"lr": 0.05,
                                                                     "optimizer": "adam"},
                   final=0.75)


def base(dashboard: ServiceProcess) -> str:
    return f"http://{dashboard.addr}"


def start_dashboard(env: dict[str, str], lineage_addr: str, log_dir: Path) -> ServiceProcess:
    """``python -m services.dashboard`` on a free port, once its /healthz says lineage is
    SERVING."""
    port = free_port()
    log = log_dir / f"dashboard-{port}.log"
    child_env = {**env, "LADDER_LINEAGE_ADDR": lineage_addr,
                 "LADDER_DASHBOARD_PORT": str(port), "LADDER_DASHBOARD_LIVE_INTERVAL_MS": "200"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.dashboard"], env=child_env,
                                stdout=out, stderr=subprocess.STDOUT)
    dashboard = ServiceProcess("services.dashboard", f"127.0.0.1:{port}", proc, log)

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited {proc.returncode}:\n{dashboard.log_text()}")
        status, body = get(base(dashboard) + "/healthz")
        return status == 200 and json.loads(body)["lineage"] == "SERVING"

    wait_for(serving, 60, "the dashboard's /healthz with lineage SERVING", every=0.2)
    return dashboard


def get(url: str, timeout: float = 30.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def ok(url: str) -> str:
    status, body = get(url)
    assert status == 200, (url, status, body[:500])
    return body


@pytest.fixture(scope="module")
def stack(
    infra_env: dict[str, str], infra: Settings, start_module_service: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Published, ServiceProcess, lineage_pb2_grpc.LineageServiceStub]]:
    lineage = start_module_service("services.lineage")
    published = Published(infra)
    published.publish()
    channel = grpc.insecure_channel(lineage.addr)
    stub = lineage_pb2_grpc.LineageServiceStub(channel)

    def ingested() -> bool:
        try:
            summary = stub.GetStudySummary(
                lineage_pb2.GetStudySummaryRequest(study_id=published.study_id), timeout=5)
        except grpc.RpcError:
            return False
        return (summary.completed, summary.pruned, summary.running, summary.decisions) == (
            1, 1, 1, 2)

    wait_for(ingested, 60, "lineage to record the published study", every=0.2)
    dashboard = start_dashboard(infra_env, lineage.addr, tmp_path_factory.mktemp("dashboard"))
    yield published, dashboard, stub
    dashboard.stop()
    published.producer.close()
    channel.close()


def test_studies_page_lists_the_study_with_its_progress(stack) -> None:
    published, dashboard, _ = stack
    page = ok(base(dashboard) + "/studies")
    assert f'href="/studies/{published.study_id}"' in page
    rows = json.loads(ok(base(dashboard) + "/api/studies"))["studies"]
    [row] = [r for r in rows if r["study_id"] == published.study_id]
    assert (row["state"], row["algorithm"], row["scheduler"]) == ("active", "gp", "asha")
    assert row["best_value"] == 0.91 and row["best_trial_id"] == published.t1
    assert {k: row["progress"][k] for k in ("running", "pruned", "completed", "failed")} == {
        "running": 1, "pruned": 1, "completed": 1, "failed": 0}
    assert row["progress"]["max_trials"] == 6


def test_study_page_and_its_figures(stack) -> None:
    published, dashboard, stub = stack
    summary = stub.GetStudySummary(lineage_pb2.GetStudySummaryRequest(
        study_id=published.study_id))
    page = ok(f"{base(dashboard)}/studies/{published.study_id}")
    for count in ("running", "pruned", "completed", "failed"):
        assert f'data-testid="progress-{count}">{getattr(summary, count)}<' in page
    for name in FIGURES:
        assert f'data-testid="plot-{name}"' in page
    assert 'data-testid="trial-table"' in page and 'data-testid="csv-link"' in page
    # plotly.js comes from this dashboard (the wheel), not a CDN.
    script = page.split('src="/static/plotly-', 1)[1].split('"', 1)[0]
    assert b"plotly.js" in urllib.request.urlopen(
        f"{base(dashboard)}/static/plotly-{script}", timeout=30).read(300)

    answer = json.loads(ok(f"{base(dashboard)}/api/studies/{published.study_id}/figures"))
    figures = answer["figures"]
    assert set(figures) == set(FIGURES)
    history = figures["history"]["data"][0]
    assert history["customdata"] == [published.t1] and history["y"] == [0.91]
    marks = next(t for t in figures["curves"]["data"] if t["name"] == "stopped here")
    assert marks["customdata"] == [[published.t2, STOP_REASON]] and marks["x"] == [3]
    rungs = {t["name"]: dict(zip(t["x"], t["y"], strict=True))
             for t in figures["rungs"]["data"]}
    assert rungs["stopped"]["rung 1 (step 3)"] == 1
    assert rungs["promoted"]["rung 0 (step 1)"] == 1
    assert answer["best"]["trial_id"] == published.t1

    table = json.loads(ok(f"{base(dashboard)}/api/studies/{published.study_id}/trials"))
    columns = dict(zip(table["columns"], table["data"], strict=True))  # 3 rows: not packed
    assert sorted(columns["trial_id"]) == sorted([published.t1, published.t2, published.t3])
    reasons = dict(zip(columns["trial_id"], columns["stop_reason"], strict=True))
    assert reasons[published.t2] == STOP_REASON


def test_csv_download_matches_listtrials(stack) -> None:
    published, dashboard, stub = stack
    body = ok(f"{base(dashboard)}/studies/{published.study_id}/trials.csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    listed = stub.ListTrials(lineage_pb2.ListTrialsRequest(study_id=published.study_id)).trials
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in listed]
    for row, trial in zip(rows, listed, strict=True):
        assert row["state"] == trial.state
        assert row["value"] == (repr(trial.final_value) if trial.has_final_value else "")
        assert float(row["last_step"]) == trial.last_step
        assert row["stop_reason"] == trial.stop_reason
        assert int(row["attempts"]) == trial.attempts
        assert float(row["params.lr"]) == trial.params["lr"].float_value
        assert row["params.optimizer"] == trial.params["optimizer"].str_value


def test_trial_page_shows_why_a_pruned_trial_was_stopped(stack) -> None:
    published, dashboard, _ = stack
    page = ok(f"{base(dashboard)}/trials/{published.t2}")
    assert f'data-testid="stop-reason">{STOP_REASON}<' in page
    assert "digits@1" in page and "abc123" in page  # lineage: dataset, code commit
    assert f"ladder.trial_id={published.t2}" in page  # how to find its trace
    view = json.loads(ok(f"{base(dashboard)}/api/trials/{published.t2}"))
    assert view["stop"]["reason"] == STOP_REASON and view["stop"]["rung"] == 1
    assert view["predicted"] == {"mean": 0.8, "std": 0.05}
    assert view["attempts"][0]["outcome"] == "pruned"
    assert [t["name"] for t in view["curve"]["data"]] == [f"{published.t2}-a1", "stop"]


def test_unknown_study_and_trial_are_404_with_a_clear_message(stack) -> None:
    _, dashboard, _ = stack
    status, page = get(base(dashboard) + "/studies/no-such-study")
    assert status == 404 and "study &#x27;no-such-study&#x27; not found" in page
    status, body = get(base(dashboard) + "/api/studies/no-such-study/figures")
    assert status == 404 and json.loads(body)["error"] == "study 'no-such-study' not found"
    status, _ = get(base(dashboard) + "/studies/no-such-study/trials.csv")
    assert status == 404
    status, page = get(base(dashboard) + "/trials/no-such-trial")
    assert status == 404 and "no-such-trial" in page


def read_events(url: str, until: Callable[[dict], bool], timeout: float) -> list[dict]:
    """The progress events of the stream at ``url`` until one satisfies ``until``."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        while time.monotonic() < deadline:
            line = stream.readline()
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if until(seen[-1]):
                    return seen
    raise AssertionError(f"no such event within {timeout}s; saw {seen}")


def test_live_progress_changes_while_the_study_runs(stack) -> None:
    published, dashboard, _ = stack
    url = f"{base(dashboard)}/api/studies/{published.study_id}/events"
    first = read_events(url, lambda p: True, 30)[0]
    assert (first["completed"], first["running"]) == (1, 1)
    published.finish_t3()
    events = read_events(url, lambda p: p["completed"] == 2, 60)
    assert events[-1]["running"] == 0
    polled = json.loads(ok(f"{base(dashboard)}/api/studies/{published.study_id}/progress"))
    assert polled["completed"] == 2


def test_sigterm_stops_the_dashboard_with_a_stream_open(
    stack, infra_env: dict[str, str], tmp_path: Path
) -> None:
    published, running, _ = stack
    lineage_addr = json.loads(ok(base(running) + "/healthz"))["lineage_addr"]
    dashboard = start_dashboard(infra_env, lineage_addr, tmp_path)
    stream = urllib.request.urlopen(
        f"{base(dashboard)}/api/studies/{published.study_id}/events", timeout=30)
    try:
        assert stream.readline()  # the stream is open
        started = time.monotonic()
        assert dashboard.stop(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        stream.close()
    assert "dashboard stopped" in dashboard.log_text()

