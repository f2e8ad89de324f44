"""Model-based samplers in a child process, so refits never share the GIL with requests.

A refit thread running BoTorch in the suggest process holds the GIL for long
stretches of Python (model fitting, acquisition optimisation); every blocking
call of a request thread (Redis, Kafka, gRPC) must re-acquire it afterwards and
waits up to a switch interval each time, behind a thread the OS may also have
descheduled. With ``LADDER_SUGGEST_REFIT=process`` (the default) the samplers
live in one child process (started lazily, at a lower CPU priority: ``nice``
``LADDER_REFIT_NICE``, default 5): the buffers' refit threads only wait on a
pipe, and the request path runs with the GIL to itself.

``RemoteSampler`` is a ``Sampler`` whose ``update`` / ``suggest`` run in the child;
the child reserves draws from the same Redis counters (``TrialStore.reserve_draws``)
as the fallback sampler in the parent, so draw indices stay unique. One pipe
serves all the parent's buffers, one call at a time. If the child dies, the
next call restarts it and the buffer's retry path re-creates the sampler state
(``RemoteSampler`` re-sends its observations), so the worst case is a few
fallback answers. ``thread`` mode keeps the samplers in-process (tests, debugging).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ladder.config import Settings, Topics
from ladder.params import PlainValue
from ladder.samplers import Observation, Proposal, Sampler, SamplerContext, make_sampler
from ladder.space import Space
from ladder.v1 import study_pb2

log = logging.getLogger("ladder.suggest.refit")


class RefitError(RuntimeError):
    """The child process failed a call (its traceback is in the message)."""


class RefitProcess:
    """The child process holding the samplers; ``call`` is thread-safe."""

    def __init__(self, settings: Settings, nice: int) -> None:
        self.settings = settings
        self.nice = nice
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self.generation = 0  # bumped on every (re)start: samplers must be reopened
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
        self.generation += 1
        log.info("refit process started (pid %d, nice +%d)", self._proc.pid, self.nice)

    def call(self, op: str, key: tuple[str, int], payload: Any) -> tuple[int, Any]:
        """Run ``op`` in the child; returns (process generation, result)."""
        with self._lock:
            self._ensure()
            assert self._conn is not None
            try:
                self._conn.send((op, key, payload))
                status, result = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._conn = None
                raise RefitError(f"refit process lost during {op}: {exc!r}") from exc
            if status != "ok":
                raise RefitError(result)
            return self.generation, result

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


class RemoteSampler(Sampler):
    """A study partition's sampler living in the ``RefitProcess``."""

    def __init__(
        self, process: RefitProcess, study: study_pb2.Study, partition: int, space: Space
    ) -> None:
        super().__init__(SamplerContext(space=space, seed=study.config.seed, partition=partition))
        self.process = process
        self.key = (study.study_id, partition)
        self._study = study.SerializeToString()
        self._generation = -1
        self.uses_pending = True
        self.algorithm = ""

    def _open(self) -> bool:
        """Make sure the child has this sampler; True if it (re)received every
        observation (a new or restarted child starts empty)."""
        generation, algorithm = self.process.call("open", self.key, self._study)
        if generation == self._generation:
            return False
        self._generation = generation
        self.algorithm = algorithm
        if self.observations:
            self.process.call("update", self.key, list(self.observations.values()))
        return True

    def update(self, completed: Sequence[Observation]) -> None:
        # Recorded here first: if the child is lost, the next call restarts it
        # and re-sends them all, so no observation is lost with it.
        super().update(completed)
        if not self._open():
            self.process.call("update", self.key, list(completed))

    def suggest(
        self, count: int, pending: Sequence[Mapping[str, PlainValue]] = ()
    ) -> list[Proposal]:
        self._open()
        _, (proposals, algorithm) = self.process.call(
            "suggest", self.key, (count, [dict(p) for p in pending])
        )
        self.algorithm = algorithm  # AUTO reports the sampler of its latest call
        return proposals


def _child_main(conn: Connection, settings: tuple[str, str], nice: int) -> None:
    """The refit process: build samplers on ``open``, answer update / suggest."""
    from ladder.state import open_state

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if nice:
        os.nice(nice)
    redis_url, prefix = settings
    state = open_state(Settings(kafka_bootstrap="", redis_url=redis_url, topics=Topics(prefix)))
    samplers: dict[tuple[str, int], Sampler] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        op, key, payload = message
        try:
            if op == "open":
                sampler = samplers.get(key)
                if sampler is None:
                    study = study_pb2.Study.FromString(payload)
                    study_id, partition = key
                    sampler = samplers[key] = make_sampler(
                        study.config,
                        Space.from_proto(study.config.space),
                        partition,
                        lambda n, s=study_id, p=partition: state.trials.reserve_draws(s, p, n),
                        study_id,
                    )
                result: Any = sampler.algorithm
            elif op == "update":
                samplers[key].update(payload)
                result = None
            elif op == "suggest":
                count, pending = payload
                result = (samplers[key].suggest(count, pending), samplers[key].algorithm)
            else:
                raise ValueError(f"unknown op {op!r}")
            conn.send(("ok", result))
        except Exception:  # noqa: BLE001 - reported to the caller, the process goes on
            conn.send(("error", traceback.format_exc()))
