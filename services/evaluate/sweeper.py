"""Background sweeper: expires leases, times attempts out, re-publishes unacknowledged
events.

Every ``interval`` seconds it moves trials whose lease (RUNNING) or hand-out
claim (suggested but never started) ran out to RESUMABLE, publishing
TRIAL_LEASE_EXPIRED (never counted as a failure, but an interruption: past the study's
max_interruptions the trial is FAILED, see ``ladder.failures``), ends (kind TIMEOUT) the
running attempts whose trial used up its max_trial_seconds of running time, publishing
TRIAL_FAILED, and re-publishes the unacknowledged events of every trial
whose oldest one is older than ``outbox_retry_seconds`` (their first publish
failed or the process died), each trial's in order.

A pass first records itself in Redis. When the previous pass, by any evaluate process,
is more than a lease ago, evaluate was away (killed, or cut off from Redis) and no worker
could renew its lease meanwhile: every lease is extended to a lease from now before
anything expires (``TrialStore.sweep_grace``), so a worker whose heartbeat gets through
within it keeps its trial, and a dead worker's trial expires a lease after evaluate is
back.
Several evaluate processes may sweep at once: each expiry is one Lua script, so
exactly one of them wins and publishes.
"""

from __future__ import annotations

import logging
import threading

from ladder.state import TrialStore
from ladder.transitions import TransitionPublisher
from ladder.v1 import trial_pb2
from opentelemetry import metrics

log = logging.getLogger("ladder.evaluate.sweeper")
_meter = metrics.get_meter("ladder.evaluate")
_expiries = _meter.create_counter(
    "ladder.lease.expiries", description="leases or claims that expired"
)
_timeouts = _meter.create_counter(
    "ladder.trial.timeouts", description="trials FAILED because their wall clock ran out"
)


class LeaseSweeper:
    def __init__(
        self,
        trials: TrialStore,
        publisher: TransitionPublisher,
        interval: float,
        outbox_retry_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.trials = trials
        self.publisher = publisher
        self.interval = interval
        self.lease_seconds = lease_seconds
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
        """One pass; returns the number of leases expired and trials timed out."""
        since_s, extended = self.trials.sweep_grace(self.lease_seconds)
        if extended:
            log.warning(
                "no sweep for %.1f s, longer than a lease (%.1f s): no worker could renew "
                "its lease meanwhile, so %d leases were extended to %.1f s from now",
                since_s,
                self.lease_seconds,
                extended,
                self.lease_seconds,
            )
        expired = self.trials.expire_due()
        timed_out = self.trials.time_out_due()
        for counter, transition in [
            *((_expiries, t) for t in expired),
            *((_timeouts, t) for t in timed_out),
        ]:
            counter.add(1, {"study_id": transition.trial.study_id})
            log.warning(
                "trial %s %s: %s",
                transition.trial.trial_id,
                trial_pb2.TrialState.Name(transition.trial.state),
                transition.reason,
                extra={
                    "trial_id": transition.trial.trial_id,
                    "study_id": transition.trial.study_id,
                },
            )
            self.publisher.publish(transition, wait=0)  # never held up by the broker
        due = self.trials.outbox_due(self.outbox_retry_seconds)
        for transition in due:
            log.info(
                "re-publishing unacknowledged event %s of %s",
                transition.token,
                transition.trial.trial_id,
                extra={"trial_id": transition.trial.trial_id},
            )
        self.publisher.publish_in_order(due)
        return len(expired) + len(timed_out)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:  # noqa: BLE001 - keep sweeping after Redis/Kafka blips
                log.exception("lease sweep failed; retrying next interval")
