"""kill -9 during a running study. Of evaluate: every event of every trial still
reaches the trials topic and lineage, in order (the outbox keeps each one until the
broker acknowledged it; see ladder.state.trials; the long run is
``make bench-evaluate-kills``). Of a worker: its trial runs again on a waiting worker
within 15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from ladder.config import Settings
from ladder.state import open_state
from ladder.testing import Clients, trial_events, wait_for
from ladder.testing.kills import evaluate_kills_study
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, trial_pb2

pytestmark = pytest.mark.integration


def test_every_trial_event_survives_three_kills_of_evaluate(
    infra: Settings, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    report = evaluate_kills_study(
        start_service,
        infra,
        tmp_path / "lineage.sqlite3",
        kills=3,
        trials=12,
        workers=4,
        checkpoints=4,
        pace=0.05,
        kill_every=10,
        drain=30,
    )
    assert report["kills"] == 3 and not report["worker_errors"]
    assert report["problems"] == [] and report["outbox_left"] == 0, report
    assert report["events_in_lineage"] == report["events_expected"] == 12 * 7, report
    assert report["ok"], report


def test_a_killed_workers_trial_runs_again_within_15_seconds(
    infra: Settings,
    infra_env: dict[str, str],
    start_service: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """kill -9 of a worker mid-trial while another waits: its lease (evaluate's default,
    renewed every lease/4) runs out, the sweeper makes the trial RESUMABLE and Suggest
    hands it to the waiting worker, all within 15 s of the kill; and a worker that beats
    loses no lease meanwhile (no spurious expiry while it runs for over a lease)."""
    suggest = start_service("services.suggest")
    evaluate = start_service("services.evaluate")  # the default lease
    clients = Clients(suggest.addr, evaluate.addr)
    config = study_pb2.StudyConfig(name="death-to-resume", metric="val_loss", max_trials=1)
    config.space.parameters.add(name="lr").float_range.high = 1.0
    config.scheduler.kind = study_pb2.NONE
    study_id = clients.create(config).study_id
    env = {
        **os.environ,
        **infra_env,
        "LADDER_STATE_DIR": str(tmp_path),
        "LADDER_SUGGEST_ADDR": suggest.addr,
        "LADDER_EVALUATE_ADDR": evaluate.addr,
        "LADDER_SYNTHETIC_STEP_S": "0.5",
    }
    doomed = subprocess.Popen(
        [sys.executable, "-m", "workers", "--study", study_id, "--worker-id", "it-doomed",
         "--workload", "synthetic", "--max-steps", "1000", "--checkpoint-every", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        trial_id = wait_for(
            lambda: next(
                (t for t in _pending_trials(infra, study_id) if t.state == trial_pb2.RUNNING),
                None,
            ),
            60,
            "the doomed worker's trial to run",
        ).trial_id
        start = clients.get(trial_id)
        lease_s = evaluate_lease_seconds(clients, trial_id)
        # Running for longer than one lease: the worker's beats keep it.
        wait_for(
            lambda: clients.get(trial_id).last_step * 0.5 > lease_s + 1,
            60,
            "the doomed worker to train for over a lease",
        )
        assert clients.get(trial_id).attempt_id == start.attempt_id
        os.kill(doomed.pid, signal.SIGKILL)
        killed_ms = time.time() * 1000
        doomed.wait(10)

        # Another worker waiting: asks every 0.25 s and starts what it is handed.
        resumed = wait_for(
            lambda: _resumed(clients, study_id),
            30,
            "Suggest to hand the trial out again",
            every=0.25,
        )
        assert resumed.trial_id == trial_id
        restarted = clients.start(trial_id, "it-rescuer", "w-rescuer")
        assert restarted.trial.attempt_number == 2 and restarted.checkpoint_step >= 2
        events = wait_for(
            lambda: (ev := trial_events(infra, trial_id))
            and sum(e.kind == events_pb2.TRIAL_STARTED for e in ev) == 2
            and ev,
            30,
            "the second TRIAL_STARTED on the topic",
        )
        expiries = [e for e in events if e.kind == events_pb2.TRIAL_LEASE_EXPIRED]
        assert len(expiries) == 1, [e.reason for e in expiries]  # none while it beat
        (expiry,) = expiries
        assert (expiry.ended_attempt_id, expiry.attempt_end) == (
            start.attempt_id,
            trial_pb2.ATTEMPT_LEASE_EXPIRED,
        )
        assert expiry.trial.failures == 0
        second_start = [e for e in events if e.kind == events_pb2.TRIAL_STARTED][-1]
        death_to_resume_s = (second_start.ts_ms - killed_ms) / 1000
        print(f"death to resume: {death_to_resume_s:.2f} s (lease {lease_s:g} s)")
        assert 0 < death_to_resume_s < 15, death_to_resume_s
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(10)
        clients.close()


def evaluate_lease_seconds(clients: Clients, trial_id: str) -> float:
    """The lease evaluate grants: a retried StartTrial of the current attempt repeats
    its answer (and only renews the lease)."""
    current = clients.get(trial_id)
    return clients.evaluate.StartTrial(
        evaluate_pb2.StartTrialRequest(
            trial_id=trial_id, attempt_id=current.attempt_id, worker_id=current.worker_id
        ),
        timeout=30,
    ).lease_seconds


def _pending_trials(infra: Settings, study_id: str) -> list[trial_pb2.Trial]:
    state = open_state(infra)
    try:
        return state.trials.get_many(state.trials.pending(study_id))
    finally:
        state.close()


def _resumed(clients: Clients, study_id: str) -> trial_pb2.Trial | None:
    """The trial Suggest hands the waiting worker, if any yet (the budget is spent, so
    only a resumable trial can come)."""
    try:
        suggestion = clients.one(study_id, "w-rescuer")
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:  # budget exhausted
            return None
        raise
    assert suggestion.resumed
    return suggestion.trial
