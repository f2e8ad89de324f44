"""evaluate away for longer than a lease (kill -9, restarted later on its address): no
worker could renew its lease meanwhile, so the restarted sweeper extends every lease to a
lease from now before it expires anything (``TrialStore.sweep_grace``). A worker that
keeps heartbeating through the outage keeps its trial; a worker that is really dead
loses its trial about one lease after the restart."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.params import fill_params
from ladder.state import State, open_state
from ladder.testing import trial_events, wait_for
from ladder.v1 import events_pb2, study_pb2, trial_pb2

pytestmark = pytest.mark.integration

# Long enough that a worker's retries (client back-off and gRPC reconnect back-off, each
# capped at 2 s) get a beat through within one lease of the restart on a loaded CI host.
LEASE_S = 6.0


@pytest.fixture
def state(infra: Settings) -> Iterator[State]:
    opened = open_state(infra)
    yield opened
    opened.close()


def _redis_ms(state: State) -> int:
    seconds, micros = state.client.time()
    return seconds * 1000 + micros // 1000


def _trials(state: State, count: int) -> list[str]:
    study_id = f"outage-{uuid.uuid4().hex[:8]}"
    config = study_pb2.StudyConfig(name="outage", metric="loss")
    config.space.parameters.add(name="x").float_range.high = 1.0
    config.scheduler.kind = study_pb2.NONE
    state.studies.create(study_pb2.Study(study_id=study_id, config=config, created_unix_ms=1))
    protos = []
    for seed in range(count):
        proto = trial_pb2.Trial(study_id=study_id, seed=seed)
        fill_params(proto.params, {"x": 0.5})
        protos.append(proto)
    return [t.trial.trial_id for t in state.trials.create_trials(study_id, protos, 0, 60, "it")]


@dataclass
class Heartbeats:
    """A worker's heartbeat thread: beats every lease/4, each call retried while evaluate
    is unreachable (LadderClient), until stopped or refused."""

    client: LadderClient
    trial_id: str
    attempt_id: str
    now_ms: Callable[[], int]
    beats_ms: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        step = 0
        while not self.stop.is_set():
            step += 1
            try:
                self.client.heartbeat(self.trial_id, self.attempt_id, step)
            except grpc.RpcError as err:
                self.refused.append(f"{err.code()}: {err.details()}")
                return
            self.beats_ms.append(self.now_ms())
            self.stop.wait(LEASE_S / 4)


def test_an_evaluate_outage_longer_than_a_lease_expires_only_dead_workers(
    infra: Settings, start_service: Callable[..., Any], state: State
) -> None:
    lease = {"LADDER_LEASE_SECONDS": str(LEASE_S)}
    evaluate = start_service("services.evaluate", lease)
    client = LadderClient(replace(infra, evaluate_addr=evaluate.addr), retry_timeout=120)
    live, dead = _trials(state, 2)
    client.start_trial(live, "w-live", "live-a1")
    client.start_trial(dead, "w-dead", "dead-a1")  # this worker never beats: it is dead
    beats = Heartbeats(client, live, "live-a1", lambda: _redis_ms(state))
    beating = threading.Thread(target=beats.run, name="live-worker-heartbeats", daemon=True)
    beating.start()
    try:
        wait_for(lambda: len(beats.beats_ms) >= 2, 30, "the live worker's heartbeats")
        os.kill(evaluate.proc.pid, signal.SIGKILL)
        evaluate.proc.wait(10)
        killed_ms = _redis_ms(state)
        # Away for longer than a lease: both leases run out unrenewed.
        lease_ends = [state.trials.lease_deadline_ms(t) or 0 for t in (live, dead)]
        wait_for(
            lambda: _redis_ms(state) > max(*lease_ends, killed_ms + LEASE_S * 1000) + 500,
            30,
            "both leases to run out while evaluate is down",
            every=0.1,
        )
        assert all(state.trials.get(t).state == trial_pb2.RUNNING for t in (live, dead))
        restart_ms = _redis_ms(state)
        port = int(evaluate.addr.rsplit(":", 1)[1])
        again = start_service("services.evaluate", lease, port=port)
        ready_ms = _redis_ms(state)

        (expiry,) = wait_for(
            lambda: [
                e for e in trial_events(infra, dead) if e.kind == events_pb2.TRIAL_LEASE_EXPIRED
            ],
            LEASE_S * 3 + 30,
            "the dead worker's trial to expire after the restart",
            every=0.2,
        )
        assert state.trials.get(dead).state == trial_pb2.RESUMABLE
        after_restart_s = (expiry.ts_ms - restart_ms) / 1000
        print(f"dead worker's trial expired {after_restart_s:.2f} s after the restart")
        # A lease after the restarted sweeper's first pass, not at once.
        assert expiry.ts_ms >= restart_ms + LEASE_S * 1000, after_restart_s
        assert expiry.ts_ms <= ready_ms + (LEASE_S + 3) * 1000, after_restart_s

        # The live worker's beats got through again, and its trial never expired.
        wait_for(
            lambda: beats.refused or sum(ms > ready_ms for ms in beats.beats_ms) >= 3,
            30,
            "the live worker's heartbeats after the restart",
        )
        assert beats.refused == [], beats.refused
        trial = state.trials.get(live)
        assert (trial.state, trial.attempt_id) == (trial_pb2.RUNNING, "live-a1")
        kinds = [e.kind for e in trial_events(infra, live)]
        assert events_pb2.TRIAL_LEASE_EXPIRED not in kinds, kinds
        assert "leases were extended" in again.log_text()
    finally:
        beats.stop.set()
        beating.join(LEASE_S + 5)
        client.close()
