"""Model-based suggestions through a real suggest process on the real broker and Redis:
the ready buffer (misses answered by the quasi-random fallback, then GP / TPE points
with the surrogate's prediction), the rung-decision feed, failed trials as infeasible
observations, warm start, and shutdown."""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from kafka import KafkaProducer
from ladder import failures
from ladder.bus import EventProducer, now_ms
from ladder.config import Settings
from ladder.params import fill_params, params_to_dict
from ladder.state import State, Transition, open_state, trial_event
from ladder.study import OomPolicy
from ladder.testing import Clients, code_and_message, signed_headers, trial_events, wait_for
from ladder.v1 import events_pb2, space_pb2, study_pb2, suggest_pb2, trial_pb2

pytestmark = pytest.mark.integration

SPACE = space_pb2.SearchSpace(
    parameters=[
        space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(low=0, high=1)),
        space_pb2.Parameter(name="y", float_range=space_pb2.FloatRange(low=0, high=1)),
    ]
)


def study_config(algorithm: int, **kw: Any) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name="algorithms",
        space=SPACE,
        metric="loss",
        algorithm=algorithm,
        seed=21,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        **kw,
    )


def bowl(params: dict[str, Any]) -> float:
    return (params["x"] - 0.3) ** 2 + (params["y"] - 0.7) ** 2


@dataclass
class Rig:
    """A real suggest process, with the test in evaluate's role: trials are started
    and completed through the state layer's Lua scripts on the real Redis, and the
    TRIAL_COMPLETED events evaluate would publish go on the real trials topic. (No
    evaluate process: its consumer group would churn on the broker between tests.)"""

    settings: Settings
    suggest: Any
    clients: Clients
    state: State
    producer: EventProducer

    def complete(self, trial_id: str, attempt: str, value: float) -> None:
        self.publish(self.state.trials.complete(trial_id, attempt, value))

    def fail(self, trial_id: str, attempt: str, kind: int) -> Transition:
        """FailTrial as evaluate does it, for a study whose OOM policy is INFEASIBLE."""
        reason = trial_pb2.FailureKind.Name(kind)
        transition = self.state.trials.fail(trial_id, attempt, reason, kind, OomPolicy.INFEASIBLE)
        self.publish(transition)
        return transition

    def publish(self, transition: Transition) -> None:
        event = trial_event(transition, now_ms())
        self.producer.send(self.settings.topics.trials, transition.trial.study_id, event, wait=True)
        self.state.trials.ack(transition.trial.trial_id, transition.token)


@pytest.fixture
def rig(infra: Settings, start_service: Any) -> Any:
    # DEBUG: the tests read the per-observation log lines.
    suggest = start_service(
        "services.suggest", {"LADDER_SUGGEST_BUFFER": "3", "LADDER_LOG_LEVEL": "DEBUG"}
    )
    clients = Clients(suggest.addr)
    state = open_state(infra)
    producer = EventProducer(infra, "it-evaluate")
    yield Rig(infra, suggest, clients, state, producer)
    producer.close()
    state.close()
    clients.close()


class Workers:
    """Simulated workers: each step asks for one trial and starts it; ``running``
    trials stay running (pending) and the oldest completes with the bowl's value."""

    def __init__(self, rig: Rig, study_id: str, running: int = 2) -> None:
        self.rig = rig
        self.study_id = study_id
        self.running: list[tuple[suggest_pb2.Suggestion, str]] = []  # with attempt id
        self.keep_running = running
        self.seen: list[suggest_pb2.Suggestion] = []
        self._ids = itertools.count()

    def step(self) -> suggest_pb2.Suggestion:
        n = next(self._ids)
        suggestion = self.rig.clients.one(self.study_id, f"w-{n}")
        self.seen.append(suggestion)
        self.rig.state.trials.start(suggestion.trial.trial_id, f"a-{n}", f"w-{n}", 60)
        self.running.append((suggestion, f"a-{n}"))
        while len(self.running) > self.keep_running:
            done, attempt = self.running.pop(0)
            self.rig.complete(done.trial.trial_id, attempt, bowl(params_to_dict(done.trial.params)))
        return suggestion


def run_until(workers: Workers, algorithm: str, timeout: float) -> suggest_pb2.Suggestion:
    def model_based() -> suggest_pb2.Suggestion | None:
        suggestion = workers.step()
        if suggestion.algorithm != algorithm:
            return None
        if algorithm == "gp" and suggestion.predicted_std <= 0:
            return None
        return suggestion

    return wait_for(model_based, timeout, f"a {algorithm} suggestion", every=0.02)


