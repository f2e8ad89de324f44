"""The worker runtime's checkpoints, failure classes and preemption notice, against the
in-memory fake client of test_runtime_worker and the file:// store."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from ladder import failures
from ladder.api import attempt as attempt_module
from ladder.checkpoints import FileCheckpointStore
from ladder.config import LEASE_SECONDS
from ladder.failures import TrialFailed
from ladder.testing import RpcStatus
from ladder.v1 import evaluate_pb2, events_pb2
from test_runtime_worker import CountingWorkload, FakeClient, local, make_worker, resume_from

from workers.runtime import StepInterrupted, keepalive_interval, must_hand_back_now

BATCHES = 4  # mini-batches per step of the interruptible workload


def checkpoint_calls(client: FakeClient) -> list[tuple[Any, ...]]:
    return [c for c in client.calls if c[0] == "checkpoint"]


def fails(client: FakeClient) -> list[tuple[Any, ...]]:
    return [c for c in client.calls if c[0] == "fail"]


def test_the_study_policy_decides_by_steps(tmp_path: Path) -> None:
    client = FakeClient(policy={"checkpoint_interval_steps": 2})
    make_worker(client, CountingWorkload(), tmp_path, checkpoint_every=None).run()
    assert [c[3] for c in checkpoint_calls(client)] == [2, 4, 6, 8]


class FakeClock:
    """The attempt engine's clock: each reading moves it on by a microsecond (so that a
    save takes time), a step by what ``advance`` says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 1e-6
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_study_policy_decides_by_training_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each step trains 30 ms; a checkpoint is due once 70 ms of training passed: after
    # every 3rd step (two are not enough), and never at the final one (step 9).
    clock = FakeClock()
    monkeypatch.setattr(attempt_module, "time", SimpleNamespace(
        monotonic=clock.monotonic, sleep=time.sleep, time=time.time))
    client = FakeClient(policy={"checkpoint_interval_seconds": 0.07})
    workload = CountingWorkload(on_step=lambda step: clock.advance(0.03))
    worker = make_worker(client, workload, tmp_path, checkpoint_every=None)
    worker.run()
    assert [c[3] for c in checkpoint_calls(client)] == [3, 6]
    # Each report carries its save time and the training since the previous one.
    for save_seconds, train_seconds in client.overheads:
        assert 0 < save_seconds < 1e-3 and train_seconds == pytest.approx(0.09, abs=1e-3)
    assert worker.stats.save_seconds == pytest.approx([s for s, _ in client.overheads])
    assert worker.stats.train_seconds == pytest.approx(9 * 0.03, abs=1e-3)
    assert 0 < worker.stats.overhead < 0.01


def test_the_default_interval_of_300_s_means_no_checkpoint_in_a_short_trial(
    tmp_path: Path,
) -> None:
    client = FakeClient()
    make_worker(client, CountingWorkload(), tmp_path, checkpoint_every=None).run()
    assert checkpoint_calls(client) == []


def test_retention_keeps_the_newest_and_pins_the_final_one(tmp_path: Path) -> None:
    client = FakeClient(policy={"checkpoint_interval_steps": 1, "checkpoints_kept": 2})
    worker = make_worker(client, CountingWorkload(), tmp_path, checkpoint_every=None)
    worker.run()
    uris = [c[2] for c in checkpoint_calls(client)]
    assert len(uris) == 8
    folder = local(uris[-1]).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([
        local(uris[-2]).name, local(uris[-1]).name, local(uris[-1]).name + ".pin",
    ])
    assert len(worker.stats.retain_seconds) == 8


def test_a_resumed_trial_pins_the_checkpoint_its_result_refers_to(tmp_path: Path) -> None:
    client = FakeClient()
    resume_from(client, tmp_path, 8)
    make_worker(client, CountingWorkload(), tmp_path).run()
    resumed = local(client.start_reply["t0"].checkpoint_uri)
    assert resumed.with_name(resumed.name + ".pin").exists()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ValueError("bad batch size"), failures.USER_ERROR),
        (MemoryError(), failures.OUT_OF_MEMORY),
        (OSError("NFS went away"), failures.INFRASTRUCTURE),
        (TrialFailed(failures.TIMEOUT, "own budget"), failures.TIMEOUT),
    ],
)
def test_workload_errors_fail_with_their_class(
    tmp_path: Path, error: BaseException, kind: int
) -> None:
    class Failing(CountingWorkload):
        def train_step(self, state: dict[str, Any], step: int) -> float:
            raise error

    client = FakeClient()
    assert make_worker(client, Failing(), tmp_path).run().outcomes == {"failed": 1}
    ((_, _, reason, sent),) = fails(client)
    assert sent == kind and failures.trial_pb2.FailureKind.Name(kind) in reason


