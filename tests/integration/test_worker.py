"""Workers against the real services: suggest, evaluate and lineage processes over a real
broker and Redis. A study without early stopping so the outcome is deterministic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from ladder import checkpoints, objectstore, runenv
from ladder.bus import EventProducer
from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.objectstore import S3Settings
from ladder.params import params_to_dict
from ladder.stack.components import CHECKPOINT_BUCKET
from ladder.state import open_state
from ladder.testing import wait_for, wait_for_found
from ladder.testing.objectstore import seaweedfs
from ladder.v1 import events_pb2, trial_pb2

from workers.digits import DATASET_ID, DigitsWorkload
from workers.runtime import Worker, WorkerConfig, WorkerReport

pytestmark = pytest.mark.integration

SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "hidden_units": {"type": "int", "low": 16, "high": 32},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.9, "when": {"optimizer": ["sgd"]}},
    "batch_size": {"type": "ordinal", "values": [64, 128]},
}


@pytest.fixture(scope="module")
def services(
    infra: Settings,
    start_module_service: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    suggest = start_module_service("services.suggest")
    evaluate = start_module_service("services.evaluate")
    lineage = start_module_service("services.lineage")
    return Settings(
        kafka_bootstrap=infra.kafka_bootstrap,
        redis_url=infra.redis_url,
        topics=infra.topics,
        suggest_addr=suggest.addr,
        evaluate_addr=evaluate.addr,
        lineage_addr=lineage.addr,
        state_dir=tmp_path_factory.mktemp("worker-services"),
    )


def worker_env(services: Settings, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LADDER_STATE_DIR": str(state_dir),
        "LADDER_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "LADDER_REDIS_URL": services.redis_url,
        "LADDER_TOPIC_PREFIX": services.topics.prefix,
        "LADDER_SUGGEST_ADDR": services.suggest_addr,
        "LADDER_EVALUATE_ADDR": services.evaluate_addr,
        "LADDER_LINEAGE_ADDR": services.lineage_addr,
    })
    return env


def local(uri: str) -> Path:
    """The file of a file:// checkpoint URI."""
    return Path(unquote(urlparse(uri).path))


def create_study(client: LadderClient, trials: int) -> str:
    config = study_config(SPACE, name="worker-it", metric="val_loss", max_trials=trials,
                          seed=1, dataset_id=DATASET_ID, code_commit="integration-test")
    return client.create_study(config).study_id


def finished_trials(client: LadderClient, study_id: str, count: int) -> list[Any] | None:
    trials = client.list_trials(study_id)
    done = [t for t in trials if t.state.lower() == "completed"]
    return done if len(done) == count else None


def test_one_worker_runs_a_study_end_to_end(services: Settings, tmp_path: Path) -> None:
    with LadderClient(services) as client:
        study_id = create_study(client, trials=2)
        worker = Worker(client, DigitsWorkload(), WorkerConfig(
            study_id=study_id, worker_id="it-w0", state_dir=tmp_path,
            max_steps=3, checkpoint_every=2, decision_wait=0,
        ))
        result: dict[str, WorkerReport] = {}
        thread = threading.Thread(target=lambda: result.setdefault("r", worker.run()))
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "the worker did not finish within 120 s"
        report = result["r"]
        assert report.outcomes == {"completed": 2}
        assert report.budget_exhausted and not report.fatal_error

        trials = wait_for_found(
            lambda: finished_trials(client, study_id, 2), 30, "2 completed trials"
        )
        for summary in trials:
            lineage = wait_for_found(
                lambda s=summary: (lin := client.lineage(s.trial_id))
                and lin.has_final_value and len(lin.metrics) == 3 and lin,
                30, f"lineage of {summary.trial_id}",
            )
            curve = sorted(lineage.metrics, key=lambda p: p.step)
            assert [p.step for p in curve] == [1, 2, 3]
            assert lineage.final_value == pytest.approx(curve[-1].value)
            assert params_to_dict(lineage.params)  # the suggested configuration
            assert lineage.dataset_id == DATASET_ID
            assert lineage.code_commit == "integration-test"
            assert [a.worker_id for a in lineage.attempts] == ["it-w0"]
            assert lineage.attempts[0].outcome == "completed"
            # Captured by the worker, not typed: the digits workload's dataset, this
            # checkout's commit, the packages.
            env = lineage.attempts[0].run_environment
            assert env.dataset_id == DATASET_ID and env.packages_hash and env.python
            assert env.code_commit == runenv.code_state(Path(__file__).parent).commit
            # The step-2 checkpoint was written and reported.
            assert lineage.checkpoint_uri.endswith("-step2.ckpt")
            assert local(lineage.checkpoint_uri).exists()

        best = client.best(study_id)
        assert best is not None
        assert best.final_value == min(t.final_value for t in trials)
        summary = wait_for_found(
            lambda: (s := client.summary(study_id)).completed == 2 and s, 30,
            "summary with 2 completed",
        )
        assert summary.metric_points == 6 and summary.failed == 0


