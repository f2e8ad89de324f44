"""The study lifecycle controls of issue 19 through the real suggest, evaluate and
lineage processes: stop with running trials finishing or stopped, pause / resume
(running trials parked, handed out first on resume), cancel, live parallelism and
budget changes (UpdateStudy), an operator's stop of one trial with its reason in
GetTrial and lineage, and the CLI commands for them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.errors import StudyPaused
from ladder.testing import (
    Clients,
    code_and_message,
    decoded,
    read_topic,
    wait_for,
    wait_for_found,
)
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    suggest_pb2,
    trial_pb2,
)

from workers.runtime import Worker, WorkerConfig

pytestmark = pytest.mark.integration

SPACE = space_pb2.SearchSpace(
    parameters=[space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(low=0, high=1))]
)
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class Stack:
    def __init__(self, clients: Clients, lineage: lineage_pb2_grpc.LineageServiceStub,
                 env: dict[str, str]) -> None:
        self.clients = clients
        self.suggest = clients.suggest
        self.evaluate = clients.evaluate
        self.lineage = lineage
        self.env = env


@pytest.fixture(scope="module")
def stack(
    infra_env: dict[str, str], start_module_service: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    suggest = start_module_service("services.suggest", {"LADDER_STUDY_SETTLE_S": "2"})
    evaluate = start_module_service("services.evaluate")
    lineage = start_module_service("services.lineage")
    clients = Clients(suggest.addr, evaluate.addr)
    channel = grpc.insecure_channel(lineage.addr)
    env = {**infra_env, "LADDER_SUGGEST_ADDR": suggest.addr,
           "LADDER_EVALUATE_ADDR": evaluate.addr, "LADDER_LINEAGE_ADDR": lineage.addr,
           "LADDER_STATE_DIR": str(tmp_path_factory.mktemp("lifecycle-cli"))}
    yield Stack(clients, lineage_pb2_grpc.LineageServiceStub(channel), env)
    channel.close()
    clients.close()


def config_of(max_trials: int = 0, max_parallel: int = 0) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name="controls", space=SPACE, metric="val_loss", max_trials=max_trials,
        max_parallel_trials=max_parallel,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )


def create(stack: Stack, max_trials: int = 0, max_parallel: int = 0) -> str:
    return stack.clients.create(config_of(max_trials, max_parallel)).study_id


def running(stack: Stack, study_id: str, worker: str = "w-1") -> tuple[str, str]:
    """A new trial of the study, started: (trial id, attempt id)."""
    trial_id = stack.clients.one(study_id, worker).trial.trial_id
    attempt = uuid.uuid4().hex
    stack.clients.start(trial_id, attempt, worker)
    return trial_id, attempt


def suggest(stack: Stack, study_id: str, count: int = 1) -> list[suggest_pb2.Suggestion]:
    request = suggest_pb2.SuggestRequest(study_id=study_id, worker_id="w-s", count=count)
    return list(stack.suggest.Suggest(request, timeout=30).suggestions)


def refusal(stack: Stack, study_id: str) -> tuple[grpc.StatusCode, str]:
    return code_and_message(lambda: suggest(stack, study_id))


def prune(stack: Stack, trial_id: str, attempt: str) -> trial_pb2.Trial:
    request = evaluate_pb2.PruneTrialRequest(trial_id=trial_id, attempt_id=attempt, step=2)
    return stack.evaluate.PruneTrial(request, timeout=30)


def stop_study(stack: Stack, study_id: str, **fields: Any) -> study_pb2.Study:
    request = suggest_pb2.StopStudyRequest(study_id=study_id, **fields)
    return stack.suggest.StopStudy(request, timeout=30)


def update(stack: Stack, study_id: str, **fields: int) -> study_pb2.Study:
    request = suggest_pb2.UpdateStudyRequest(study_id=study_id, **fields)
    return stack.suggest.UpdateStudy(request, timeout=30)


def stop_trial(stack: Stack, trial_id: str, reason: str) -> trial_pb2.Trial:
    request = evaluate_pb2.StopTrialRequest(trial_id=trial_id, reason=reason)
    return stack.evaluate.StopTrial(request, timeout=30)


def study_states(infra: Settings, study_id: str) -> list[int]:
    events = decoded(events_pb2.StudyEvent, read_topic(infra, infra.topics.studies))
    return [e.study.state for e in events if e.study.study_id == study_id]


def test_stop_lets_running_trials_finish_by_default(stack: Stack) -> None:
    study_id = create(stack)
    trial_id, attempt = running(stack, study_id)
    assert stop_study(stack, study_id).state == study_pb2.STUDY_STOPPED
    assert stack.clients.heartbeat(trial_id, attempt).action == events_pb2.CONTINUE
    assert stack.clients.complete(trial_id, attempt, 0.2).state == trial_pb2.COMPLETED
    code, message = refusal(stack, study_id)
    assert code == FAILED_PRECONDITION and f"study {study_id!r} is stopped" in message


def test_stop_with_stop_running_trials_stops_them_with_the_reason(
    infra: Settings, stack: Stack
) -> None:
    study_id = create(stack)
    trial_id, attempt = running(stack, study_id)
    waiting = stack.clients.one(study_id, "w-2").trial.trial_id  # handed out, not started
    study = stop_study(stack, study_id, stop_running_trials=True, reason="bad region")
    assert study.state == study_pb2.STUDY_STOPPED

    beat = stack.clients.heartbeat(trial_id, attempt)
    assert beat.action == events_pb2.STOP
    assert beat.decision.reason == "bad region"
    pruned = prune(stack, trial_id, attempt)
    assert (pruned.state, pruned.stop_reason) == (trial_pb2.PRUNED, "bad region")
    idle = stack.clients.get(waiting)
    assert (idle.state, idle.stop_reason) == (trial_pb2.PRUNED, "bad region")
    # A worker that was handed it can no longer start it.
    code, _ = code_and_message(lambda: stack.clients.start(waiting, "late", "w-2"))
    assert code == FAILED_PRECONDITION
    wait_for(lambda: study_states(infra, study_id)[-1:] == [study_pb2.STUDY_STOPPED], 30,
             "the STOPPED study event")


def test_pause_parks_running_trials_and_resume_hands_them_out_first(
    infra: Settings, stack: Stack
) -> None:
    study_id = create(stack)
    parked, attempt = running(stack, study_id)
    failed, failing = running(stack, study_id, "w-2")
    fail = evaluate_pb2.FailTrialRequest(trial_id=failed, attempt_id=failing,
                                         reason="node lost", kind=trial_pb2.INFRASTRUCTURE)
    assert stack.evaluate.FailTrial(fail, timeout=30).state == trial_pb2.RESUMABLE

    paused = stack.suggest.PauseStudy(suggest_pb2.PauseStudyRequest(study_id=study_id),
                                      timeout=30)
    assert paused.state == study_pb2.STUDY_PAUSED
    # Nothing is handed out, not even the resumable trial.
    code, message = refusal(stack, study_id)
    assert code == FAILED_PRECONDITION
    assert message == (f"study {study_id!r} is paused: it hands out no trials until "
                       f"`ladder study resume {study_id}` (ResumeStudy)")
    # The SDK tells a pause (a worker waits for the resume) from an exhausted budget.
    settings = Settings(kafka_bootstrap=infra.kafka_bootstrap, redis_url=infra.redis_url,
                        topics=infra.topics, suggest_addr=stack.env["LADDER_SUGGEST_ADDR"])
    with LadderClient(settings) as client, pytest.raises(StudyPaused):
        client.suggest(study_id, "w-sdk")
    assert stack.clients.get(failed).state == trial_pb2.RESUMABLE

    beat = stack.clients.heartbeat(parked, attempt, step=3)
    assert beat.action == events_pb2.PAUSE
    checkpoint = evaluate_pb2.ReportCheckpointRequest(
        trial_id=parked, attempt_id=attempt, uri="file:///tmp/ckpt-3", step=3)
    stack.evaluate.ReportCheckpoint(checkpoint, timeout=30)
    pause = evaluate_pb2.PauseTrialRequest(trial_id=parked, attempt_id=attempt, step=3,
                                           rung=beat.decision.rung)
    assert stack.evaluate.PauseTrial(pause, timeout=30).state == trial_pb2.PAUSED

    resumed = stack.suggest.ResumeStudy(suggest_pb2.ResumeStudyRequest(study_id=study_id),
                                        timeout=30)
    assert resumed.state == study_pb2.STUDY_ACTIVE
    assert stack.clients.get(parked).state == trial_pb2.RESUMABLE
    first = suggest(stack, study_id, count=3)
    assert [(s.trial.trial_id, s.resumed) for s in first] == [
        (failed, True), (parked, True), (f"{study_id}-t3", False)]
    assert first[1].trial.checkpoint_step == 3
    wait_for(lambda: study_states(infra, study_id)[-2:]
             == [study_pb2.STUDY_PAUSED, study_pb2.STUDY_ACTIVE], 30, "the study events")


def test_cancel_is_final_and_stops_every_unfinished_trial(
    infra: Settings, stack: Stack
) -> None:
    study_id = create(stack)
    trial_id, attempt = running(stack, study_id)
    waiting = stack.clients.one(study_id, "w-2").trial.trial_id
    request = suggest_pb2.CancelStudyRequest(study_id=study_id)
    assert stack.suggest.CancelStudy(request, timeout=30).state == study_pb2.STUDY_CANCELLED
    assert stack.suggest.CancelStudy(request, timeout=30).state == study_pb2.STUDY_CANCELLED

    assert refusal(stack, study_id) == (
        FAILED_PRECONDITION, f"study {study_id!r} is cancelled: it hands out no trials (for good)")
    beat = stack.clients.heartbeat(trial_id, attempt)
    assert (beat.action, beat.decision.reason) == (events_pb2.STOP, "study cancelled")
    assert prune(stack, trial_id, attempt).state == trial_pb2.PRUNED
    assert stack.clients.get(waiting).stop_reason == "study cancelled"
    for call in (
        lambda: stop_study(stack, study_id),
        lambda: stack.suggest.ResumeStudy(suggest_pb2.ResumeStudyRequest(study_id=study_id)),
        lambda: stack.suggest.PauseStudy(suggest_pb2.PauseStudyRequest(study_id=study_id)),
        lambda: update(stack, study_id, max_parallel_trials=4),
    ):
        code, message = code_and_message(call)
        assert code == FAILED_PRECONDITION
        assert message.startswith(f"study {study_id!r} is cancelled: it")
    assert stack.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id=study_id)).state == (
        study_pb2.STUDY_CANCELLED)
    wait_for(lambda: study_states(infra, study_id)[-1:] == [study_pb2.STUDY_CANCELLED], 30,
             "the CANCELLED study event")

    def listed_state() -> int:
        listings = stack.lineage.ListStudyListings(lineage_pb2.ListStudyListingsRequest())
        return next((s.study.state for s in listings.studies
                     if s.study.study_id == study_id), 0)

    wait_for(lambda: listed_state() == study_pb2.STUDY_CANCELLED, 30, "lineage's listing")


def test_parallelism_changes_while_the_study_runs(stack: Stack) -> None:
    study_id = create(stack, max_parallel=1)
    first, attempt = running(stack, study_id)
    code, message = refusal(stack, study_id)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith(f"study {study_id!r} has 1 trials out (suggested or running), "
                              "its max_parallel_trials is 1")

    study = update(stack, study_id, max_parallel_trials=3)
    assert study.config.max_parallel_trials == 3
    # Room for two more: asked for five, two are handed out.
    assert len(suggest(stack, study_id, count=5)) == 2
    assert refusal(stack, study_id)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    stack.clients.complete(first, attempt, 0.4)
    assert len(suggest(stack, study_id)) == 1  # one ended: room for one

    update(stack, study_id, max_parallel_trials=0)  # unbounded
    assert len(suggest(stack, study_id, count=2)) == 2
    for fields, text in (({"max_parallel_trials": -1}, "max_parallel_trials must be >= 0"),
                         ({}, "set max_trials, max_parallel_trials, max_wall_clock")):
        code, message = code_and_message(lambda f=fields: update(stack, study_id, **f))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(text)


def test_the_budget_changes_while_the_study_runs(stack: Stack) -> None:
    study_id = create(stack, max_trials=2)
    trials = [running(stack, study_id, f"w{i}") for i in range(2)]
    assert refusal(stack, study_id) == (
        FAILED_PRECONDITION, "study budget exhausted: 2 trials suggested")
    code, message = code_and_message(lambda: update(stack, study_id, max_trials=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == ("max_trials 1 is below the 2 trials already handed out "
                       "(at least 2, or 0 = unbounded)")

    assert update(stack, study_id, max_trials=3).config.max_trials == 3
    # Repeating the create with the config it was created with still answers the study.
    assert stack.clients.create(config_of(max_trials=2), study_id).config.max_trials == 3
    trials.append(running(stack, study_id, "w2"))
    assert refusal(stack, study_id)[0] == FAILED_PRECONDITION
    for value, (trial_id, attempt) in enumerate(trials):
        stack.clients.complete(trial_id, attempt, float(value))

    def state() -> int:
        return stack.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id=study_id)).state

    wait_for(lambda: state() == study_pb2.STUDY_COMPLETED, 30, "the raised budget to complete")


def test_an_operator_stops_one_trial_with_a_reason_lineage_records(stack: Stack) -> None:
    study_id = create(stack)
    trial_id, attempt = running(stack, study_id)
    asked = stop_trial(stack, trial_id, "node draining")
    assert (asked.state, asked.stop_reason) == (trial_pb2.RUNNING, "node draining")
    beat = stack.clients.heartbeat(trial_id, attempt)
    assert beat.action == events_pb2.STOP
    assert beat.decision.reason == "stopped by an operator: node draining"
    assert prune(stack, trial_id, attempt).state == trial_pb2.PRUNED
    assert stop_trial(stack, trial_id, "again").stop_reason == "node draining"  # a repeat

    def ended_with_reason() -> str | None:
        try:
            record = stack.lineage.GetTrialLineage(
                lineage_pb2.GetTrialLineageRequest(trial_id=trial_id), timeout=5)
        except grpc.RpcError:
            return None
        ends = [a.end_reason for a in record.attempts if a.end_reason]
        return ends[-1] if ends else None

    reason = wait_for(ended_with_reason, 30, "lineage to record the stop")
    assert reason == "pruned at step 2.0: stopped: node draining"

    done, done_attempt = running(stack, study_id)
    stack.clients.complete(done, done_attempt, 0.1)
    for trial, why, expected in (
        (done, "late", (FAILED_PRECONDITION, f"trial {done!r} is COMPLETED: it cannot be "
                                             "stopped")),
        ("no-such-t1", "x", (grpc.StatusCode.NOT_FOUND, "trial 'no-such-t1' not found")),
        (done, " ", (grpc.StatusCode.INVALID_ARGUMENT, "reason is required")),
    ):
        assert code_and_message(lambda t=trial, w=why: stop_trial(stack, t, w)) == expected


def ladder(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], env=stack.env,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_controls_studies_and_trials(stack: Stack) -> None:
    study_id = create(stack)
    waiting = stack.clients.one(study_id).trial.trial_id
    result = ladder(stack, "study", "update", study_id, "--parallelism", "3",
                    "--max-trials", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"study {study_id} updated: max_trials 5, max_parallel_trials 3 "
                             "(1/5 suggested)\n")
    result = ladder(stack, "study", "update", study_id, "--max-trials", "-2")
    assert (result.returncode, result.stderr) == (
        1, "ladder: INVALID_ARGUMENT: max_trials must be >= 0 (0 = unbounded; got -2)\n")

    result = ladder(stack, "trial", "stop", waiting, "--reason", "wrong data")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"trial {waiting} stopped (wrong data): it is pruned\n"
    shown = ladder(stack, "trial", "show", waiting)
    assert "stop reason  wrong data" in shown.stdout.splitlines()

    for action, state in (("pause", "PAUSED"), ("resume", "ACTIVE"), ("stop", "STOPPED"),
                          ("cancel", "CANCELLED")):
        result = ladder(stack, "study", action, study_id, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == f"STUDY_{state}"


class PausingWorkload:
    """loss = 1 / step over 6 instant steps; the study is paused while the first
    attempt trains ``pause_at`` (by ``pause``)."""

    name = "pausing"
    metric = "loss"
    max_steps = 6

    def __init__(self, pause: Callable[[], Any], pause_at: int = 3) -> None:
        self.pause, self.pause_at = pause, pause_at
        self.trained: list[int] = []

    def init(self, params: Any, seed: int) -> list[int]:
        return [0]

    def train_step(self, state: list[int], step: int) -> float:
        state[0] = step
        self.trained.append(step)
        if step == self.pause_at and len(self.trained) == step:
            self.pause()
        return 1.0 / step

    def evaluate(self, state: list[int]) -> float:
        return 1.0 / max(1, state[0])

    def save_checkpoint(self, state: list[int], path: Path) -> None:
        path.write_text(json.dumps(state))

    def load_checkpoint(self, path: Path, params: Any, seed: int) -> list[int]:
        return json.loads(path.read_text())


def test_a_worker_parks_its_trial_while_the_study_is_paused_and_resumes_it(
    infra: Settings, stack: Stack, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap=infra.kafka_bootstrap, redis_url=infra.redis_url,
                        topics=infra.topics, suggest_addr=stack.env["LADDER_SUGGEST_ADDR"],
                        evaluate_addr=stack.env["LADDER_EVALUATE_ADDR"])
    study_id = create(stack, max_trials=1)
    trial_id = f"{study_id}-t1"
    with LadderClient(settings) as client:
        workload = PausingWorkload(lambda: client.pause_study(study_id))
        worker = Worker(client, workload, WorkerConfig(
            study_id=study_id, worker_id="w-pause", state_dir=tmp_path, checkpoint_every=0,
            idle_wait=0.1,
        ))
        runs = ThreadPoolExecutor(1)
        report = runs.submit(worker.run)
        # Parked with its checkpoint; the worker waits for the study instead of quitting.
        wait_for_found(lambda: client.get_trial(trial_id).state == trial_pb2.PAUSED, 30,
                       "the trial parked")
        assert client.get_trial(trial_id).checkpoint_step == 3
        assert not report.done()
        client.resume_study(study_id)
        outcome = report.result(timeout=60)
        runs.shutdown()
    assert outcome.outcomes == {"paused": 1, "completed": 1}
    assert workload.trained == [1, 2, 3, 4, 5, 6]  # resumed after its checkpoint
    done = stack.clients.get(trial_id)
    assert (done.state, done.attempt_number, done.final_value) == (
        trial_pb2.COMPLETED, 2, 1.0 / 6)
