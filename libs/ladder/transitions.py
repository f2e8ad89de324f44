"""Publish trial transitions on the trials topic, then clear them from the outbox
(evaluate's transitions, and the attempts Suggest starts: ``ladder.starting``).

A transition is already stored (state and outbox, in one Redis script) when it is
published, so by default no answer waits on the broker: a request waits at most
``wait_seconds`` (LADDER_PUBLISH_WAIT_SECONDS, default 0) for the acknowledgement, the
sweeper never. A waiting answer holds one of the service's gRPC threads for the
broker's acknowledgement (tens to hundreds of ms under load): at 1,000 workers every
call queued behind them for seconds. While the broker is away the event stays in the
outbox and is acknowledged by its delivery report once the broker took it, or
re-published by the sweeper once it failed.

A trial's events reach the topic in order without idempotent producers: each trial
has at most one event in flight; a later one waits behind it in this process and is
produced from the delivery report of the one before. A failed delivery drops the
trial's waiting events (they are in the outbox, and the sweeper re-sends them all in
order).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable

from ladder.bus import EventProducer, now_ms
from ladder.config import Settings
from ladder.state import Transition, TrialStore, trial_event
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.evaluate.publish")

# Events this process published lately: a request's transition lists the trial's
# earlier unacknowledged events, and one already on the topic is not sent again.
_REMEMBERED = 10_000
# How long a request waits for the broker's acknowledgement of its event by default:
# not at all (the event is in the outbox already; a worker's next step needs nothing
# from the topic). A wait set must stay a fraction of any lease, so an answer never
# comes after the lease it grants ran out.
PUBLISH_WAIT_SECONDS = 0.0


def _key(transition: Transition) -> tuple[str, str]:
    return transition.trial.trial_id, transition.token


class TransitionPublisher:
    def __init__(
        self,
        settings: Settings,
        producer: EventProducer,
        trials: TrialStore,
        wait_seconds: float = PUBLISH_WAIT_SECONDS,
    ) -> None:
        self.topic = settings.topics.trials
        self.producer = producer
        self.trials = trials
        self.wait_seconds = wait_seconds
        self.hostname = socket.gethostname()
        self._lock = threading.Lock()
        # trial id -> its events in this process: the head is in flight, the rest wait.
        self._chains: dict[str, deque[Transition]] = {}
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        # (trial id, token) -> set once its delivery was reported, either way.
        self._reported: dict[tuple[str, str], threading.Event] = {}

    def publish(self, transition: Transition, wait: float | None = None) -> bool:
        """Send the trial's earlier unacknowledged events, then this transition's
        (key = study id), in order; wait up to ``wait`` (default ``wait_seconds``) for
        the broker.

        True when all were acknowledged in time. False is no error: the events are in
        the Redis outbox, so the caller's answer does not depend on Kafka.
        """
        if not transition.changed or not transition.event_kind:
            return False
        return self.publish_in_order(
            [*transition.earlier, transition], self.wait_seconds if wait is None else wait
        )

    def publish_in_order(self, transitions: Iterable[Transition], wait: float = 0.0) -> bool:
        """Queue each event behind its trial's event in flight (or produce it now),
        then wait up to ``wait`` seconds for their delivery reports; True when all
        were acknowledged within it."""
        keys: list[tuple[str, str]] = []
        waiting: list[threading.Event] = []
        to_produce: list[Transition] = []
        to_ack: list[Transition] = []
        with self._lock:
            for transition in transitions:
                key = _key(transition)
                keys.append(key)
                if key in self._sent:
                    to_ack.append(transition)
                    continue
                reported = self._reported.get(key)
                if reported is None:
                    reported = self._reported[key] = threading.Event()
                    chain = self._chains.setdefault(transition.trial.trial_id, deque())
                    chain.append(transition)
                    if len(chain) == 1:
                        to_produce.append(transition)
                waiting.append(reported)
        # Already on the topic, yet listed: its ack may be what failed, and an event left
        # in the outbox would keep one of ``outbox_due``'s slots for good. Acknowledging
        # twice changes nothing.
        for transition in to_ack:
            self._ack(transition)
        for transition in to_produce:
            self._produce(transition)
        if wait <= 0:
            return not waiting
        end = time.monotonic() + wait
        for reported in waiting:
            if not reported.wait(max(0.0, end - time.monotonic())):
                return False
        with self._lock:
            return all(key in self._sent for key in keys)

    # -- delivery

    def _produce(self, transition: Transition) -> None:
        trial = transition.trial
        event = trial_event(transition, now_ms(), hostname=self.hostname)
        try:
            result = self.producer.send(self.topic, trial.study_id, event)
        except Exception as exc:  # noqa: BLE001 - any producer failure; the outbox keeps it
            self._failed(transition, exc)
            return
        result.add_callback(lambda _metadata: self._delivered(transition))
        result.add_errback(lambda exc: self._failed(transition, exc))

    def _delivered(self, transition: Transition) -> None:
        trial = transition.trial
        key = _key(transition)
        self._ack(transition)
        log.info(
            "%s %s: %s",
            events_pb2.TrialEventKind.Name(transition.event_kind),
            trial.trial_id,
            transition.reason,
            extra={
                "trial_id": trial.trial_id,
                "study_id": trial.study_id,
                "attempt_id": trial.attempt_id,
            },
        )
        with self._lock:
            self._sent[key] = None
            while len(self._sent) > _REMEMBERED:
                self._sent.popitem(last=False)
            reported = self._reported.pop(key, None)
            chain = self._chains.get(trial.trial_id)
            if chain and _key(chain[0]) == key:
                chain.popleft()
            following = chain[0] if chain else None
            if not chain:
                self._chains.pop(trial.trial_id, None)
        if reported is not None:
            reported.set()
        if following is not None:
            self._produce(following)

    def _failed(self, transition: Transition, exc: BaseException) -> None:
        trial = transition.trial
        log.error(
            "%s for %s not published (%s); kept in the outbox",
            events_pb2.TrialEventKind.Name(transition.event_kind),
            trial.trial_id,
            exc,
            extra={"trial_id": trial.trial_id, "study_id": trial.study_id},
        )
        with self._lock:
            dropped = self._chains.pop(trial.trial_id, deque())
            events = [self._reported.pop(_key(t), None) for t in dropped]
            events.append(self._reported.pop(_key(transition), None))
        for event in events:
            if event is not None:
                event.set()

    def _ack(self, transition: Transition) -> None:
        """Clear a published event from the outbox. A failure is logged, not raised:
        the event is on the topic, and the sweeper acknowledges it on its next pass."""
        trial = transition.trial
        try:
            self.trials.ack(trial.trial_id, transition.token)
        except Exception:  # noqa: BLE001 - Redis away; the outbox relay retries the ack
            log.exception(
                "%s of %s published but not acknowledged in the outbox",
                transition.token,
                trial.trial_id,
                extra={"trial_id": trial.trial_id, "study_id": trial.study_id},
            )
