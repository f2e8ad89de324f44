"""A TrialEvent re-published from the outbox is the same bytes whoever sends it, so
lineage's digest de-duplication recognises the copy."""

from __future__ import annotations

from ladder.state import Transition, trial_event
from ladder.v1 import events_pb2, trial_pb2


def _suggested() -> Transition:
    # As the outbox keeps a suggestion: no attempt yet, so no host recorded.
    trial = trial_pb2.Trial(trial_id="st-1-t1", study_id="st-1", state=trial_pb2.SUGGESTED)
    return Transition(
        trial=trial,
        changed=True,
        event_kind=events_pb2.TRIAL_SUGGESTED,
        reason="suggested by sobol",
        token="1|1|suggested by sobol",
        algorithm="sobol",
        version=1,
        ts_ms=1234,
    )


def test_copies_sent_from_two_hosts_are_the_same_bytes() -> None:
    one = trial_event(_suggested(), 5000, hostname="evaluate-a")
    other = trial_event(_suggested(), 9000, hostname="evaluate-b")
    assert one.SerializeToString(deterministic=True) == other.SerializeToString(
        deterministic=True
    )
    assert one.ts_ms == 1234 and one.hostname == ""
