"""A trial as the training loop sees it: its params, and the five calls that tie the
loop to Ladder::

    with trial:                                   # an exception fails it with its class
        model = build(lr=trial["lr"])             # or **trial.params
        for epoch in range(trial.restore(model), 28):   # 1, or after the checkpoint
            trial.report(train_one_epoch(model), step=epoch)   # checkpoints when due
            if trial.should_stop():                 # STOP, PAUSE or a hand-back: done
                break
        trial.complete()                            # the last value reported

- :meth:`Trial.report` publishes the metric (Kafka, as every worker does) and
  heartbeats; the reply carries the scheduler's verdict. It never waits for one, except
  at a rung of the promotion form, where the trial may not train on before it.
- :meth:`Trial.should_stop` answers from that verdict without a call of its own. When
  it says True the trial is already over: pruned (STOP), paused after a checkpoint
  (PAUSE: the scheduler may promote it later; a worker then resumes it from there),
  handed back after a checkpoint (SIGTERM / Ctrl-C), failed as DIVERGED (a NaN or
  infinite value) or abandoned (its lease was lost). Later calls do nothing.
- :meth:`Trial.restore` loads the checkpoint a previous attempt left into the objects
  it is given (a model, its optimizer, ...; ``ladder.api.snapshots``) and returns the
  step to start from; from then on :meth:`Trial.report` saves them when the study's
  ``trial_policy`` says a checkpoint is due (every 300 s of training by default, or
  every N steps), and a PAUSE or a hand-back saves them first.
  :meth:`Trial.checkpoint` names them (or a path) explicitly.
- :meth:`Trial.complete` ends the trial with a value (default: the last reported).

As a context manager (``with trial:``) an exception ends the trial as FailTrial with
``ladder.failures.classify``'s class (raise ``ladder.TrialFailed(kind)`` to choose),
then goes on up; KeyboardInterrupt / SystemExit hand the trial back (PREEMPTED, from
its last checkpoint); a block left without an end completes the trial with the last
reported value.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ladder.api import snapshots
from ladder.api.attempt import Attempt, LostLease, Outcome, Session
from ladder.params import PlainValue
from ladder.v1 import evaluate_pb2, events_pb2

log = logging.getLogger("ladder.api")

T = TypeVar("T")


class Trial:
    """One attempt of one trial, handed out by ``Study.trials()``."""

    def __init__(self, session: Session, attempt: Attempt) -> None:
        self._session = session
        self._attempt = attempt
        self._objects: tuple[Any, ...] = ()
        self._verdict: events_pb2.Decision | None = None
        self._pending: evaluate_pb2.HeartbeatResponse | None = None  # what should_stop obeys
        self._last_step = attempt.resume_step  # the last step reported (or checkpointed)
        attempt.begin_step(attempt.resume_step + 1)

    # -- what the loop reads

    @property
    def params(self) -> dict[str, PlainValue]:
        """The suggested configuration (a conditional parameter is absent while its
        parent does not take one of the values it depends on)."""
        return dict(self._attempt.params)

    @property
    def trial_id(self) -> str:
        return self._attempt.trial_id

    @property
    def study_id(self) -> str:
        return self._attempt.study_id

    @property
    def attempt_id(self) -> str:
        return self._attempt.attempt_id

    @property
    def seed(self) -> int:
        """The trial's seed (``random``, NumPy and torch are seeded with it already)."""
        return self._attempt.seed

    @property
    def start_step(self) -> int:
        """The first step this attempt trains: 1, or the one after its checkpoint."""
        return self._attempt.resume_step + 1

    @property
    def step(self) -> int:
        """The last step reported (the checkpoint's when none was reported yet)."""
        return self._last_step

    @property
    def max_steps(self) -> int:
        """The study's scheduler ``max_resource`` (0 when it has none)."""
        return self._session.max_steps

    @property
    def outcome(self) -> str | None:
        """None while running, then "completed", "pruned", "paused", "failed",
        "interrupted" (handed back) or "lost"."""
        outcome = self._attempt.outcome
        if outcome is None and self._attempt.lost:
            return Outcome.LOST.value
        return outcome.value if outcome is not None else None

    @property
    def ended(self) -> bool:
        attempt = self._attempt
        return attempt.outcome is not None or attempt.ended or attempt.lost

    @property
    def decision(self) -> events_pb2.Decision | None:
        """The scheduler's verdict that ended the trial (rung, cutoff, rank, reason)."""
        return self._verdict

    def __getitem__(self, name: str) -> PlainValue:
        """``trial["lr"]``: one parameter's value (KeyError for an inactive child)."""
        return self._attempt.params[name]

    def __repr__(self) -> str:
        return f"Trial({self.trial_id!r}, params={self.params!r}, outcome={self.outcome!r})"

    # -- calls

    def _call(self, action: Callable[[], T]) -> T | None:
        """Run an engine call; a lost lease ends the trial quietly (nothing more is sent:
        another worker owns it now)."""
        try:
            return action()
        except LostLease as exc:
            if self._attempt.outcome is None and self._attempt.handed_over_by != "guard":
                self._attempt.outcome = Outcome.LOST
            log.warning("trial %s: lease lost (%s); abandoning it", self.trial_id, exc,
                        extra=self._attempt.extra)
            return None

    def report(self, value: float, step: int | None = None) -> None:
        """Publish the objective after ``step`` (1-based; default: the step after the
        last one) and renew the lease. Does nothing once the trial ended."""
        attempt = self._attempt
        if self.ended:
            return
        step = self._last_step + 1 if step is None else int(step)
        if step <= self._last_step:
            raise ValueError(f"step {step} is not after the last one reported "
                             f"({self._last_step})")
        attempt.end_step()
        self._last_step = step
        verdict = self._call(lambda: attempt.report(step, float(value)))
        if verdict is not None:
            self._verdict = verdict.decision
            self._pending = verdict
        elif self._objects and not self.ended:
            self._save_if_due()
        attempt.begin_step(step + 1)

    def should_stop(self) -> bool:
        """True once the trial must not train on; whatever that needs (prune, checkpoint
        and pause, checkpoint and hand back, fail as DIVERGED) is done by then. No call
        waits for a decision: they come with the heartbeats."""
        attempt = self._attempt
        if self.ended:
            return True
        if self._session.stopping:
            self._call(lambda: attempt.hand_back(self._last_step, self._writer()))
            return True
        verdict = self._pending or attempt.standing_stop()
        if verdict is not None and verdict.action == events_pb2.PAUSE:
            self._verdict = verdict.decision
            self._call(lambda: attempt.pause(self._last_step, verdict, self._writer()))
            return True
        if verdict is not None:
            self._verdict = verdict.decision
            self._call(lambda: attempt.prune(self._last_step, attempt.last_value, verdict))
            return True
        if self._last_step > attempt.resume_step and not math.isfinite(attempt.last_value):
            self._call(lambda: attempt.diverged(
                f"diverged: {self._session.metric}={attempt.last_value} at step "
                f"{self._last_step}"
            ))
            return True
        return False

    def _writer(self) -> Callable[[Any], None] | None:
        objects = self._objects
        if not objects:
            return None
        return lambda path: snapshots.write(objects, path)

    def checkpoint(self, *objects: Any) -> bool:
        """Save ``objects`` (a model, its optimizer, ...; or a path to a file or folder
        the loop wrote) at the last reported step when a checkpoint is due; True if one
        was saved. A store that is down skips this one (training goes on). The objects
        given here or to :meth:`restore` are saved by :meth:`report` too, when due."""
        if objects:
            self._objects = objects
        if self.ended or not self._objects:
            return False
        return self._save_if_due()

    def _save_if_due(self) -> bool:
        attempt = self._attempt
        step = self._last_step
        if step <= attempt.last_checkpoint_step or not attempt.checkpoint_due(step):
            return False
        writer = self._writer()
        assert writer is not None  # objects were given
        paused_at = time.monotonic()
        saved = self._call(lambda: attempt.save_periodic(step, writer))
        if attempt.step_started is not None:  # saving is not training
            attempt.step_started += time.monotonic() - paused_at
        return bool(saved)

    def restore(self, *objects: Any) -> int:
        """Load the checkpoint a previous attempt of this trial saved into ``objects``
        (as given to :meth:`checkpoint`); the step to start from (1 without one)."""
        if objects:
            self._objects = objects
        attempt = self._attempt
        if attempt.resume_uri and objects:
            attempt.restore(lambda path: snapshots.read(path, objects))
            attempt.begin_step(attempt.resume_step + 1)  # loading is not training
        elif attempt.resume_uri:
            log.warning("trial %s resumes at step %d but restore() was given nothing to "
                        "load the checkpoint into", self.trial_id, attempt.resume_step + 1,
                        extra=attempt.extra)
        return self.start_step

    def complete(self, value: float | None = None) -> None:
        """End the trial with ``value`` (default: the last one reported); a NaN or
        infinite value fails it as DIVERGED. Does nothing once the trial ended."""
        attempt = self._attempt
        if self.ended:
            return
        if value is None:
            if self._last_step <= attempt.resume_step:
                raise ValueError(f"trial {self.trial_id}: complete() needs a value when "
                                 "none was reported")
            value = attempt.last_value
        final = float(value)
        self._call(lambda: attempt.complete(final, self._last_step))

    def fail(self, error: BaseException) -> None:
        """End the trial as failed with ``error``'s class (``ladder.failures``)."""
        if not self.ended:
            self._attempt.fail_with(error)

    def hand_back(self, save: bool = True) -> None:
        """Give the trial back to the study (PREEMPTED: resumable at once, not a failure),
        after a checkpoint of the last reported step when ``save``."""
        attempt = self._attempt
        if not self.ended:
            writer = self._writer() if save else None
            self._call(lambda: attempt.hand_back(self._last_step, writer, why="handed it back"))

    # -- the context

    def __enter__(self) -> Trial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self._finish()
        elif isinstance(exc, KeyboardInterrupt | SystemExit):
            # Mid-step: the objects may hold half a step, so the last checkpoint is it.
            self.hand_back(save=False)
        elif isinstance(exc, Exception) and not self.ended:
            self._attempt.fail_with(exc)
        return False

    def _finish(self) -> None:
        """The loop body is over: a trial nobody ended completes with its last value."""
        if self.ended:
            return
        if self._last_step > self._attempt.resume_step:
            self.complete()
            return
        self.fail(ValueError("the training loop ended without reporting a value or "
                             "completing the trial"))

    def _abandon(self, stopping: bool) -> None:
        """The loop over ``study.trials()`` was left while this trial ran and no ``with
        trial:`` said why (an exception, a break, a return)."""
        if self.ended:
            return
        if stopping:  # after a stop request: the user's Ctrl-C
            self.hand_back(save=False)
            return
        self._attempt.fail_with(_LeftTheLoop(
            f"the loop over study.trials() was left while trial {self.trial_id} ran "
            "(use `with trial:` for the failure class of an exception)"
        ))


class _LeftTheLoop(Exception):
    """An unknown reason: classified INFRASTRUCTURE (retried, counted)."""
