"""Studies become COMPLETED when their budget is spent and nothing is left to run.

A trial event that ends or pauses a trial (the trials topic, which every suggest
process reads in full) marks its study; a background sweep, every ``sweep_seconds``,
checks the marked studies and those still waiting (trials unfinished, paused trials
within the settle window: ``ladder.lifecycle.finished``) and publishes the StudyEvents
the broker did not take. Checking off the consumer thread keeps Redis reads off the
event path and costs one read per study per sweep, however many trials ended. The
first sweep checks every stored study, so one that finished while no suggest process
ran is completed at start. The change is atomic in Redis (``StudyStore.transition``):
of several suggest processes, the one that made it publishes the StudyEvent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from ladder import lifecycle
from ladder.errors import NotFound
from ladder.space import StudyConfigError
from ladder.state import StudyStore
from ladder.v1 import events_pb2, study_pb2, trial_pb2

log = logging.getLogger("ladder.suggest.completion")

# Trial states after which a study may have nothing left to run.
_ENDS = frozenset({trial_pb2.COMPLETED, trial_pb2.PRUNED, trial_pb2.FAILED, trial_pb2.PAUSED})


class StudyCompletion:
    def __init__(
        self,
        studies: StudyStore,
        announce: Callable[[study_pb2.Study], None],
        settle_seconds: float = lifecycle.DEFAULT_SETTLE_SECONDS,
        sweep_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        also: Callable[[], None] | None = None,
    ) -> None:
        self.studies = studies
        self.announce = announce  # publishes the StudyEvent; raises when it cannot
        self.settle_seconds = settle_seconds
        self.sweep_seconds = sweep_seconds
        self.clock = clock
        # Run at every sweep too (the budgets' circuit breaker).
        self.also = also
        self._lock = threading.Lock()
        # Before any event is seen, the settle window counts from this process' start:
        # a PROMOTE may have been under way while no suggest process ran.
        self._started = clock()
        self._last_event: dict[str, float] = {}  # study id -> when its last trial event came
        self._waiting: set[str] = set()  # to check at the next sweep
        self._completed: set[str] = set()  # seen COMPLETED: their events change nothing
        self._unannounced: dict[str, study_pb2.Study] = {}
        self._seeded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- triggers

    def on_trial_event(self, event: events_pb2.TrialEvent) -> None:
        study_id = event.trial.study_id
        with self._lock:
            if not study_id or study_id in self._completed:
                return
            self._last_event[study_id] = self.clock()
            if event.trial.state in _ENDS:
                self._waiting.add(study_id)

    def check(self, study_id: str) -> bool:
        """Complete the study if it is finished; whether this call completed it."""
        try:
            max_trials = self.studies.spec(study_id).max_trials
        except NotFound:
            return False
        except StudyConfigError:
            # A stored config that no longer validates still says its budget.
            stored = self.studies.get(study_id)
            max_trials = stored.config.max_trials if stored is not None else 0
        # The budget UpdateStudy set overrides the config's.
        progress = self.studies.progress(study_id, max_trials)
        max_trials = progress.max_trials
        if not max_trials:
            with self._lock:
                self._waiting.discard(study_id)
            return False
        with self._lock:
            quiet = self.clock() - self._last_event.get(study_id, self._started)
        if progress.state == lifecycle.COMPLETED:
            self._forget(study_id)
            return False
        if not lifecycle.finished(progress, quiet, self.settle_seconds):
            with self._lock:
                if progress.suggested < max_trials:  # its next trial event brings it back
                    self._waiting.discard(study_id)
            return False
        study, changed = self.studies.transition(study_id, lifecycle.Action.COMPLETE)
        self._forget(study_id)
        if changed:
            log.info(
                "study %s completed: %d of %d trials handed out, none left to run "
                "(%d paused stay at their rung)",
                study_id, progress.suggested, max_trials, progress.paused,
                extra={"study_id": study_id},
            )
            self.publish(study)
        return changed

    def _forget(self, study_id: str) -> None:
        """The study is COMPLETED for good."""
        with self._lock:
            self._waiting.discard(study_id)
            self._last_event.pop(study_id, None)
            self._completed.add(study_id)

    def publish(self, study: study_pb2.Study) -> None:
        try:
            self.announce(study)
        except Exception as exc:  # noqa: BLE001 - any broker failure: the sweep retries
            log.warning("study %s: StudyEvent not published (%s); retrying", study.study_id,
                        exc, extra={"study_id": study.study_id})
            with self._lock:
                self._unannounced[study.study_id] = study
            return
        with self._lock:
            self._unannounced.pop(study.study_id, None)

    # -- the sweep

    def sweep(self) -> None:
        """Check the marked and waiting studies (every stored one the first time)
        and publish what was not published."""
        if not self._seeded:
            stored = self.studies.list()
            with self._lock:
                self._completed.update(
                    s.study_id for s in stored if s.state == lifecycle.COMPLETED
                )
                self._waiting.update(
                    s.study_id for s in stored
                    if s.config.max_trials and s.state != lifecycle.COMPLETED
                )
            self._seeded = True
        with self._lock:
            candidates = sorted(self._waiting)
        for study_id in candidates:
            try:
                self.check(study_id)
            except redis.RedisError:
                raise  # Redis away: every study would fail alike; the next sweep retries
            except Exception:  # noqa: BLE001 - one study's fault must not stall the others
                log.exception("study %s: completion check failed", study_id,
                              extra={"study_id": study_id})
        if self.also is not None:
            self.also()
        with self._lock:
            unannounced = list(self._unannounced.values())
        for study in unannounced:
            self.publish(study)

    def start(self) -> StudyCompletion:
        self._thread = threading.Thread(target=self._run, name="study-completion", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - Redis away: the next sweep tries again
                log.exception("study completion sweep failed")
            self._stop.wait(self.sweep_seconds)
