"""The Python API's trial loop (``ladder.api``) against the in-memory fake client of
test_runtime_worker: what each call sends, and when."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ladder import failures
from ladder.api import Study, Trial, snapshots
from ladder.v1 import evaluate_pb2
from test_runtime_worker import FakeClient, local, pause_reply, stale_from, stop_reply

STEPS = 9


def make_study(client: FakeClient) -> Study:
    return Study(client, client.study)  # type: ignore[arg-type]


def trials(client: FakeClient, tmp_path: Path, **kwargs: Any) -> Iterator[Trial]:
    return make_study(client).trials(
        worker_id="w0", checkpoint_url=(tmp_path / "ckpt").as_uri(), handle_signals=False,
        **kwargs,
    )


def train(trial: Trial, state: dict[str, Any], until: int = STEPS) -> float:
    """The user's loop: value 1 / steps trained."""
    loss = math.nan
    for step in range(trial.restore(state), until + 1):
        state["steps"] = step
        loss = 1.0 / step
        trial.report(loss, step=step)
        if trial.should_stop():
            break
        trial.checkpoint(state)
    return loss


def names(client: FakeClient, name: str) -> list[tuple[Any, ...]]:
    return [c for c in client.calls if c[0] == name]


def test_each_trial_reports_every_step_and_completes_with_its_value(tmp_path: Path) -> None:
    client = FakeClient(trials=2)
    outcomes = []
    for trial in trials(client, tmp_path):
        assert trial.params == {"x": 0.5} and trial.seed == 42 and trial.start_step == 1
        with trial:
            trial.complete(train(trial, {}))
        outcomes.append(trial.outcome)
    assert outcomes == ["completed", "completed"]
    assert [m[1] for m in client.metrics if m[0] == "t1"] == list(range(1, STEPS + 1))
    assert names(client, "complete") == [("complete", "t1", 1 / 9, 9), ("complete", "t0", 1 / 9, 9)]


def test_the_trial_is_seeded_before_it_is_yielded(tmp_path: Path) -> None:
    client = FakeClient(trials=1)
    for trial in trials(client, tmp_path):
        drawn = random.random()
        trial.complete(1.0)
    random.seed(42)
    assert drawn == random.random()


def test_a_stop_prunes_the_trial_and_later_calls_do_nothing(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        stop_reply(1, 3) if step >= 3 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    for trial in trials(client, tmp_path):
        with trial:
            trial.complete(train(trial, {}))
    assert trial.outcome == "pruned" and trial.decision.reason == "below cutoff"
    assert names(client, "prune") == [("prune", "t0", 3, 1 / 3)]
    assert names(client, "complete") == []


def test_should_stop_sends_nothing(tmp_path: Path) -> None:
    client = FakeClient()
    for trial in trials(client, tmp_path):
        trial.report(0.5)
        calls, beats = len(client.calls), client.heartbeats
        assert not trial.should_stop() and not trial.should_stop()
        assert (len(client.calls), client.heartbeats) == (calls, beats)
        trial.complete()


def test_a_pause_checkpoints_the_objects_and_parks_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        pause_reply(0, 1) if step >= 1 else evaluate_pb2.HeartbeatResponse(action=1)
    )
    state: dict[str, Any] = {}
    for trial in trials(client, tmp_path):
        with trial:
            train(trial, state)
    assert trial.outcome == "paused"
    ((_, _, uri, step),) = names(client, "checkpoint")
    assert step == 1 and local(uri).with_name(local(uri).name + ".pin").exists()
    assert client.names()[-3:] == ["checkpoint", "pause", "suggest"]
    restored: dict[str, Any] = {}
    snapshots.read(local(uri), [restored])
    assert restored == {"steps": 1}


