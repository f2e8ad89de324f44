"""The worker's answers to what review found: a step that dies of the shutdown, a
checkpoint that vanished, retention and the checkpoint the server hands out, a PAUSE
that lost to a STOP, object-store outages, the keep-alive fallback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
from ladder import failures
from ladder.checkpoints import CheckpointKey, CheckpointStoreError
from ladder.testing import RpcStatus
from ladder.v1 import evaluate_pb2, trial_pb2
from test_runtime_worker import CountingWorkload, FakeClient, local, make_worker, pause_reply

from workers.runtime import Worker


def test_a_step_that_fails_after_a_stop_request_hands_the_trial_back(tmp_path: Path) -> None:
    # On a real preemption the step often throws because of the shutdown itself (its
    # DataLoader children die first): that is a preemption, never a counted failure.
    client = FakeClient(trials=3)
    holder: dict[str, Worker] = {}

    class DyingWithTheShutdown(CountingWorkload):
        def train_step(self, state: dict, step: int) -> float:
            if step == 5:
                holder["worker"].request_stop()
                raise RuntimeError("DataLoader worker (pid 4242) is killed by signal")
            return super().train_step(state, step)

    workload = DyingWithTheShutdown()
    holder["worker"] = make_worker(client, workload, tmp_path)
    report = holder["worker"].run()
    assert report.outcomes == {"interrupted": 1}
    ((_, _, reason, kind),) = [c for c in client.calls if c[0] == "fail"]
    assert kind == failures.PREEMPTED
    assert "after step 4" in reason and "checkpoint holds step 3" in reason
    assert client.names().count("suggest") == 1


def test_an_explicit_trial_failure_during_a_stop_is_still_that_failure(tmp_path: Path) -> None:
    client = FakeClient()
    holder: dict[str, Worker] = {}

    class GivingUp(CountingWorkload):
        def train_step(self, state: dict, step: int) -> float:
            holder["worker"].request_stop()
            raise failures.TrialFailed(failures.USER_ERROR, "bad batch size")

    holder["worker"] = make_worker(client, GivingUp(), tmp_path)
    assert holder["worker"].run().outcomes == {"failed": 1}
    ((_, _, _, kind),) = [c for c in client.calls if c[0] == "fail"]
    assert kind == trial_pb2.USER_ERROR


def test_retention_never_deletes_the_checkpoint_the_server_hands_out(tmp_path: Path) -> None:
    # An attempt that lost its lease saved a later step it never reported (a newer file):
    # with checkpoints_kept=1 it must not push the reported checkpoint out.
    client = FakeClient(policy={"checkpoints_kept": 1})
    reported: list[str] = []
    present_at_next_report: list[bool] = []
    record = client.checkpoint

    def checkpoint(trial_id: str, attempt_id: str, uri: str, step: float, **kw: float
                   ) -> trial_pb2.Trial:
        if reported:
            present_at_next_report.append(local(reported[-1]).exists())
        reported.append(uri)
        orphan = local(uri).with_name(f"orphan-step{int(step) + 5}.ckpt")
        orphan.write_text("{}")
        later = time.time() + 100
        os.utime(orphan, (later, later))
        return record(trial_id, attempt_id, uri, step, **kw)

    client.checkpoint = checkpoint  # type: ignore[method-assign]
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"completed": 1}
    assert len(reported) == 2  # steps 3 and 6
    assert present_at_next_report == [True]
    assert local(reported[-1]).exists()


def missing_checkpoint(client: FakeClient, tmp_path: Path, step: int) -> Path:
    """StartTrial of t0 hands out a checkpoint of ``step`` that the store lost; the
    folder of the trial's checkpoints."""
    folder = tmp_path / "checkpoints" / "s1" / "t0"
    folder.mkdir(parents=True)
    client.start_reply["t0"] = evaluate_pb2.StartTrialResponse(
        lease_seconds=30, checkpoint_uri=(folder / f"gone-step{step}.ckpt").as_uri(),
        checkpoint_step=step,
    )
    return folder