class BrokenStore(FileCheckpointStore):
    def __init__(self, root: Path, error: Exception) -> None:
        super().__init__(root)
        self.error = error

    def save(self, local: Path, key: Any) -> str:
        raise self.error


def test_a_store_outage_skips_a_checkpoint_but_not_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    worker = make_worker(client, CountingWorkload(), tmp_path)
    worker.store = BrokenStore(tmp_path, ConnectionError("object store unreachable"))
    assert worker.run().outcomes == {"completed": 1}
    assert checkpoint_calls(client) == []
    assert list((tmp_path / ".staging").iterdir()) == []  # nothing left staged


def test_a_bug_in_saving_fails_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    worker = make_worker(client, CountingWorkload(), tmp_path)
    worker.store = BrokenStore(tmp_path, TypeError("cannot pickle"))
    assert worker.run().outcomes == {"failed": 1}
    assert fails(client)[0][3] == failures.USER_ERROR


class InterruptibleWorkload(CountingWorkload):
    """Steps of BATCHES mini-batches; stops between two when interrupted and keeps the
    partial step in its state (and checkpoint)."""

    interruptible = True

    def __init__(self, on_batch: Any = None) -> None:
        super().__init__()
        self.on_batch = on_batch
        self.batches: list[tuple[int, int]] = []
        self.interrupt: threading.Event | None = None  # the attempt's, once training

    def init(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        return {"steps": 0, "partial": None}

    def train_step(self, state: dict[str, Any], step: int, interrupt: threading.Event
                   ) -> float:
        self.interrupt = interrupt
        first = state["partial"][1] if state["partial"] and state["partial"][0] == step else 0
        for batch in range(first, BATCHES):
            if interrupt.is_set():
                state["partial"] = [step, batch]
                raise StepInterrupted
            self.batches.append((step, batch))
            if self.on_batch:
                self.on_batch(step, batch)
        state["partial"] = None
        state["steps"] += 1
        self.trained.append(step)
        return 1.0 / state["steps"]


def test_an_interruptible_step_is_saved_mid_step_and_finished_on_resume(
    tmp_path: Path,
) -> None:
    client = FakeClient()
    holder: dict[str, Any] = {}

    def on_batch(step: int, batch: int) -> None:
        if (step, batch) == (5, 1):
            holder["worker"].request_stop()  # SIGTERM during step 5

    first = InterruptibleWorkload(on_batch)
    holder["worker"] = make_worker(client, first, tmp_path)
    assert holder["worker"].run().outcomes == {"interrupted": 1}
    assert first.batches[-1] == (5, 1)  # stopped at the next batch boundary
    (*_, last) = checkpoint_calls(client)
    assert last[3] == 4 and local(last[2]).name.endswith("-step4-interrupted.ckpt")
    ((_, _, reason, kind),) = fails(client)
    assert kind == failures.PREEMPTED and "in step 5" in reason and "part of the next" in reason

    # The next attempt resumes from that checkpoint and finishes step 5 from batch 2.
    client.remaining = 1
    client.start_reply["t0"] = evaluate_pb2.StartTrialResponse(
        lease_seconds=30, checkpoint_uri=last[2], checkpoint_step=last[3]
    )
    second = InterruptibleWorkload()
    assert make_worker(client, second, tmp_path).run().outcomes == {"completed": 1}
    assert second.batches[:2] == [(5, 2), (5, 3)]
    assert first.batches + second.batches == [
        (s, b) for s in range(1, MAX + 1) for b in range(BATCHES)
    ]


MAX = 9


def test_a_step_too_long_for_the_notice_is_handed_back_from_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    # Step 5 runs until the trial has been handed back: the guard thread must do it.
    client = FakeClient(policy={"preemption_notice_seconds": 2})
    handed_back = threading.Event()
    client.on_fail = handed_back.set
    holder: dict[str, Any] = {}

    def on_step(step: int) -> None:
        if step == 5:
            holder["worker"].request_stop()
            assert handed_back.wait(10), "the guard did not hand the trial back"

    holder["worker"] = make_worker(client, CountingWorkload(on_step=on_step), tmp_path)
    report = holder["worker"].run()
    assert report.outcomes == {"interrupted": 1}
    assert holder["worker"].handed_back_early.is_set()
    ((_, _, reason, kind),) = fails(client)
    assert kind == failures.PREEMPTED and "checkpoint holds step 3" in reason
    # Nothing after the hand-back: step 5 is neither checkpointed nor reported done.
    assert client.names()[-1] == "fail"
    assert [c[3] for c in checkpoint_calls(client)] == [3]


def test_a_lost_lease_interrupts_the_step_and_abandons_the_trial(tmp_path: Path) -> None:
    client = FakeClient()
    lease_lost = threading.Event()

    in_step_3 = threading.Event()

    def beat(trial: str, step: float, n: int) -> evaluate_pb2.HeartbeatResponse:
        if in_step_3.is_set():  # the progress watchdog revoked the lease
            lease_lost.set()
            raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION, "stale attempt")
        return evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE)

    client.on_heartbeat = beat

    def on_batch(step: int, batch: int) -> None:
        if step == 3:
            in_step_3.set()  # the guard's next keep-alive beat is refused
            assert workload.interrupt is not None and workload.interrupt.wait(10), (
                "the refused beat did not set the interrupt")

    workload = InterruptibleWorkload(on_batch)
    worker = make_worker(client, workload, tmp_path, heartbeat_interval=0.05,
                         checkpoint_every=0)
    assert worker.run().outcomes == {"lost": 1}
    assert lease_lost.is_set()
    # Step 3 stopped at the batch boundary after the refusal: its first batch only.
    assert workload.batches == [(s, b) for s in (1, 2) for b in range(BATCHES)] + [(3, 0)]
    assert not {"checkpoint", "fail", "complete"} & set(client.names())


