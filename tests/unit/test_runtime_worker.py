"""The worker loop against an in-memory fake of the client (unit tests only)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import grpc
import pytest
from ladder import failures
from ladder.api.attempt import SIGNAL_STOP
from ladder.client import BudgetExhausted, study_config
from ladder.params import fill_params
from ladder.testing import RpcStatus
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, suggest_pb2, trial_pb2

from workers.agent import SCHEDULER_PAUSE
from workers.runtime import Worker, WorkerConfig

MAX_STEPS = 9


class FakeClient:
    """Records every call; scripted replies decide STOP / resume / lease loss."""

    def __init__(
        self, trials: int = 1, scheduler: dict | None = None, policy: dict | None = None
    ) -> None:
        self.study = study_pb2.Study(
            study_id="s1",
            config=study_config(
                {"x": {"type": "float", "low": 0, "high": 1}},
                metric="loss",
                scheduler=scheduler
                or {
                    "kind": "asha",
                    "min_resource": 1,
                    "max_resource": MAX_STEPS,
                    "reduction_factor": 3,
                },
            ),
        )
        for name, value in (policy or {}).items():
            setattr(self.study.config.trial_policy, name, value)
        self.remaining = trials
        self.calls: list[tuple[Any, ...]] = []
        self.metrics: list[tuple[str, float, float]] = []
        # heartbeat(trial_id, step, call number) -> reply (default CONTINUE)
        self.on_heartbeat: Callable[[str, float, int], evaluate_pb2.HeartbeatResponse] | None = None
        self.start_reply: dict[str, evaluate_pb2.StartTrialResponse] = {}
        self.heartbeats = 0
        self.overheads: list[tuple[float, float]] = []  # (save_seconds, train_seconds)
        self.on_fail: Callable[[], None] | None = None
        # True: Suggest starts the suggestion itself (SuggestRequest.start), as the
        # suggest service does; False: an older server that ignores ``start``.
        self.starts_in_suggest = False
        self.start_requests: list[evaluate_pb2.StartTrialRequest] = []
        self.completed_by: list[str] = []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def get_study(self, study_id: str) -> study_pb2.Study:
        return self.study

    def suggest(
        self,
        study_id: str,
        worker_id: str,
        count: int = 1,
        start: evaluate_pb2.StartTrialRequest | None = None,
    ) -> list[suggest_pb2.Suggestion]:
        self.calls.append(("suggest",))
        if start is not None:
            self.start_requests.append(start)
        if self.remaining == 0:
            raise BudgetExhausted("budget exhausted")
        self.remaining -= 1
        trial = trial_pb2.Trial(trial_id=f"t{self.remaining}", study_id="s1", seed=42)
        fill_params(trial.params, {"x": 0.5})
        suggestion = suggest_pb2.Suggestion(trial=trial)
        if start is not None and self.starts_in_suggest:
            started = suggestion.started
            started.CopyFrom(
                self.start_reply.get(trial.trial_id, evaluate_pb2.StartTrialResponse(
                    lease_seconds=30))
            )
            started.trial.CopyFrom(trial)
            started.trial.attempt_id = start.attempt_id
            started.trial.state = trial_pb2.RUNNING
        return [suggestion]

    def start_trial(
        self,
        trial_id: str,
        worker_id: str,
        attempt_id: str,
        hostname: str = "",
        environment: str = "",
        run_environment: trial_pb2.RunEnvironment | None = None,
    ) -> evaluate_pb2.StartTrialResponse:
        self.calls.append(("start", trial_id, attempt_id))
        self.run_environment = run_environment
        return self.start_reply.get(trial_id, evaluate_pb2.StartTrialResponse(lease_seconds=30))

    def heartbeat(
        self, trial_id: str, attempt_id: str, step: float
    ) -> evaluate_pb2.HeartbeatResponse:
        self.heartbeats += 1
        if self.on_heartbeat:
            return self.on_heartbeat(trial_id, step, self.heartbeats)
        return evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE)

    def report_metric(
        self,
        study_id: str,
        trial_id: str,
        attempt_id: str,
        step: float,
        value: float,
        metric: str = "",
        worker_id: str = "",
        wait: bool = False,
    ) -> events_pb2.MetricReport:
        assert metric == "loss" and worker_id == "w0"
        self.metrics.append((trial_id, step, value))
        return events_pb2.MetricReport()

    def checkpoint(
        self,
        trial_id: str,
        attempt_id: str,
        uri: str,
        step: float,
        save_seconds: float = 0.0,
        train_seconds: float = 0.0,
    ) -> trial_pb2.Trial:
        self.calls.append(("checkpoint", trial_id, uri, step))
        self.overheads.append((save_seconds, train_seconds))
        return trial_pb2.Trial()

    def complete(
        self, trial_id: str, attempt_id: str, value: float, step: float
    ) -> trial_pb2.Trial:
        self.calls.append(("complete", trial_id, value, step))
        self.completed_by.append(attempt_id)
        return trial_pb2.Trial()

    def prune(
        self, trial_id: str, attempt_id: str, step: float, last_value: float
    ) -> trial_pb2.Trial:
        self.calls.append(("prune", trial_id, step, last_value))
        return trial_pb2.Trial()

    def pause(self, trial_id: str, attempt_id: str, step: float, rung: int) -> trial_pb2.Trial:
        self.calls.append(("pause", trial_id, step, rung))
        return trial_pb2.Trial(trial_id=trial_id, state=trial_pb2.PAUSED, paused_rung=rung)

    def fail(
        self,
        trial_id: str,
        attempt_id: str,
        reason: str,
        retryable: bool | None = None,
        kind: int = 0,
    ) -> trial_pb2.Trial:
        self.calls.append(("fail", trial_id, reason, kind))
        if self.on_fail:
            self.on_fail()
        return trial_pb2.Trial()

    def flush(self, timeout: float = 10.0) -> None:
        pass


class CountingWorkload:
    """value = 1 / (steps trained); checkpoints are small JSON files."""

    name = "counting"
    metric = "loss"
    max_steps = 100

    def __init__(
        self,
        fail_at: int | None = None,
        nan_at: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.fail_at, self.nan_at, self.on_step = fail_at, nan_at, on_step
        self.trained: list[int] = []

    def init(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        assert params == {"x": 0.5} and seed == 42
        return {"steps": 0}

    def train_step(self, state: dict[str, Any], step: int) -> float:
        if step == self.fail_at:
            raise RuntimeError("CUDA out of memory")
        state["steps"] += 1
        self.trained.append(step)
        if self.on_step:
            self.on_step(step)
        return math.nan if step == self.nan_at else 1.0 / state["steps"]

    def evaluate(self, state: dict[str, Any]) -> float:
        return 1.0 / state["steps"]

    def save_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state))

    def load_checkpoint(self, path: Path, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        return json.loads(path.read_text())


def make_worker(
    client: FakeClient, workload: CountingWorkload, tmp_path: Path, **overrides: Any
) -> Worker:
    config = WorkerConfig(
        study_id="s1",
        worker_id="w0",
        state_dir=tmp_path,
        **{"heartbeat_interval": 60, "decision_wait": 0.02, "checkpoint_every": 3,
           **overrides},
    )
    return Worker(client, workload, config)  # type: ignore[arg-type]


def local(uri: str) -> Path:
    """The file of a file:// checkpoint URI."""
    return Path(unquote(urlparse(uri).path))


