"""Workers of a real study that train nothing: each step waits ``step_seconds`` and
reports what a made-up curve gives, through the Python API (``ladder.load_study``,
``Study.trials``), so a test or a script runs a real study (suggest, evaluate,
early-stop, lineage) from threads of its own process."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from ladder.api.study import load_study
from ladder.client import LadderClient
from ladder.config import Settings

# The value a trial reports after ``step`` (1-based).
Curve = Callable[[Any, int], float]


def work(settings: Settings, study_id: str, worker_id: str, curve: Curve,
         step_seconds: float, checkpoint_url: str, checkpoint_every: int | None = None
         ) -> None:
    """This thread as one worker of ``study_id``: its trials until the budget is spent,
    each stopped when the early-stop service says so, else completed at max_steps."""
    step_done = threading.Event()  # never set: waiting on it is a step of training
    with LadderClient(settings) as client:
        study = load_study(study_id, client=client)
        for trial in study.trials(worker_id=worker_id, checkpoint_url=checkpoint_url,
                                  checkpoint_every=checkpoint_every, handle_signals=False):
            with trial:
                state = {"step": 0}
                value = math.nan
                for step in range(trial.restore(state), trial.max_steps + 1):
                    step_done.wait(step_seconds)
                    state["step"] = step
                    value = curve(trial, step)
                    trial.report(value, step=step)
                    if trial.should_stop():
                        break
                trial.complete(value)


class WorkerThreads:
    """``count`` threads of :func:`work` on one study (ids ``<prefix>0`` ...)."""

    def __init__(self, count: int, settings: Settings, study_id: str, curve: Curve,
                 step_seconds: float, checkpoint_url: str, prefix: str = "worker-",
                 checkpoint_every: int | None = None) -> None:
        self.failures: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, name=f"{prefix}{i}", daemon=True, args=(
                settings, study_id, f"{prefix}{i}", curve, step_seconds, checkpoint_url,
                checkpoint_every))
            for i in range(count)
        ]

    def _run(self, *args: Any) -> None:
        try:
            work(*args)
        except BaseException as exc:  # noqa: B036 - raised again by join()
            self.failures.append(exc)

    def start(self) -> WorkerThreads:
        for thread in self.threads:
            thread.start()
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every thread (``timeout`` seconds each at most); the first failure
        of any is raised, and a thread still running is an AssertionError."""
        for thread in self.threads:
            thread.join(timeout)
        if self.failures:
            raise self.failures[0]
        if self.alive():
            raise AssertionError(f"worker threads still running after {timeout} s")
