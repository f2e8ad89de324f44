"""Pure parts of the Redis state layer (the scripts themselves run against a real
redis-server in tests/integration)."""

import pytest
from ladder.params import fill_params
from ladder.state import Keys, Transition, trial_event, trial_from_hash
from ladder.state import scripts as lua
from ladder.v1 import events_pb2, trial_pb2


def test_keys_are_namespaced_by_topic_prefix() -> None:
    a, b = Keys.for_prefix("ladder."), Keys.for_prefix("t1a2b3.")
    assert a.trial("st-1-t1") == "ladder:ladder:trial:st-1-t1"
    assert b.trial("st-1-t1") == "ladder:t1a2b3:trial:st-1-t1"
    assert Keys.for_prefix("").studies == "ladder:studies"
    every = [
        a.studies,
        a.study("s"),
        a.pending("s"),
        a.resumable("s"),
        a.draws("s", 3),
        a.trial("t"),
        a.attempts("t"),
        a.decision("t"),
        a.leases,
        a.deadlines,
        a.outbox,
    ]
    assert len(set(every)) == len(every)
    assert all(k.startswith("ladder:ladder:") for k in every)


def test_trial_key_root_is_what_the_scripts_append_ids_to() -> None:
    keys = Keys.for_prefix("p.")
    assert keys.trial("") + "st-1-t9" == keys.trial("st-1-t9")


def _hash(**fields: object) -> dict[str, bytes]:
    return {k: str(v).encode() if not isinstance(v, bytes) else v for k, v in fields.items()}


def test_trial_from_hash_merges_proto_and_mutable_fields() -> None:
    proto = trial_pb2.Trial(study_id="st-1", seed=42, partition=3)
    fill_params(proto.params, {"lr": 0.01, "opt": "adam", "layers": 3})
    fields = _hash(
        id="st-1-t4",
        study="st-1",
        proto=proto.SerializeToString(),
        state=trial_pb2.COMPLETED,
        attempt="a-2",
        attempt_no=2,
        worker="w-9",
        last_step="12.0",
        ckpt_uri="file:///c/4",
        ckpt_step="10.0",
        final="0.125",
    )
    trial = trial_from_hash(fields)
    assert trial.trial_id == "st-1-t4" and trial.study_id == "st-1"
    assert (trial.seed, trial.partition) == (42, 3)
    assert trial.params["opt"].str_value == "adam" and trial.params["layers"].int_value == 3
    assert (trial.state, trial.attempt_id, trial.attempt_number) == (trial_pb2.COMPLETED, "a-2", 2)
    assert (trial.worker_id, trial.last_step) == ("w-9", 12.0)
    assert (trial.checkpoint_uri, trial.checkpoint_step) == ("file:///c/4", 10.0)
    assert trial.has_final_value and trial.final_value == 0.125


def test_trial_without_final_value_has_none() -> None:
    fields = _hash(id="t", study="s", proto=b"", state=trial_pb2.SUGGESTED, attempt_no=0)
    trial = trial_from_hash(fields)
    assert not trial.has_final_value and trial.attempt_id == "" and trial.last_step == 0


def test_trial_event_carries_the_full_trial() -> None:
    trial = trial_pb2.Trial(trial_id="st-1-t1", study_id="st-1", state=trial_pb2.RUNNING)
    transition = Transition(
        trial=trial,
        changed=True,
        event_kind=events_pb2.TRIAL_STARTED,
        reason="attempt 1",
        token="2|2|attempt 1",
        hostname="gpu-7",
        environment="python=3.11",
    )
    event = trial_event(transition, ts_ms=5, hostname="fallback")
    assert event.kind == events_pb2.TRIAL_STARTED and event.trial == trial
    assert (event.hostname, event.environment, event.reason, event.ts_ms) == (
        "gpu-7",
        "python=3.11",
        "attempt 1",
        5,
    )
    # No recorded host: the event says none, whichever host publishes it.
    assert trial_event(Transition(trial=trial, changed=True), 1, "h").hostname == ""


@pytest.mark.parametrize("name", lua.TRIAL_SCRIPTS)
def test_scripts_embed_the_proto_enum_numbers(name: str) -> None:
    source = getattr(lua, name)
    assert f"local RUNNING = {trial_pb2.RUNNING}" in source
    assert f"local EV_LEASE_EXPIRED = {events_pb2.TRIAL_LEASE_EXPIRED}" in source
    assert f"local STOP = {events_pb2.STOP}" in source