def decision_reply(action: int, rung: int, resource: float) -> evaluate_pb2.HeartbeatResponse:
    return evaluate_pb2.HeartbeatResponse(
        action=action,
        decision=events_pb2.Decision(
            trial_id="t0", action=action, rung=rung, resource=resource, reason="below cutoff"
        ),
    )


def stop_reply(rung: int, resource: float) -> evaluate_pb2.HeartbeatResponse:
    return decision_reply(events_pb2.STOP, rung, resource)


def pause_reply(rung: int, resource: float) -> evaluate_pb2.HeartbeatResponse:
    return decision_reply(events_pb2.PAUSE, rung, resource)


def test_trials_run_to_completion_until_the_budget_is_exhausted(tmp_path: Path) -> None:
    client = FakeClient(trials=2)
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"completed": 2}
    assert report.budget_exhausted
    assert [m[1] for m in client.metrics if m[0] == "t1"] == list(range(1, MAX_STEPS + 1))
    completes = [c for c in client.calls if c[0] == "complete"]
    assert completes == [("complete", "t1", 1 / 9, 9), ("complete", "t0", 1 / 9, 9)]
    # Checkpoints every 3 steps, none at the final step (it is completed instead).
    steps = [c[3] for c in client.calls if c[0] == "checkpoint" and c[1] == "t1"]
    assert steps == [3, 6]
    uri = next(c[2] for c in client.calls if c[0] == "checkpoint" and c[1] == "t1")
    # The default store: <state>/checkpoints/<study>/<trial>/<attempt>-step<N>.ckpt
    assert uri.startswith("file://") and local(uri).exists()
    assert local(uri).parent == tmp_path / "checkpoints" / "s1" / "t1"
    assert local(uri).name.endswith("-step3.ckpt")


