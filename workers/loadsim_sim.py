"""One simulator process: many simulated workers on one asyncio loop.

Each simulated worker runs the real trial protocol against the real services:
Suggest, which starts the trial too (StartTrial only when it comes unstarted) -> one
synthetic metric report every ``1/rate`` seconds to the
metrics topic -> a Heartbeat every ``heartbeat_every`` reports (and at each rung where
the promotion form holds a trial, and with ``decision_poll`` 1, 2, 4, ... reports
after a rung until its decision comes back: ``verdict_awaited``) -> PruneTrial on
STOP, PauseTrial on PAUSE, CompleteTrial at ``max_resource``; then the next trial.

What a worker does with a Heartbeat's reply is the attempt engine's rule
(``ladder.api.attempt.move_after``, the one real workers obey): a STOP reaches the
worker on the Heartbeat after its decision, and only the promotion form holds a trial
at a rung (``decision_pending``: heartbeats paced by ``attempt.hold_pauses`` until the
verdict or ``decision_wait``). The stopping form never waits: a worker trains on
while its rung decision is pending. A real worker heartbeats on every report, so it
obeys a STOP at the first report after evaluate stored it; a simulated worker, which
heartbeats every ``heartbeat_every`` reports to spare the services, sees it up to
that many reports later. With ``decision_poll`` it polls while a decision is due
(``verdict_awaited``: 1, 2, 4, ... reports after a rung until the decision comes
back, for at most ``decision_poll`` seconds) and sees a STOP at most twice as long
after the rung as a real worker would, at a few Heartbeats per rung. Off by default:
on a host where the decisions lag behind (1,000 workers on 2 cores) the polls come
back empty and their CPU delays the decisions further.

What the process measures is returned as a :class:`ProcessResult` (plain dict): the
reports, trials and decisions seen, every suggestion's provenance (its algorithm,
whether a fitted model chose it and how stale that model was), the Suggest latency,
and the workers' idle time: waiting for Suggest, StartTrial, Heartbeat, PruneTrial,
PauseTrial and CompleteTrial answers, held at a rung, and pausing after an empty or
failed Suggest, against their time in the run.

With ``objective="bowl"`` a trial's curve also depends on its params (its floor
rises with the squared distance of each float param from ``BOWL_CENTRE``, scaled to
the parameter's range), so a model of the observations has something to learn;
without it (the default) the curves depend on the trial id only.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
import random
import resource
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiokafka
import grpc
from ladder import channels
from ladder.api.attempt import (
    STOPPED_NOT_PAUSED,
    Move,
    WorkerConfig,
    hold_pauses,
    move_after,
)
from ladder.config import Settings
from ladder.kafkaacl import WORKER
from ladder.params import params_to_dict
from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    events_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
)

CALL_TIMEOUT_S = 30.0  # per RPC; a saturated service answers late, not never
# A call refused because its service is restarting is tried again with the same request
# (every evaluate call is idempotent for its attempt id), as the worker runtime does,
# for at most this long: a simulated worker must not give up a trial it holds.
RETRY_FOR_S = 60.0
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def call(method: Any, request: Any) -> Any:
    """``method(request)``, retried with backoff while the service is unavailable."""
    give_up = time.monotonic() + RETRY_FOR_S
    pause = 0.2
    while True:
        try:
            return await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() not in _TRANSIENT or time.monotonic() + pause > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(2.0, pause * 2)


# Width of the uniform report noise: standard deviation 0.01 (width = 0.01 * sqrt(12)).
NOISE_WIDTH = 0.01 * math.sqrt(12)
# The "bowl" objective's optimum, per float param, as a fraction of its range.
BOWL_CENTRE = 0.3


@dataclass(frozen=True)
class SimConfig:
    study_id: str
    metric: str
    first_worker: int
    workers: int
    rate: float  # metric reports per second per worker
    duration: float  # seconds of simulated work
    max_resource: int  # steps of a trial that is never stopped
    heartbeat_every: int  # reports between heartbeats
    linger_ms: int  # producer linger: reports of all its workers per produce request
    ramp: float  # seconds over which the workers start (at least one report interval)
    seed: int
    start_at: float  # wall-clock time (time.time()) at which every process starts
    objective: str = "none"  # "bowl": the curves' floor depends on the params
    warmup: float = 20.0  # suggestions after this many seconds are also counted apart
    bounds: tuple[tuple[str, float, float], ...] = ()  # (name, low, high) of float params
    # Steps at which the promotion form holds a trial (a Heartbeat is due there); none
    # in the stopping form.
    hold_at: tuple[int, ...] = ()
    decision_wait: float = WorkerConfig.decision_wait  # the worker runtime's default
    # Steps of the scheduler's rungs (index = Decision.rung), and how long after
    # crossing one a worker polls for its decision (``verdict_awaited``; 0: never).
    rung_steps: tuple[int, ...] = ()
    decision_poll: float = 0.0


@dataclass
class ProcessResult:
    reports_sent: int = 0
    reports_acked: int = 0
    reports_failed: int = 0
    heartbeats: int = 0
    trials_started: int = 0
    trials_pruned: int = 0
    trials_completed: int = 0
    trials_paused: int = 0
    trials_unfinished: int = 0
    rpc_errors: dict[str, int] = field(default_factory=dict)
    stops_seen: int = 0  # STOPs obeyed (each from a Heartbeat reply)
    holds: int = 0  # reports at which evaluate held the trial (promotion form)
    # trial -> wall-clock ms at which its worker obeyed a STOP (the parent measures
    # from the report of the trial's first STOP: ``loadsim_observe.stop_obey_latencies``)
    stop_obeyed_ms: dict[str, float] = field(default_factory=dict)
    acked_max_step: dict[str, int] = field(default_factory=dict)  # trial -> last acked step
    loop_lag_ms_max: float = 0.0  # how late the event loop ran a 100 ms timer (saturation)
    # How late a worker's report came against its pace: the loop's lag plus the time
    # the worker waited for answers (a Heartbeat answered after 10 s delays the next).
    pace_lag_ms_max: float = 0.0
    max_rss_mb: float = 0.0  # the process's peak resident memory (ru_maxrss)
    # New suggestions by algorithm ("gp", "tpe-fallback", ...) and by served_by (see
    # ``served_by``); the staleness of those a fitted model chose.
    algorithms: dict[str, int] = field(default_factory=dict)
    served_by: dict[str, int] = field(default_factory=dict)
    served_by_after_warmup: dict[str, int] = field(default_factory=dict)
    algorithms_after_warmup: dict[str, int] = field(default_factory=dict)
    unseen_observations: list[int] = field(default_factory=list)
    model_age_ms: list[float] = field(default_factory=list)
    suggest_latency_ms: list[float] = field(default_factory=list)
    # Of which the calls made after the warm-up (the steady state).
    suggest_latency_after_warmup_ms: list[float] = field(default_factory=list)
    idle_s: float = 0.0  # workers' time waiting for answers (module docstring)
    idle_by_call: dict[str, float] = field(default_factory=dict)  # of which, per RPC
    worker_s: float = 0.0  # workers' time in the run


FALLBACKS = ("sobol-fallback", "tpe-fallback")


def served_by_fraction(counts: dict[str, int], source: str) -> float | None:
    """The fraction of the suggestions in ``counts`` (by served_by) that ``source`` served."""
    total = sum(counts.values())
    return round(counts.get(source, 0) / total, 4) if total else None


def served_by(suggestion: suggest_pb2.Suggestion) -> str:
    """What chose a new suggestion: a fallback by name, "model" for a fitted model of
    the study's sampler, "no-model" otherwise (initial design, quasi-random study,
    seed), as the suggest service's ``ladder.suggest.served_by`` metric counts."""
    if suggestion.algorithm in FALLBACKS:
        return suggestion.algorithm
    return "model" if suggestion.model_observations > 0 else "no-model"