def test_worker_processes_share_a_study(services: Settings, tmp_path: Path) -> None:
    with LadderClient(services) as client:
        study_id = create_study(client, trials=3)
        env = worker_env(services, tmp_path)
        run = subprocess.run(
            [sys.executable, "-m", "workers", "--study", study_id, "--count", "2",
             "--worker-prefix", "it-p", "--max-steps", "2", "--log-dir", str(tmp_path / "logs")],
            env=env, timeout=180, capture_output=True, text=True,
        )
        logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
        assert run.returncode == 0, f"{run.stderr}\n{logs[-4000:]}"
        assert '"trial_id"' in logs  # structured logs carry the trial id

        trials = wait_for_found(
            lambda: finished_trials(client, study_id, 3), 30, "3 completed trials"
        )
        workers = set()
        for summary in trials:
            lineage = client.lineage(summary.trial_id)
            workers.update(a.worker_id for a in lineage.attempts)
        assert workers <= {"it-p0", "it-p1"} and workers


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """An object store for the checkpoints (the session's broker keeps its log in
    memory, so the stack runs none)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as settings:
        yield settings


CHECKPOINT_STEPS = 3


def worker_process(study_id: str, worker_id: str, env: dict[str, str], *args: str
                   ) -> subprocess.Popen[str]:
    """``python -m workers`` for one worker; its log (stderr) is read at the end."""
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "--study", study_id, "--worker-id", worker_id, *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def the_trial(client: LadderClient, study_id: str) -> str:
    """The id of a one-trial study's trial, once lineage lists it."""
    return wait_for_found(
        lambda: next(iter(client.list_trials(study_id)), None), 60, "the trial to be suggested"
    ).trial_id


