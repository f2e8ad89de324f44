"""Model-based samplers in a child process, so refits never share the GIL with requests.

A refit thread running BoTorch in the suggest process holds the GIL for long
stretches of Python (model fitting, acquisition optimisation); every blocking
call of a request thread (Redis, Kafka, gRPC) must re-acquire it afterwards and
waits up to a switch interval each time, behind a thread the OS may also have
descheduled. With ``LADDER_SUGGEST_REFIT=process`` (the default) the samplers
live in one child process (started lazily, at a lower CPU priority: ``nice``
``LADDER_REFIT_NICE``, default 5): the buffers' refit threads only wait on a
pipe, and the request path runs with the GIL to itself.

``RefitProcess.refit(study_id, spec, partition, observations)`` is a policy's
``Refit`` whose sampler runs in the child (which rebuilds the ``StudySpec`` from
its defaulted config once per study). The child mirrors each study's observations:
every call sends only the changes of the study's ``ObservationStore`` the child
has not seen yet (a fresh child gets them all). The child reserves draws from
the same Redis counters (``TrialStore.reserve_draws``) as the fallback sampler
in the parent, so draw indices stay unique. One pipe serves all the parent's
policies, one call at a time. If the child dies, the next call restarts it and
re-sends the observations, so the worst case is a few fallback answers.
``thread`` mode keeps the samplers in-process (tests, debugging).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from multiprocessing.connection import Connection

from ladder.config import Settings, Topics
from ladder.samplers import Observation, ObservationStore, Proposal, Refit, Sampler, make_sampler
from ladder.samplers.base import ObservationKey
from ladder.samplers.policy import Pending
from ladder.study import StudySpec
from ladder.v1 import study_pb2

log = logging.getLogger("ladder.suggest.refit")


class RefitError(RuntimeError):
    """The child process failed a call (its traceback is in the message)."""


class RefitProcess:
    """The child process holding the samplers; its ``refit`` callables are thread-safe."""

    def __init__(self, settings: Settings, nice: int) -> None:
        self.settings = settings
        self.nice = nice
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        # Per study: how many of its store's changes the current child has.
        self._sent: dict[str, int] = {}
        self._closed = False

    def _ensure(self) -> None:
        if self._closed:
            raise RefitError("refit process stopped (service shutting down)")
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            return
        if self._proc is not None:
            log.warning("refit process exited (%s); restarting it", self._proc.exitcode)
        # spawn, not fork: the parent runs gRPC and Kafka threads.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        settings = (self.settings.redis_url, self.settings.topics.prefix)
        self._proc = context.Process(
            target=_child_main, args=(child, settings, self.nice), name="ladder-refit", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._sent.clear()  # a new child starts without observations
        log.info("refit process started (pid %d, nice +%d)", self._proc.pid, self.nice)

    def refit(
        self, study_id: str, spec: StudySpec, partition: int, observations: ObservationStore
    ) -> Refit:
        """The ``Refit`` of one (study, partition), computed in the child."""
        # The spec travels as its defaulted config (protobuf bytes pickle cheaply);
        # the child rebuilds the spec from it once per study.
        config = study_pb2.Study(study_id=study_id, config=spec.to_proto()).SerializeToString()

        def refit(count: int, pending: Pending) -> list[Proposal]:
            return self._suggest(config, study_id, partition, observations, count, pending)

        return refit

    def _suggest(
        self,
        config: bytes,
        study_id: str,
        partition: int,
        observations: ObservationStore,
        count: int,
        pending: Pending,
    ) -> list[Proposal]:
        with self._lock:
            self._ensure()
            assert self._conn is not None
            changes, cursor = observations.changes_since(self._sent.get(study_id, 0))
            message = (config, partition, changes, count, [dict(p) for p in pending])
            try:
                self._conn.send(message)
                status, result = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._conn = None
                raise RefitError(f"refit process lost during a refit: {exc!r}") from exc
            self._sent[study_id] = cursor  # the child applies changes before it suggests
            if status != "ok":
                raise RefitError(result)
            return result

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (it holds no state worth keeping: samplers are rebuilt
        from the observations). Not under ``_lock``: a refit in flight may hold it;
        its caller gets a RefitError when the pipe breaks."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
        log.info("refit process %d stopped (exit code %s)", proc.pid, proc.exitcode)


def _child_main(conn: Connection, settings: tuple[str, str], nice: int) -> None:
    """The refit process: apply each message's observation changes to the study's
    mirror, build the partition's sampler on first use, answer its suggestions."""
    from ladder.state import open_state

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if nice:
        os.nice(nice)
    redis_url, prefix = settings
    state = open_state(Settings(kafka_bootstrap="", redis_url=redis_url, topics=Topics(prefix)))
    samplers: dict[tuple[str, int], Sampler] = {}
    specs: dict[str, StudySpec] = {}
    mirrors: dict[str, dict[ObservationKey, Observation]] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        config, partition, changes, count, pending = message
        try:
            study = study_pb2.Study.FromString(config)
            mirror = mirrors.setdefault(study.study_id, {})
            mirror.update((o.key, o) for o in changes)
            key = (study.study_id, partition)
            sampler = samplers.get(key)
            if sampler is None:
                spec = specs.get(study.study_id)
                if spec is None:
                    spec = specs[study.study_id] = StudySpec.from_proto(study.config)
                sampler = samplers[key] = make_sampler(
                    spec,
                    partition,
                    lambda n, s=study.study_id, p=partition: state.trials.reserve_draws(s, p, n),
                )
            conn.send(("ok", sampler.suggest(list(mirror.values()), count, pending)))
        except Exception:  # noqa: BLE001 - reported to the caller, the process goes on
            conn.send(("error", traceback.format_exc()))