def test_gp_study_is_served_from_the_buffer(infra: Settings, rig: Rig) -> None:
    suggest, clients = rig.suggest, rig.clients
    study = clients.create(study_config(study_pb2.GP))
    workers = Workers(rig, study.study_id)
    # The refit thread is still importing torch: answered at once by the fallback.
    assert workers.step().algorithm == "sobol-fallback"
    chosen = run_until(workers, "gp", 25)

    running = [params_to_dict(s.trial.params) for s, _ in workers.running[:-1]]
    assert params_to_dict(chosen.trial.params) not in running
    # A joint batch: distinct points, each with the surrogate's view.
    batch = clients.suggest.Suggest(
        suggest_pb2.SuggestRequest(study_id=study.study_id, worker_id="w-batch", count=2),
        timeout=10,
    ).suggestions
    assert len(batch) == 2 and batch[0].trial.params != batch[1].trial.params
    assert {s.algorithm for s in batch} <= {"gp", "tpe-fallback", "sobol-fallback"}
    # Provenance: the model behind the point, and how stale it was when handed out.
    assert chosen.model_observations >= 3
    assert chosen.unseen_observations >= 0 and chosen.model_age_seconds > 0
    assert workers.seen[0].model_observations == 0  # the fallback's point: no model

    # The TRIAL_SUGGESTED event (what lineage stores) carries the prediction.
    def suggested_event() -> events_pb2.TrialEvent | None:
        events = trial_events(infra, chosen.trial.trial_id)
        return events[0] if events else None

    event = wait_for(suggested_event, 10, "TRIAL_SUGGESTED of the gp trial")
    assert event.kind == events_pb2.TRIAL_SUGGESTED and event.algorithm == "gp"
    assert event.predicted_std == chosen.predicted_std > 0
    assert event.predicted_mean == chosen.predicted_mean
    assert "suggestion buffer miss" in suggest.log_text()

    # SIGTERM: the server drains, the refit loop and the refit process stop.
    child = int(re.search(r"refit process \d+ started \(pid (\d+)", suggest.log_text())[1])
    assert suggest.stop() == 0
    assert f"refit process {child} stopped" in suggest.log_text()
    assert not Path(f"/proc/{child}").exists()  # reaped, not orphaned


def test_tpe_study_learns_from_completions_and_rung_decisions(infra: Settings, rig: Rig) -> None:
    suggest, clients = rig.suggest, rig.clients
    study = clients.create(study_config(study_pb2.TPE))
    workers = Workers(rig, study.study_id)
    chosen = run_until(workers, "tpe", 20)
    for s in workers.seen:
        assert set(s.trial.params) == {"x", "y"}

    # A rung decision (another fidelity of a running trial) is taken in as an
    # observation: the buffer refits and the study keeps being served.
    pending = workers.running[0][0]
    decision = events_pb2.Decision(
        study_id=study.study_id,
        trial_id=pending.trial.trial_id,
        action=events_pb2.CONTINUE,
        rung=0,
        resource=3,
        smoothed_value=0.42,
        scheduler="asha",
    )
    producer = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap.split(","))
    try:
        for _ in range(2):  # a replay changes nothing
            key, value = pending.trial.trial_id.encode(), decision.SerializeToString()
            producer.send(
                infra.topics.decisions,
                key=key,
                value=value,
                headers=signed_headers(infra.topics.decisions, key, value),  # as early-stop
            ).get(timeout=30)
    finally:
        producer.close()
    line = f"rung observation {pending.trial.trial_id} at resource 3 = 0.42"
    wait_for(lambda: line in suggest.log_text(), 15, line)
    assert chosen.trial.trial_id.startswith(study.study_id)
    assert run_until(workers, "tpe", 15).algorithm == "tpe"
    assert suggest.log_text().count(line) == 1  # the replayed decision changed nothing


def test_failed_trials_become_infeasible_observations_once(rig: Rig) -> None:
    """Trials in x > 0.7 run out of memory (FAILED at once), one elsewhere fails with
    a retryable infrastructure error (RESUMABLE: not an observation): the FAILED ones
    reach the study's samplers once each, replays included, and TPE models with them."""
    suggest, clients = rig.suggest, rig.clients
    study = clients.create(study_config(study_pb2.TPE))
    failed: list[Transition] = []
    retried: list[str] = []
    resumed: list[str] = []

    def step(n: int) -> suggest_pb2.Suggestion:
        suggestion = clients.one(study.study_id, f"w-{n}")
        trial_id, params = suggestion.trial.trial_id, params_to_dict(suggestion.trial.params)
        rig.state.trials.start(trial_id, f"a-{n}", f"w-{n}", 60)
        if suggestion.resumed:
            resumed.append(trial_id)
        if params["x"] > 0.7:
            failed.append(rig.fail(trial_id, f"a-{n}", failures.OUT_OF_MEMORY))
        elif not retried:
            retried.append(rig.fail(trial_id, f"a-{n}", failures.INFRASTRUCTURE).trial.trial_id)
        else:
            rig.complete(trial_id, f"a-{n}", (params["x"] - 0.85) ** 2 + params["y"] ** 2)
        return suggestion

    steps = itertools.count()
    wait_for(
        lambda: step(next(steps)).algorithm == "tpe" and len(failed) >= 2,
        30,
        "a tpe suggestion after two failed trials",
        every=0.02,
    )
    assert all(t.trial.state == trial_pb2.FAILED for t in failed)
    rig.publish(failed[0])  # evaluate's outbox relay publishes an event again
    log_text = suggest.log_text
    for transition in failed:
        line = f"failed trial {transition.trial.trial_id} (OUT_OF_MEMORY) observed: infeasible"
        wait_for(lambda line=line: line in log_text(), 15, line)
    totals = f"the study has {len(failed)} failed trials, {len(failed)} infeasible observations"
    wait_for(lambda: totals in log_text(), 15, totals)
    refit = f"{len(failed)} infeasible observations, target"
    wait_for(lambda: refit in log_text(), 15, f"a refit with {refit!r}")
    for transition in failed:
        assert log_text().count(f"failed trial {transition.trial.trial_id} ") == 1
    assert f"failed trial {retried[0]} " not in log_text()  # RESUMABLE: it ran again
    assert resumed == retried