def test_sigterm_hands_the_trial_back_and_the_next_worker_resumes(
    services: Settings, s3: S3Settings, tmp_path: Path
) -> None:
    # The largest network: ~0.2 s per epoch, so the signal lands mid-trial, most likely
    # in the middle of an epoch (digits stops between two mini-batches).
    big = {"hidden_units": {"type": "int", "low": 255, "high": 256},
           "batch_size": {"type": "ordinal", "values": [16]},
           "layers": {"type": "int", "low": 2, "high": 3},
           "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    checkpoint_url = f"s3://{CHECKPOINT_BUCKET}/it-{uuid.uuid4().hex[:8]}"
    env = {**worker_env(services, tmp_path), **s3.env(), "LADDER_CHECKPOINT_URL": checkpoint_url}
    with LadderClient(services) as client:
        config = study_config(big, metric="val_loss", max_trials=1, seed=2)
        config.trial_policy.checkpoint_interval_steps = CHECKPOINT_STEPS
        study_id = client.create_study(config).study_id
        notice = client.get_study(study_id).config.trial_policy.preemption_notice_seconds
        assert notice == 25  # the default
        first = worker_process(study_id, "it-a", env, "--max-steps", "27")
        try:
            trial_id = the_trial(client, study_id)
            wait_for(
                lambda: client.get_trial(trial_id).checkpoint_step >= CHECKPOINT_STEPS, 60,
                "the first checkpoint by the study's policy",
            )
            wait_for_found(  # then into the next interval
                lambda: len(client.lineage(trial_id).metrics) > CHECKPOINT_STEPS, 30,
                "a metric point after the first checkpoint",
            )
            signalled = time.monotonic()
            first.send_signal(signal.SIGTERM)
            _, stderr = first.communicate(timeout=notice + 30)
            exited_after = time.monotonic() - signalled
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 0, stderr[-4000:]
        # Checkpointed, reported and handed back, then gone, within the notice.
        assert exited_after < notice, f"hand-back took {exited_after:.1f} s"

        handed_back = client.get_trial(trial_id)
        assert handed_back.state == trial_pb2.RESUMABLE
        assert handed_back.checkpoint_uri.startswith(checkpoint_url + "/")
        assert handed_back.last_attempt_end == trial_pb2.ATTEMPT_PREEMPTED
        assert handed_back.failures == 0  # a preemption is no failure
        assert handed_back.checkpoint_seconds > 0 and handed_back.train_seconds > 0
        first_attempt = wait_for_found(
            lambda: (lin := client.lineage(trial_id)) and lin.attempts
            and lin.attempts[0].attempt_end and lin.attempts[0], 30,
            "the first attempt's end in the lineage",
        )
        assert first_attempt.attempt_end == trial_pb2.ATTEMPT_PREEMPTED

        store = checkpoints.open_store(checkpoint_url, client=objectstore.client(s3))
        worker = Worker(client, DigitsWorkload(), WorkerConfig(
            study_id=study_id, worker_id="it-b", state_dir=tmp_path, max_steps=27,
            decision_wait=0,
        ), store=store)
        report = worker.run()
        assert report.outcomes == {"completed": 1}

        lineage = wait_for_found(
            lambda: (lin := client.lineage(trial_id)) and lin.has_final_value
            and len(lin.attempts) == 2 and lin, 30, "the final value in the lineage",
        )
        assert [a.worker_id for a in lineage.attempts] == ["it-a", "it-b"]
        first_id, second_id = (a.attempt_id for a in lineage.attempts)
        trained_first = max(p.step for p in lineage.metrics if p.attempt_id == first_id)
        resumed_steps = sorted(p.step for p in lineage.metrics if p.attempt_id == second_id)
        # The second attempt continued after the hand-back's checkpoint: at most one
        # checkpoint interval redone (none when the notice's checkpoint was saved).
        assert resumed_steps[0] == handed_back.checkpoint_step + 1
        assert trained_first - handed_back.checkpoint_step <= CHECKPOINT_STEPS
        assert resumed_steps[-1] == 27
        print(f"hand-back: process gone {exited_after:.2f} s after SIGTERM; checkpoint "
              f"{handed_back.checkpoint_uri.rsplit('/', 1)[-1]}; steps trained by the first "
              f"attempt {trained_first:g}, redone {trained_first - handed_back.checkpoint_step:g}")
        done = client.get_trial(trial_id)
        assert done.failures == 0 and done.state == trial_pb2.COMPLETED
        # Retention: the newest checkpoints_kept (2) of the trial, the final one pinned.
        kept = store.list(study_id, trial_id)
        assert 1 <= len(kept) <= 2, [c.uri for c in kept]
        assert any(c.pinned for c in kept)


def test_a_step_longer_than_the_notice_is_handed_back_without_waiting_for_it(
    services: Settings, tmp_path: Path
) -> None:
    # A workload without the interrupt hook, whose steps (20 s) outlast the notice (4 s):
    # the worker hands the trial back from its last checkpoint (none: the first step
    # runs) before the notice ends, and its process exits without finishing the step.
    notice = 4.0
    env = {**worker_env(services, tmp_path), "LADDER_SYNTHETIC_STEP_S": "20",
           "LADDER_SYNTHETIC_INTERRUPTIBLE": "0"}
    with LadderClient(services) as client:
        config = study_config({"x": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
                              metric="val_loss", max_trials=1, seed=3)
        config.trial_policy.preemption_notice_seconds = notice
        study_id = client.create_study(config).study_id
        worker = worker_process(study_id, "it-slow", env, "--workload", "synthetic")
        try:
            trial_id = the_trial(client, study_id)
            wait_for(lambda: client.get_trial(trial_id).state == trial_pb2.RUNNING, 30,
                     "the trial to start")
            signalled = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            wait_for(lambda: client.get_trial(trial_id).state == trial_pb2.RESUMABLE, notice,
                     "the hand-back within the notice")
            handed_back_after = time.monotonic() - signalled
            _, stderr = worker.communicate(timeout=30)
            exited_after = time.monotonic() - signalled
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0, stderr[-4000:]
        assert exited_after < 20, "the worker waited for the step"  # the step lasts 20 s
        trial = client.get_trial(trial_id)
        assert trial.last_attempt_end == trial_pb2.ATTEMPT_PREEMPTED and trial.failures == 0
        assert trial.checkpoint_uri == ""  # nothing to resume from: the first step ran
        assert "handed back from the checkpoint of step 0 while step 1 runs" in stderr
        print(f"long step: handed back {handed_back_after:.2f} s after SIGTERM, "
              f"process gone after {exited_after:.2f} s")


# -- ASHA's stopping form: a worker never waits for its rung's decision


class SteppingWorkload:
    """loss = 1 / step, instant steps; ``on_step(step)`` runs after each one."""

    name = "stepping"
    metric = "loss"
    max_steps = 27

    def __init__(self, on_step: Callable[[int], None]) -> None:
        self.on_step = on_step
        self.trained: list[int] = []

    def init(self, params: Any, seed: int) -> dict[str, int]:
        return {"step": 0}

    def train_step(self, state: dict[str, int], step: int) -> float:
        state["step"] = step
        self.trained.append(step)
        self.on_step(step)
        return 1.0 / step

    def evaluate(self, state: dict[str, int]) -> float:
        return 1.0 / max(1, state["step"])

    def save_checkpoint(self, state: dict[str, int], path: Path) -> None:
        path.write_text(str(state["step"]))

    def load_checkpoint(self, path: Path, params: Any, seed: int) -> dict[str, int]:
        return {"step": int(path.read_text())}


class StartRecorder:
    """The real client; remembers the trial of every attempt started, by Suggest itself
    (one round trip) or by StartTrial (the workload's hook needs the running trial's
    id)."""

    def __init__(self, client: LadderClient) -> None:
        self.client = client
        self.started: list[str] = []

    def suggest(self, *args: Any, **kwargs: Any) -> Any:
        found = self.client.suggest(*args, **kwargs)
        self.started.extend(s.trial.trial_id for s in found if s.HasField("started"))
        return found

    def start_trial(self, trial_id: str, *args: Any, **kwargs: Any) -> Any:
        self.started.append(trial_id)
        return self.client.start_trial(trial_id, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_stopping_form_worker_trains_past_its_rung_and_stops_when_the_stop_comes(
    services: Settings, tmp_path: Path
) -> None:
    # Rung 0 is step 1. Its STOP is only published once step 4 trains (as a slow
    # early-stop would; published while step 3 trained, a quick evaluate could hand it
    # to step 3's Heartbeat): a worker that waited at the rung would sit there for
    # decision_wait (60 s). Step 4 trains on until evaluate holds the STOP, so the
    # Heartbeat of step 4's report brings it.
    state = open_state(services)
    producer = EventProducer(services, "test-worker")
    config = study_config(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}}, name="stopping-form", metric="loss",
        max_trials=2, seed=3,
        scheduler={"kind": "asha", "min_resource": 1, "max_resource": 27,
                   "reduction_factor": 3},
    )
    try:
        with LadderClient(services) as client:
            study_id = client.create_study(config).study_id
            recorder = StartRecorder(client)

            def stop(trial_id: str) -> events_pb2.Decision:
                return events_pb2.Decision(
                    study_id=study_id, trial_id=trial_id, action=events_pb2.STOP, rung=0,
                    resource=1, reason="below rung cutoff (test)", scheduler="asha",
                )

            def on_step(step: int) -> None:
                trial_id = recorder.started[-1]
                if len(recorder.started) > 1:
                    return  # the second trial trains to the end
                if step == 4:
                    producer.send(services.topics.decisions, trial_id, stop(trial_id), wait=True)
                    wait_for(lambda: state.trials.decision(trial_id) is not None, 30,
                             "evaluate holds the STOP")

            workload = SteppingWorkload(on_step)
            worker = Worker(recorder, workload, WorkerConfig(
                study_id=study_id, worker_id="it-stopping", state_dir=tmp_path,
                checkpoint_every=0, decision_wait=60,
            ))
            started = time.monotonic()
            report = worker.run()
            assert time.monotonic() - started < 30, "the worker waited at a rung"
            assert report.outcomes == {"pruned": 1, "completed": 1}
            first, second = recorder.started
            assert workload.trained == [1, 2, 3, 4, *range(1, 28)]
            pruned = client.get_trial(first)
            assert pruned.state == trial_pb2.PRUNED and pruned.last_step == 4

            # A STOP that reaches a completed trial changes nothing.
            producer.send(services.topics.decisions, second, stop(second), wait=True)
            wait_for(lambda: state.trials.decision(second) is not None, 30,
                     "evaluate holds the late STOP")
            done = client.get_trial(second)
            assert done.state == trial_pb2.COMPLETED and done.final_value == 1.0 / 27
            summary = wait_for_found(
                lambda: (s := client.summary(study_id)).completed == 1 and s, 30,
                "the study's summary",
            )
            assert summary.pruned == 1 and summary.completed == 1
    finally:
        producer.close()
        state.close()