def test_keepalive_beats_every_quarter_lease() -> None:
    assert keepalive_interval(10) == 2.5
    assert keepalive_interval(0) == LEASE_SECONDS / 4  # no lease in the reply: the default
    assert keepalive_interval(0.4) == 0.25


def test_hand_back_now_once_step_and_save_would_miss_the_deadline() -> None:
    assert not must_hand_back_now(now=0, deadline=25, step_remaining=10, save_estimate=2)
    assert must_hand_back_now(now=0, deadline=25, step_remaining=23, save_estimate=2)
    assert must_hand_back_now(now=24.5, deadline=25, step_remaining=0, save_estimate=0)


class RecordingStub:
    """The evaluate stub of a LadderClient: keeps each request."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def FailTrial(self, request: Any, timeout: float) -> Any:  # noqa: N802 - gRPC's name
        self.requests.append(request)
        return failures.trial_pb2.Trial()

    ReportCheckpoint = FailTrial


def test_the_client_sends_the_kind_and_the_overhead() -> None:
    from ladder.client import LadderClient
    from ladder.config import Settings

    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9/0",
                        evaluate_addr="127.0.0.1:9")
    client = LadderClient(settings, retry_timeout=0)
    stub = client._evaluate.stub = RecordingStub()
    client.fail("t", "a", "preempted", kind=failures.PREEMPTED)
    client.fail("t", "a", "bug", kind=failures.USER_ERROR)
    client.fail("t", "a", "old style", retryable=False)
    client.checkpoint("t", "a", "s3://b/k", 3, save_seconds=0.25, train_seconds=300.0)
    client.close()
    preempted, bug, old, checkpoint = stub.requests
    # retryable follows the kind, for a server that predates kinds
    assert (preempted.kind, preempted.retryable) == (failures.PREEMPTED, True)
    assert (bug.kind, bug.retryable) == (failures.USER_ERROR, False)
    assert (old.kind, old.retryable) == (0, False)
    assert (checkpoint.save_seconds, checkpoint.train_seconds) == (0.25, 300.0)
