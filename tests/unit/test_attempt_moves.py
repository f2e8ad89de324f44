"""The rule every worker obeys after a Heartbeat (``ladder.api.attempt.move_after``), and
the load simulator's workers driven by it (fake evaluate and producer)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ladder.api.attempt import Move, hold_pauses, move_after
from ladder.v1 import evaluate_pb2, events_pb2

from workers.loadsim_sim import (
    ProcessResult,
    SimConfig,
    Simulator,
    _Attempt,
    decided_rung,
    verdict_awaited,
)

CONTINUE = evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE)
PENDING = evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE, decision_pending=True)


def stop(rung: int = 0, resource: float = 4.0) -> evaluate_pb2.HeartbeatResponse:
    return evaluate_pb2.HeartbeatResponse(
        action=events_pb2.STOP,
        decision=events_pb2.Decision(action=events_pb2.STOP, rung=rung, resource=resource,
                                     report_ts_ms=int(time.time() * 1000)),
    )


def pause(resource: float) -> evaluate_pb2.HeartbeatResponse:
    return evaluate_pb2.HeartbeatResponse(
        action=events_pb2.PAUSE,
        decision=events_pb2.Decision(action=events_pb2.PAUSE, rung=1, resource=resource),
    )


def test_no_verdict_trains_on_and_only_a_pending_one_holds() -> None:
    assert move_after(CONTINUE, 4, 108) is Move.TRAIN
    assert move_after(PENDING, 4, 108) is Move.HOLD


def test_a_stop_prunes_even_while_a_verdict_is_pending() -> None:
    assert move_after(stop(), 6, 108) is Move.STOP
    stop_and_pending = stop()
    stop_and_pending.decision_pending = True
    assert move_after(stop_and_pending, 6, 108) is Move.STOP
    # A STOP an earlier (keep-alive) heartbeat brought wins over the hold too.
    assert move_after(PENDING, 6, 108, standing_stop=True) is Move.STOP


def test_a_pause_is_obeyed_at_the_rung_it_names_not_before() -> None:
    assert move_after(pause(12.0), 12, 108) is Move.PAUSE
    assert move_after(pause(12.0), 11, 108) is Move.TRAIN  # a resumed attempt behind it


def test_nothing_is_obeyed_once_the_full_budget_is_trained() -> None:
    assert move_after(stop(), 108, 108) is Move.TRAIN
    assert move_after(PENDING, 108, 108, standing_stop=True) is Move.TRAIN
    assert move_after(stop(), 108, 0) is Move.STOP  # budget unknown: obeyed


def test_hold_pauses_grow_to_a_quarter_second_and_end_with_the_wait() -> None:
    pauses = []
    started = time.monotonic()
    for pause_s in hold_pauses(0.3):
        pauses.append(pause_s)
        time.sleep(0.05)
    assert time.monotonic() - started < 0.5
    assert pauses[:3] == pytest.approx([0.05, 0.075, 0.1125])
    assert list(hold_pauses(0)) == []
    many = hold_pauses(60)
    assert [next(many) for _ in range(8)][-1] == 0.25


# -- the simulator's workers, obeying the same rule


class FakeEvaluate:
    """Heartbeat replies scripted by call number; every call recorded with the time."""

    def __init__(self, replies: dict[int, evaluate_pb2.HeartbeatResponse]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, Any]] = []

    def _record(self, name: str, reply: Any) -> Any:
        async def answer(request: Any, timeout: float = 0) -> Any:
            self.calls.append((name, request))
            if name == "Heartbeat":
                beats = sum(1 for n, _ in self.calls if n == "Heartbeat")
                return self.replies.get(beats, CONTINUE)
            return reply
        return answer

    def __getattr__(self, name: str) -> Any:
        return self._record(name, evaluate_pb2.StartTrialResponse())


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.flushes = 0

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush(self) -> None:
        self.flushes += 1


def simulate(evaluate: FakeEvaluate, producer: FakeProducer, **config: Any) -> ProcessResult:
    cfg = SimConfig(**{
        "study_id": "s", "metric": "loss", "first_worker": 0, "workers": 1, "rate": 200.0,
        "duration": 30, "max_resource": 20, "heartbeat_every": 1, "linger_ms": 0, "ramp": 0,
        "seed": 1, "start_at": 0, "decision_wait": 0.5, **config,
    })
    sim = Simulator(settings=None, config=cfg)  # type: ignore[arg-type]
    attempt = _Attempt("t1", "a1", producer, evaluate, "metrics")  # type: ignore[arg-type]
    asyncio.run(sim._run_trial(attempt, 1 / cfg.rate, time.monotonic() + 30))
    return sim.result


def ends(evaluate: FakeEvaluate) -> list[str]:
    return [name for name, _ in evaluate.calls if name != "Heartbeat"]


def test_a_simulated_worker_trains_on_past_a_rung_and_stops_when_the_stop_comes() -> None:
    # Rung at step 4; its STOP reaches the worker on the Heartbeat of step 7.
    evaluate = FakeEvaluate({7: stop()})
    producer = FakeProducer()
    result = simulate(evaluate, producer)
    assert len(producer.sent) == 7 and producer.flushes == 0  # never held
    assert ends(evaluate) == ["PruneTrial"]
    assert evaluate.calls[-1][1].step == 7
    assert result.trials_pruned == result.stops_seen == 1 and result.holds == 0
    assert list(result.stop_obeyed_ms) == ["t1"]


def test_a_simulated_worker_held_at_a_rung_waits_for_its_verdict() -> None:
    # Promotion form: held at step 4 (heartbeats 4, 5, 6 pending), then a PAUSE.
    evaluate = FakeEvaluate({4: PENDING, 5: PENDING, 6: PENDING, 7: pause(4.0)})
    producer = FakeProducer()
    result = simulate(evaluate, producer, hold_at=(4,))
    assert len(producer.sent) == 4 and producer.flushes == 1
    assert ends(evaluate) == ["PauseTrial"]
    assert evaluate.calls[-1][1].rung == 1
    assert result.trials_paused == 1 and result.holds == 1


def test_a_verdict_that_does_not_come_holds_the_simulated_worker_for_decision_wait() -> None:
    evaluate = FakeEvaluate(dict.fromkeys(range(1, 200), PENDING))  # by call number
    evaluate.replies.update({i: CONTINUE for i in range(200, 400)})
    producer = FakeProducer()
    started = time.monotonic()
    result = simulate(evaluate, producer, heartbeat_every=100, hold_at=(4,))
    assert 0.5 <= time.monotonic() - started < 3
    assert result.trials_completed == 1 and result.holds == 1
    assert len(producer.sent) == 20


def decided(rung: int) -> evaluate_pb2.HeartbeatResponse:
    return evaluate_pb2.HeartbeatResponse(
        action=events_pb2.CONTINUE,
        decision=events_pb2.Decision(action=events_pb2.CONTINUE, rung=rung),
    )


def test_a_crossed_rung_is_awaited_from_the_next_report_until_decided_or_the_window_ends(
) -> None:
    rungs = (4, 12, 36)
    assert decided_rung(CONTINUE) == -1 and decided_rung(decided(0)) == 0
    assert not verdict_awaited(3, -1, rungs, 30)  # no rung crossed
    assert not verdict_awaited(4, -1, rungs, 30)  # the rung's own report: not decided yet
    # 1, 2, 4, 8, ... reports after the rung.
    assert [s for s in range(5, 12) if verdict_awaited(s, -1, rungs, 30)] == [5, 6, 8]
    assert [s for s in range(13, 36) if verdict_awaited(s, 0, rungs, 30)] == [13, 14, 16, 20, 28]
    assert not verdict_awaited(5, 0, rungs, 30)  # its decision came back
    assert verdict_awaited(44, 1, rungs, 8) and not verdict_awaited(44, 1, rungs, 7)
    assert not verdict_awaited(5, -1, rungs, 0)  # polling off
    assert not verdict_awaited(5, -1, (), 30)  # rungs unknown


def test_a_simulated_worker_polls_for_a_rungs_verdict_and_obeys_its_stop() -> None:
    # Heartbeats every 100 reports, rung at step 4: the worker polls 1, 2, 4 reports
    # after it, and the STOP the third poll brings is obeyed at step 8, not at 100.
    evaluate = FakeEvaluate({3: stop()})
    result = simulate(
        evaluate, FakeProducer(), heartbeat_every=100, rung_steps=(4, 12), decision_poll=3.0
    )
    beats = [r.step for n, r in evaluate.calls if n == "Heartbeat"]
    assert beats == [5, 6, 8]
    assert ends(evaluate) == ["PruneTrial"] and result.trials_pruned == 1


def test_a_simulated_worker_polls_only_until_a_rungs_decision_comes_and_within_the_window(
) -> None:
    # Rung 0's decision comes back on the second poll; rung 1's never does: polled 1
    # and 2 reports after step 12, not 4 (past decision_poll x rate = 3 reports); then
    # only the cadence (none in 20 steps).
    evaluate = FakeEvaluate({2: decided(0), 3: decided(0), 4: decided(0), 5: decided(0)})
    result = simulate(
        evaluate, FakeProducer(), heartbeat_every=100, rung_steps=(4, 12), decision_poll=0.015
    )
    beats = [r.step for n, r in evaluate.calls if n == "Heartbeat"]
    assert beats == [5, 6, 13, 14]
    assert result.trials_completed == 1
    off = FakeEvaluate({})
    simulate(off, FakeProducer(), heartbeat_every=100, rung_steps=(4, 12))  # off by default
    assert [n for n, _ in off.calls] == ["CompleteTrial"]
