"""Studies of the Python API: ``ladder.create_study`` / ``ladder.load_study`` and the
``trials()`` loop a training script runs::

    import ladder

    study = ladder.create_study(space={...}, metric="val_loss", scheduler="asha",
                                max_steps=27, max_trials=64)
    for trial in study.trials():          # pulls, leases, heartbeats in the background
        with trial:                       # an exception fails the trial with its class
            ...                           # see ladder.api.trial
    print(study.best_params)

Where the stack is: the addresses of the environment (LADDER_SUGGEST_ADDR, ...; see
``ladder.config``) when given, else the embedded stack of LADDER_STATE_DIR (default
``./.ladder``), started when it is not running (``ladder down`` stops it).

Which study: ``study_id`` when given, else LADDER_STUDY_ID (``ladder run`` and
``ladder.optimize`` set it, so N processes of one script share one study), else a new
one. Creating a study again with the same id and config returns it.

Each process is one worker (id: ``worker_id``, else LADDER_WORKER_ID, else
``<host>-<pid>``): ``trials()`` yields one trial at a time until the study's budget is
spent. Before a trial is yielded, ``random``, NumPy and torch are seeded with the
trial's seed. The first SIGTERM or Ctrl-C is a preemption notice: ``should_stop()``
turns True, the trial is checkpointed and handed back (PREEMPTED, resumed by the next
worker) and the loop ends; a second one quits at once (the trial then resumes from its
last checkpoint). A loop left while a trial runs without ``with trial:`` saying why
fails it as INFRASTRUCTURE (retried), or hands it back after a stop request.

Lineage is captured, not typed (``ladder.runenv``): each attempt's StartTrial carries
Python, OS, host, CPU/GPU, the git commit of the script's folder (and whether it was
dirty), the installed packages, the dataset id (``dataset_id``, else a hash of
``dataset_files``) and the command line.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from ladder import runenv
from ladder.api import local, snapshots
from ladder.api.attempt import Outcome, Session, TrialClient, WorkerConfig, WorkerReport
from ladder.api.trial import Trial
from ladder.client import LadderClient, study_config, wait_until
from ladder.config import state_dir as default_state_dir
from ladder.params import PlainValue, fill_params, params_to_dict
from ladder.stack import probes
from ladder.study import StudySpec
from ladder.v1 import lineage_pb2, study_pb2

log = logging.getLogger("ladder.api")

STUDY_ID_ENV = "LADDER_STUDY_ID"
WORKER_ID_ENV = "LADDER_WORKER_ID"
DEFAULT_ALGORITHM = "auto"
BEST_WAIT_S = 10.0
WORKER_RETRY_ENV = "LADDER_WORKER_RETRY_S"
DEFAULT_WORKER_RETRY_S = 600.0
PROBE_S = 2.0


# --- the stack ---------------------------------------------------------------------------


def external_endpoints() -> bool:
    """The environment names the services (a deployment, a test): start nothing."""
    return bool(os.environ.get("LADDER_SUGGEST_ADDR"))


def ensure_stack(state_dir: Path | str | None = None) -> dict[str, str]:
    """Start the embedded stack of ``state_dir`` (default LADDER_STATE_DIR) unless it
    runs, or the environment names other endpoints; the environment a child process
    needs to reach it (empty for external endpoints)."""
    if external_endpoints():
        return {}
    from ladder.stack import launcher

    def say(message: str) -> None:
        print(f"ladder: {message}", file=sys.stderr, flush=True)

    stack = launcher.Stack(state_dir, log=say)
    info = stack.up()
    if not info.get("reused"):
        say(f"the embedded stack runs in {stack.state_dir} (`ladder down` stops it)")
    env = stack.env()
    # This process's clients read the same stack.
    os.environ["LADDER_STATE_DIR"] = env["LADDER_STATE_DIR"]
    return env


def worker_retry_seconds() -> float:
    """How long a worker's call to a service that is down is retried: LADDER_WORKER_RETRY_S,
    else minutes (an operator restarting a component must not cost every worker its
    process; the SDK's default is 30 s)."""
    return float(os.environ.get(WORKER_RETRY_ENV) or DEFAULT_WORKER_RETRY_S)


def connect(start_stack: bool = True) -> LadderClient:
    """A client of the configured stack, started first when ``start_stack`` and none runs
    (ConnectionError within seconds when the configured address answers nothing). Its
    calls ride through a service restart (``worker_retry_seconds``); it is closed at
    exit, so the metrics sent are flushed."""
    if start_stack:
        ensure_stack()
    client = LadderClient(retry_timeout=worker_retry_seconds(), readdress=True)
    addr = client.settings.suggest_addr
    if not probes.serving(addr, timeout=PROBE_S):
        client.close()
        raise ConnectionError(
            f"no Ladder stack at {addr}: run `ladder up` or set LADDER_SUGGEST_ADDR"
        )
    atexit.register(client.close)
    return client


# --- creating and loading ------------------------------------------------------------------


def _scheduler(scheduler: str | Mapping[str, Any] | None, max_steps: int
               ) -> dict[str, Any] | None:
    if scheduler is None or scheduler == "none":
        return {"kind": "none", "max_resource": max_steps} if max_steps else None
    spec = {"kind": scheduler} if isinstance(scheduler, str) else dict(scheduler)
    if max_steps and not spec.get("max_resource"):
        spec["max_resource"] = max_steps
    return spec


def study_id_from_env() -> str:
    return os.environ.get(STUDY_ID_ENV, "")


def create_study(
    space: Mapping[str, Mapping[str, Any]],
    *,
    metric: str = "val_loss",
    direction: str = "minimize",
    scheduler: str | Mapping[str, Any] | None = None,
    max_steps: int = 0,
    max_trials: int = 0,
    algorithm: str = DEFAULT_ALGORITHM,
    name: str = "",
    study_id: str | None = None,
    seed: int = 0,
    dataset_id: str = "",
    dataset_files: Sequence[str | os.PathLike[str]] = (),
    trial_policy: Mapping[str, Any] | None = None,
    client: LadderClient | None = None,
    **options: Any,
) -> Study:
    """Create a study (or get it back: same id, same config) and return it.

    ``space``: the plain-dict search space (``ladder.client.search_space``).
    ``scheduler``: "asha", "hyperband", "median" or a dict of
    ``ladder.client.scheduler_config`` arguments (``{"kind": "asha", "form":
    "promotion"}``); ``max_steps`` is its ``max_resource`` (the steps of a full trial).
    ``max_trials``: the budget (0: unbounded). ``trial_policy``: TrialPolicy fields
    (``{"checkpoint_interval_steps": 3}``). Other keywords go to
    ``ladder.client.study_config`` (partitions, labels, warm_start, ...).
    """
    plan = local.active_plan()
    if plan is not None:
        return LocalStudy(plan)
    client = client or connect()
    dataset = dataset_id or (runenv.dataset_hash(dataset_files) if dataset_files else "")
    code = runenv.code_state(runenv.script_folder())
    config = study_config(
        space,
        name=name,
        metric=metric,
        direction=direction,
        algorithm=algorithm,
        scheduler=_scheduler(scheduler, max_steps),
        max_trials=max_trials,
        seed=seed,
        dataset_id=dataset,
        code_commit=f"{code.commit}-dirty" if code.dirty else code.commit,
        **options,
    )
    for key, value in (trial_policy or {}).items():
        setattr(config.trial_policy, key, value)
    StudySpec.from_proto(config)  # the trial policy's checks
    created = client.create_study(config, study_id=study_id or study_id_from_env() or None)
    return Study(client, created, dataset_id=dataset)


def load_study(study_id: str, client: LadderClient | None = None) -> Study:
    """The study ``study_id`` (NOT_FOUND as a grpc.RpcError when there is none)."""
    plan = local.active_plan()
    if plan is not None:
        return LocalStudy(plan)
    client = client or connect()
    return Study(client, client.get_study(study_id), dataset_id="")


def default_worker_id() -> str:
    return os.environ.get(WORKER_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}"


@contextmanager
def stop_signals(session: Session, enabled: bool = True) -> Iterator[None]:
    """SIGTERM / SIGINT as a preemption notice while the block runs (main thread only):
    the first asks the session to stop, a second raises KeyboardInterrupt."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            raise KeyboardInterrupt(f"signal {signum} again")
        log.warning("signal %d: the trial is checkpointed and handed back at the next "
                    "should_stop() (again to quit now)", signum)
        session.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- the study ----------------------------------------------------------------------------


class Study:
    """A study on the stack: its trials to run, and what lineage knows of its results."""

    def __init__(self, client: TrialClient | LadderClient, study: study_pb2.Study,
                 dataset_id: str = "") -> None:
        self.client = client
        self._study = study
        self.dataset_id = dataset_id or study.config.dataset_id
        self.report = WorkerReport()  # the outcomes of this process's trials() so far

    @property
    def study_id(self) -> str:
        return self._study.study_id

    @property
    def config(self) -> study_pb2.StudyConfig:
        return self._study.config

    @property
    def metric(self) -> str:
        return self._study.config.metric

    @property
    def maximize(self) -> bool:
        return self._study.config.direction == study_pb2.MAXIMIZE

    def __repr__(self) -> str:
        return f"Study({self.study_id!r}, metric={self.metric!r})"

    def _state_dir(self) -> Path:
        settings = getattr(self.client, "settings", None)
        return settings.state_dir if settings is not None else default_state_dir()

    def _session(self, config: WorkerConfig, dataset_files: Sequence[str | os.PathLike[str]]
                 ) -> Session:
        environment = runenv.capture(dataset_id=self.dataset_id, dataset_files=dataset_files)
        return Session(self.client, config, run_environment=environment,  # type: ignore[arg-type]
                       default_metric=self.metric)

    def trials(
        self,
        worker_id: str | None = None,
        *,
        max_trials: int | None = None,
        dataset_files: Sequence[str | os.PathLike[str]] = (),
        checkpoint_url: str | None = None,
        checkpoint_every: int | None = None,
        decision_wait: float = 3.0,
        handle_signals: bool = True,
    ) -> Iterator[Trial]:
        """This worker's trials, one at a time, until the budget is spent (or
        ``max_trials`` were taken, or a stop was requested). ``checkpoint_every``:
        steps between checkpoints instead of the study's trial policy (0: only at a
        PAUSE or a hand-back); ``checkpoint_url``: ``s3://`` or ``file://`` (default:
        the stack's object store, else ``<state>/checkpoints``)."""
        config = WorkerConfig(
            study_id=self.study_id,
            worker_id=worker_id or default_worker_id(),
            state_dir=self._state_dir(),
            checkpoint_every=checkpoint_every,
            checkpoint_url=checkpoint_url or os.environ.get("LADDER_CHECKPOINT_URL") or None,
            decision_wait=decision_wait,
            max_trials=max_trials,
        )
        session = self._session(config, dataset_files)
        with stop_signals(session, enabled=handle_signals):
            for suggestion in session.suggestions(self.report):
                attempt = session.begin(suggestion)
                if attempt is None:
                    self.report.add(Outcome.LOST)
                    continue
                trial = Trial(session, attempt)
                snapshots.seed_everything(attempt.seed)
                left = True
                try:
                    yield trial
                    left = False
                finally:
                    try:
                        if left:
                            trial._abandon(session.stopping)
                        else:
                            trial._finish()
                    finally:
                        self.report.add(attempt.outcome or Outcome.LOST)
                        session.finished(attempt)
        session.log_totals(self.report)

    # -- results (lineage)

    @property
    def best_trial(self) -> lineage_pb2.TrialLineage | None:
        """The best completed trial's full lineage; None while there is none. Lineage
        learns of results through Kafka, a moment after the worker's call: right after
        a trials() loop it is waited for (``BEST_WAIT_S`` at most)."""
        client = self.client
        best = client.best(self.study_id)  # type: ignore[union-attr]
        if best is None and self.report.outcomes.get(Outcome.COMPLETED.value):
            best = wait_until(lambda: client.best(self.study_id),  # type: ignore[union-attr]
                              BEST_WAIT_S, every=0.25)
        return best

    def recommended_trial(self) -> lineage_pb2.TrialLineage | None:
        """The completed trial to recommend when the metric is noisy: the one whose
        posterior mean under a GP fitted to the completed trials is best
        (``LadderClient.recommended``). ``best_trial`` is the best observed value, which
        a lucky draw can win; on a deterministic metric both are the same trial. None
        while no trial has completed."""
        return self.client.recommended(self.study_id)  # type: ignore[union-attr]

    @property
    def best_params(self) -> dict[str, PlainValue]:
        best = self.best_trial
        if best is None:
            raise ValueError(f"study {self.study_id} has no completed trial yet")
        return params_to_dict(best.params)

    @property
    def best_value(self) -> float:
        best = self.best_trial
        if best is None:
            raise ValueError(f"study {self.study_id} has no completed trial yet")
        return best.final_value

    def summary(self) -> lineage_pb2.StudySummary:
        """Counts by state and the best value, from lineage (empty until lineage has
        seen the study: it learns of it from Kafka, a moment after CreateStudy)."""
        try:
            return self.client.summary(self.study_id)  # type: ignore[union-attr]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return lineage_pb2.StudySummary(study_id=self.study_id)

    def settled(self, timeout: float = 30.0) -> lineage_pb2.StudySummary:
        """The summary once lineage has every outcome (nothing running or waiting to
        start), or as it is after ``timeout`` seconds: outcomes reach lineage through
        Kafka, a moment after the workers' calls."""

        def done() -> lineage_pb2.StudySummary | None:
            summary = self.summary()
            finished = summary.completed + summary.pruned + summary.failed
            return summary if finished and not summary.running and not summary.suggested \
                else None

        return wait_until(done, timeout, every=0.25) or self.summary()

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


