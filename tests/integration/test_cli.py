"""The real ``ladder`` command against real suggest, evaluate and lineage processes:
errors that name the fix (no stack within 2 s, unknown ids exit 2), ``watch`` following
a study until it completes, stop / resume, and the scripts' formats (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.lifecycle import COMPLETED
from ladder.stack.ports import free_port
from ladder.testing import wait_for, wait_for_found

pytestmark = pytest.mark.integration

LADDER = [sys.executable, "-m", "ladder.cli"]
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0},
         "kind": {"type": "categorical", "choices": ["a", "b"]}}


@pytest.fixture(scope="module")
def env(infra: Settings, infra_env: dict[str, str], start_module_service: Callable[..., Any],
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    addrs = {
        variable: start_module_service(module).addr
        for module, variable in (
            ("services.suggest", "LADDER_SUGGEST_ADDR"),
            ("services.evaluate", "LADDER_EVALUATE_ADDR"),
            ("services.lineage", "LADDER_LINEAGE_ADDR"),
        )
    }
    # Addresses from the environment only: no stack.json in this state folder.
    return {**infra_env, **addrs,
            "LADDER_STATE_DIR": str(tmp_path_factory.mktemp("cli-state"))}


def ladder(env: dict[str, str], *args: str, cwd: Path | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([*LADDER, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def client_of(env: dict[str, str], infra: Settings) -> LadderClient:
    return LadderClient(Settings(
        kafka_bootstrap=infra.kafka_bootstrap, redis_url=infra.redis_url, topics=infra.topics,
        suggest_addr=env["LADDER_SUGGEST_ADDR"], evaluate_addr=env["LADDER_EVALUATE_ADDR"],
        lineage_addr=env["LADDER_LINEAGE_ADDR"],
    ))


def run_trials(client: LadderClient, study_id: str, count: int) -> None:
    for i in range(count):
        trial = client.suggest(study_id, "w-cli")[0].trial
        client.start_trial(trial.trial_id, "w-cli", f"a{i}")
        client.report_metric(study_id, trial.trial_id, f"a{i}", 1, 0.5 + i, metric="val_loss")
        client.flush()
        client.complete(trial.trial_id, f"a{i}", 0.5 + i, 1)


def test_no_stack_is_named_with_the_fix_without_the_retry_wait(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LADDER_STATE_DIR": str(tmp_path)}
    for variable, args in (("LADDER_SUGGEST_ADDR", ("study", "list")),
                           ("LADDER_LINEAGE_ADDR", ("lineage", "st-t1"))):
        addr = f"127.0.0.1:{free_port()}"
        started = time.monotonic()
        result = ladder({**env, variable: addr}, *args)
        took = time.monotonic() - started
        assert result.returncode == 3, result.stderr
        assert result.stderr == (
            f"ladder: no Ladder stack at {addr}: run `ladder up` or set {variable}\n"
        )
        assert result.stdout == ""
        # The bound tells the fast check from the SDK's 30 s retry budget; interpreter
        # start-up alone can take seconds on a loaded host.
        assert took < 10.0, f"{args}: {took:.2f}s"


@pytest.mark.parametrize(
    "args",
    [("study", "show"), ("study", "stop"), ("study", "resume"), ("summary",), ("trials",),
     ("best",), ("watch",)],
)
def test_an_unknown_study_exits_2_naming_it(env: dict[str, str], args: tuple[str, ...]
                                           ) -> None:
    result = ladder(env, *args, "no-such-study")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "ladder: NOT_FOUND: study 'no-such-study' does not exist (`ladder study list` "
        "shows the studies)\n"
    )


def test_an_unknown_trial_exits_2_naming_it(env: dict[str, str]) -> None:
    result = ladder(env, "lineage", "no-such-trial")
    assert (result.returncode, result.stderr) == (
        2, "ladder: NOT_FOUND: trial 'no-such-trial' not found\n"
    )


def test_a_bad_study_file_names_the_field(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("space: {x: {type: float, low: 1, high: 0}}\n")
    result = ladder(env, "study", "create", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("ladder: bad.yaml: ") and "'x'" in result.stderr


def test_watch_follows_a_study_until_it_completes(
    env: dict[str, str], infra: Settings, tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(json.dumps({"space": SPACE, "max_trials": 3}))
    created = ladder(env, "study", "create", "s.yaml", "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    study_id = json.loads(created.stdout)["study_id"]
    watch = subprocess.Popen([*LADDER, "watch", study_id, "--interval", "0.2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or ()), daemon=True)
    reader.start()
    try:
        # The trials run once watch has shown the study active: on a loaded host they
        # could otherwise all end before its first refresh.
        wait_for(lambda: lines or watch.poll() is not None, 30, "watch's first line")
        with client_of(env, infra) as client:
            run_trials(client, study_id, 3)
        watch.wait(60)
        reader.join(10)
    finally:
        watch.kill()
    err = watch.stderr.read() if watch.stderr else ""
    assert watch.returncode == 0, err
    out = "".join(lines)
    lines = out.splitlines()
    assert len(lines) >= 2 and "\x1b" not in out  # not a terminal: one line per refresh
    assert lines[0].startswith(f"{study_id} active: ")
    assert lines[-1].startswith(
        f"{study_id} completed: running 0, pruned 0, completed 3, failed 0; best 0.5 "
        f"({study_id}-t1), "
    )
    assert lines[-1].endswith(" trials/min, 3 suggested of 3")


def test_stop_resume_and_the_formats_for_scripts(
    env: dict[str, str], infra: Settings, tmp_path: Path
) -> None:
    with client_of(env, infra) as client:
        study_id = client.create_study(study_config(SPACE, max_trials=4, name="fmt")).study_id
        stopped = ladder(env, "study", "stop", study_id, "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout)["state"] == "STUDY_STOPPED"
        shown = json.loads(ladder(env, "study", "show", study_id, "--json").stdout)
        assert shown["state"] == "STUDY_STOPPED" and isinstance(shown["created_unix_ms"], int)
        assert shown["config"]["max_trials"] == 4 and shown["trials_suggested"] == 0
        listed = ladder(env, "study", "list").stdout.splitlines()
        assert any(line.split()[:3] == [study_id, "fmt", "stopped"] for line in listed)

        resumed = ladder(env, "study", "resume", study_id)
        assert resumed.stdout == (
            f"study {study_id} resumed: new trials are handed out again (0/4 suggested)\n"
        )
        run_trials(client, study_id, 4)
        wait_for(lambda: client.get_study(study_id).state == COMPLETED, 30, "COMPLETED")
        wait_for_found(lambda: client.summary(study_id).completed == 4, 30, "lineage")

    rows = json.loads(ladder(env, "trials", study_id, "--format", "json").stdout)
    assert [r["trial_id"] for r in rows] == [f"{study_id}-t{i}" for i in range(1, 5)]
    assert [r["value"] for r in rows] == [0.5, 1.5, 2.5, 3.5]
    assert all(set(r["params"]) == {"x", "kind"} for r in rows)
    table = list(csv.DictReader(io.StringIO(ladder(env, "trials", study_id, "--format",
                                                   "csv").stdout)))
    assert [float(r["value"]) for r in table] == [0.5, 1.5, 2.5, 3.5]
    assert [r["kind"] for r in table] == [r["params"]["kind"] for r in rows]
    best = json.loads(ladder(env, "best", study_id, "--json").stdout)
    assert best["trial_id"] == f"{study_id}-t1" and best["final_value"] == 0.5
    assert best["metrics"][0]["step"] == 1.0 and isinstance(best["seed"], int)
    # Values unrelated to the params: the GP's pick is some completed trial, with lineage.
    noisy = json.loads(ladder(env, "best", study_id, "--noisy", "--json").stdout)
    assert noisy["trial_id"] in {r["trial_id"] for r in rows} and noisy["metrics"]
    assert noisy["final_value"] == next(
        r["value"] for r in rows if r["trial_id"] == noisy["trial_id"]
    )
    summary = json.loads(ladder(env, "summary", study_id, "--json").stdout)
    assert summary["completed"] == 4 and summary["pruned"] == 0 and summary["failed"] == 0
    refused = ladder(env, "study", "resume", study_id)
    assert refused.returncode == 1 and "is completed: it cannot be resumed" in refused.stderr
