"""``ladder.optimize``: a whole study in one call, the way ``optuna``'s
``study.optimize`` is one::

    def objective(trial: ladder.Trial) -> float:
        model = build(**trial.params)
        for epoch in range(trial.restore(model), 28):
            loss = train_one_epoch(model)
            trial.report(loss, step=epoch)
            if trial.should_stop():
                break
            trial.checkpoint(model)
        return loss

    if __name__ == "__main__":
        study = ladder.optimize(objective, SPACE, n_trials=64, n_workers=4,
                                scheduler="asha", max_steps=27)
        print(study.best_params)

It starts the embedded stack when none runs (``ladder.api.study.ensure_stack``),
creates the study (``n_trials`` is its budget), runs ``n_workers`` worker processes of
``objective`` (each a fresh interpreter: ``objective`` must be a module-level function,
and a script needs the ``__main__`` guard; with ``n_workers=1`` it runs in this
process) and returns the study once lineage has every outcome.

``objective(trial)`` returns the final value (None: the last one reported); a trial it
pruned, paused or handed back is over already, whatever it returns. An exception fails
the trial with its class and ends that worker, then ``optimize`` raises
``WorkerFailed`` once the others are done, unless the exception is one of ``catch``
(the worker then goes on with the next trial). Ctrl-C (or SIGTERM) hands every running
trial back (PREEMPTED, resumable) and returns the study; so does ``timeout``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ladder.api import local
from ladder.api.pool import DEFAULT_GRACE_S, ProcessPool, forwarding_signals
from ladder.api.progress import Progress, progress_line
from ladder.api.study import (
    DEFAULT_ALGORITHM,
    STUDY_ID_ENV,
    WORKER_ID_ENV,
    LocalStudy,
    Study,
    connect,
    create_study,
    ensure_stack,
)
from ladder.api.trial import Trial
from ladder.client import LadderClient

log = logging.getLogger("ladder.api")

Objective = Callable[[Trial], float | None]
ProgressHook = Callable[[Any, float], None]


class WorkerFailed(RuntimeError):
    """Worker processes of ``optimize`` ended with an error (tracebacks on stderr);
    ``exit_codes`` names them."""

    def __init__(self, message: str, exit_codes: dict[str, int | None]) -> None:
        super().__init__(message)
        self.exit_codes = exit_codes


def run_objective(study: Study, objective: Objective,
                  catch: tuple[type[BaseException], ...] = (), **trials: Any) -> None:
    """This process as one worker of ``study``: ``objective`` on each of its trials."""
    for trial in study.trials(**trials):
        try:
            with trial:
                value = objective(trial)
                if value is not None:
                    trial.complete(value)
        except catch as exc:
            log.warning("trial %s failed (%s: %s); the worker goes on", trial.trial_id,
                        type(exc).__name__, exc)


def _worker_main(objective: Objective, study_id: str, worker_id: str, env: Mapping[str, str],
                 catch: tuple[type[BaseException], ...], trials: dict[str, Any]) -> None:
    """A worker process of ``optimize`` (a fresh interpreter)."""
    os.environ.update(env)
    logging.basicConfig(level=os.environ.get("LADDER_LOG_LEVEL", "WARNING").upper(),
                        format=f"%(asctime)s {worker_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    client = LadderClient()
    try:
        study = Study(client, client.get_study(study_id))
        run_objective(study, objective, catch, worker_id=worker_id, **trials)
    finally:
        client.close()


class _Watch:
    """The progress of a study while its workers run: a line, or the caller's hook."""

    def __init__(self, study: Study, progress: bool | ProgressHook, max_trials: int,
                 workers: Callable[[], int]) -> None:
        self.study = study
        self.hook = progress if callable(progress) else None
        self.line = Progress() if progress is True else None
        self.max_trials = max_trials
        self.workers = workers
        self.started = time.monotonic()
        self._last = 0.0

    def tick(self, force: bool = False) -> None:
        if self.hook is None and self.line is None:
            return
        if not force and time.monotonic() - self._last < 1.0:
            return
        self._last = time.monotonic()
        summary = self.study.summary()
        elapsed = time.monotonic() - self.started
        if self.hook is not None:
            self.hook(summary, elapsed)
        if self.line is not None:
            self.line.show(progress_line(summary, elapsed, self.max_trials, self.workers(),
                                         self.study.metric), force=force)

    def end(self) -> None:
        self.tick(force=True)
        if self.line is not None:
            self.line.end()


