"""The CLI's output formats (``ladder.cli_format``), its study file
(``ladder.cli_study_file``) and ``ladder watch``'s rate and screen, without a stack."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from ladder import cli_format as fmt
from ladder.cli_study_file import StudyFileError, load, parse
from ladder.cli_watch import Rate, Screen
from ladder.params import fill_params
from ladder.v1 import events_pb2, lineage_pb2, study_pb2

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "layers": {"type": "int", "low": 1, "high": 4},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
}


# --- plain JSON ------------------------------------------------------------------------


def test_plain_json_keeps_numbers_zeros_and_names() -> None:
    lineage = lineage_pb2.TrialLineage(
        trial_id="st-t1", seed=2**63 + 5, has_final_value=False, final_value=math.nan
    )
    fill_params(lineage.params, {"lr": 0.01, "layers": 3, "optimizer": "sgd"})
    lineage.decisions.add(action=events_pb2.STOP, ts_ms=1_700_000_000_123, rung=0)
    data = fmt.plain(lineage)
    text = fmt.dumps(data)
    assert json.loads(text) == data  # strictly valid JSON (no NaN)
    assert data["seed"] == 2**63 + 5  # a uint64 is a number, not protobuf's string
    assert data["params"] == {"layers": 3, "lr": 0.01, "optimizer": "sgd"}
    assert data["final_value"] is None and data["has_final_value"] is False
    assert data["failures"] == 0 and data["state"] == "" and data["metrics"] == []
    decision = data["decisions"][0]
    assert decision["action"] == "STOP" and decision["ts_ms"] == 1_700_000_000_123
    assert decision["rung"] == 0 and decision["cutoff"] == 0.0


def test_plain_json_leaves_out_the_unset_members_of_a_oneof() -> None:
    config, _ = parse({"space": SPACE})
    params = fmt.plain(config)["space"]["parameters"]
    assert [sorted(set(p) - {"name", "condition"}) for p in params] == [
        ["float_range"], ["int_range"], ["categorical"], ["float_range"],
    ]
    assert params[0]["float_range"] == {"low": 0.0001, "high": 0.1, "scale": "SCALE_LOG"}
    assert params[3]["condition"] == {"parent": "optimizer", "parent_values": ["sgd"]}
    assert params[0]["condition"] is None  # a message never set


# --- cells, tables, CSV ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (3.0, "3"), (0.000123456789, "0.000123457"), (1e20, "1e+20"),
     (math.inf, "inf"), (None, "-")],
)
def test_number(value: float | None, text: str) -> None:
    assert fmt.number(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.44, "0.4s"), (12.4, "12s"), (185, "3m05s"), (7620, "2h07m"), (-1, "-")],
)
def test_duration(seconds: float, text: str) -> None:
    assert fmt.duration(seconds) == text


def test_table_right_aligns_numeric_columns_and_strips_trailing_space() -> None:
    text = fmt.table(("TRIAL", "VALUE", "NOTE"), [["t1", "0.5", ""], ["t10", "12", "x"]])
    assert text.splitlines() == [
        "TRIAL  VALUE  NOTE",
        "t1       0.5",
        "t10       12  x",
    ]


def test_bar() -> None:
    assert fmt.bar(1, 4, 8) == "[##......]"
    assert fmt.bar(5, 4, 4) == "[####]"
    assert fmt.bar(0, 0, 3) == "[...]"


# --- trials ----------------------------------------------------------------------------


def rows() -> list[fmt.TrialRow]:
    def summary(trial_id: str, state: str, value: float | None, step: float) -> object:
        return lineage_pb2.TrialSummary(
            trial_id=trial_id, state=state, has_final_value=value is not None,
            final_value=value or 0.0, last_step=step,
        )

    made = [
        fmt.trial_row(summary("st-t10", "PRUNED", None, 3),
                      {"lr": 0.001, "optimizer": "adam", "layers": 2}),
        fmt.trial_row(summary("st-t2", "COMPLETED", 0.25, 9),
                      {"lr": 0.0316, "optimizer": "sgd", "momentum": 0.5, "layers": 4}),
        fmt.trial_row(summary("st-t1", "COMPLETED", 0.0, 9),
                      {"lr": 0.1, "optimizer": "a,b", "layers": 1}),
    ]
    return fmt.sorted_rows(made)


def test_trials_table_has_values_and_params_in_space_order() -> None:
    text = fmt.trials_table(rows(), ["lr", "layers", "optimizer", "momentum"])
    assert text.splitlines() == [
        "TRIAL   STATE      VALUE  STEP      lr  layers  optimizer  momentum",
        "st-t1   completed      0     9     0.1       1  a,b               -",
        "st-t2   completed   0.25     9  0.0316       4  sgd             0.5",
        "st-t10  pruned         -     3   0.001       2  adam              -",
    ]
    assert fmt.trials_table([]) == "no trials yet"


def test_trials_csv_quotes_and_leaves_missing_values_empty() -> None:
    text = fmt.trials_csv(rows(), ["lr", "layers", "optimizer", "momentum"])
    assert text.splitlines() == [
        "trial_id,state,value,last_step,lr,layers,optimizer,momentum",
        'st-t1,completed,0.0,9.0,0.1,1,"a,b",',
        "st-t2,completed,0.25,9.0,0.0316,4,sgd,0.5",
        "st-t10,pruned,,3.0,0.001,2,adam,",
    ]


def test_trials_json_rows() -> None:
    data = [row.as_dict() for row in rows()]
    assert data[2] == {
        "trial_id": "st-t10", "state": "pruned", "value": None, "last_step": 3.0,
        "params": {"lr": 0.001, "optimizer": "adam", "layers": 2},
    }


# --- studies and lineage ---------------------------------------------------------------


def test_study_views() -> None:
    config, _ = parse({"name": "demo", "space": SPACE, "max_trials": 4,
                       "scheduler": {"kind": "asha", "max_resource": 9, "min_resource": 1,
                                     "reduction_factor": 3, "grace_period": 1,
                                     "min_population": 3, "ema_alpha": 0.5}})
    study = study_pb2.Study(study_id="st-1", config=config, state=study_pb2.STUDY_STOPPED,
                            trials_suggested=3)
    view = fmt.study_view(study)
    assert "state       stopped" in view
    assert "scheduler   asha stopping: resource 1..9, eta 3, grace 1, min population 3, " \
           "ema 0.5" in view
    assert "budget      3 of 4 trials suggested" in view
    assert "resources   0 GPUs, 1 CPU, 0 GB per trial (default)" in view
    assert "priority    0\n" in view
    assert "GPU time" not in view  # trials that declare no GPU have no GPU budget
    config.trial_resources.CopyFrom(study_pb2.TrialResources(gpus=8, gpu_type="a100", cpu=16))
    config.priority = 5
    view = fmt.study_view(study_pb2.Study(study_id="st-2", config=config, gpu_hours_used=3.2))
    assert "resources   8 GPUs (a100), 16 CPU, 0 GB per trial\n" in view
    assert "priority    5\n" in view
    assert "GPU time    3.2 GPU-hours, unbounded\n" in view
    config.max_gpu_hours = 16
    view = fmt.study_view(study_pb2.Study(study_id="st-2", config=config, gpu_hours_used=3.2))
    assert "GPU time    3.2 GPU-hours of 16\n" in view
    assert "momentum   float        0 .. 0.99      optimizer in sgd" in view
    row = fmt.studies_table([study]).splitlines()[1].split()
    assert row[:7] == ["st-1", "demo", "stopped", "val_loss", "(min)", "random", "asha"]
    assert row[7] == "3/4"


def test_lineage_view() -> None:
    lineage = lineage_pb2.TrialLineage(
        trial_id="st-t2", study_id="st", state="PRUNED", metric="val_loss", seed=9,
        algorithm="quasi-random",
    )
    fill_params(lineage.params, {"lr": 0.01})
    for step, value in ((1, 0.9), (2, 0.7), (3, 0.8)):
        lineage.metrics.add(step=step, value=value)
    lineage.attempts.add(attempt_number=1, worker_id="w0", hostname="h", outcome="pruned",
                         started_ms=1000, ended_ms=3500)
    lineage.decisions.add(rung=0, resource=3, action=events_pb2.STOP, smoothed_value=0.8,
                          cutoff=0.5, rank=3, population=3, reason="below the cutoff")
    text = fmt.lineage_view(lineage)
    assert "params      lr=0.01" in text
    assert "curve       3 points, step 1 .. 3: 0.9 -> 0.8 (best 0.7 at step 2)" in text
    assert "      1  w0      h     pruned   " in text and text.count("2.5s") == 1
    assert "   0         3  stop      0.8     0.5  3/3   below the cutoff" in text


# --- progress --------------------------------------------------------------------------


def progress(**kw: object) -> fmt.Progress:
    values = dict(study_id="st", state="active", max_trials=4, suggested=3, running=1,
                  pruned=1, completed=1, failed=0, best_value=0.25, best_trial_id="st-t2",
                  trials_per_minute=1.5)
    values.update(kw)
    return fmt.Progress(**values)  # type: ignore[arg-type]


def test_progress_line_and_block() -> None:
    assert fmt.progress_line(progress()) == (
        "st active: running 1, pruned 1, completed 1, failed 0; best 0.25 (st-t2), "
        "1.5 trials/min, 3 suggested of 4"
    )
    unbounded = progress(max_trials=0, best_value=None, trials_per_minute=None)
    assert fmt.progress_line(unbounded).endswith(
        "no completed trial yet, - trials/min, 3 suggested of 3 (no max_trials)"
    )
    block = fmt.progress_block(progress(), width=8)
    assert block[1:] == [
        "  running   [##......] 1/4",
        "  pruned    [##......] 1/4",
        "  completed [##......] 1/4",
        "  failed    [........] 0/4",
    ]


def test_rate_is_the_study_average_until_the_watch_window_is_long_enough() -> None:
    now = [1000.0]
    rate = Rate(created_ms=880_000, clock=lambda: now[0])  # created 120 s ago
    assert rate(4) == pytest.approx(2.0)  # 4 trials in 2 minutes
    now[0] += 5
    assert rate(5) == pytest.approx(5 / 125 * 60)
    now[0] += 25  # 30 s since the first refresh: 6 more trials
    assert rate(10) == pytest.approx(12.0)


def test_screen_redraws_in_place_on_a_terminal_and_appends_lines_elsewhere() -> None:
    out = io.StringIO()
    screen = Screen(out, tty=True)
    screen.show(progress())
    screen.show(progress(running=0, completed=2))
    frames = out.getvalue().split("\x1b[5F")
    assert len(frames) == 2 and frames[0].count("\x1b[2K") == 5
    assert "completed" in frames[1]
    plain_out = io.StringIO()
    lines = Screen(plain_out, tty=False)
    lines.show(progress())
    lines.show(progress())
    assert plain_out.getvalue().count("\n") == 2 and "\x1b" not in plain_out.getvalue()


# --- the study file --------------------------------------------------------------------


def test_study_file(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(
        "study_id: demo\nname: demo\nmax_trials: 4\nalgorithm: tpe\n"
        "space:\n  lr: {type: float, low: 0.0001, high: 0.1, log: true}\n"
        "scheduler: {kind: asha, max_resource: 27}\n"
        "trial_policy: {checkpoint_interval_seconds: 60, on_out_of_memory: OOM_INFEASIBLE}\n"
        "known_results: [{params: {lr: 0.01}, value: 0.3}]\n"
    )
    config, study_id = load(path)
    assert study_id == "demo" and config.max_trials == 4
    assert config.algorithm == study_pb2.TPE and config.scheduler.max_resource == 27
    assert config.trial_policy.checkpoint_interval_seconds == 60
    assert config.trial_policy.on_out_of_memory == study_pb2.OOM_INFEASIBLE
    assert config.warm_start.configurations[0].value == 0.3


def test_study_file_gpu_budget_needs_trials_with_gpus() -> None:
    config, _ = parse({"space": SPACE, "max_gpu_hours": 16, "trial_resources": {"gpus": 2}})
    assert config.max_gpu_hours == 16 and config.trial_resources.gpus == 2
    with pytest.raises(StudyFileError, match="max_gpu_hours 16 could never be spent"):
        parse({"space": SPACE, "max_gpu_hours": 16}, "s.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected a mapping of study fields, got list"),
        ({"name": "x"}, "'space' is required"),
        ({"space": SPACE, "budget": 3}, "unknown keys ['budget']; known: space, name,"),
        ({"space": {"lr": {"type": "float", "low": 1, "high": 0}}}, "'lr'"),
        ({"space": SPACE, "direction": "up"}, "direction must be one of"),
        ({"space": SPACE, "trial_policy": {"checkpoints": 3}}, "checkpoints"),
        ({"space": SPACE, "known_results": [{"lr": 1}]}, "known_results[0] must be"),
    ],
)
def test_study_file_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(StudyFileError) as caught:
        parse(data, "s.yaml")
    assert str(caught.value).startswith("s.yaml: ") and message in str(caught.value)


def test_study_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match="No such file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [unclosed\n")
    with pytest.raises(StudyFileError, match="not valid YAML"):
        load(bad)
