"""Publish trial transitions on the trials topic, then clear them from the outbox."""

from __future__ import annotations

import logging
import socket
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable

from ladder.bus import EventProducer, now_ms
from ladder.config import Settings
from ladder.state import Transition, TrialStore, trial_event
from ladder.v1 import events_pb2

log = logging.getLogger("ladder.evaluate.publish")

# A trial's events are sent under one of these locks (by a hash of its id), so the
# sweeper and a request never send the same trial's events at once.
_STRIPES = 64
# Events this process published lately: a request's transition lists the trial's
# earlier unacknowledged events, and one the sweeper has just sent is not sent again.
_REMEMBERED = 10_000


class TransitionPublisher:
    def __init__(self, settings: Settings, producer: EventProducer, trials: TrialStore) -> None:
        self.topic = settings.topics.trials
        self.producer = producer
        self.trials = trials
        self.hostname = socket.gethostname()
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._sent_lock = threading.Lock()

    def publish(self, transition: Transition) -> bool:
        """Send the trial's earlier unacknowledged events, then this transition's
        (key = study id), each after the broker acknowledged the one before.

        On failure the events stay in the Redis outbox and the sweeper re-publishes
        them later, so the caller's answer does not depend on Kafka.
        """
        if not transition.changed or not transition.event_kind:
            return False
        return self.publish_in_order([*transition.earlier, transition])

    def publish_in_order(self, transitions: Iterable[Transition]) -> bool:
        """Send each event and acknowledge it in the outbox; once one of a trial's
        events fails, its later ones wait for the next try, so a trial's events
        never reach the topic out of order. True when all were sent."""
        failed: set[str] = set()
        for transition in transitions:
            trial_id = transition.trial.trial_id
            if trial_id in failed:
                continue
            with self._locks[zlib.crc32(trial_id.encode()) % _STRIPES]:
                if self._already_sent(transition):
                    # Its ack may be what failed: an event left in the outbox would be
                    # found by every sweep and, never acknowledged, would keep one of
                    # ``outbox_due``'s slots for good. Acknowledging twice changes nothing.
                    self._ack(transition)
                elif not self._send(transition):
                    failed.add(trial_id)
        return not failed

    def _ack(self, transition: Transition) -> None:
        """Clear a published event from the outbox. A failure is logged, not raised:
        the event is on the topic (the caller's answer must not say otherwise), and
        the sweeper acknowledges it on its next pass."""
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

    def _already_sent(self, transition: Transition) -> bool:
        with self._sent_lock:
            return (transition.trial.trial_id, transition.token) in self._sent

    def _remember(self, transition: Transition) -> None:
        with self._sent_lock:
            self._sent[(transition.trial.trial_id, transition.token)] = None
            while len(self._sent) > _REMEMBERED:
                self._sent.popitem(last=False)

    def _send(self, transition: Transition) -> bool:
        trial = transition.trial
        event = trial_event(transition, now_ms(), hostname=self.hostname)
        try:
            self.producer.send(self.topic, trial.study_id, event, wait=True)
        except Exception:  # noqa: BLE001 - any broker failure; the outbox keeps it
            log.exception(
                "%s for %s not published; kept in the outbox",
                events_pb2.TrialEventKind.Name(transition.event_kind),
                trial.trial_id,
                extra={"trial_id": trial.trial_id, "study_id": trial.study_id},
            )
            return False
        self._remember(transition)
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
        return True
