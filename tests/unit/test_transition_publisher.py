"""evaluate's publisher: a trial's earlier unacknowledged events go out first, and an
event this process already sent (the sweeper's, say) is not sent again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ladder.config import Settings
from ladder.state import Transition
from ladder.v1 import events_pb2, trial_pb2

from services.evaluate.publisher import TransitionPublisher


class Producer:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, topic: str, key: str, event: events_pb2.TrialEvent, wait: bool) -> None:
        self.sent.append(event.kind)


class Trials:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def ack(self, trial_id: str, token: str) -> None:
        self.acked.append(token)


def transition(kind: int, version: int, **more: Any) -> Transition:
    trial = trial_pb2.Trial(trial_id="s-t1", study_id="s")
    token = f"{kind}|{version}|why"
    return Transition(trial, True, kind, "why", token, version=version, **more)


def publisher() -> tuple[TransitionPublisher, Producer, Trials]:
    producer, trials = Producer(), Trials()
    return TransitionPublisher(Settings("k:9092", "redis://r"), producer, trials), producer, trials  # type: ignore[arg-type]


def test_earlier_events_first_and_none_sent_twice() -> None:
    pub, producer, trials = publisher()
    expired = transition(events_pb2.TRIAL_LEASE_EXPIRED, 4)
    assert pub.publish(expired)  # the sweeper's send
    # The next request's transition still lists it (its ack raced the request).
    started = replace(transition(events_pb2.TRIAL_STARTED, 5), earlier=(expired,))
    assert pub.publish(started)
    assert producer.sent == [events_pb2.TRIAL_LEASE_EXPIRED, events_pb2.TRIAL_STARTED]
    # Acknowledged again (harmless): the earlier ack may be the one that failed.
    assert trials.acked == [expired.token, expired.token, started.token]


def test_an_unsent_earlier_event_is_sent_before_the_new_one() -> None:
    pub, producer, _ = publisher()
    checkpointed = transition(events_pb2.TRIAL_CHECKPOINTED, 3)  # a killed process's
    completed = replace(transition(events_pb2.TRIAL_COMPLETED, 4), earlier=(checkpointed,))
    assert pub.publish(completed)
    assert producer.sent == [events_pb2.TRIAL_CHECKPOINTED, events_pb2.TRIAL_COMPLETED]


class FlakyTrials(Trials):
    """An outbox whose Redis fails the first ``failures`` acks."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def ack(self, trial_id: str, token: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis away")
        super().ack(trial_id, token)


def test_a_failed_ack_is_not_an_error_and_the_next_pass_acknowledges_it() -> None:
    producer, trials = Producer(), FlakyTrials(failures=1)
    pub = TransitionPublisher(Settings("k:9092", "redis://r"), producer, trials)  # type: ignore[arg-type]
    completed = transition(events_pb2.TRIAL_COMPLETED, 4)
    # Sent: the transition was applied and published, whatever the ack did.
    assert pub.publish(completed)
    assert trials.acked == []
    # The sweeper finds it still in the outbox: not sent again, but acknowledged.
    assert pub.publish_in_order([completed])
    assert producer.sent == [events_pb2.TRIAL_COMPLETED]
    assert trials.acked == [completed.token]