@functools.lru_cache(maxsize=65536)
def _curve_family(seed: int, trial_id: str) -> tuple[float, float, float]:
    rng = random.Random(zlib.crc32(f"{seed}:{trial_id}".encode()))
    return rng.uniform(0.05, 0.6), rng.uniform(0.3, 1.5), rng.uniform(0.05, 0.5)


def curve_value(seed: int, trial_id: str, step: int, shift: float = 0.0) -> float:
    """A seeded learning curve: loss = floor + shift + span * exp(-speed * step) + noise.

    The family parameters come from a hash of (seed, trial id), so trials differ in
    quality and ASHA has something to rank; the same trial always gives the same curve.
    The noise is uniform with standard deviation 0.01, from a hash of the step: a
    seeded ``random.Random`` per report would cost more than the rest of a report.
    ``shift`` is what the trial's params add (``bowl_shift``; 0 without an objective).
    """
    floor, span, speed = _curve_family(seed, trial_id)
    unit = zlib.crc32(f"{seed}:{trial_id}:{step}".encode()) / 2**32
    noise = (unit - 0.5) * NOISE_WIDTH
    return round(floor + shift + span * math.exp(-speed * step) + noise, 6)


def bowl_shift(params: dict[str, Any], bounds: tuple[tuple[str, float, float], ...]) -> float:
    """The "bowl" objective's part of a trial's floor: the squared distance of each
    float param from ``BOWL_CENTRE`` of its range, summed."""
    total = 0.0
    for name, low, high in bounds:
        value = params.get(name)
        if isinstance(value, int | float) and high > low:
            total += ((float(value) - low) / (high - low) - BOWL_CENTRE) ** 2
    return total