def test_a_resumed_trial_restores_its_objects_and_starts_after_the_checkpoint(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "old" / "a-step6.ckpt"
    snapshots.write([{"steps": 6}], saved)
    client = FakeClient()
    client.start_reply["t0"] = evaluate_pb2.StartTrialResponse(
        lease_seconds=30, checkpoint_uri=saved.as_uri(), checkpoint_step=6
    )
    state: dict[str, Any] = {}
    for trial in trials(client, tmp_path):
        with trial:
            assert trial.restore(state) == 7 and state == {"steps": 6}
            trial.complete(train(trial, state))
    assert [m[1] for m in client.metrics] == [7, 8, 9]


def test_checkpoints_follow_the_study_policy(tmp_path: Path) -> None:
    client = FakeClient(policy={"checkpoint_interval_steps": 4})
    for trial in trials(client, tmp_path):
        with trial:
            train(trial, {})
    assert [c[3] for c in names(client, "checkpoint")] == [4, 8]


@pytest.mark.parametrize(
    ("error", "kind"),
    [(ValueError("bad batch size"), failures.USER_ERROR),
     (RuntimeError("CUDA out of memory"), failures.OUT_OF_MEMORY),
     (OSError("NFS went away"), failures.INFRASTRUCTURE)],
)
def test_an_exception_in_the_loop_fails_the_trial_with_its_class(
    tmp_path: Path, error: Exception, kind: int
) -> None:
    client = FakeClient(trials=2)
    with pytest.raises(type(error)):
        for trial in trials(client, tmp_path):
            with trial:
                trial.report(0.5)
                raise error
    ((_, trial_id, reason, sent),) = names(client, "fail")
    assert trial_id == "t1" and sent == kind and type(error).__name__ in reason
    assert client.names().count("start") == 1  # the exception ended the loop


def test_a_body_without_an_end_completes_with_the_last_value(tmp_path: Path) -> None:
    client = FakeClient()
    for trial in trials(client, tmp_path):
        trial.report(0.7)
        trial.report(0.4)
    assert names(client, "complete") == [("complete", "t0", 0.4, 2)]


def test_leaving_the_loop_mid_trial_fails_it_as_infrastructure(tmp_path: Path) -> None:
    client = FakeClient(trials=3)
    for trial in trials(client, tmp_path):
        trial.report(0.5)
        break
    ((_, _, reason, kind),) = names(client, "fail")
    assert kind == failures.INFRASTRUCTURE and "with trial:" in reason


def test_a_stop_request_hands_the_trial_back_after_a_checkpoint(tmp_path: Path) -> None:
    client = FakeClient(trials=3)
    study = make_study(client)
    seen = []
    for trial in study.trials(worker_id="w0", checkpoint_url=(tmp_path / "c").as_uri(),
                              handle_signals=False):
        state: dict[str, Any] = {}
        trial.restore(state)
        for step in range(1, STEPS + 1):
            state["steps"] = step
            trial.report(1.0 / step, step=step)
            if step == 4:
                trial._session.request_stop()  # what the SIGTERM handler does
            if trial.should_stop():
                break
        seen.append(trial.outcome)
    assert seen == ["interrupted"]  # and no next trial
    ((_, _, reason, kind),) = names(client, "fail")
    assert kind == failures.PREEMPTED and "after step 4" in reason
    assert [c[3] for c in names(client, "checkpoint")] == [4]


def test_a_nan_fails_the_trial_as_diverged(tmp_path: Path) -> None:
    client = FakeClient()
    for trial in trials(client, tmp_path):
        trial.report(0.5)
        trial.report(math.nan)
        assert trial.should_stop()
    ((_, _, reason, kind),) = names(client, "fail")
    assert kind == failures.DIVERGED and "nan" in reason


def test_a_lost_lease_ends_the_trial_quietly(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = stale_from(2)
    for trial in trials(client, tmp_path):
        with trial:
            trial.complete(train(trial, {}))
    assert trial.outcome == "lost"
    assert not {"complete", "fail", "prune"} & set(client.names())


def test_steps_must_increase(tmp_path: Path) -> None:
    client = FakeClient()
    for trial in trials(client, tmp_path):
        trial.report(0.5, step=3)
        with pytest.raises(ValueError, match="not after"):
            trial.report(0.4, step=3)
        trial.complete()


def test_objects_given_to_restore_are_checkpointed_by_report_when_due(tmp_path: Path) -> None:
    client = FakeClient(policy={"checkpoint_interval_steps": 3})
    for trial in trials(client, tmp_path):
        state: dict[str, Any] = {}
        for step in range(trial.restore(state), STEPS + 1):
            state["steps"] = step
            trial.report(1.0 / step, step=step)
            if trial.should_stop():
                break
    uris = [c[2] for c in names(client, "checkpoint")]
    assert [c[3] for c in names(client, "checkpoint")] == [3, 6]
    restored: dict[str, Any] = {}
    snapshots.read(local(uris[-1]), [restored])
    assert restored == {"steps": 6}


def test_parameters_read_by_name(tmp_path: Path) -> None:
    client = FakeClient()
    for trial in trials(client, tmp_path):
        assert trial["x"] == 0.5
        with pytest.raises(KeyError):
            trial["momentum"]
        trial.complete(1.0)


def test_a_verdict_that_arrives_after_the_last_step_does_not_undo_it(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: (
        stop_reply(0, 1) if step >= STEPS else evaluate_pb2.HeartbeatResponse(action=1)
    )
    for trial in trials(client, tmp_path):
        with trial:
            train(trial, {})
    assert trial.outcome == "completed" and names(client, "prune") == []


def test_a_second_ctrl_c_hands_the_trial_back_from_its_last_checkpoint(tmp_path: Path) -> None:
    client = FakeClient(trials=2, policy={"checkpoint_interval_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        for trial in trials(client, tmp_path):
            with trial:
                state: dict[str, Any] = {}
                for step in range(trial.restore(state), STEPS + 1):
                    state["steps"] = step
                    trial.report(1.0 / step, step=step)
                    if step == 3:
                        raise KeyboardInterrupt  # mid-step: nothing more is saved
    assert [c[3] for c in names(client, "checkpoint")] == [2]
    ((_, _, reason, kind),) = names(client, "fail")
    assert kind == failures.PREEMPTED and "checkpoint holds step 2" in reason
    assert client.names().count("start") == 1


def test_no_stack_at_the_configured_address_is_named_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import ladder

    monkeypatch.setenv("LADDER_SUGGEST_ADDR", "127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no Ladder stack at 127.0.0.1:1: run `ladder up`"):
        ladder.create_study({"x": {"type": "float", "low": 0, "high": 1}})
    assert time.monotonic() - started < 5
