"""Background sweeper: expires leases and re-publishes unacknowledged events.

Every ``interval`` seconds it moves trials whose lease (RUNNING) or hand-out
claim (suggested but never started) ran out to RESUMABLE, publishing
TRIAL_LEASE_EXPIRED, and re-publishes the unacknowledged events of every trial
whose oldest one is older than ``outbox_retry_seconds`` (their first publish
failed or the process died), each trial's in order.
Several evaluate processes may sweep at once: each expiry is one Lua script, so
exactly one of them wins and publishes.
"""

from __future__ import annotations

import logging
import threading

from ladder.state import TrialStore
from opentelemetry import metrics

from services.evaluate.publisher import TransitionPublisher

log = logging.getLogger("ladder.evaluate.sweeper")
_expiries = metrics.get_meter("ladder.evaluate").create_counter(
    "ladder.lease.expiries", description="leases or claims that expired"
)


class LeaseSweeper:
    def __init__(
        self,
        trials: TrialStore,
        publisher: TransitionPublisher,
        interval: float,
        outbox_retry_seconds: float,
    ) -> None:
        self.trials = trials
        self.publisher = publisher
        self.interval = interval
        self.outbox_retry_seconds = outbox_retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sweeper", daemon=True)

    def start(self) -> LeaseSweeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def sweep_once(self) -> int:
        """One pass; returns the number of leases expired."""
        expired = self.trials.expire_due()
        for transition in expired:
            _expiries.add(1, {"study_id": transition.trial.study_id})
            log.warning(
                "trial %s resumable: %s",
                transition.trial.trial_id,
                transition.reason,
                extra={
                    "trial_id": transition.trial.trial_id,
                    "study_id": transition.trial.study_id,
                },
            )
            self.publisher.publish(transition)
        due = self.trials.outbox_due(self.outbox_retry_seconds)
        for transition in due:
            log.info(
                "re-publishing unacknowledged event %s of %s",
                transition.token,
                transition.trial.trial_id,
                extra={"trial_id": transition.trial.trial_id},
            )
        self.publisher.publish_in_order(due)
        return len(expired)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:  # noqa: BLE001 - keep sweeping after Redis/Kafka blips
                log.exception("lease sweep failed; retrying next interval")
