"""TRIAL_SUGGESTED events published off the request path.

Waiting for the broker's acknowledgement inside Suggest would cost a round trip,
more than the rest of the request. CREATE_TRIALS already wrote each new trial's event into the
Redis outbox atomically with the trial, so the request only hands the record
to the Kafka producer; when the broker acknowledges it, a background thread
clears the outbox entry (``TrialStore.ack``). If the send fails or this process
dies first, the entry stays and evaluate's outbox relay re-publishes it after
``LADDER_OUTBOX_RETRY_SECONDS``: nothing is lost, and consumers are idempotent,
so a duplicate is harmless.

The record is in the producer's queue before Suggest answers and this producer
lingers at most 10 ms (evaluate's 20 ms), so it normally reaches the topic before
the worker's TRIAL_STARTED; consumers (lineage's projection) tolerate the other order too.
"""

from __future__ import annotations

import logging
import queue
import threading

from ladder.bus import EventProducer, now_ms
from ladder.state import Transition, TrialStore, trial_event

log = logging.getLogger("ladder.suggest.publisher")


class SuggestedPublisher:
    def __init__(
        self, producer: EventProducer, trials: TrialStore, topic: str, hostname: str
    ) -> None:
        self.producer = producer
        self.trials = trials
        self.topic = topic
        self.hostname = hostname
        self._acks: queue.SimpleQueue[Transition | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._ack_loop, name="suggest-acks", daemon=True)
        self._thread.start()

    def publish(self, transition: Transition, mean: float, std: float) -> None:
        """Queue the trial's TRIAL_SUGGESTED (with the surrogate's prediction)."""
        event = trial_event(transition, now_ms(), hostname=self.hostname)
        event.predicted_mean, event.predicted_std = mean, std
        trial_id = transition.trial.trial_id
        try:
            future = self.producer.send(self.topic, transition.trial.study_id, event)
        except Exception:  # noqa: BLE001 - the outbox relay in evaluate re-publishes it
            log.exception(
                "TRIAL_SUGGESTED not queued; left in the outbox", extra={"trial_id": trial_id}
            )
            return
        future.add_callback(lambda _metadata: self._acks.put(transition))
        future.add_errback(
            lambda exc: log.warning(
                "TRIAL_SUGGESTED not published (%s); left in the outbox",
                exc,
                extra={"trial_id": trial_id},
            )
        )

    def _ack_loop(self) -> None:
        while (transition := self._acks.get()) is not None:
            try:
                self.trials.ack(transition.trial.trial_id, transition.token)
            except Exception:  # noqa: BLE001 - the relay re-publishes; harmless duplicate
                log.warning(
                    "outbox ack failed; the event may be published twice",
                    exc_info=True,
                    extra={"trial_id": transition.trial.trial_id},
                )

    def close(self, timeout: float = 10.0) -> None:
        """Call after the producer was flushed/closed: acks the last deliveries."""
        self._acks.put(None)
        self._thread.join(timeout)