def test_each_attempt_has_a_fresh_attempt_id(tmp_path: Path) -> None:
    client = FakeClient(trials=2)
    make_worker(client, CountingWorkload(), tmp_path).run()
    attempt_ids = [c[2] for c in client.calls if c[0] == "start"]
    assert len(set(attempt_ids)) == 2 and all(len(a) == 32 for a in attempt_ids)


def test_suggest_starts_the_attempt_in_the_same_round_trip(tmp_path: Path) -> None:
    client = FakeClient(trials=2)
    client.starts_in_suggest = True
    resume_from(client, tmp_path, 6)  # t0: a resumed trial, started by Suggest too
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path).run()
    assert report.outcomes == {"completed": 2}
    assert "start" not in client.names()  # no StartTrial round trip
    # Each Suggest asked for a fresh attempt with this worker's environment, and the
    # attempt reported under the id Suggest started.
    requests = client.start_requests
    assert len({r.attempt_id for r in requests}) == 3 and all(r.hostname for r in requests)
    assert all(r.HasField("run_environment") and not r.trial_id for r in requests)
    completes = [c for c in client.calls if c[0] == "complete"]
    assert completes == [("complete", "t1", 1 / 9, 9), ("complete", "t0", 1 / 9, 9)]
    assert client.completed_by == [requests[0].attempt_id, requests[1].attempt_id]
    assert workload.trained[-3:] == [7, 8, 9]  # t0 resumed from Suggest's checkpoint


def test_a_suggestion_not_started_by_suggest_is_started_by_start_trial(
    tmp_path: Path,
) -> None:
    client = FakeClient(trials=1)  # a server that ignores SuggestRequest.start
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"completed": 1}
    (start,) = [c for c in client.calls if c[0] == "start"]
    assert start[2] != client.start_requests[0].attempt_id  # a fresh attempt id


def test_stop_in_a_heartbeat_prunes_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        stop_reply(1, 3) if step >= 3 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path).run()
    assert report.outcomes == {"pruned": 1}
    assert workload.trained == [1, 2, 3]
    assert ("prune", "t0", 3, 1 / 3) in client.calls
    assert "complete" not in client.names()


def test_the_stopping_form_never_waits_at_a_rung(tmp_path: Path) -> None:
    # The STOP for rung 0 (resource 1) arrives a few heartbeats after step 1 was reported:
    # the worker trains on meanwhile and is pruned where the STOP reaches it.
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        stop_reply(0, 1) if n >= 4 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path, decision_wait=5).run()
    assert report.outcomes == {"pruned": 1}
    assert workload.trained == [1, 2, 3, 4]
    assert ("prune", "t0", 4, 1 / 4) in client.calls


