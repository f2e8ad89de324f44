"""The node agent (``workers.agent``) on the real suggest and evaluate processes: one
agent of a 2-GPU node asks RequestWork for its free resources and runs the trials of two
studies (1-GPU and 2-GPU trials) with the worker runtime until both studies are done;
SIGTERM makes a running agent checkpoint its trial and hand it back (RESUMABLE).

A node agent runs any tenant's study, and the session's Redis holds the studies other
modules left running (the load simulator's, 1 CPU per trial): each test's node has a GPU
type of its own and offers no CPU, and its studies ask for that type and no CPU, so only
they fit its node (as in test_request_work)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.testing import Clients, wait_for
from ladder.testing.services import process_env
from ladder.v1 import space_pb2, study_pb2, suggest_pb2, trial_pb2

from workers.agent import AgentOptions, NodeAgent, NodeSpec

pytestmark = pytest.mark.integration

SPACE = space_pb2.SearchSpace(
    parameters=[space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(
        low=0.0, high=1.0))]
)


@pytest.fixture(scope="module")
def stack(start_module_service: Callable[..., Any], infra: Settings) -> Iterator[Settings]:
    suggest = start_module_service("services.suggest")
    evaluate = start_module_service("services.evaluate", {"LADDER_LEASE_SECONDS": "4"})
    yield dataclasses.replace(infra, suggest_addr=suggest.addr, evaluate_addr=evaluate.addr)


def own_gpu_type() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


def create(settings: Settings, name: str, gpus: int, max_trials: int, gpu_type: str) -> str:
    config = study_pb2.StudyConfig(
        name=name, space=SPACE, metric="val_loss", max_trials=max_trials,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        trial_resources=study_pb2.TrialResources(gpus=gpus, gpu_type=gpu_type, memory_gb=1),
        labels={"workload": "synthetic"},
    )
    with LadderClient(settings) as client:
        return client.create_study(config).study_id


def state_of(settings: Settings, study_id: str) -> int:
    clients = Clients(settings.suggest_addr)
    try:
        return clients.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id=study_id),
                                        timeout=30).state
    finally:
        clients.close()


def test_one_agent_runs_two_studies_to_completion(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_SYNTHETIC_STEP_S", "0.05")
    gpu_type = own_gpu_type()
    small = create(stack, "agent-small", gpus=1, max_trials=3, gpu_type=gpu_type)
    large = create(stack, "agent-large", gpus=2, max_trials=2, gpu_type=gpu_type)
    spec = NodeSpec("node-a", gpus=2, gpu_type=gpu_type, cpu=0, memory_gb=16)
    options = AgentOptions(poll=0.2, max_steps=3, exit_when_idle=2.0,
                           checkpoint_url=(tmp_path / "ckpt").as_uri(), state_dir=tmp_path)
    with LadderClient(stack) as client:
        agent = NodeAgent(client, spec, options)
        peak = {"gpus": 0}
        take = agent.slots.take

        def watched(trial_id: str, vector: Any) -> bool:
            fits = take(trial_id, vector)
            peak["gpus"] = max(peak["gpus"], spec.gpus - agent.slots.free.gpus)
            return fits

        agent.slots.take = watched  # type: ignore[method-assign]
        runner = threading.Thread(target=agent.run, daemon=True)
        runner.start()
        runner.join(60)
        assert not runner.is_alive(), "the agent did not exit once idle"
    report = agent.report
    assert report.fatal_error == ""
    assert report.by_study == {small: 3, large: 2}
    assert report.outcomes == {"completed": 5}
    assert 0 < peak["gpus"] <= 2  # the scheduler never over-filled the node
    assert agent.slots.held == {}  # every slot freed
    for study_id in (small, large):
        wait_for(lambda s=study_id: state_of(stack, s) == study_pb2.STUDY_COMPLETED, 30,
                 f"study {study_id} COMPLETED")


def test_sigterm_checkpoints_and_hands_the_trial_back(stack: Settings, tmp_path: Path) -> None:
    gpu_type = own_gpu_type()
    study_id = create(stack, "agent-sigterm", gpus=1, max_trials=1, gpu_type=gpu_type)
    env = process_env(stack, LADDER_SYNTHETIC_STEP_S="30")
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.agent", "--node-id", "node-t", "--gpus", "1",
             "--gpu-type", gpu_type, "--cpu", "0", "--memory-gb", "4", "--spot", "--poll", "0.2",
             "--checkpoint-url", (tmp_path / "ckpt").as_uri()],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    clients = Clients(stack.suggest_addr, stack.evaluate_addr)
    try:
        running: dict[str, str] = {}

        def started() -> bool:
            text = log_path.read_text(errors="replace")
            for line in text.splitlines():
                record = json.loads(line) if line.startswith("{") else {}
                if record.get("msg", "").startswith("trial started at step"):
                    running["id"] = record["trial_id"]
                    return True
            assert proc.poll() is None, text
            return False

        wait_for(started, 60, "the agent to start a trial")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text(errors="replace")
        trial = clients.get(running["id"])
        assert trial.study_id == study_id
        assert trial.state == trial_pb2.RESUMABLE
        assert trial.checkpoint_uri  # the mid-step checkpoint the hand-back saved
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        clients.close()
