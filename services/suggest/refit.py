"""Model-based samplers in child processes, so refits never share the GIL with requests.

A refit thread running BoTorch in the suggest process holds the GIL for long
stretches of Python (model fitting, acquisition optimisation); every blocking
call of a request thread (Redis, Kafka, gRPC) must re-acquire it afterwards and
waits up to a switch interval each time, behind a thread the OS may also have
descheduled. With ``LADDER_SUGGEST_REFIT=process`` (the default) the samplers
live in child processes (started lazily, at a lower CPU priority: ``nice``
``LADDER_REFIT_NICE``, default 5, and ``SCHED_IDLE`` where the service's niceness
leaves no room for it, ``ladder.priority``): the buffers' refit threads only wait on a
pipe, and the request path runs with the GIL to itself.

``RefitProcess.refit(study_id, spec, partition, observations)`` is a policy's
``Refit`` whose sampler runs in a child (which rebuilds the ``StudySpec`` from
its defaulted config once per study). Each child mirrors the observations of the
studies it served: every call sends only the changes of the study's
``ObservationStore`` that child has not seen yet (a fresh child gets them all).
The children reserve draws from the same Redis counters
(``TrialStore.reserve_draws``) as the fallback samplers in the parent, so draw
indices stay unique. If a child dies, the next call on it restarts it and
re-sends the observations, so the worst case is a few fallback answers.
``thread`` mode keeps the samplers in-process (tests, debugging).

Refits in parallel: up to ``processes`` children (``LADDER_REFIT_PROCESSES``,
default 2), each running one refit at a time; a refit takes any idle child (the one
that last served its partition when that one is idle: its sampler keeps the last
fit's hyperparameters as the next fit's start), a new child is started when all
are busy and fewer than ``processes`` run, and otherwise the refit waits for the
first child to finish (waiters are woken in arrival order). Each policy has at
most one refit in flight, so a slow GP refit holds one child and the other
partitions' refits go on in the rest: one slow study cannot starve the others
unless slow refits occupy every child. More children than cores only slices the
same CPU thinner; each child costs a torch import's memory once it runs a GP.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from ladder.config import Settings, Topics
from ladder.priority import lower_priority
from ladder.samplers import Observation, ObservationStore, Proposal, Refit, Sampler, make_sampler
from ladder.samplers.base import ObservationKey
from ladder.samplers.policy import Pending
from ladder.study import StudySpec
from ladder.v1 import study_pb2

log = logging.getLogger("ladder.suggest.refit")

DEFAULT_PROCESSES = 2


class RefitError(RuntimeError):
    """The child process failed a call (its traceback is in the message)."""


@dataclass(eq=False)
class _Child:
    """One refit child process, used by one refit at a time."""

    index: int
    proc: multiprocessing.process.BaseProcess | None = None
    conn: Connection | None = None
    # Per study: how many of its store's changes this child has.
    sent: dict[str, int] = field(default_factory=dict)


class RefitProcess:
    """The child processes holding the samplers; its ``refit`` callables are thread-safe."""

    def __init__(self, settings: Settings, nice: int, processes: int = DEFAULT_PROCESSES) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1 (got {processes})")
        self.settings = settings
        self.nice = nice
        self.processes = processes
        self._cond = threading.Condition()
        self._children: list[_Child] = []
        self._idle: list[_Child] = []
        self._affinity: dict[tuple[str, int], _Child] = {}
        self._closed = False

    def _acquire(self, key: tuple[str, int]) -> _Child:
        """An idle child for the partition ``key`` (module docstring), started if need be."""
        with self._cond:
            while True:
                if self._closed:
                    raise RefitError("refit process stopped (service shutting down)")
                if self._idle:
                    preferred = self._affinity.get(key)
                    child = preferred if preferred in self._idle else self._idle[0]
                    self._idle.remove(child)
                    break
                if len(self._children) < self.processes:
                    child = _Child(len(self._children))
                    self._children.append(child)
                    break
                self._cond.wait()
            self._affinity[key] = child
        return child

    def _release(self, child: _Child) -> None:
        with self._cond:
            self._idle.append(child)
            self._cond.notify()

    def _ensure(self, child: _Child) -> None:
        if child.proc is not None and child.proc.is_alive() and child.conn is not None:
            return
        if child.proc is not None:
            log.warning(
                "refit process %d exited (%s); restarting it", child.index, child.proc.exitcode
            )
        # spawn, not fork: the parent runs gRPC and Kafka threads.
        context = multiprocessing.get_context("spawn")
        parent, conn = context.Pipe()
        settings = (self.settings.redis_url, self.settings.topics.prefix)
        child.proc = context.Process(
            target=_child_main,
            args=(conn, settings, self.nice),
            name=f"ladder-refit-{child.index}",
            daemon=True,
        )
        child.proc.start()
        conn.close()
        child.conn = parent
        child.sent.clear()  # a new child starts without observations
        log.info(
            "refit process %d started (pid %d, nice +%d)", child.index, child.proc.pid, self.nice
        )

    def refit(
        self, study_id: str, spec: StudySpec, partition: int, observations: ObservationStore
    ) -> Refit:
        """The ``Refit`` of one (study, partition), computed in a child."""
        # The spec travels as its defaulted config (protobuf bytes pickle cheaply);
        # a child rebuilds the spec from it once per study.
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
        child = self._acquire((study_id, partition))
        try:
            with self._cond:
                if self._closed:
                    raise RefitError("refit process stopped (service shutting down)")
                self._ensure(child)
            assert child.conn is not None
            changes, cursor = observations.changes_since(child.sent.get(study_id, 0))
            message = (config, partition, changes, count, [dict(p) for p in pending])
            try:
                child.conn.send(message)
                status, result = child.conn.recv()
            except (EOFError, OSError) as exc:
                child.conn = None
                raise RefitError(f"refit process lost during a refit: {exc!r}") from exc
            child.sent[study_id] = cursor  # the child applies changes before it suggests
            if status != "ok":
                raise RefitError(result)
            return result
        finally:
            self._release(child)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the children (they hold no state worth keeping: samplers are
        rebuilt from the observations). A refit in flight gets a RefitError when its
        pipe breaks; refits waiting for a child get one at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            procs = [c.proc for c in self._children if c.proc is not None]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)
            log.info("refit process %d stopped (exit code %s)", proc.pid, proc.exitcode)


def _child_main(conn: Connection, settings: tuple[str, str], nice: int) -> None:
    """A refit process: apply each message's observation changes to the study's
    mirror, build the partition's sampler on first use, answer its suggestions."""
    from ladder.state import open_state

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # Below the parent even when its niceness leaves no room (SCHED_IDLE then).
    lower_priority(nice)
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