def pending_reply() -> evaluate_pb2.HeartbeatResponse:
    return evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE, decision_pending=True)


def test_a_pending_verdict_holds_the_trial_until_it_arrives(tmp_path: Path) -> None:
    # Promotion form: evaluate says the verdict of step 1 is due; it is a PAUSE from the
    # 4th heartbeat on.
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: pause_reply(0, 1) if n >= 4 else pending_reply()
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path, decision_wait=30).run()
    assert report.outcomes == {"paused": 1}
    assert workload.trained == [1] and client.heartbeats == 4
    assert ("pause", "t0", 1, 0) in client.calls


def test_a_verdict_that_does_not_come_holds_the_trial_only_for_decision_wait(
    tmp_path: Path,
) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        pending_reply() if step == 1 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    worker = make_worker(client, CountingWorkload(), tmp_path, decision_wait=0.3)
    assert worker.run().outcomes == {"completed": 1}
    assert client.heartbeats > MAX_STEPS  # it asked again while held at step 1


def resume_from(client: FakeClient, tmp_path: Path, step: int) -> None:
    """StartTrial of t0 answers with a checkpoint of ``step`` trained steps."""
    saved = tmp_path / "old" / f"a-step{step}.ckpt"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"steps": step}))
    client.start_reply["t0"] = evaluate_pb2.StartTrialResponse(
        lease_seconds=30, checkpoint_uri=saved.as_uri(), checkpoint_step=step
    )


def test_resume_starts_after_the_checkpointed_step(tmp_path: Path) -> None:
    client = FakeClient()
    resume_from(client, tmp_path, 6)
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path).run()
    assert report.outcomes == {"completed": 1}
    assert workload.trained == [7, 8, 9]
    assert [m[1] for m in client.metrics] == [7, 8, 9]
    assert ("complete", "t0", 1 / 9, 9) in client.calls


def test_an_exception_fails_the_attempt_with_its_class_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    client = FakeClient(trials=2)
    report = make_worker(client, CountingWorkload(fail_at=2), tmp_path).run()
    assert report.outcomes == {"failed": 2}
    fails = [c for c in client.calls if c[0] == "fail"]
    assert fails[0][1] == "t1" and fails[0][3] == failures.OUT_OF_MEMORY
    assert "OUT_OF_MEMORY: RuntimeError: CUDA out of memory" in fails[0][2]


def test_divergence_without_a_stop_fails_for_good(tmp_path: Path) -> None:
    client = FakeClient(scheduler={"kind": "none"})
    report = make_worker(client, CountingWorkload(nan_at=2), tmp_path, max_steps=5).run()
    assert report.outcomes == {"failed": 1}
    ((_, _, reason, kind),) = [c for c in client.calls if c[0] == "fail"]
    assert "diverged" in reason and kind == failures.DIVERGED
    assert math.isnan(client.metrics[-1][2])


def test_graceful_stop_checkpoints_and_hands_the_trial_back(tmp_path: Path) -> None:
    client = FakeClient(trials=5)
    holder: dict[str, Worker] = {}

    def on_step(step: int) -> None:
        if step == 4:
            holder["worker"].request_stop()  # what the SIGTERM handler does

    workload = CountingWorkload(on_step=on_step)
    holder["worker"] = make_worker(client, workload, tmp_path)
    report = holder["worker"].run()
    assert report.outcomes == {"interrupted": 1}
    assert workload.trained == [1, 2, 3, 4]  # the step in progress finishes
    checkpoints = [c[3] for c in client.calls if c[0] == "checkpoint"]
    assert checkpoints == [3, 4]
    ((_, _, reason, kind),) = [c for c in client.calls if c[0] == "fail"]
    assert kind == failures.PREEMPTED and "after step 4" in reason
    assert client.names().count("suggest") == 1  # no new trial after the stop