class _Attempt:
    """One attempt of a simulated worker: the evaluate calls of ``ladder.api.attempt``'s
    Attempt on the process's asyncio channel (``call``: retried while evaluate is
    unavailable, as the worker runtime's client does)."""

    __slots__ = ("attempt_id", "evaluate", "producer", "topic", "trial_id")

    def __init__(
        self,
        trial_id: str,
        attempt_id: str,
        producer: aiokafka.AIOKafkaProducer,
        evaluate: Any,
        topic: str,
    ) -> None:
        self.trial_id = trial_id
        self.attempt_id = attempt_id
        self.producer = producer
        self.evaluate = evaluate
        self.topic = topic

    def heartbeat(self, step: int) -> Any:
        return call(
            self.evaluate.Heartbeat,
            evaluate_pb2.HeartbeatRequest(
                trial_id=self.trial_id, attempt_id=self.attempt_id, step=step
            ),
        )

    def prune(self, step: int, value: float) -> Any:
        return call(
            self.evaluate.PruneTrial,
            evaluate_pb2.PruneTrialRequest(
                trial_id=self.trial_id, attempt_id=self.attempt_id, step=step, last_value=value
            ),
        )

    def pause(self, step: int, rung: int) -> Any:
        return call(
            self.evaluate.PauseTrial,
            evaluate_pb2.PauseTrialRequest(
                trial_id=self.trial_id, attempt_id=self.attempt_id, step=step, rung=rung
            ),
        )

    def complete(self, step: int, value: float) -> Any:
        return call(
            self.evaluate.CompleteTrial,
            evaluate_pb2.CompleteTrialRequest(
                trial_id=self.trial_id, attempt_id=self.attempt_id, value=value, step=step
            ),
        )