def optimize(
    objective: Objective,
    space: Mapping[str, Mapping[str, Any]],
    n_trials: int,
    n_workers: int = 1,
    *,
    metric: str = "val_loss",
    direction: str = "minimize",
    scheduler: str | Mapping[str, Any] | None = None,
    max_steps: int = 0,
    algorithm: str = DEFAULT_ALGORITHM,
    study_id: str | None = None,
    name: str = "",
    seed: int = 0,
    dataset_id: str = "",
    dataset_files: Sequence[str | os.PathLike[str]] = (),
    trial_policy: Mapping[str, Any] | None = None,
    catch: tuple[type[BaseException], ...] = (),
    timeout: float | None = None,
    progress: bool | ProgressHook = False,
    checkpoint_every: int | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Study:
    """Run a study of ``n_trials`` with ``n_workers`` worker processes of ``objective``
    (see the module docstring); the study, settled. ``progress``: True prints a
    progress line, a callable gets ``(lineage summary, seconds)`` every second.
    The study's arguments are ``create_study``'s."""
    if n_trials < 1 or n_workers < 1:
        raise ValueError("n_trials and n_workers must be at least 1")
    plan = local.active_plan()
    if plan is not None:  # `ladder reproduce`: the recorded trial, here
        study: Study = LocalStudy(plan)
        run_objective(study, objective, catch, handle_signals=True)
        return study
    if os.environ.get(WORKER_ID_ENV) and os.environ.get(STUDY_ID_ENV):
        n_workers = 1  # one of `ladder run`'s workers: `-n` says how many there are
    env = {**os.environ, **ensure_stack(state_dir)}
    client = connect(start_stack=False)
    study = create_study(
        space, metric=metric, direction=direction, scheduler=scheduler, max_steps=max_steps,
        max_trials=n_trials, algorithm=algorithm, name=name, study_id=study_id, seed=seed,
        dataset_id=dataset_id, dataset_files=dataset_files, trial_policy=trial_policy,
        client=client, **options,
    )
    trials = {"dataset_files": list(dataset_files), "checkpoint_every": checkpoint_every}
    if n_workers == 1:
        _in_process(study, objective, catch, trials, progress, timeout)
    else:
        _in_processes(study, objective, catch, trials, progress, timeout, n_workers, env)
    study.settled()
    return study


def _in_process(study: Study, objective: Objective, catch: tuple[type[BaseException], ...],
                trials: dict[str, Any], progress: bool | ProgressHook,
                timeout: float | None) -> None:
    watch = _Watch(study, progress, study.config.max_trials, lambda: 1)
    done = threading.Event()

    def show() -> None:
        while not done.wait(0.5):
            watch.tick()

    shower = threading.Thread(target=show, name="progress", daemon=True)
    shower.start()
    timer = threading.Timer(timeout, os.kill, (os.getpid(), signal.SIGTERM)) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        run_objective(study, objective, catch, **trials)
    finally:
        if timer is not None:
            timer.cancel()
        done.set()
        shower.join()
        watch.end()


def _in_processes(study: Study, objective: Objective,
                  catch: tuple[type[BaseException], ...], trials: dict[str, Any],
                  progress: bool | ProgressHook, timeout: float | None, n_workers: int,
                  env: dict[str, str]) -> None:
    pool = ProcessPool()
    env = {**env, STUDY_ID_ENV: study.study_id}
    watch = _Watch(study, progress, study.config.max_trials, pool.running)
    with forwarding_signals(pool) as signals:
        for index in range(n_workers):
            worker_id = f"{study.study_id}-w{index}"
            pool.spawn_function(worker_id, _worker_main, objective, study.study_id, worker_id,
                                {**env, WORKER_ID_ENV: worker_id}, catch, trials)
        try:
            if not pool.wait(timeout, tick=watch.tick):
                log.warning("optimize: %s s passed; the workers hand their trials back",
                            timeout)
                pool.stop(DEFAULT_GRACE_S)
        except KeyboardInterrupt:
            pool.stop(DEFAULT_GRACE_S)
            raise
        finally:
            watch.end()
    failed = {name: code for name, code in pool.exit_codes().items() if code}
    if failed and not signals and timeout is None:
        raise WorkerFailed(f"worker processes failed: {failed} (tracebacks above)", failed)
