"""Suggest + evaluate as real processes against the real broker and redis-server,
plus the Redis state layer's scripts against the same redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from kafka import KafkaProducer
from ladder import failures
from ladder.config import LEASE_SECONDS, Settings
from ladder.errors import BudgetExhausted, Conflict, NotFound, StaleAttempt
from ladder.grpcserver import status_of
from ladder.params import fill_params
from ladder.state import State, open_state
from ladder.testing import (
    Clients,
    code_and_message,
    decoded_records,
    read_topic,
    signed_headers,
    trial_events,
    wait_for,
)
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    trial_pb2,
)

pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------- helpers


def space(*params: space_pb2.Parameter) -> space_pb2.SearchSpace:
    return space_pb2.SearchSpace(parameters=list(params))


SPACE = space(
    space_pb2.Parameter(
        name="lr", float_range=space_pb2.FloatRange(low=1e-4, high=1e-1, scale=space_pb2.SCALE_LOG)
    ),
    space_pb2.Parameter(name="opt", categorical=space_pb2.Categorical(choices=["adam", "sgd"])),
    space_pb2.Parameter(
        name="momentum",
        float_range=space_pb2.FloatRange(low=0, high=0.99),
        condition=space_pb2.Condition(parent="opt", parent_values=["sgd"]),
    ),
)


def config(max_trials: int = 0, **kw: Any) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name="it",
        space=SPACE,
        metric="val_loss",
        max_trials=max_trials,
        seed=11,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.ASHA, max_resource=9),
        **kw,
    )


def kinds(events: list[events_pb2.TrialEvent]) -> list[str]:
    return [events_pb2.TrialEventKind.Name(e.kind) for e in events]


def wait_for_events(
    settings: Settings,
    trial_id: str,
    expected: list[str],
    timeout: float = 20,
    distinct: bool = False,
) -> list[events_pb2.TrialEvent]:
    def seen() -> list[events_pb2.TrialEvent] | None:
        # In causal (timestamp) order: suggest publishes TRIAL_SUGGESTED without
        # waiting for the broker, so the worker's TRIAL_STARTED, from evaluate's
        # producer, can land on the topic first (consumers go by trial version).
        events = sorted(trial_events(settings, trial_id), key=lambda e: e.ts_ms)
        if distinct:  # each transition once: two processes may both publish one
            events = list({(e.kind, e.ts_ms): e for e in events}.values())
        return events if kinds(events) == expected else None

    try:
        return wait_for(seen, timeout, f"events {expected} for {trial_id}", every=0.3)
    except AssertionError:
        raise AssertionError(
            f"events for {trial_id}: {kinds(trial_events(settings, trial_id))}, expected {expected}"
        ) from None


# ----------------------------------------------------------------------- study API


@pytest.fixture(scope="module")
def suggest(start_module_service: Callable[..., Any]) -> Any:
    """One suggest process for the tests that neither stop nor configure theirs."""
    return start_module_service("services.suggest")


def test_study_creation_validation_and_lookup(infra: Settings, suggest: Any) -> None:
    clients = Clients(suggest.addr)
    try:
        bad = config()
        bad.space.parameters[0].float_range.low = 0.5
        code, message = code_and_message(lambda: clients.create(bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message == (
            "space.parameters[0] 'lr': float_range.low must be < high (got 0.5 >= 0.1)"
        )
        no_metric = config()
        no_metric.metric = ""
        code, message = code_and_message(lambda: clients.create(no_metric))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("metric is required")

        code, message = code_and_message(
            lambda: clients.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id="nope"))
        )
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "study 'nope' not found")
        code, _ = code_and_message(
            lambda: clients.suggest.Suggest(
                suggest_pb2.SuggestRequest(study_id="nope", worker_id="w")
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND

        generated = clients.create(config())
        assert generated.study_id.startswith("st-") and len(generated.study_id) == 15
        assert generated.config.scheduler.reduction_factor == 3  # defaults filled
        assert generated.config.partitions == 1

        chosen = f"it-{uuid.uuid4().hex[:8]}"
        first = clients.create(config(), study_id=chosen)
        again = clients.create(config(), study_id=chosen)
        assert again == first
        code, message = code_and_message(lambda: clients.create(config(max_trials=5), chosen))
        assert code == grpc.StatusCode.ALREADY_EXISTS and chosen in message

        listed = clients.suggest.ListStudies(suggest_pb2.ListStudiesRequest()).studies
        assert {generated.study_id, chosen} <= {s.study_id for s in listed}

        # The StudyEvent was acknowledged before CreateStudy returned.
        records = read_topic(infra, infra.topics.studies)
        published = {
            (record.key.decode(), event.study.study_id)
            for record, event in decoded_records(events_pb2.StudyEvent, records)
        }
        assert (chosen, chosen) in published and (generated.study_id,) * 2 in published
    finally:
        clients.close()


def test_budget_and_restart_continue_the_sequence(infra: Settings, start_service: Any) -> None:
    suggest = start_service("services.suggest")
    clients = Clients(suggest.addr)
    study = clients.create(config(max_trials=5))
    first = clients.suggest.Suggest(
        suggest_pb2.SuggestRequest(study_id=study.study_id, worker_id="w-a", count=3), timeout=30
    ).suggestions
    assert [s.trial.trial_id for s in first] == [f"{study.study_id}-t{i}" for i in (1, 2, 3)]
    assert all(s.algorithm == "quasi-random" and not s.resumed for s in first)
    assert len({s.trial.seed for s in first}) == 3
    for s in first:
        assert s.trial.state == trial_pb2.SUGGESTED
        assert ("momentum" in s.trial.params) == (s.trial.params["opt"].str_value == "sgd")
    clients.close()

    # A restarted process continues the partition's Sobol stream (no repeats).
    suggest.stop()
    suggest = start_service("services.suggest")
    clients = Clients(suggest.addr)
    try:
        more = clients.suggest.Suggest(
            suggest_pb2.SuggestRequest(study_id=study.study_id, worker_id="w-a", count=3),
            timeout=30,
        ).suggestions
        assert [s.trial.trial_id for s in more] == [f"{study.study_id}-t{i}" for i in (4, 5)]
        lrs = [s.trial.params["lr"].float_value for s in [*first, *more]]
        assert len(set(lrs)) == 5
        code, message = code_and_message(lambda: clients.one(study.study_id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert message == "study budget exhausted: 5 trials suggested"
        got = clients.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id=study.study_id))
        assert got.trials_suggested == 5
    finally:
        clients.close()


def test_suggested_events_are_published_off_the_request_path_and_acked(
    infra: Settings, suggest: Any
) -> None:
    clients = Clients(suggest.addr)
    state = open_state(infra)
    try:
        study = clients.create(config())
        ids = [
            s.trial.trial_id
            for s in clients.suggest.Suggest(
                suggest_pb2.SuggestRequest(study_id=study.study_id, worker_id="w-a", count=3),
                timeout=30,
            ).suggestions
        ]
        assert len(ids) == 3
        for trial_id in ids:  # on the topic once each (no evaluate relay runs here)
            (event,) = wait_for_events(infra, trial_id, ["TRIAL_SUGGESTED"])
            assert event.algorithm == "quasi-random" and event.trial.trial_id == trial_id
        # The broker's acknowledgement cleared each trial's outbox entry.
        wait_for(
            lambda: not {t.trial.trial_id for t in state.trials.outbox_due(0)} & set(ids),
            10,
            "outbox entries acknowledged",
        )
    finally:
        state.close()
        clients.close()


# ------------------------------------------------------------------ trial lifecycle


def test_stop_decision_reaches_heartbeat_and_complete_is_idempotent(
    infra: Settings, suggest: Any, start_service: Any
) -> None:
    evaluate = start_service("services.evaluate")
    clients = Clients(suggest.addr, evaluate.addr)
    producer = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap.split(","))
    try:
        study = clients.create(config())
        trial = clients.one(study.study_id).trial
        started = clients.start(trial.trial_id, "a-1")
        # The default lease is short (renewed every lease/4) so a dead worker's trial is
        # resumed within seconds.
        assert started.trial.state == trial_pb2.RUNNING
        assert started.lease_seconds == LEASE_SECONDS
        assert started.trial.attempt_number == 1 and started.checkpoint_uri == ""
        assert clients.start(trial.trial_id, "a-1").trial == started.trial  # idempotent
        assert clients.heartbeat(trial.trial_id, "a-1").action == events_pb2.CONTINUE

        code, message = code_and_message(lambda: clients.start(trial.trial_id, "a-2", "w-2"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "another live attempt" in message

        stop = events_pb2.Decision(
            study_id=study.study_id,
            trial_id=trial.trial_id,
            action=events_pb2.STOP,
            rung=0,
            resource=1,
            cutoff=0.3,
            rank=3,
            population=3,
            reason="below rung cutoff",
            scheduler="asha",
        )
        key, value = trial.trial_id.encode(), stop.SerializeToString()
        producer.send(  # signed as early-stop signs its decisions
            infra.topics.decisions, key=key, value=value,
            headers=signed_headers(infra.topics.decisions, key, value),
        ).get(timeout=30)
        reply = wait_for(
            lambda: (r := clients.heartbeat(trial.trial_id, "a-1")).action == events_pb2.STOP and r,
            90,
            "heartbeat STOP",
            every=0.25,
        )
        assert reply.decision == stop
        pruned = clients.evaluate.PruneTrial(
            evaluate_pb2.PruneTrialRequest(
                trial_id=trial.trial_id, attempt_id="a-1", step=1, last_value=0.9
            )
        )
        assert pruned.state == trial_pb2.PRUNED and pruned.last_step == 1
        code, _ = code_and_message(lambda: clients.heartbeat(trial.trial_id, "a-1"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        wait_for_events(infra, trial.trial_id, ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_PRUNED"])

        # Completion: idempotent for the same attempt and value, counted once.
        second = clients.one(study.study_id).trial
        clients.start(second.trial_id, "b-1")
        code, message = code_and_message(
            lambda: clients.complete(second.trial_id, "b-1", float("nan"))
        )
        assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "value must be finite")
        done = clients.complete(second.trial_id, "b-1", 0.25)
        assert done.state == trial_pb2.COMPLETED and done.final_value == 0.25
        assert clients.complete(second.trial_id, "b-1", 0.25) == done
        code, message = code_and_message(lambda: clients.complete(second.trial_id, "b-1", 0.5))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already COMPLETED" in message
        assert clients.get(second.trial_id) == done
        events = wait_for_events(
            infra, second.trial_id, ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_COMPLETED"]
        )
        assert events[-1].trial == done and events[0].algorithm == "quasi-random"
        assert events[1].hostname == "it-host"
        state = open_state(infra)
        assert state.studies.completed(study.study_id) == 1
        state.close()

        code, message = code_and_message(lambda: clients.get("nope-t1"))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "trial 'nope-t1' not found")
    finally:
        producer.close()
        clients.close()


def test_lease_expiry_makes_trial_resumable_and_fences_the_old_attempt(
    infra: Settings, suggest: Any, start_service: Any
) -> None:
    evaluate = start_service("services.evaluate", {"LADDER_LEASE_SECONDS": "2"})
    clients = Clients(suggest.addr, evaluate.addr)
    try:
        study = clients.create(config(max_trials=1))
        trial = clients.one(study.study_id, "w-dies").trial
        clients.start(trial.trial_id, "old", "w-dies")
        clients.evaluate.ReportCheckpoint(
            evaluate_pb2.ReportCheckpointRequest(
                trial_id=trial.trial_id, attempt_id="old", uri="file:///ckpt/3", step=3
            )
        )
        # The worker dies: no more heartbeats, the sweeper expires the lease.
        wait_for(lambda: clients.get(trial.trial_id).state == trial_pb2.RESUMABLE, 15, "RESUMABLE")
        code, message = code_and_message(lambda: clients.heartbeat(trial.trial_id, "old"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and message.startswith("stale attempt")

        # The budget is spent, yet the resumable trial is handed out again.
        resumed = clients.one(study.study_id, "w-next")
        assert resumed.resumed and resumed.trial.trial_id == trial.trial_id
        assert resumed.trial.params == trial.params and resumed.trial.seed == trial.seed
        assert resumed.trial.checkpoint_uri == "file:///ckpt/3"
        started = clients.start(trial.trial_id, "new", "w-next")
        assert started.checkpoint_uri == "file:///ckpt/3" and started.checkpoint_step == 3
        assert started.trial.attempt_number == 2

        # The old attempt is fenced for every call, even a restart.
        for call in (
            lambda: clients.start(trial.trial_id, "old", "w-dies"),
            lambda: clients.complete(trial.trial_id, "old", 0.1),
            lambda: clients.evaluate.FailTrial(
                evaluate_pb2.FailTrialRequest(trial_id=trial.trial_id, attempt_id="old")
            ),
        ):
            code, message = code_and_message(call)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert message.startswith("stale attempt"), message
        clients.heartbeat(trial.trial_id, "new")
        assert clients.complete(trial.trial_id, "new", 0.1).state == trial_pb2.COMPLETED
        code, message = code_and_message(lambda: clients.one(study.study_id))
        assert message == "study budget exhausted: 1 trials suggested"
        events = wait_for_events(
            infra,
            trial.trial_id,
            [
                "TRIAL_SUGGESTED",
                "TRIAL_STARTED",
                "TRIAL_CHECKPOINTED",
                "TRIAL_LEASE_EXPIRED",
                "TRIAL_STARTED",
                "TRIAL_COMPLETED",
            ],
        )
        assert "expired" in events[3].reason and events[3].trial.state == trial_pb2.RESUMABLE
    finally:
        clients.close()


# ------------------------------------------ failure classes, watchdog, wall clock


@pytest.fixture(scope="module")
def evaluate(start_module_service: Callable[..., Any]) -> Any:
    """One evaluate process (default lease) for the tests that leave it as it is."""
    return start_module_service("services.evaluate")


def _policy_study(clients: Clients, **policy: Any) -> str:
    return clients.create(config(trial_policy=study_pb2.TrialPolicy(**policy))).study_id


def _fail(clients: Clients, trial_id: str, attempt: str, **request: Any) -> trial_pb2.Trial:
    return clients.evaluate.FailTrial(
        evaluate_pb2.FailTrialRequest(trial_id=trial_id, attempt_id=attempt, **request),
        timeout=30,
    )


def test_fail_trial_follows_the_kind_and_the_study_policy(
    infra: Settings, suggest: Any, evaluate: Any
) -> None:
    clients = Clients(suggest.addr, evaluate.addr)
    try:
        # max_failures 2 (not evaluate's --max-attempts 3); out of memory is infeasible.
        study_id = _policy_study(clients, max_failures=2, on_out_of_memory=study_pb2.OOM_INFEASIBLE)
        flaky = clients.one(study_id).trial.trial_id
        clients.start(flaky, "f1")
        handed_back = _fail(clients, flaky, "f1", reason="SIGTERM", kind=trial_pb2.PREEMPTED)
        assert handed_back.state == trial_pb2.RESUMABLE and handed_back.failures == 0
        clients.start(flaky, "f2")
        # An older client: no kind, retryable -> INFRASTRUCTURE.
        once = _fail(clients, flaky, "f2", reason="disk", retryable=True)
        assert (once.state, once.failures, once.failure_kind) == (
            trial_pb2.RESUMABLE,
            1,
            trial_pb2.INFRASTRUCTURE,
        )
        clients.start(flaky, "f3")
        twice = _fail(clients, flaky, "f3", reason="disk", kind=trial_pb2.INFRASTRUCTURE)
        assert twice.state == trial_pb2.FAILED and twice.failures == 2

        oom = clients.one(study_id).trial.trial_id
        clients.start(oom, "o1")
        infeasible = _fail(clients, oom, "o1", reason="CUDA OOM", kind=trial_pb2.OUT_OF_MEMORY)
        assert infeasible.state == trial_pb2.FAILED
        assert infeasible.last_attempt_end == trial_pb2.ATTEMPT_FAILED

        buggy = clients.one(study_id).trial.trial_id
        clients.start(buggy, "b1")
        code, message = code_and_message(lambda: _fail(clients, buggy, "b1", kind=99))
        assert (code, message) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "kind: unknown failure kind 99",
        )
        # An older client: no kind, not retryable -> USER_ERROR.
        final = _fail(clients, buggy, "b1", reason="bad shape")
        assert final.state == trial_pb2.FAILED and final.failure_kind == trial_pb2.USER_ERROR

        events = wait_for_events(
            infra,
            flaky,
            ["TRIAL_SUGGESTED", *["TRIAL_STARTED", "TRIAL_FAILED"] * 3],
        )
        ends = [(e.ended_attempt_id, e.attempt_end) for e in events if e.ended_attempt_id]
        assert ends == [
            ("f1", trial_pb2.ATTEMPT_PREEMPTED),
            ("f2", trial_pb2.ATTEMPT_FAILED),
            ("f3", trial_pb2.ATTEMPT_FAILED),
        ]
        assert events[2].reason == "preempted: SIGTERM; not counted (0 of 2 failures used)"
        assert events[-1].reason == "attempt 3 failed (INFRASTRUCTURE; all 2 failures used): disk"
    finally:
        clients.close()


def test_a_stalled_attempt_loses_its_lease_and_the_trial_resumes(
    infra: Settings, suggest: Any, evaluate: Any
) -> None:
    clients = Clients(suggest.addr, evaluate.addr)
    try:
        study_id = _policy_study(clients, stall_timeout_seconds=1)
        trial_id = clients.one(study_id, "w-hangs").trial.trial_id
        clients.start(trial_id, "hung", "w-hangs")
        clients.heartbeat(trial_id, "hung", step=2)
        # The keep-alive beats on, but the step no longer advances.
        code, message = wait_for(
            lambda: _refused(lambda: clients.heartbeat(trial_id, "hung", step=2)),
            15,
            "the watchdog to end the attempt",
            every=0.2,
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert message.startswith("stale attempt: 'hung' no longer holds trial")
        assert "stalled: attempt hung made no step progress" in message
        trial = clients.get(trial_id)
        assert (trial.state, trial.failures) == (trial_pb2.RESUMABLE, 0)
        assert trial.last_attempt_end == trial_pb2.ATTEMPT_STALLED
        resumed = clients.one(study_id, "w-next")
        assert resumed.resumed and resumed.trial.trial_id == trial_id
        clients.start(trial_id, "next", "w-next")
        assert clients.heartbeat(trial_id, "next", step=1).action == events_pb2.CONTINUE
        events = wait_for_events(
            infra,
            trial_id,
            ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_LEASE_EXPIRED", "TRIAL_STARTED"],
        )
        assert (events[2].ended_attempt_id, events[2].attempt_end) == (
            "hung",
            trial_pb2.ATTEMPT_STALLED,
        )
    finally:
        clients.close()


def _suggest_started(
    clients: Clients, study_id: str, worker: str, attempt: str, **more: Any
) -> suggest_pb2.SuggestResponse:
    return clients.suggest.Suggest(
        suggest_pb2.SuggestRequest(
            study_id=study_id, worker_id=worker,
            start=evaluate_pb2.StartTrialRequest(attempt_id=attempt, hostname="one-trip"),
            **more,
        ),
        timeout=30,
    )


def test_suggest_starts_the_suggestion_in_the_same_round_trip(
    infra: Settings, suggest: Any, evaluate: Any
) -> None:
    clients = Clients(suggest.addr, evaluate.addr)
    state = open_state(infra)
    try:
        study_id = clients.create(config()).study_id
        (one,) = _suggest_started(clients, study_id, "w-one", "a-one").suggestions
        trial_id = one.trial.trial_id
        started = one.started
        # What StartTrial answers: RUNNING under the attempt, evaluate's lease.
        assert (started.trial.trial_id, started.trial.attempt_id) == (trial_id, "a-one")
        assert started.trial.state == trial_pb2.RUNNING and started.trial.attempt_number == 1
        assert started.trial.worker_id == "w-one" and started.lease_seconds == LEASE_SECONDS
        # evaluate knows the attempt: it heartbeats, and StartTrial repeats as a no-op.
        assert clients.start(trial_id, "a-one", "w-one").trial == started.trial
        assert clients.heartbeat(trial_id, "a-one").action == events_pb2.CONTINUE
        clients.evaluate.ReportCheckpoint(
            evaluate_pb2.ReportCheckpointRequest(
                trial_id=trial_id, attempt_id="a-one", uri="file:///ckpt/2", step=2
            ),
            timeout=30,
        )
        # Handed back: RESUMABLE, and the next Suggest resumes and starts it at once.
        clients.evaluate.FailTrial(
            evaluate_pb2.FailTrialRequest(
                trial_id=trial_id, attempt_id="a-one", kind=trial_pb2.PREEMPTED
            ),
            timeout=30,
        )
        (again,) = _suggest_started(clients, study_id, "w-two", "a-two").suggestions
        assert again.resumed and again.trial.trial_id == trial_id
        assert (again.started.checkpoint_uri, again.started.checkpoint_step) == (
            "file:///ckpt/2", 2
        )
        assert again.started.trial.attempt_number == 2
        assert clients.complete(trial_id, "a-two", 0.5).state == trial_pb2.COMPLETED
        # TRIAL_STARTED as evaluate publishes it (from suggest's outbox entry, acked).
        events = wait_for_events(
            infra,
            trial_id,
            ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_CHECKPOINTED", "TRIAL_FAILED",
             "TRIAL_STARTED", "TRIAL_COMPLETED"],
            # Suggest and evaluate publish in turn, each an event the other had not
            # acknowledged yet when its own came: a duplicate consumers ignore.
            distinct=True,
        )
        assert events[1].hostname == "one-trip" and events[1].trial.attempt_id == "a-one"
        wait_for(
            lambda: trial_id not in {t.trial.trial_id for t in state.trials.outbox_due(0)},
            10,
            "outbox entries acknowledged",
        )

        # Refusals, before anything is handed out.
        code, message = code_and_message(
            lambda: _suggest_started(clients, study_id, "w-x", "a-x", count=2)
        )
        assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "start needs count 1 (got 2)")
        for start, expected in (
            (evaluate_pb2.StartTrialRequest(), "start.attempt_id is required"),
            (evaluate_pb2.StartTrialRequest(attempt_id="a", trial_id="t"),
             "start.trial_id must be empty: the trial is the one suggested (got 't')"),
        ):
            code, message = code_and_message(
                lambda start=start: clients.suggest.Suggest(
                    suggest_pb2.SuggestRequest(study_id=study_id, worker_id="w-x", start=start)
                )
            )
            assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
        assert state.studies.get(study_id).trials_suggested == 1
    finally:
        state.close()
        clients.close()


def _refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str] | None:
    """The call's error code and message, or None when it succeeded."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details()
    return None