def test_warm_start_seeds_and_earlier_study(rig: Rig) -> None:
    suggest, clients = rig.suggest, rig.clients
    earlier = clients.create(study_config(study_pb2.RANDOM))
    workers = Workers(rig, earlier.study_id, running=0)
    for _ in range(12):
        workers.step()
    inside = sum(s.trial.params["x"].float_value <= 0.5 for s in workers.seen)

    config = study_config(study_pb2.TPE)
    config.space.parameters[0].float_range.high = 0.5  # narrower: some points do not fit
    seeds = [{"x": 0.1, "y": 0.2}, {"x": 0.4, "y": 0.9}]
    for seed in seeds:
        fill_params(config.warm_start.configurations.add().params, seed)
    known = config.warm_start.configurations.add(has_value=True, value=0.01)
    fill_params(known.params, {"x": 0.3, "y": 0.7})
    config.warm_start.from_study_id = earlier.study_id
    study = clients.create(config, study_id=f"warm-{uuid.uuid4().hex[:8]}")

    first = [clients.one(study.study_id, f"w-seed-{i}") for i in range(2)]
    assert [params_to_dict(s.trial.params) for s in first] == seeds
    assert {s.algorithm for s in first} == {"warm-start"}
    # Seeds are handed out once per study, whichever worker (partition) asks next.
    assert clients.one(study.study_id, "w-other").algorithm != "warm-start"

    taken = f"{inside} completed trials taken, {12 - inside} skipped"
    wait_for(lambda: taken in suggest.log_text(), 15, f"warm start log {taken!r}")
    # The known result and the earlier study's valid trials are the model's data.
    built = f"tpe sampler for {study.study_id}/0 built with {inside + 1} observations"
    wait_for(lambda: built in suggest.log_text(), 15, built)
    # With >= 10 observations from the start, TPE proposes from its model at once.
    chosen = wait_for(
        lambda: (s := clients.one(study.study_id, "w-next")).algorithm == "tpe" and s,
        15,
        "a tpe suggestion",
        every=0.1,
    )
    assert 0 <= chosen.trial.params["x"].float_value <= 0.5


def test_bad_warm_start_input_gets_a_precise_status(start_service: Any) -> None:
    clients = Clients(start_service("services.suggest").addr)
    outside = study_config(study_pb2.GP)
    fill_params(outside.warm_start.configurations.add().params, {"x": 0.1, "y": 0.2})
    fill_params(outside.warm_start.configurations.add().params, {"x": 1.5, "y": 0.2})
    code, message = code_and_message(lambda: clients.create(outside))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "warm_start.configurations[1]: params: 'x'=1.5 outside [0, 1]"

    unknown = study_config(study_pb2.GP)
    fill_params(unknown.warm_start.configurations.add().params, {"x": 0.1, "z": 0.2})
    code, message = code_and_message(lambda: clients.create(unknown))
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "warm_start.configurations[0]: params: unknown parameter 'z'",
    )

    infinite = study_config(study_pb2.GP)
    bad = infinite.warm_start.configurations.add(has_value=True, value=float("inf"))
    fill_params(bad.params, {"x": 0.1, "y": 0.2})
    code, message = code_and_message(lambda: clients.create(infinite))
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "warm_start.configurations[0]: value must be finite (got inf)",
    )

    missing = study_config(study_pb2.GP, warm_start=study_pb2.WarmStart(from_study_id="gone"))
    code, message = code_and_message(lambda: clients.create(missing))
    assert (code, message) == (
        grpc.StatusCode.NOT_FOUND,
        "warm_start.from_study_id: study 'gone' not found",
    )
    clients.close()