class LocalStudy(Study):
    """The study of the local mode (``ladder reproduce``): one trial, no server."""

    def __init__(self, plan: local.Plan) -> None:
        client = local.LocalClient(plan)
        super().__init__(client, client.get_study(plan.study_id))
        self.plan = plan

    def _session(self, config: WorkerConfig, dataset_files: Sequence[str | os.PathLike[str]]
                 ) -> Session:
        from ladder.checkpoints import FileCheckpointStore

        config.checkpoint_every = 0  # nothing is resumed from a local run
        store = FileCheckpointStore(Path(self.plan.output).parent / "checkpoints")
        return Session(self.client, config, store,  # type: ignore[arg-type]
                       default_metric=self.metric)

    @property
    def best_trial(self) -> lineage_pb2.TrialLineage | None:
        """The re-run trial as it ended here (None unless it completed)."""
        curve, end = local.read_curve(Path(self.plan.output))
        if end.get("outcome") != "completed":
            return None
        best = lineage_pb2.TrialLineage(
            trial_id=self.plan.trial_id, study_id=self.study_id, seed=self.plan.seed,
            state="completed", has_final_value=True, final_value=float(end["value"]),
            metric=self.metric,
        )
        fill_params(best.params, self.plan.params)
        for step, value in sorted(curve.items()):
            best.metrics.add(step=step, value=value)
        return best

    def recommended_trial(self) -> lineage_pb2.TrialLineage | None:
        """The re-run trial: the only one there is."""
        return self.best_trial

    def summary(self) -> lineage_pb2.StudySummary:
        best = self.best_trial
        return lineage_pb2.StudySummary(
            study_id=self.study_id, completed=int(best is not None),
            has_best=best is not None, best_value=best.final_value if best else 0.0,
            best_trial_id=best.trial_id if best else "",
        )

    def settled(self, timeout: float = 30.0) -> lineage_pb2.StudySummary:
        return self.summary()
