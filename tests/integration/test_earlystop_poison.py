"""Poison records and unknown studies do not block early stopping (issue 13).

Each bad record goes on the same partition (same key) as a valid report published
right after it: the bad one must come out on the dead-letter topic with its reason,
and the valid one must be decided within the usual latency, not after a retry loop
or a wait for a study. The publisher is a plain kafka-python producer, as another
team's service would be.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaProducer
from ladder.config import Settings
from ladder.testing import ServiceProcess
from test_earlystop import SYNTHETIC_TRIALS, Tail, dead_letters, decisions_of, publish_study

pytestmark = pytest.mark.integration

UNKNOWN_STUDY_WAIT = 6.0
# A rung-0 decision normally follows its report within ~0.3 s (two hops with a 20 ms
# producer linger and a 100 ms fetch poll); this leaves room for a loaded CI host but
# stays below the unknown-study wait and any retry loop's back-off ladder.
DECIDED_WITHIN = 4.0


@pytest.fixture(scope="module")
def earlystop(start_module_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_module_service(
        "services.earlystop",
        {"LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT": str(UNKNOWN_STUDY_WAIT), **SYNTHETIC_TRIALS},
    )


@pytest.fixture
def stack(infra: Settings, earlystop: ServiceProcess) -> Iterator[tuple[Tail, KafkaProducer]]:
    tail = Tail(infra, [infra.topics.decisions, infra.topics.dead_letter])
    producer = KafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, linger_ms=0, max_request_size=2 * 1024 * 1024
    )
    yield tail, producer
    producer.close()
    tail.close()


def body(study_id: str, trial_id: str, step: object = 1, value: object = 0.5) -> str:
    return json.dumps({"study_id": study_id, "trial_id": trial_id, "step": step, "value": value})


def json_with(study_id: str, trial_id: str, /, **raw: str) -> bytes:
    """A JSON report with some fields written verbatim (numbers json.dumps cannot make)."""
    fields = {"study_id": json.dumps(study_id), "trial_id": json.dumps(trial_id),
              "step": "1", "value": "0.5", **raw}
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


def decided_at(tail: Tail, study_id: str, trial_id: str, timeout: float) -> float:
    """When the first decision of ``trial_id`` was seen (monotonic)."""
    tail.wait_for(
        lambda records: [d for d, _ in decisions_of(records, study_id) if d.trial_id == trial_id],
        timeout,
        f"decision of {trial_id}",
    )
    return time.monotonic()


POISON = {
    # reason fragment expected in the dead letter, payload maker (study id, trial id)
    "ts_ms beyond int64": (
        "ts_ms", lambda s, t: json_with(s, t, ts_ms=str(2**64))
    ),
    "step an integer beyond a double": (
        "step", lambda s, t: json_with(s, t, step="1" + "0" * 400)
    ),
    "step 1e400": ("step", lambda s, t: json_with(s, t, step="1e400")),
    "value an integer beyond a double": (
        "value", lambda s, t: json_with(s, t, value="-1" + "0" * 400)
    ),
    "study id not UTF-8": ("", lambda s, t: json_with(s, t, study_id=f'"{s}\\ud800"')),
}


@pytest.mark.parametrize("poison", sorted(POISON))
def test_a_poison_record_is_dead_lettered_and_the_next_report_decided(
    infra: Settings, stack: tuple[Tail, KafkaProducer], poison: str
) -> None:
    tail, producer = stack
    study_id = f"poison-{uuid.uuid4().hex[:8]}"
    publish_study(infra, study_id)
    fragment, make = POISON[poison]
    bad_trial, good_trial = f"{study_id}-bad", f"{study_id}-good"
    payload = make(study_id, bad_trial)
    key = good_trial.encode()  # one key: one partition, bad record first
    producer.send(infra.topics.metrics, key=key, value=payload)
    producer.send(infra.topics.metrics, key=key, value=body(study_id, good_trial).encode())
    producer.flush(10)
    sent = time.monotonic()

    assert decided_at(tail, study_id, good_trial, 30) - sent < DECIDED_WITHIN
    letter = tail.wait_for(
        lambda records: [d for d in dead_letters(records) if d.payload == payload], 30,
        f"dead letter of the {poison} record",
    )[0]
    assert letter.source_topic == infra.topics.metrics and letter.service == "earlystop"
    assert letter.source_offset >= 0 and letter.reason
    assert fragment in letter.reason


def test_a_record_whose_dead_letter_would_be_too_large_is_dead_lettered_truncated(
    infra: Settings, stack: tuple[Tail, KafkaProducer]
) -> None:
    """A 900 KB study id: over the id limit (ladder.limits), so refused at once, not
    parked; its dead letter would quote it past the broker's 1 MB, so the payload is
    truncated; the record behind it on the same partition is decided meanwhile."""
    tail, producer = stack
    study_id = f"big-{uuid.uuid4().hex[:8]}"
    publish_study(infra, study_id)
    ghost = f"ghost-{uuid.uuid4().hex[:8]}-" + "x" * 900_000
    good_trial = f"{study_id}-good"
    key = good_trial.encode()
    producer.send(infra.topics.metrics, key=key, value=body(ghost, "g").encode())
    producer.send(infra.topics.metrics, key=key, value=body(study_id, good_trial).encode())
    producer.flush(10)
    sent = time.monotonic()

    assert decided_at(tail, study_id, good_trial, 30) - sent < DECIDED_WITHIN
    letter = tail.wait_for(
        lambda records: [d for d in dead_letters(records) if ghost[:20].encode() in d.payload[:64]],
        30,
        "dead letter of the record with a 900 KB study id",
    )[0]
    assert "study_id: " in letter.reason and "at most 128" in letter.reason
    assert len(letter.payload) == 64 * 1024
    assert "payload truncated to 65536 of" in letter.reason


def test_unknown_studies_do_not_delay_a_known_study_and_a_late_study_is_decided(
    infra: Settings, stack: tuple[Tail, KafkaProducer]
) -> None:
    """Reports of 8 studies nobody published, then a known study's report, all on one
    partition: the known one is decided at once. A report that overtook its own
    StudyEvent is decided once the study arrives."""
    tail, producer = stack
    study_id = f"known-{uuid.uuid4().hex[:8]}"
    late_study = f"late-{uuid.uuid4().hex[:8]}"
    publish_study(infra, study_id)
    trial = f"{study_id}-t"
    key = trial.encode()
    ghosts = [f"ghost-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    for ghost in ghosts:
        producer.send(infra.topics.metrics, key=key, value=body(ghost, f"{ghost}-t").encode())
    producer.send(infra.topics.metrics, key=key, value=body(late_study, f"{late_study}-t").encode())
    producer.send(infra.topics.metrics, key=key, value=body(study_id, trial).encode())
    producer.flush(10)
    sent = time.monotonic()

    assert decided_at(tail, study_id, trial, 30) - sent < DECIDED_WITHIN
    publish_study(infra, late_study)
    decided_at(tail, late_study, f"{late_study}-t", 30)
    letters = tail.wait_for(
        lambda records: (
            found if len(found := {
                g for d in dead_letters(records) for g in ghosts if g.encode() in d.payload
            }) == len(ghosts) else None
        ),
        30, "a dead letter for every unknown study",
    )
    assert letters == set(ghosts)
    assert all(
        d.reason.startswith("unknown study")
        for d in dead_letters(tail.records) if any(g.encode() in d.payload for g in ghosts)
    )
    assert not [d for d in dead_letters(tail.records) if late_study.encode() in d.payload]