def test_the_wall_clock_fails_a_trial_that_runs_too_long(
    infra: Settings, suggest: Any, evaluate: Any
) -> None:
    clients = Clients(suggest.addr, evaluate.addr)
    try:
        study_id = _policy_study(clients, max_trial_seconds=1)
        trial_id = clients.one(study_id).trial.trial_id
        started = clients.start(trial_id, "slow")
        assert started.trial.first_started_unix_ms > 0
        # The sweeper finds it (a heartbeat after the deadline would too).
        trial = wait_for(
            lambda: (t := clients.get(trial_id)).state == trial_pb2.FAILED and t,
            15,
            "the wall clock to run out",
            every=0.2,
        )
        assert (trial.failure_kind, trial.last_attempt_end) == (
            trial_pb2.TIMEOUT,
            trial_pb2.ATTEMPT_TIMED_OUT,
        )
        code, _ = code_and_message(lambda: clients.heartbeat(trial_id, "slow"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        events = wait_for_events(
            infra, trial_id, ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_FAILED"]
        )
        assert events[-1].attempt_end == trial_pb2.ATTEMPT_TIMED_OUT
        assert events[-1].reason.startswith("timed out: ")
    finally:
        clients.close()


def test_report_checkpoint_adds_up_its_overhead_and_checks_it(
    suggest: Any, evaluate: Any
) -> None:
    clients = Clients(suggest.addr, evaluate.addr)
    try:
        trial_id = clients.one(clients.create(config()).study_id).trial.trial_id
        clients.start(trial_id, "a")

        def report(step: float, **spent: float) -> trial_pb2.Trial:
            return clients.evaluate.ReportCheckpoint(
                evaluate_pb2.ReportCheckpointRequest(
                    trial_id=trial_id, attempt_id="a", uri=f"file:///c/{step}", step=step, **spent
                ),
                timeout=30,
            )

        report(1, save_seconds=0.5, train_seconds=12)
        trial = report(2, save_seconds=0.25, train_seconds=8)
        assert (trial.checkpoint_seconds, trial.train_seconds) == (0.75, 20)
        for name, value in (("save_seconds", -1.0), ("train_seconds", float("inf"))):
            code, message = code_and_message(lambda n=name, v=value: report(3, **{n: v}))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert message == f"{name} must be finite and >= 0 (got {value})"
        assert clients.get(trial_id).checkpoint_step == 2
    finally:
        clients.close()


# ------------------------------------------------------------ state scripts directly


@pytest.fixture
def state(infra: Settings) -> State:
    st = open_state(infra)
    yield st
    st.close()


def _study(state: State, max_trials: int = 0) -> str:
    study_id = f"direct-{uuid.uuid4().hex[:8]}"
    state.studies.create(
        study_pb2.Study(study_id=study_id, config=config(max_trials), created_unix_ms=1)
    )
    return study_id


def _trials(state: State, study_id: str, n: int, claim: float = 60) -> list[str]:
    protos = []
    for i in range(n):
        proto = trial_pb2.Trial(study_id=study_id, seed=i)
        fill_params(proto.params, {"lr": 0.01, "opt": "adam"})
        protos.append(proto)
    made = state.trials.create_trials(study_id, protos, 0, claim, "test")
    return [t.trial.trial_id for t in made]


def test_retryable_failures_are_resumable_until_max_failures(state: State) -> None:
    study_id = _study(state)
    (trial_id,) = _trials(state, study_id, 1)
    infra = failures.INFRASTRUCTURE
    for n in (1, 2):
        state.trials.start(trial_id, f"a{n}", "w", 30)
        failed = state.trials.fail(trial_id, f"a{n}", "NCCL timeout", infra, max_failures=3)
        assert failed.changed and failed.trial.state == trial_pb2.RESUMABLE
        assert failed.reason == (
            f"attempt {n} failed (INFRASTRUCTURE, retried; {n} of 3 failures used): NCCL timeout"
        )
        repeat = state.trials.fail(trial_id, f"a{n}", "NCCL timeout", infra, max_failures=3)
        assert not repeat.changed
        assert trial_id in state.trials.resumable(study_id)
    state.trials.start(trial_id, "a3", "w", 30)
    final = state.trials.fail(trial_id, "a3", "NCCL timeout", infra, max_failures=3)
    assert final.trial.state == trial_pb2.FAILED and "all 3 failures used" in final.reason
    assert trial_id not in state.trials.pending(study_id)
    with pytest.raises(Conflict, match="it is FAILED"):
        state.trials.start(trial_id, "a4", "w", 30)


def test_a_user_error_is_final(state: State) -> None:
    study_id = _study(state)
    (trial_id,) = _trials(state, study_id, 1)
    state.trials.start(trial_id, "a1", "w", 30)
    failed = state.trials.fail(trial_id, "a1", "bad config", failures.USER_ERROR)
    assert failed.trial.state == trial_pb2.FAILED
    assert failed.reason == "attempt 1 failed (USER_ERROR, not retried): bad config"


def test_unstarted_suggestions_become_resumable_after_the_claim(state: State) -> None:
    study_id = _study(state)
    (trial_id,) = _trials(state, study_id, 1, claim=0.05)
    # The sweep takes the oldest deadlines first, and the session's Redis holds the
    # leases other modules' stopped services left behind (thousands after the load
    # tests): a sweep of them all comes before this trial's on a busy host.
    expired = wait_for(
        lambda: [t for t in state.trials.expire_due(1000) if t.trial.trial_id == trial_id],
        60,
        "claim expiry",
    )
    assert expired[0].event_kind == events_pb2.TRIAL_LEASE_EXPIRED
    assert state.trials.get(trial_id).state == trial_pb2.RESUMABLE
    claimed = state.trials.claim_resumable(study_id, 5, 60)
    assert [t.trial_id for t in claimed] == [trial_id]
    assert state.trials.claim_resumable(study_id, 5, 60) == []  # popped once


def test_decisions_are_stored_idempotently_and_stop_wins(state: State) -> None:
    study_id = _study(state)
    (trial_id,) = _trials(state, study_id, 1)
    promote = events_pb2.Decision(trial_id=trial_id, action=events_pb2.PROMOTE, rung=0)
    stop = events_pb2.Decision(trial_id=trial_id, action=events_pb2.STOP, rung=1)
    assert state.trials.apply_decision(promote)[0] == "OK"
    assert state.trials.apply_decision(stop)[0] == "OK"
    assert state.trials.apply_decision(stop)[0] == "REPEAT"
    # Decided again after an early-stop crash: same verdict, later timestamp.
    redelivered = events_pb2.Decision()
    redelivered.CopyFrom(stop)
    redelivered.ts_ms = 5_000
    assert state.trials.apply_decision(redelivered)[0] == "REPEAT"
    assert state.trials.apply_decision(promote)[0] == "KEPT"
    assert state.trials.decision(trial_id) == stop
    unknown = events_pb2.Decision(trial_id="nope-t1", action=events_pb2.STOP)
    assert state.trials.apply_decision(unknown)[0] == "UNKNOWN"


def test_unacknowledged_events_stay_in_the_outbox(state: State) -> None:
    study_id = _study(state)
    a, b = _trials(state, study_id, 2)
    state.trials.start(a, "x", "w", 30)
    started_b = state.trials.start(b, "x", "w", 30)
    for trial_id in (a, b):  # the suggestion events were "published" by someone else
        state.trials.ack(trial_id, f"{events_pb2.TRIAL_SUGGESTED}|1|suggested by test")
    state.trials.ack(b, started_b.token)
    due = {t.trial.trial_id: t for t in state.trials.outbox_due(0)}
    assert due[a].event_kind == events_pb2.TRIAL_STARTED and b not in due
    state.trials.ack(a, due[a].token)
    assert a not in {t.trial.trial_id for t in state.trials.outbox_due(0)}


def test_budget_is_atomic_under_concurrency(state: State) -> None:
    from concurrent.futures import ThreadPoolExecutor

    study_id = _study(state, max_trials=10)
    proto = trial_pb2.Trial(study_id=study_id)

    def grab(_: int) -> int:
        try:
            return len(state.trials.create_trials(study_id, [proto] * 3, 10, 60, "test"))
        except BudgetExhausted:
            return 0

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(grab, range(16)))
    assert total == 10 and state.studies.get(study_id).trials_suggested == 10


def test_calls_before_start_are_refused_with_a_hint(state: State) -> None:
    study_id = _study(state)
    (trial_id,) = _trials(state, study_id, 1)
    with pytest.raises(StaleAttempt, match="was never started") as stale:
        state.trials.complete(trial_id, "a1", 0.5)
    assert status_of(stale.value) == (grpc.StatusCode.FAILED_PRECONDITION, str(stale.value))
    with pytest.raises(NotFound, match="not found") as missing:
        state.trials.heartbeat("nope-t9", "a1", 1, 30)
    assert status_of(missing.value) == (grpc.StatusCode.NOT_FOUND, str(missing.value))
