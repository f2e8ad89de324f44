"""The Python API against the real services (suggest, evaluate, lineage, early-stop
processes over the real broker and Redis): a training loop in this process, the
promotion form's PAUSE and PROMOTE, ``ladder run`` handing trials back on Ctrl-C and
resuming them, and ``ladder reproduce``."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ladder
import pytest
from ladder import runenv
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.testing import wait_for, wait_for_found
from ladder.testing.services import process_env, start_services
from ladder.v1 import trial_pb2

pytestmark = pytest.mark.integration

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


@pytest.fixture(scope="module")
def system(infra: Settings, start_module_service: Callable[..., Any],
           tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return start_services(start_module_service, infra, tmp_path_factory.mktemp("api-state"))


@pytest.fixture
def client(system: Settings) -> Any:
    with LadderClient(system) as client:
        yield client


def script_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """What a script (or `ladder`) started from a test needs to reach the services."""
    return process_env(settings, LADDER_CHECKPOINT_URL=(tmp_path / "checkpoints").as_uri())


def test_a_training_loop_runs_a_study_with_early_stopping_and_captured_lineage(
    client: LadderClient, tmp_path: Path
) -> None:
    study = ladder.create_study(
        SPACE, metric="loss", scheduler={"kind": "asha", "min_population": 2,
                                         "smoothing": "none"},
        max_steps=9, max_trials=8, algorithm="random", dataset_id="ds-api", client=client,
    )
    report_seconds = []
    for trial in study.trials(worker_id="api-w0", checkpoint_url=tmp_path.as_uri()):
        with trial:
            loss = math.nan
            for step in range(trial.restore({}), trial.max_steps + 1):
                time.sleep(0.15)  # a step long enough for the verdict to come back
                loss = trial["x"] + 1 / step
                started = time.monotonic()
                trial.report(loss, step=step)
                report_seconds.append(time.monotonic() - started)
                if trial.should_stop():
                    break
            trial.complete(loss)
    outcomes = study.report.outcomes
    assert outcomes.get("completed", 0) + outcomes.get("pruned", 0) == 8
    assert outcomes.get("pruned", 0) >= 2, outcomes  # ASHA stopped the worse ones
    summary = wait_for_found(
        lambda: (s := study.summary()).completed + s.pruned == 8 and s, 30, "lineage of 8"
    )
    assert summary.has_best and study.best_value == pytest.approx(summary.best_value)
    best = study.best_trial
    assert best is not None and best.dataset_id == "ds-api"
    # A deterministic metric: the GP's best posterior mean is the best observed trial.
    recommended = study.recommended_trial()
    assert recommended is not None and recommended.trial_id == best.trial_id
    (attempt,) = best.attempts
    env = attempt.run_environment
    assert env.python == platform.python_version() and env.cpu_count == os.cpu_count()
    assert env.packages_hash and len(env.packages) > 10 and env.dataset_id == "ds-api"
    # This process's command: pytest's (recorded with paths relative to the work tree).
    assert env.entry_point == runenv.entry_point(root=Path(__file__).resolve().parents[2])
    print(f"report() p50 {sorted(report_seconds)[len(report_seconds) // 2] * 1000:.1f} ms, "
          f"max {max(report_seconds) * 1000:.1f} ms over {len(report_seconds)} reports")


CURVES = {  # promotion: the order trials run in decides who pauses (test_promotion.py)
    1: [0.1, 0.1, 0.1, 0.1],
    2: [0.5, 0.05, 0.05, 0.05],
    3: [0.9, 0.9, 0.9, 0.9],
    4: [0.95, 0.95, 0.95, 0.95],
}


def test_the_promotion_form_pauses_a_trial_and_resumes_it_once_promoted(
    client: LadderClient, tmp_path: Path
) -> None:
    study = ladder.create_study(
        SPACE, metric="loss", max_trials=4, algorithm="random", client=client,
        scheduler={"kind": "asha", "form": "promotion", "min_resource": 1,
                   "max_resource": 4, "reduction_factor": 2, "min_population": 2,
                   "smoothing": "none"},
    )
    order: dict[str, int] = {}
    started_at: dict[str, list[int]] = {}

    def run(trial: ladder.Trial) -> None:
        curve = CURVES[order.setdefault(trial.trial_id, len(order) + 1)]
        state = {"steps": 0}
        start = trial.restore(state)
        started_at.setdefault(trial.trial_id, []).append(start)
        assert state["steps"] == start - 1  # the checkpoint holds the steps before
        for step in range(start, 5):
            state["steps"] = step
            trial.report(curve[step - 1], step=step)
            if trial.should_stop():
                return
        trial.complete()

    outcomes = []
    for trial in study.trials(worker_id="w0", max_trials=4, decision_wait=60,
                              checkpoint_url=tmp_path.as_uri()):
        with trial:
            run(trial)
        outcomes.append(trial.outcome)
    assert outcomes == ["completed", "paused", "paused", "paused"]
    t2 = next(t for t, n in order.items() if n == 2)
    paused = client.get_trial(t2)
    assert paused.paused_rung == 0 and paused.checkpoint_step == 1
    wait_for(lambda: client.get_trial(t2).state == trial_pb2.RESUMABLE, 60,
             "t2 promoted")
    # Another worker gets it back with its checkpoint and runs it to the end.
    for trial in study.trials(worker_id="w1", decision_wait=60,
                              checkpoint_url=tmp_path.as_uri()):
        with trial:
            run(trial)
    assert started_at[t2] == [1, 2]
    done = client.get_trial(t2)
    assert done.state == trial_pb2.COMPLETED and done.final_value == 0.05


SCRIPT = '''
import os, time
import ladder

study = ladder.create_study({"x": {"type": "float", "low": 0.0, "high": 1.0}},
                            metric="loss", max_steps=STEPS, max_trials=TRIALS,
                            algorithm="random",
                            trial_policy={"checkpoint_interval_steps": 1})
for trial in study.trials():
    with trial:
        state = {"steps": 0}
        for step in range(trial.restore(state), STEPS + 1):
            time.sleep(float(os.environ.get("STEP_SECONDS", "0")))
            state["steps"] = step
            trial.report(trial["x"] + OFFSET / step, step=step)
            if trial.should_stop():
                break
print("outcomes", study.report.outcomes, flush=True)
'''


def write_script(folder: Path, steps: int, trials: int, offset: float = 1.0) -> Path:
    script = folder / "train.py"
    script.write_text(SCRIPT.replace("STEPS", str(steps)).replace("TRIALS", str(trials))
                      .replace("OFFSET", repr(offset)))
    return script


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    return repo


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


LADDER = [sys.executable, "-m", "ladder.cli"]


def test_ladder_run_hands_the_trials_back_on_ctrl_c_and_resumes_them(
    system: Settings, client: LadderClient, tmp_path: Path
) -> None:
    study_id = f"run-{uuid.uuid4().hex[:6]}"
    script = write_script(tmp_path, steps=12, trials=2)
    env = {**script_env(system, tmp_path), "STEP_SECONDS": "0.3"}
    run = subprocess.Popen([*LADDER, "run", "-n", "2", "--study", study_id, str(script)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    trial_ids = [f"{study_id}-t1", f"{study_id}-t2"]

    def checkpointed() -> bool:
        try:
            return all(client.get_trial(t).checkpoint_step >= 2 for t in trial_ids)
        except Exception:  # noqa: BLE001 - not suggested yet
            return False

    wait_for(checkpointed, 120, "both trials checkpointed twice")
    run.send_signal(signal.SIGINT)  # Ctrl-C: the parent forwards one SIGTERM per worker
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 130, output
    for trial_id in trial_ids:
        handed = client.get_trial(trial_id)
        assert handed.state == trial_pb2.RESUMABLE, output
        assert handed.last_attempt_end == trial_pb2.ATTEMPT_PREEMPTED
        assert handed.failures == 0 and handed.checkpoint_step >= 2
    saved = {t: client.get_trial(t).checkpoint_step for t in trial_ids}

    env["STEP_SECONDS"] = "0"
    again = subprocess.run([*LADDER, "run", "-n", "1", "--study", study_id, str(script)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 completed" in again.stdout
    for trial_id in trial_ids:
        lineage = wait_for_found(
            lambda t=trial_id: (lin := client.lineage(t)) and lin.has_final_value and lin,
            30, f"lineage of {trial_id}",
        )
        first, second = lineage.attempts
        resumed = sorted(p.step for p in lineage.metrics if p.attempt_id == second.attempt_id)
        # The second attempt starts after the checkpoint: no step before it is redone.
        assert resumed[0] == saved[trial_id] + 1 and resumed[-1] == 12
        assert first.run_environment.entry_point.endswith("train.py")


def test_reproduce_reruns_a_trial_checks_its_commit_and_compares_its_curve(
    system: Settings, client: LadderClient, tmp_path: Path
) -> None:
    repo = repository(tmp_path)
    write_script(repo, steps=5, trials=1)
    commit(repo, "train")
    env = script_env(system, tmp_path)
    study_id = f"repro-{uuid.uuid4().hex[:6]}"
    done = subprocess.run([*LADDER, "run", "--study", study_id, "train.py"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    trial_id = f"{study_id}-t1"
    lineage = wait_for_found(
        lambda: (lin := client.lineage(trial_id)) and lin.has_final_value
        and len(lin.metrics) == 5 and lin, 30, "the trial's lineage",
    )
    recorded = lineage.attempts[0].run_environment
    assert recorded.entry_point == "python train.py" and not recorded.code_dirty

    def reproduce(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LADDER, "reproduce", trial_id, *flags], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)

    same = reproduce()
    assert same.returncode == 0, same.stdout + same.stderr
    assert "curve matches: 5 of 5 steps" in same.stdout

    (repo / "NOTES").write_text("a later commit")
    commit(repo, "later")
    refused = reproduce()
    assert refused.returncode == 2 and "HEAD is" in refused.stderr
    forced = reproduce("--force")
    assert forced.returncode == 0 and "curve matches" in forced.stdout

    write_script(repo, steps=5, trials=1, offset=2.0)  # the code changed
    differs = reproduce("--force")
    assert differs.returncode == 1 and "curve differs: 5 of 5 steps" in differs.stdout
    assert "uncommitted changes now" in differs.stdout