@pytest.mark.parametrize("why", [None, SCHEDULER_PAUSE])
def test_the_hand_back_reason_says_what_stopped_the_worker(tmp_path: Path, why: str | None
                                                           ) -> None:
    client = FakeClient(trials=5)
    holder: dict[str, Worker] = {}

    def on_step(step: int) -> None:
        if step == 2:  # a signal handler passes no reason; the node agent names its own
            worker = holder["worker"]
            worker.request_stop() if why is None else worker.request_stop(why)

    holder["worker"] = make_worker(client, CountingWorkload(on_step=on_step), tmp_path)
    holder["worker"].run()
    ((_, _, reason, kind),) = [c for c in client.calls if c[0] == "fail"]
    assert kind == failures.PREEMPTED
    assert f"{why or SIGNAL_STOP} after step 2" in reason, reason


def stale_from(first: float) -> Callable[[str, float, int], evaluate_pb2.HeartbeatResponse]:
    """Heartbeats refused as a stale attempt from step ``first`` on (the lease is lost)."""

    def beat(trial: str, step: float, n: int) -> evaluate_pb2.HeartbeatResponse:
        if step >= first:
            raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION, "stale attempt")
        return evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE)

    return beat


def test_a_lost_lease_abandons_the_trial_silently(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = stale_from(2)
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"lost": 1}
    assert not {"complete", "fail", "prune"} & set(client.names())


def test_a_refused_start_skips_the_trial(tmp_path: Path) -> None:
    client = FakeClient(trials=1)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION, "trial is COMPLETED")

    client.start_trial = refuse  # type: ignore[method-assign]
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"lost": 1} and report.budget_exhausted


def test_suggest_errors_other_than_budget_end_the_worker(tmp_path: Path) -> None:
    client = FakeClient()

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RpcStatus(grpc.StatusCode.UNAVAILABLE, "connection refused")

    client.suggest = unavailable  # type: ignore[method-assign]
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert "UNAVAILABLE" in report.fatal_error and not report.budget_exhausted


@pytest.mark.parametrize("max_trials", [1, 2])
def test_max_trials_limits_one_worker(tmp_path: Path, max_trials: int) -> None:
    client = FakeClient(trials=5)
    report = make_worker(client, CountingWorkload(), tmp_path, max_trials=max_trials).run()
    assert report.trials == max_trials and not report.budget_exhausted


def test_pause_checkpoints_the_rung_step_and_hands_the_trial_back(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        pause_reply(0, 1) if step >= 1 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path).run()
    assert report.outcomes == {"paused": 1}
    assert workload.trained == [1]
    checkpoint = next(c for c in client.calls if c[0] == "checkpoint")
    assert checkpoint[3] == 1 and local(checkpoint[2]).exists()
    # The checkpoint a PAUSE refers to is pinned: retention keeps it.
    assert local(checkpoint[2]).with_name(local(checkpoint[2]).name + ".pin").exists()
    # Checkpoint first, then PauseTrial with the rung of the decision obeyed.
    assert client.names()[-3:] == ["checkpoint", "pause", "suggest"]
    assert ("pause", "t0", 1, 0) in client.calls
    assert "prune" not in client.names() and "complete" not in client.names()


def test_a_pause_for_a_rung_not_reached_yet_waits_for_that_rung(tmp_path: Path) -> None:
    # A resumed attempt behind its old PAUSE (checkpoint at step 2, PAUSE about rung 1 at
    # resource 3) trains on to step 3 before it pauses.
    client = FakeClient()
    resume_from(client, tmp_path, 2)
    client.on_heartbeat = lambda trial, step, n: pause_reply(1, 3)
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path).run()
    assert report.outcomes == {"paused": 1}
    assert workload.trained == [3]
    assert ("pause", "t0", 3, 1) in client.calls