def test_a_missing_checkpoint_resumes_from_the_newest_one_left(tmp_path: Path) -> None:
    client = FakeClient()
    folder = missing_checkpoint(client, tmp_path, 7)
    older = folder / "earlier-step4.ckpt"
    older.write_text(json.dumps({"steps": 4}))
    oldest = folder / "earliest-step2.ckpt"
    oldest.write_text(json.dumps({"steps": 2}))
    os.utime(oldest, (time.time() - 100, time.time() - 100))
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path, checkpoint_every=0).run()
    assert report.outcomes == {"completed": 1}
    assert workload.trained == [5, 6, 7, 8, 9]
    # The server is told where the trial now stands: no attempt gets the lost one again.
    assert ("checkpoint", "t0", older.as_uri(), 4) in client.calls
    assert ("complete", "t0", 1 / 9, 9) in client.calls


def test_a_missing_checkpoint_without_another_starts_the_trial_again(tmp_path: Path) -> None:
    client = FakeClient()
    missing_checkpoint(client, tmp_path, 7)
    workload = CountingWorkload()
    report = make_worker(client, workload, tmp_path, checkpoint_every=0).run()
    assert report.outcomes == {"completed": 1}  # not FAILED: nothing was wrong with it
    assert workload.trained == list(range(1, 10))
    assert "fail" not in client.names()


def test_a_pause_refused_because_a_stop_won_prunes_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: pause_reply(0, 1)

    def refuse(trial_id: str, attempt_id: str, step: float, rung: int) -> trial_pb2.Trial:
        client.calls.append(("pause", trial_id, step, rung))
        raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION, f"trial {trial_id!r} was stopped "
                        "(latest decision STOP): prune it, not pause")

    client.pause = refuse  # type: ignore[method-assign]
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"pruned": 1}
    assert client.names()[-3:] == ["pause", "prune", "suggest"]
    assert ("prune", "t0", 1, 1.0) in client.calls


def test_a_pause_refused_as_stale_is_still_a_lost_lease(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: pause_reply(0, 1)

    def refuse(trial_id: str, attempt_id: str, step: float, rung: int) -> trial_pb2.Trial:
        raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION, "stale attempt")

    client.pause = refuse  # type: ignore[method-assign]
    report = make_worker(client, CountingWorkload(), tmp_path).run()
    assert report.outcomes == {"lost": 1}
    assert "prune" not in client.names()


def failing_first_saves(worker: Worker, error: Exception, times: int = 1) -> None:
    """The worker's store raises ``error`` on its first ``times`` saves."""
    save = worker.store.save
    left = [times]

    def flaky(local_path: Path, key: CheckpointKey) -> str:
        if left[0] > 0:
            left[0] -= 1
            local_path.unlink(missing_ok=True)
            raise error
        return save(local_path, key)

    worker.store.save = flaky  # type: ignore[method-assign]


def test_a_failed_periodic_save_is_counted_and_retried_at_the_next_due_step(
    tmp_path: Path,
) -> None:
    client = FakeClient()
    worker = make_worker(client, CountingWorkload(), tmp_path)
    failing_first_saves(worker, CheckpointStoreError("bucket 'ckpt' does not exist"))
    report = worker.run()
    assert report.outcomes == {"completed": 1}
    assert [c[3] for c in client.calls if c[0] == "checkpoint"] == [6]
    assert worker.stats.failed_saves == 1 and len(worker.stats.save_seconds) == 1


def test_a_store_outage_at_a_pause_pauses_from_the_last_checkpoint(tmp_path: Path) -> None:
    client = FakeClient()
    client.on_heartbeat = lambda trial, step, n: pause_reply(1, 4)
    worker = make_worker(client, CountingWorkload(), tmp_path)
    # The save of step 3 works; that of step 4 at the PAUSE finds the store down.
    save = worker.store.save

    def down_at_step_4(local_path: Path, key: CheckpointKey) -> str:
        if key.step == 4:
            local_path.unlink(missing_ok=True)
            raise ConnectionError("object store unreachable")
        return save(local_path, key)

    worker.store.save = down_at_step_4  # type: ignore[method-assign]
    report = worker.run()
    assert report.outcomes == {"paused": 1}
    assert ("pause", "t0", 3, 1) in client.calls and "fail" not in client.names()
    (uri,) = [c[2] for c in client.calls if c[0] == "checkpoint"]
    assert local(uri).with_name(local(uri).name + ".pin").exists()
    assert worker.stats.failed_saves == 1
