"""Restarts an operator can do, on the real stack (tansu, redis-server, the four services).

kill -9 of one service, then ``ladder up``: only that service starts again, on its
address, and a client call made while it was down succeeds once it is back. A full
``down`` and ``up`` with the same state folder: the study created before still gets
early-stopping decisions (suggest republishes the studies it stores), and a client built
from the environment finds the stack on its new ports by itself.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.testing import TopicReader, decoded, wait_for
from ladder.v1 import events_pb2

pytestmark = pytest.mark.integration

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
ASHA = {"kind": "asha", "min_resource": 1, "max_resource": 9, "reduction_factor": 3}


@pytest.fixture
def stack_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state folder whose stack.json is the only source of addresses."""
    for var in ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_SUGGEST_ADDR",
                "LADDER_EVALUATE_ADDR", "LADDER_LINEAGE_ADDR", "LADDER_BROKER_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_TOPIC_PREFIX", f"rs{uuid.uuid4().hex[:6]}.")
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    try:
        yield tmp_path
    finally:
        launcher.down(tmp_path, grace=5.0)


def kill9(info: dict[str, Any], name: str) -> ProcRecord:
    rec = ProcRecord.from_json(name, info["pids"][name])
    os.killpg(rec.pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_running(rec), 10, f"{name} gone")
    return rec


def decision_for(settings: Settings, study_id: str, trial_id: str) -> events_pb2.Decision:
    reader = TopicReader(settings, settings.topics.decisions)
    try:
        return wait_for(
            lambda: [d for d in decoded(events_pb2.Decision, reader.poll())
                     if d.study_id == study_id and d.trial_id == trial_id],
            60, f"a decision about {trial_id}",
        )[0]
    finally:
        reader.close()


def test_a_killed_service_restarts_alone_on_its_address(stack_env: Path) -> None:
    info = launcher.up(stack_env)
    with LadderClient(retry_timeout=120) as client:
        study = client.create_study({"space": SPACE, "scheduler": ASHA, "max_trials": 8})
        trial = client.suggest(study.study_id, "w1")[0].trial
        kill9(info, "evaluate")
        answer: dict[str, Any] = {}

        def start() -> None:
            try:
                answer["reply"] = client.start_trial(trial.trial_id, "w1", "a1")
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                answer["error"] = exc

        caller = threading.Thread(target=start)
        caller.start()
        assert caller.is_alive()  # it cannot succeed while evaluate is down
        again = launcher.up(stack_env)
        assert again["restarted"] == ["evaluate"]
        assert again["evaluate_addr"] == info["evaluate_addr"]
        for name in ("kafka", "redis", "suggest", "lineage", "earlystop"):
            assert again["pids"][name] == info["pids"][name], name
        caller.join(60)
        assert "error" not in answer, answer
        assert answer["reply"].lease_seconds > 0

        kill9(again, "earlystop")
        third = launcher.up(stack_env)
        assert third["restarted"] == ["earlystop"]
        assert third["earlystop_health_addr"] == info["earlystop_health_addr"]
        # The restarted early-stop decides again.
        client.report_metric(study.study_id, trial.trial_id, "a1", 1, 0.5, wait=True)
        assert decision_for(client.settings, study.study_id, trial.trial_id).rung == 0


def test_after_a_full_restart_a_study_keeps_early_stopping(stack_env: Path) -> None:
    first = launcher.up(stack_env)
    client = LadderClient(retry_timeout=120)  # from the environment: follows stack.json
    try:
        study = client.create_study({"space": SPACE, "scheduler": ASHA, "max_trials": 8})
        launcher.down(stack_env)
        second = launcher.up(stack_env)
        assert second["suggest_addr"] != first["suggest_addr"]  # new ports, same state
        # The client finds the new addresses; the study is still stored in Redis.
        assert client.get_study(study.study_id).study_id == study.study_id
        assert client.settings.suggest_addr == second["suggest_addr"]
        # A real trial, suggested and started after the restart (early-stop only
        # counts reports of its study's running trials).
        trial = client.suggest(study.study_id, "w1")[0].trial.trial_id
        client.start_trial(trial, "w1", "a1")
        client.report_metric(study.study_id, trial, "a1", 1, 0.5, wait=True)
        decision = decision_for(client.settings, study.study_id, trial)
        assert decision.action == events_pb2.CONTINUE
    finally:
        client.close()