class Simulator:
    def __init__(self, settings: Settings, config: SimConfig) -> None:
        self.settings = settings
        self.config = config
        self.result = ProcessResult()

    # ------------------------------------------------------------------ kafka side

    def _producer(self) -> aiokafka.AIOKafkaProducer:
        # aiokafka on the simulator's own loop: kafka-python's producer woke its sender
        # thread through a socket on every send, a third of the simulator's CPU.
        # The linger (default 50 ms) stands for a fleet's many producers writing few,
        # larger batches: the embedded broker's fetch cost grows with the number of
        # batches a partition holds (see bench/README.md), and one process writing a
        # batch per partition every 20 ms made the broker the bottleneck of the run.
        return aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=self.config.linger_ms,
            client_id="ladder-loadsim",
            **self.settings.kafka_security(WORKER).aiokafka(),
        )

    def _on_sent(self, trial_id: str, step: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.result.reports_failed += 1
            return
        self.result.reports_acked += 1
        if step > self.result.acked_max_step.get(trial_id, 0):
            self.result.acked_max_step[trial_id] = step

    # ------------------------------------------------------------------ workers

    def _rpc_error(self, what: str, exc: grpc.RpcError) -> None:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        key = f"{what}:{code}"
        self.result.rpc_errors[key] = self.result.rpc_errors.get(key, 0) + 1

    async def _worker(
        self,
        index: int,
        producer: aiokafka.AIOKafkaProducer,
        suggest: Any,
        evaluate: Any,
        deadline: float,
    ) -> None:
        cfg = self.config
        worker_id = f"sim-{index}"
        interval = 1.0 / cfg.rate
        rng = random.Random(cfg.seed * 1_000_003 + index)
        # Spread the workers' starts over the ramp (at least one interval) so reports
        # arrive evenly, not in bursts.
        await asyncio.sleep(rng.uniform(0, max(interval, cfg.ramp)))
        began = time.monotonic()
        topic = self.settings.topics.metrics
        try:
            while time.monotonic() < deadline:
                waiting = time.monotonic()
                answered = 0.0
                try:
                    # The suggestion started in the same call, as the worker runtime
                    # asks (SuggestRequest.start); StartTrial only when it came unstarted.
                    attempt_id = uuid.uuid4().hex
                    # Retried while suggest is unavailable (a replica restarting), as
                    # the worker runtime's client does.
                    reply = await call(
                        suggest.Suggest,
                        suggest_pb2.SuggestRequest(
                            study_id=cfg.study_id, worker_id=worker_id, count=1,
                            start=evaluate_pb2.StartTrialRequest(attempt_id=attempt_id),
                        ),
                    )
                    answered = time.monotonic()
                    self.result.suggest_latency_ms.append((answered - waiting) * 1000)
                    if time.time() - cfg.start_at >= cfg.warmup:
                        self.result.suggest_latency_after_warmup_ms.append(
                            (answered - waiting) * 1000
                        )
                    self._count_idle("Suggest", answered - waiting)
                    if not reply.suggestions:
                        await asyncio.sleep(interval)
                        self._count_idle("pause", time.monotonic() - answered)
                        continue
                    suggestion = reply.suggestions[0]
                    self._count_suggestion(suggestion)
                    trial_id = suggestion.trial.trial_id
                    if not suggestion.HasField("started"):
                        attempt_id = uuid.uuid4().hex
                        await self._idle(
                            "StartTrial",
                            call(
                                evaluate.StartTrial,
                                evaluate_pb2.StartTrialRequest(
                                    trial_id=trial_id, worker_id=worker_id, attempt_id=attempt_id
                                ),
                            ),
                        )
                except grpc.RpcError as exc:
                    failed = time.monotonic()
                    if not answered:  # Suggest itself failed (StartTrial counts its own)
                        self._count_idle("Suggest", failed - waiting)
                    self._rpc_error("start", exc)
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        return  # budget exhausted
                    await asyncio.sleep(interval)
                    self._count_idle("pause", time.monotonic() - failed)
                    continue
                self.result.trials_started += 1
                shift = 0.0
                if cfg.objective == "bowl":
                    shift = bowl_shift(params_to_dict(suggestion.trial.params), cfg.bounds)
                attempt = _Attempt(trial_id, attempt_id, producer, evaluate, topic)
                try:
                    await self._run_trial(attempt, interval, deadline, shift)
                except grpc.RpcError as exc:
                    self._rpc_error("trial", exc)
        finally:
            self.result.worker_s += time.monotonic() - began

    def _count_suggestion(self, suggestion: suggest_pb2.Suggestion) -> None:
        """A new trial's provenance in the result (a resumed one is not new)."""
        if suggestion.resumed:
            return
        counts = self.result.algorithms
        counts[suggestion.algorithm] = counts.get(suggestion.algorithm, 0) + 1
        source = served_by(suggestion)
        self.result.served_by[source] = self.result.served_by.get(source, 0) + 1
        if time.time() - self.config.start_at >= self.config.warmup:
            late = self.result.served_by_after_warmup
            late[source] = late.get(source, 0) + 1
            named = self.result.algorithms_after_warmup
            named[suggestion.algorithm] = named.get(suggestion.algorithm, 0) + 1
        if source == "model":
            self.result.unseen_observations.append(suggestion.unseen_observations)
            self.result.model_age_ms.append(suggestion.model_age_seconds * 1000)

    async def _idle(self, what: str, waited: Any) -> Any:
        """``await waited``, its duration counted as the worker's idle time."""
        started = time.monotonic()
        try:
            return await waited
        finally:
            self._count_idle(what, time.monotonic() - started)

    def _count_idle(self, what: str, seconds: float) -> None:
        self.result.idle_s += seconds
        self.result.idle_by_call[what] = self.result.idle_by_call.get(what, 0.0) + seconds

    async def _run_trial(
        self, attempt: _Attempt, interval: float, deadline: float, shift: float = 0.0
    ) -> None:
        """Report every ``interval`` seconds, heartbeat when due and do what the reply
        says (``move_after``); end the attempt as the last move says."""
        cfg = self.config
        step = 0
        value = math.nan
        move = Move.TRAIN
        reply = evaluate_pb2.HeartbeatResponse()
        next_tick = time.monotonic()
        while step < cfg.max_resource and move is Move.TRAIN:
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            lag_ms = (time.monotonic() - next_tick) * 1000
            if lag_ms > self.result.pace_lag_ms_max:
                self.result.pace_lag_ms_max = lag_ms
            if time.monotonic() >= deadline:
                self.result.trials_unfinished += 1
                return
            step += 1
            value = curve_value(cfg.seed, attempt.trial_id, step, shift)
            await self._report(attempt, step, value)
            due = not step % cfg.heartbeat_every or step in cfg.hold_at
            if not due and not verdict_awaited(
                step, decided_rung(reply), cfg.rung_steps, cfg.decision_poll * cfg.rate
            ):
                continue
            reply = await self._idle("Heartbeat", attempt.heartbeat(step))
            self.result.heartbeats += 1
            move = move_after(reply, step, cfg.max_resource)
            if move is Move.HOLD:
                move, reply = await self._idle("hold", self._hold(attempt, step))
        await self._end(attempt, move, reply, step, value)

    async def _report(self, attempt: _Attempt, step: int, value: float) -> None:
        report = events_pb2.MetricReport(
            study_id=self.config.study_id,
            trial_id=attempt.trial_id,
            attempt_id=attempt.attempt_id,
            metric=self.config.metric,
            step=step,
            value=value,
            ts_ms=int(time.time() * 1000),
            worker_id=f"sim-{attempt.trial_id}",
        )
        future = await attempt.producer.send(
            attempt.topic, key=attempt.trial_id.encode(), value=report.SerializeToString()
        )
        self.result.reports_sent += 1
        future.add_done_callback(functools.partial(self._on_sent, attempt.trial_id, step))

    async def _hold(
        self, attempt: _Attempt, step: int
    ) -> tuple[Move, evaluate_pb2.HeartbeatResponse]:
        """Promotion form, held at a rung (as ``Attempt._await_verdict``): the metric
        must reach the scheduler, then heartbeat until the verdict arrives or
        ``decision_wait`` passes (then train on)."""
        self.result.holds += 1
        await attempt.producer.flush()
        reply = evaluate_pb2.HeartbeatResponse()
        for pause in hold_pauses(self.config.decision_wait):
            await asyncio.sleep(pause)
            reply = await attempt.heartbeat(step)
            self.result.heartbeats += 1
            move = move_after(reply, step, self.config.max_resource)
            if move is not Move.HOLD:
                return move, reply
        return Move.TRAIN, reply

    async def _end(
        self,
        attempt: _Attempt,
        move: Move,
        reply: evaluate_pb2.HeartbeatResponse,
        step: int,
        value: float,
    ) -> None:
        """PruneTrial on STOP, PauseTrial on PAUSE (PruneTrial if a STOP overtook it),
        else CompleteTrial."""
        if move is Move.STOP:
            self.result.stops_seen += 1
            self.result.stop_obeyed_ms[attempt.trial_id] = time.time() * 1000
            await self._idle("PruneTrial", attempt.prune(step, value))
            self.result.trials_pruned += 1
            return
        if move is Move.PAUSE:
            try:
                await self._idle("PauseTrial", attempt.pause(step, reply.decision.rung))
            except grpc.RpcError as exc:
                if STOPPED_NOT_PAUSED not in (exc.details() or ""):
                    raise
                await self._idle("PruneTrial", attempt.prune(step, value))
                self.result.trials_pruned += 1
                return
            self.result.trials_paused += 1
            return
        await self._idle("CompleteTrial", attempt.complete(step, value))
        self.result.trials_completed += 1

    async def _watch_loop(self, every: float = 0.1) -> None:
        """How late the event loop runs a timer: the simulator's own saturation."""
        while True:
            due = time.monotonic() + every
            await asyncio.sleep(every)
            lag_ms = (time.monotonic() - due) * 1000
            if lag_ms > self.result.loop_lag_ms_max:
                self.result.loop_lag_ms_max = lag_ms

    async def run(self) -> ProcessResult:
        cfg = self.config
        producer = self._producer()
        await producer.start()
        options = [("grpc.max_concurrent_streams", 10000)]
        async with (
            channels.aio_channel(self.settings.suggest_addr, self.settings, options) as sc,
            channels.aio_channel(self.settings.evaluate_addr, self.settings, options) as ec,
        ):
            suggest = suggest_pb2_grpc.SuggestServiceStub(sc)
            evaluate = evaluate_pb2_grpc.EvaluateServiceStub(ec)
            await asyncio.sleep(max(0.0, cfg.start_at - time.time()))
            deadline = time.monotonic() + cfg.duration
            watch = asyncio.ensure_future(self._watch_loop())
            try:
                await asyncio.gather(
                    *(
                        self._worker(cfg.first_worker + i, producer, suggest, evaluate, deadline)
                        for i in range(cfg.workers)
                    )
                )
            finally:
                watch.cancel()
        await asyncio.wait_for(producer.flush(), 60)
        await producer.stop()
        return self.result


def decided_rung(reply: evaluate_pb2.HeartbeatResponse) -> int:
    """The rung of the latest decision a Heartbeat brought; -1: none yet."""
    return reply.decision.rung if reply.HasField("decision") else -1


def verdict_awaited(
    step: int, decided: int, rung_steps: Sequence[int], poll_steps: float
) -> bool:
    """Whether a simulated worker heartbeats at ``step`` for a rung decision: the last
    rung crossed (index into ``rung_steps``) is beyond ``decided`` (:func:`decided_rung`
    of the last reply) and was crossed 1, 2, 4, 8, ... reports ago, at most
    ``poll_steps``. A real worker (a Heartbeat per report) sees the STOP at the first
    report after evaluate stored it; this sees it at most twice as long after the rung,
    at a few Heartbeats per rung: polling every report (100 workers at 10 reports/s)
    gave evaluate 6x the CPU, which starved early-stop and delayed the very decisions
    polled for."""
    crossed = bisect.bisect_right(rung_steps, step) - 1
    if crossed <= decided:
        return False
    since = step - rung_steps[crossed]
    return 0 < since <= poll_steps and since & (since - 1) == 0


def run_process(settings: Settings, config: SimConfig) -> dict[str, Any]:
    """Entry point of one simulator process; returns its :class:`ProcessResult` as a dict."""
    result = asyncio.run(Simulator(settings, config).run())
    result.max_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return asdict(result)
