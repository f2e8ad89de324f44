"""evaluate's publisher: a trial's earlier unacknowledged events go out first, at most
one of a trial's events is in flight (so they reach the topic in order), an event
this process already sent is not sent again, a request waits for the broker only so
long, and a failed delivery leaves the trial's events in the outbox for the sweeper."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ladder.bus import SendResult
from ladder.config import Settings
from ladder.state import Transition
from ladder.transitions import TransitionPublisher
from ladder.v1 import events_pb2, trial_pb2


class Producer:
    """Acknowledges every record at once, or (``manual``) when the test says."""

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.sent: list[int] = []
        self.pending: list[SendResult] = []

    def send(self, topic: str, key: str, event: events_pb2.TrialEvent) -> SendResult:
        self.sent.append(event.kind)
        result = SendResult()
        if self.manual:
            self.pending.append(result)
        else:
            result.resolve(None, "metadata")
        return result

    def deliver(self, error: BaseException | None = None) -> None:
        self.pending.pop(0).resolve(error, None if error else "metadata")


class Trials:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def ack(self, trial_id: str, token: str) -> None:
        self.acked.append(token)


def transition(kind: int, version: int, trial_id: str = "s-t1", **more: Any) -> Transition:
    trial = trial_pb2.Trial(trial_id=trial_id, study_id="s")
    token = f"{kind}|{version}|why"
    return Transition(trial, True, kind, "why", token, version=version, **more)


def publisher(
    producer: Producer | None = None, trials: Trials | None = None, wait: float = 1.0
) -> tuple[TransitionPublisher, Producer, Trials]:
    producer, trials = producer or Producer(), trials or Trials()
    settings = Settings("k:9092", "redis://r")
    return TransitionPublisher(settings, producer, trials, wait), producer, trials  # type: ignore[arg-type]


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


def test_a_trials_next_event_waits_for_the_one_in_flight() -> None:
    pub, producer, trials = publisher(Producer(manual=True))
    started = transition(events_pb2.TRIAL_STARTED, 2)
    completed = transition(events_pb2.TRIAL_COMPLETED, 3)
    other = transition(events_pb2.TRIAL_STARTED, 2, trial_id="s-t2")
    assert not pub.publish(started, wait=0)
    assert not pub.publish(completed, wait=0)
    assert not pub.publish(other, wait=0)
    # Another trial's event does not wait; this trial's second one does.
    assert producer.sent == [events_pb2.TRIAL_STARTED, events_pb2.TRIAL_STARTED]
    # The sweeper finding both in the outbox sends neither again.
    assert not pub.publish_in_order([started, completed])
    assert len(producer.sent) == 2
    producer.deliver()  # TRIAL_STARTED of t1: its ack, then COMPLETED goes out
    assert producer.sent[-1] == events_pb2.TRIAL_COMPLETED
    assert trials.acked == [started.token]
    producer.deliver()  # t2's
    producer.deliver()  # t1's COMPLETED
    assert trials.acked == [started.token, other.token, completed.token]
    assert pub.publish_in_order([completed])  # on the topic: acknowledged, not re-sent
    assert len(producer.sent) == 3


def test_a_request_waits_for_the_broker_at_most_its_budget() -> None:
    pub, producer, trials = publisher(Producer(manual=True), wait=0.05)
    started = transition(events_pb2.TRIAL_STARTED, 2)
    assert not pub.publish(started)  # the broker never answered within 50 ms
    assert trials.acked == []  # still in the outbox
    producer.deliver()  # it answers later: the delivery report acknowledges it
    assert trials.acked == [started.token]


def test_a_failed_delivery_leaves_the_trials_events_for_the_sweeper() -> None:
    pub, producer, trials = publisher(Producer(manual=True))
    started = transition(events_pb2.TRIAL_STARTED, 2)
    completed = transition(events_pb2.TRIAL_COMPLETED, 3)
    pub.publish(started, wait=0)
    pub.publish(completed, wait=0)
    producer.deliver(RuntimeError("broker away"))
    assert trials.acked == []
    assert producer.sent == [events_pb2.TRIAL_STARTED]  # COMPLETED not sent out of order
    # The sweeper re-sends both, in order.
    assert not pub.publish_in_order([started, completed])
    producer.deliver()
    producer.deliver()
    assert producer.sent[1:] == [events_pb2.TRIAL_STARTED, events_pb2.TRIAL_COMPLETED]
    assert trials.acked == [started.token, completed.token]


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
    pub, producer, trials = publisher(trials=FlakyTrials(failures=1))
    completed = transition(events_pb2.TRIAL_COMPLETED, 4)
    # Sent: the transition was applied and published, whatever the ack did.
    assert pub.publish(completed)
    assert trials.acked == []
    # The sweeper finds it still in the outbox: not sent again, but acknowledged.
    assert pub.publish_in_order([completed])
    assert producer.sent == [events_pb2.TRIAL_COMPLETED]
    assert trials.acked == [completed.token]
