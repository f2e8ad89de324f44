"""The three Faust agents: studies (validation), stage 1 (metrics -> rungs), stage 2
(rungs -> decisions). The algorithms are ``ladder.schedulers``; this module only moves
records, keeps table state and carries trace context.

Batches: stages 1 and 2 handle what arrived while their previous batch was handled
(up to ``BATCH_MAX`` records), produce everything the batch implies without waiting,
then wait for all the acknowledgements at once and only then write their tables and
ack the records, so a batch costs one broker round trip, not one per record.

Delivery: at least once (Faust commits a batch's offsets after its agent handled it
and the producer flushed). Each handler is idempotent, and a batch writes its tables
only after the records it produced were acknowledged, so a crash in between replays
the input and re-produces, never loses:

- stage 1 ignores a report whose step is not beyond the trial's last step;
- stage 2 ignores a crossing already on the rung's leaderboard (population never
  counts a trial twice, no second decision). A process killed after a decision was
  acknowledged but before its leaderboard entry reached the changelog (the entry
  follows within one producer linger) leaves a crossing the survivor decides again:
  on the same board, since the changelog holds a prefix of the entries, so with the
  same verdict. Consumers apply decisions idempotently by (trial, rung);
- the studies agent only validates (the study directory is ``studies.StudyFeed``).

A record that fails goes by ``ladder.poison``: a ``BadRecord`` or an error a retry
cannot fix (a number out of range for its protobuf field, a record too large for the
broker) goes to the dead-letter topic (key = source topic) at once, with source
topic, partition, offset, the exception and the payload (its first 64 KiB:
``ladder.bus.dead_letter_record``); an error of unknown kind after
``PoisonPolicy.max_attempts`` attempts; the broker away, or refusing a record for a
reason not the record's (tansu's UNKNOWN_SERVER_ERROR while its object store is away),
is retried with back-off for as long as it lasts (nothing is skipped), and
``StageHealth`` reports the stage stuck. The rest of the batch goes on either way.

A record of a study not known yet is parked (``ParkingLot``, at most
``PARKED_PER_STUDY`` per study and stage), not waited for: the records behind it are
handled at once, and the parked ones as soon as their study arrives, or dead-lettered
as "unknown study" once its wait (``--unknown-study-wait``) is over. The later records
of a study with parked ones are parked behind them, so a trial's reports stay in order.
Parking is not durable: a parked record is not acked, and neither is any later record
of its partition until the parked one is handled (``AckGate``: Faust would commit past
a single unacked offset), so the committed offset of its partition stays before it and
a crash or a rebalance replays it and what followed it (replays change nothing, see
above); the parked records and held acks are dropped on a rebalance for that reason
(``forget_parked``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import faust
from faust.exceptions import ProducerSendError
from google.protobuf.message import Message
from ladder import poison, signing, telemetry
from ladder.bus import dead_letter_record
from ladder.codec import BadRecord, decode, parse_metric_report
from ladder.config import Settings
from ladder.poison import ParkingLot, PoisonPolicy
from ladder.retry import backoff_delay, retry_forever
from ladder.schedulers import Action, CurveState, RungDecision, SchedulerSpec
from ladder.schedulers.engine import Crossing, EarlyStopEngine
from ladder.trialcheck import ACCEPT, TrialCheck
from ladder.v1 import events_pb2
from opentelemetry import metrics, trace

from services.earlystop.health import StageHealth
from services.earlystop.studies import StudyDirectory, StudyEntry, StudyPending, study_id_of
from services.earlystop.tables import CurveWriteBehind, EarlyStopTables, LeaderboardView

log = logging.getLogger("ladder.earlystop")
_meter = metrics.get_meter("ladder.earlystop")
_decisions = _meter.create_counter("ladder.earlystop.decisions", description="decisions emitted")
_dead_letters = _meter.create_counter(
    "ladder.earlystop.dead_letters", description="records sent to dead-letter"
)

SERVICE = "earlystop"
# Most records per stage-1 / stage-2 batch: bounds the work redone after a failure
# and how far reading runs ahead of handling.
BATCH_MAX = 1000
# How often a stage holding unacknowledged events checks whether Faust suspended the
# flow for a rebalance (it then releases them at once).
FLOW_CHECK_S = 0.2
# Most records of one unknown study a stage holds; more are dead-lettered at once (a
# publisher with a wrong study id must not fill the memory).
PARKED_PER_STUDY = 1000
STAGE1, STAGE2 = "stage 1 (metrics)", "stage 2 (rungs)"
_ACTIONS = {
    Action.CONTINUE: events_pb2.CONTINUE,
    Action.STOP: events_pb2.STOP,
    Action.PROMOTE: events_pb2.PROMOTE,
    Action.PAUSE: events_pb2.PAUSE,
}


P = TypeVar("P", bound=Hashable)
T = TypeVar("T")


class AckGate(Generic[P, T]):
    """Holds back the acks a partition may not give yet: those of records after a
    parked (unacked) record of the same partition.

    Faust does not stop its commit at a single unacked offset (its consumer's
    ``_new_offset`` lets the acks after one missing offset through when that offset
    is right after the committed one), so acking the records behind a parked one
    would commit past it, and a crash or rebalance before its study arrives would
    lose it. A partition's later acks therefore wait here until every parked record
    before them is handled (decided or dead-lettered), then go in offset order.
    """

    def __init__(self) -> None:
        # partition -> offsets parked and not handled yet (a heap; ``_blocked`` has the
        # live ones, a heap entry no longer in it is stale)
        self._heaps: dict[P, list[int]] = {}
        self._blocked: dict[P, set[int]] = {}
        # partition -> (offset, arrival, item) whose ack waits (a heap)
        self._held: dict[P, list[tuple[int, int, T]]] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        """How many acks are held back."""
        return sum(len(held) for held in self._held.values())

    def park(self, partition: P, offset: int) -> None:
        """The record at ``offset`` is parked: later offsets of ``partition`` wait."""
        blocked = self._blocked.setdefault(partition, set())
        if offset not in blocked:
            blocked.add(offset)
            heapq.heappush(self._heaps.setdefault(partition, []), offset)

    def _first_blocked(self, partition: P) -> int | None:
        heap, blocked = self._heaps.get(partition), self._blocked.get(partition)
        while heap and heap[0] not in blocked:  # type: ignore[operator]
            heapq.heappop(heap)
        if not heap:
            self._heaps.pop(partition, None)
            self._blocked.pop(partition, None)
            return None
        return heap[0]

    def passed(self, done: Sequence[tuple[P, int, T]]) -> list[T]:
        """The items to ack now of the handled records ``done`` (partition, offset,
        item) and of those held back before, in offset order per partition."""
        touched: set[P] = set()
        for partition, offset, _ in done:
            blocked = self._blocked.get(partition)
            if blocked is not None and offset in blocked:
                blocked.discard(offset)  # a parked record handled at last
                touched.add(partition)
        out: list[tuple[int, int, T]] = []
        for partition, offset, item in done:
            self._arrivals += 1
            first = self._first_blocked(partition)
            if first is not None and first < offset:
                heapq.heappush(self._held.setdefault(partition, []), (offset, self._arrivals, item))
            else:
                out.append((offset, self._arrivals, item))
        for partition in touched:
            held = self._held.get(partition)
            first = self._first_blocked(partition)
            while held and (first is None or held[0][0] < first):
                out.append(heapq.heappop(held))
            if not held:
                self._held.pop(partition, None)
        out.sort(key=lambda entry: entry[0])  # per partition: offset order
        return [item for _, _, item in out]

    def clear(self) -> None:
        """Forget everything (a rebalance: the partition's owner reads the parked
        record and what follows it again from the committed offset)."""
        self._heaps.clear()
        self._blocked.clear()
        self._held.clear()


@dataclass
class BatchWork:
    """What a batch produced (acks to wait for) and what it writes once they came."""

    acks: list[Awaitable[Any]] = field(default_factory=list)
    after_acks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # stage 1: trial id -> (metrics partition, new curve state as a dict)
    curves: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # records of studies not known yet: (position in the batch, study id, deadline)
    parked: list[tuple[int, str, float]] = field(default_factory=list)
    # study id -> how many of ``parked`` are its records
    parked_per_study: Counter[str] = field(default_factory=Counter)


def producer_cause(exc: BaseException) -> BaseException:
    """The error to judge a failed send by: Faust wraps the Kafka error aiokafka's send
    raised (the broker's refusal, a record too large) in a ProducerSendError, which on
    its own does not say whether a retry can help."""
    cause = exc.__cause__
    return cause if isinstance(exc, ProducerSendError) and cause is not None else exc


def consumer_span(event: faust.types.EventT) -> AbstractContextManager[trace.Span]:
    """The CONSUMER span of handling ``event``, child of the context in its headers."""
    message = event.message
    parent = telemetry.extract_context(record_headers(event))
    return telemetry.kafka_consumer_span(message.topic, message.partition, message.offset, parent)


async def back_off(what: str, message: Any, attempt: int) -> None:
    """Log the failure being handled (call it in an ``except`` block) and wait before
    the retry (``ladder.retry.backoff_delay``)."""
    log.exception(
        "%s from %s@%d:%d failed (attempt %d); retrying",
        what,
        message.topic,
        message.partition,
        message.offset,
        attempt,
        extra={"topic": message.topic},
    )
    await asyncio.sleep(backoff_delay(attempt))


def partition_of(event: faust.types.EventT) -> tuple[str, int]:
    return event.message.topic, event.message.partition


def now_ms() -> int:
    return int(time.time() * 1000)


def published_at(event: faust.types.EventT) -> float | None:
    """The record's Kafka timestamp in unix seconds (None when the broker gave none)."""
    timestamp = getattr(event.message, "timestamp", None)
    return float(timestamp) if timestamp else None


def record_headers(event: faust.types.EventT) -> list[tuple[str, bytes]]:
    headers: Any = event.message.headers or event.headers or []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def crossing_message(crossing: Crossing, report_ts_ms: int) -> events_pb2.RungCrossing:
    return events_pb2.RungCrossing(
        study_id=crossing.study_id,
        trial_id=crossing.trial_id,
        rung=crossing.rung,
        resource=crossing.resource,
        smoothed_value=crossing.value,
        raw_value=crossing.raw_value,
        diverged=crossing.diverged,
        ts_ms=now_ms(),
        report_ts_ms=report_ts_ms,
    )


def decision_message(
    study_id: str, decision: RungDecision, report_ts_ms: int
) -> events_pb2.Decision:
    return events_pb2.Decision(
        study_id=study_id,
        trial_id=decision.trial_id,
        action=_ACTIONS[decision.action],
        rung=decision.rung,
        resource=decision.resource,
        smoothed_value=decision.value,
        cutoff=decision.cutoff,
        rank=decision.rank,
        population=decision.population,
        reason=decision.reason,
        scheduler=decision.rule,
        ts_ms=now_ms(),
        report_ts_ms=report_ts_ms,
    )


class EarlyStopAgents:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        tables: EarlyStopTables,
        studies: StudyDirectory,
        leaderboards: LeaderboardView,
        curve_flush_s: float = 0.0,
        policy: PoisonPolicy | None = None,
        trial_check: TrialCheck | None = None,
        keyring: signing.Keyring | None = None,
    ) -> None:
        self.app = app
        # A report moves early stopping only for a real trial of its study that is
        # reporting (ladder.trialcheck); None: every report counts (no trial store).
        self.trial_check = trial_check
        self.policy = policy or PoisonPolicy()
        self.health = StageHealth(self.policy.stuck_after_s)
        self.parked: dict[str, ParkingLot[str, faust.types.EventT]] = {
            STAGE1: ParkingLot(PARKED_PER_STUDY),
            STAGE2: ParkingLot(PARKED_PER_STUDY),
        }
        self.gates: dict[str, AckGate[tuple[str, int], faust.types.EventT]] = {
            STAGE1: AckGate(),
            STAGE2: AckGate(),
        }
        self.tables = tables
        self.curves = CurveWriteBehind(tables.curves, curve_flush_s)
        self.studies = studies
        self.leaderboards = leaderboards
        self.engine = EarlyStopEngine(leaderboards)
        topics = settings.topics
        # Crossings and decisions are signed; a crossing or study event that is not
        # changes nothing (ladder.signing).
        self.keyring = keyring or signing.Keyring()
        self.signed = signing.signed_topics(topics) if self.keyring.enabled else frozenset()

        def raw_topic(name: str) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes)

        self.studies_topic = raw_topic(topics.studies)
        self.metrics_topic = raw_topic(topics.metrics)
        self.rungs_topic = raw_topic(topics.rungs)
        self.decisions_topic = raw_topic(topics.decisions)
        self.dead_letter_topic = raw_topic(topics.dead_letter)

    def register(self) -> None:
        self.app.agent(self.studies_topic, name="earlystop-studies")(self.consume_studies)
        self.app.agent(self.metrics_topic, name="earlystop-stage1")(self.consume_metrics)
        self.app.agent(self.rungs_topic, name="earlystop-stage2")(self.consume_rungs)

    # ------------------------------------------------------------------ agents

    async def consume_studies(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self._handle(event, self.on_study)

    async def consume_metrics(self, stream: faust.StreamT) -> None:
        # Stage 1 opens its CONSUMER span itself, only for the few reports that
        # produce something: a span per metric point would cost more than the rest
        # of stage 1, and the trace of a trial still runs report -> crossing -> decision.
        await self._consume_in_batches(
            STAGE1, stream, self.on_metric, self._finish_curves, False, self.curves
        )

    async def consume_rungs(self, stream: faust.StreamT) -> None:
        await self._consume_in_batches(
            STAGE2, stream, self.on_rung, self._finish_decisions, True
        )

    def forget_parked(self) -> None:
        """Drop the parked records (a rebalance: they were never acked, so whoever owns
        their partition now reads them again from the committed offset)."""
        for lot in self.parked.values():
            lot.clear()
        for gate in self.gates.values():
            gate.clear()

    async def _consume_in_batches(
        self,
        stage: str,
        stream: faust.StreamT,
        handler: Callable[[faust.types.EventT, BatchWork], Awaitable[None]],
        finish: Callable[[BatchWork, bool], Awaitable[None]],
        traced: bool,
        write_behind: CurveWriteBehind | None = None,
    ) -> None:
        """Hand the stream's events to ``_handle_batch`` in batches of whatever arrived
        while the previous batch was handled (at most ``BATCH_MAX``), and ack each
        event (its offset becomes committable) only once its batch is done.

        Reading goes on while a batch waits for its acknowledgements (Faust's
        ``take_events`` would stop it), so the broker round trip of a batch does not
        cap the throughput. Parked records whose study arrived or whose wait is over
        open the next batch, ahead of the records that came after them.
        """
        stream.enable_acks = False  # acked below, after the batch is handled
        pending: list[faust.types.EventT] = []
        arrived = asyncio.Event()
        room = asyncio.Event()
        lot = self.parked[stage]
        gate = self.gates[stage]
        loop = asyncio.get_running_loop()

        def known(study_id: str) -> bool:
            return self.studies.get(study_id) is not None

        arrivals_seen = -1

        async def handle_batches() -> None:
            nonlocal arrivals_seen
            while True:
                await self._wait_for_batch(arrived, write_behind, lot)
                done: list[faust.types.EventT] = []
                released: list[faust.types.EventT] = []
                if len(lot):
                    # Each parked study is looked up only after a study arrived.
                    arrivals, arrivals_seen = arrivals_seen, self.studies.arrivals
                    released = lot.release(
                        known if arrivals != arrivals_seen else None, loop.time()
                    )
                if pending or released:
                    batch = pending[:BATCH_MAX]
                    del pending[: len(batch)]
                    if not pending:
                        arrived.clear()
                    room.set()
                    handled = await self._handle_batch(
                        stage, released + batch, handler, finish, traced
                    )
                    if write_behind is None:
                        done = handled
                    else:
                        write_behind.hold(handled)
                if write_behind is not None and write_behind.holding:
                    done = await self._release_held(write_behind)
                for event in gate.passed([(partition_of(e), e.message.offset, e) for e in done]):
                    await stream.ack(event)

        worker = asyncio.ensure_future(handle_batches())
        try:
            async for event in stream.events():
                if worker.done():
                    worker.result()  # re-raises what stopped it
                    raise RuntimeError("batch handler stopped")
                pending.append(event)
                arrived.set()
                if len(pending) >= BATCH_MAX:
                    room.clear()
                    await room.wait()  # back-pressure: the handler is BATCH_MAX behind
        finally:
            worker.cancel()

    async def _wait_for_batch(
        self,
        arrived: asyncio.Event,
        write_behind: CurveWriteBehind | None,
        lot: ParkingLot[str, faust.types.EventT],
    ) -> None:
        """Until records arrived, or held events may have to be released (their flush
        is due, or Faust suspended the flow: a rebalance waits for them), or parked
        records may go (a study arrived, or the first wait is over)."""
        timeouts = []
        if write_behind is not None and write_behind.holding:
            timeouts.append(min(write_behind.due_in(), FLOW_CHECK_S))
        deadline = lot.next_deadline()
        if deadline is not None:
            timeouts.append(deadline - asyncio.get_running_loop().time())
        if not timeouts:
            await arrived.wait()
            return
        timeout = min(timeouts)
        if timeout <= 0:
            return
        waits = [asyncio.ensure_future(arrived.wait())]
        if deadline is not None:
            waits.append(asyncio.ensure_future(self.studies.next_arrival().wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _release_held(self, write_behind: CurveWriteBehind) -> list[faust.types.EventT]:
        """The held events to ack now: all of them once their states are written when
        the flush is due or the flow is suspended, else none."""
        if write_behind.due_in() > 0 and self.app.flow_control.is_active():
            return []
        # Retried until written: a curve state is never dropped.
        return await retry_forever(write_behind.flush, "writing curve states", log)

    async def _handle_batch(
        self,
        stage: str,
        events: Sequence[faust.types.EventT],
        handler: Callable[[faust.types.EventT, BatchWork], Awaitable[None]],
        finish: Callable[[BatchWork, bool], Awaitable[None]],
        traced: bool,
    ) -> list[faust.types.EventT]:
        """Run ``handler`` on each event in order (each in its CONSUMER span when
        ``traced``), wait for every ack of the batch, then ``finish(work, True)``;
        returns the events handled (the others were parked).

        A bad record goes to the dead-letter topic within the batch. Any other error
        drops the batch's unacknowledged work (``finish(work, False)``) and, after a
        back-off, redoes the whole batch (handlers are idempotent, so nothing is
        counted twice), with the record that failed dead-lettered instead when
        ``poison.gives_up`` on it."""
        failures: dict[int, int] = {}  # position in the batch -> failed attempts
        poisoned: dict[int, str] = {}  # position in the batch -> dead-letter reason
        attempt = 0
        while True:
            work = BatchWork()
            owners: list[int] = []  # the position of the record behind each ack
            culprit: int | None = None
            try:
                if stage == STAGE1 and self.trial_check is not None:
                    # The batch's trials in one Redis round trip, not one per trial.
                    await self.trial_check.prefetch(
                        e.message.key.decode("utf-8", "replace")
                        for e in events
                        if isinstance(e.message.key, bytes)
                    )
                for culprit, event in enumerate(events):
                    before = len(work.acks)
                    await self._handle_one(stage, culprit, event, poisoned, handler, work, traced)
                    owners.extend([culprit] * (len(work.acks) - before))
                # culprit is read by the except clause: the record behind a failed ack
                for culprit, ack in zip(owners, work.acks, strict=True):  # noqa: B007
                    await ack
            except Exception as exc:  # noqa: BLE001 - retried or dead-lettered, never lost
                await finish(work, False)
                attempt += 1
                reason = poison.describe(exc)
                if culprit is not None and culprit not in poisoned:
                    failures[culprit] = failures.get(culprit, 0) + 1
                    if self._gives_up(exc, failures[culprit]):
                        poisoned[culprit] = reason
                        continue  # at once: the redo dead-letters it
                self.health.failing(stage, reason)
                await back_off(f"batch of {len(events)}", events[culprit or 0].message, attempt)
                continue
            await finish(work, True)
            self.health.moved_on(stage)
            lot, gate = self.parked[stage], self.gates[stage]
            parked = {}
            for position, study_id, deadline in work.parked:
                event = events[position]
                # ``_handle_one`` kept to the per-study bound, except for a study known
                # by now, whose records the next batch releases.
                lot.park(study_id, event, deadline, over_limit=True)
                gate.park(partition_of(event), event.message.offset)
                parked[position] = study_id
            return [e for i, e in enumerate(events) if i not in parked]

    async def _handle_one(
        self,
        stage: str,
        position: int,
        event: faust.types.EventT,
        poisoned: Mapping[int, str],
        handler: Callable[[faust.types.EventT, BatchWork], Awaitable[None]],
        work: BatchWork,
        traced: bool,
    ) -> None:
        """``handler`` on one event of a batch; a poisoned or bad record is
        dead-lettered, a record of a study not known yet noted in ``work.parked``."""
        try:
            if position in poisoned:
                raise BadRecord(poisoned[position])
            if traced:
                with consumer_span(event):
                    await handler(event, work)
            else:
                await handler(event, work)
        except StudyPending as pending:
            study_id = pending.study_id
            lot = self.parked[stage]
            # A study known by now (it arrived during the batch) parks its record
            # whatever the bound, behind its parked ones: the next batch releases them
            # all, so this costs at most a batch and the record is decided, not lost.
            if lot.room(study_id) > work.parked_per_study[study_id] or (
                self.studies.get(study_id) is not None
            ):
                work.parked.append((position, study_id, pending.deadline))
                work.parked_per_study[study_id] += 1
                return
            reason = (
                f"unknown study {study_id!r}: its parking lot is full ({lot.per_key} of "
                "its records already wait for its StudyEvent)"
            )
            with consumer_span(event):
                work.acks.append(await self._dead_letter_send(event, reason))
        except BadRecord as exc:
            with consumer_span(event):
                work.acks.append(await self._dead_letter_send(event, str(exc)))

    async def _finish_curves(self, work: BatchWork, acked: bool) -> None:
        """Stage 1: the batch's curve states, staged only once its crossings are acked
        (written by the write-behind, which holds the batch's events until then)."""
        if not acked:
            return
        self.curves.stage(work.curves)
        for after in work.after_acks:
            await after()

    async def _finish_decisions(self, work: BatchWork, acked: bool) -> None:
        """Stage 2: persist the acked batch; after a failure rebuild the leaderboards
        from the table, which holds only acknowledged decisions."""
        if not acked:
            self.leaderboards.invalidate()
            return
        for after in work.after_acks:
            await after()

    async def _handle(
        self, event: faust.types.EventT, handler: Callable[[faust.types.EventT], Awaitable[None]]
    ) -> None:
        message = event.message
        parent = telemetry.extract_context(record_headers(event))
        attempt = 0
        bad_reason: str | None = None
        while True:
            with telemetry.kafka_consumer_span(
                message.topic, message.partition, message.offset, parent
            ):
                try:
                    if bad_reason is None:
                        await handler(event)
                    else:
                        await self._dead_letter(event, bad_reason)
                    self.health.moved_on(message.topic)
                    return
                except Exception as exc:  # noqa: BLE001 - retried or dead-lettered
                    attempt += 1
                    if bad_reason is None and self._gives_up(exc, attempt):
                        bad_reason = poison.describe(exc)
                        continue  # to the dead-letter topic, retried like any send
                    self.health.failing(message.topic, poison.describe(exc))
                    await back_off("handling", message, attempt)

    # ------------------------------------------------------------------ handlers

    async def on_study(self, event: faust.types.EventT) -> None:
        """Validation only: the directory is fed by every process's own ``StudyFeed``;
        consumed in the group, a malformed or unsigned StudyEvent gets one dead letter."""
        if event.value:
            self._check_signed(event)
            study_id_of(event.value)  # BadRecord -> dead-letter

    def _check_signed(self, event: faust.types.EventT) -> None:
        """``BadRecord`` when the record's producer did not sign it."""
        if not self.keyring.enabled:
            return
        message = event.message
        forged = self.keyring.problem(
            message.topic, message.key, event.value, record_headers(event)
        )
        if forged is not None:
            raise BadRecord(forged)

    async def on_metric(self, event: faust.types.EventT, work: BatchWork) -> None:
        report = parse_metric_report(event.value)
        study_id, trial_id = report.study_id, report.trial_id
        spec = await self._study_spec(STAGE1, study_id, event, work)
        if not spec.enabled:
            return
        if report.metric and spec.metric and report.metric != spec.metric:
            return  # not the objective: lineage records it, early stopping ignores it
        if self.trial_check is not None:
            verdict = await self.trial_check(study_id, trial_id)
            if verdict != ACCEPT:
                raise BadRecord(verdict)
        # The batch's own newer state first: a trial can report twice in one batch.
        pending = work.curves.get(trial_id)
        state = CurveState.from_dict(pending[1] if pending else self.curves.get(trial_id))
        if state.study_id and state.study_id != study_id:
            raise BadRecord(
                f"trial {trial_id!r} belongs to study {state.study_id!r}, "
                f"the report says {study_id!r}"
            )
        state.study_id = study_id
        observed = self.engine.observe(spec, state, study_id, trial_id, report.step, report.value)
        if observed.ignored:
            log.debug("report ignored: %s", observed.ignored, extra={"trial_id": trial_id})
            return
        report_ts = report.ts_ms or int(event.message.timestamp * 1000)
        crossings = [crossing_message(c, report_ts) for c in observed.crossings]
        if crossings:
            with consumer_span(event) as span:
                span.set_attribute("ladder.study_id", study_id)
                span.set_attribute("ladder.trial_id", trial_id)
                await self._emit_crossings(work, spec, crossings)
        # Written after the batch's acks: a crash before replays the report, re-emits.
        work.curves[trial_id] = (event.message.partition, observed.state.to_dict())

    async def _emit_crossings(
        self, work: BatchWork, spec: SchedulerSpec, crossings: list[events_pb2.RungCrossing]
    ) -> None:
        for c in crossings:
            work.acks.append(await self._send(self.rungs_topic, c.study_id, c))
            log.debug(  # the decision it leads to is logged at INFO
                "trial %s %s rung %d (%s)",
                c.trial_id,
                "diverged near" if c.diverged else "crossed",
                c.rung,
                spec.format_resource(c.resource),
                extra={"trial_id": c.trial_id, "study_id": c.study_id},
            )

    async def on_rung(self, event: faust.types.EventT, work: BatchWork) -> None:
        self._check_signed(event)
        crossing = decode(events_pb2.RungCrossing, event.value)
        study_id, trial_id = crossing.study_id, crossing.trial_id
        if not study_id or not trial_id:
            raise BadRecord("RungCrossing needs study_id and trial_id")
        span = trace.get_current_span()
        span.set_attribute("ladder.study_id", study_id)
        span.set_attribute("ladder.trial_id", trial_id)
        spec = await self._study_spec(STAGE2, study_id, event, work)
        judged = Crossing(
            study_id,
            trial_id,
            crossing.rung,
            crossing.resource,
            crossing.smoothed_value,
            crossing.raw_value,
            crossing.diverged,
        )
        # Promotions are marked at once: the batch's next crossings decide on this
        # board. If the batch fails, the leaderboards are rebuilt from the table
        # (acked entries only).
        decisions = self.engine.judge(spec, judged)
        if not decisions:
            log.debug("crossing replayed", extra={"trial_id": trial_id, "study_id": study_id})
            return
        try:
            for decision in decisions:
                message = decision_message(study_id, decision, crossing.report_ts_ms)
                work.acks.append(await self._send(self.decisions_topic, decision.trial_id, message))
        except BaseException:
            # Undo the in-memory record so the retry decides on the same board.
            self.engine.undo(spec, judged, decisions)
            raise
        partition, bracket = event.message.partition, spec.bracket_of(trial_id)

        async def after_acks() -> None:
            await self.leaderboards.persist(partition, bracket, judged)
            for decision in decisions:
                _decisions.add(1, {"action": decision.action.value, "rule": decision.rule})
                # Logged after the acks, in the crossing's span: the line carries the
                # trace id of the report that led to it.
                with trace.use_span(span, end_on_exit=False):
                    log.info(
                        "%s %s: %s",
                        decision.action.value,
                        decision.trial_id,
                        decision.reason,
                        extra={"trial_id": decision.trial_id, "study_id": study_id},
                    )

        work.after_acks.append(after_acks)

    # ------------------------------------------------------------------ helpers

    def _gives_up(self, exc: BaseException, attempts: int) -> bool:
        return poison.gives_up(producer_cause(exc), attempts, self.policy.max_attempts)

    async def _study_spec(
        self, stage: str, study_id: str, event: faust.types.EventT, work: BatchWork
    ) -> SchedulerSpec:
        """The scheduler of the record's study; ``StudyPending`` (park the record) while
        the study may still come, or while earlier records of it are parked."""
        entry = await self.studies.lookup(study_id, published_at(event))
        if entry is not None and (
            study_id in self.parked[stage] or work.parked_per_study[study_id]
        ):
            # Behind its parked records: released with them, in order, right away.
            raise StudyPending(study_id, asyncio.get_running_loop().time())
        return self._spec(entry, study_id)

    def _spec(self, entry: StudyEntry | None, study_id: str) -> SchedulerSpec:
        if entry is None:
            raise BadRecord(
                f"unknown study {study_id!r}: no StudyEvent for it on the studies topic "
                f"within {self.studies.unknown_study_wait:g}s"
            )
        if entry.spec is None:
            raise BadRecord(f"study {study_id!r} has an unusable scheduler config: {entry.error}")
        return entry.spec

    async def _send(self, topic: faust.TopicT, key: str, message: Message) -> Awaitable[Any]:
        """Produce inside a PRODUCER span with W3C trace headers; returns the ack future."""
        name = topic.get_topic_name()
        raw_key, value = key.encode(), message.SerializeToString()
        with telemetry.kafka_producer_span(name, key):
            headers = telemetry.inject_headers()
            if name in self.signed:
                headers.extend(self.keyring.sign(name, raw_key, value))
            return await topic.send(
                key=raw_key,
                value=value,
                headers=headers,
                force=True,  # send now, not at commit: the handler awaits the ack
            )

    async def _dead_letter(self, event: faust.types.EventT, reason: str) -> None:
        await (await self._dead_letter_send(event, reason))

    async def _dead_letter_send(self, event: faust.types.EventT, reason: str) -> Awaitable[Any]:
        """Produce the dead-letter record of ``event``; returns the ack future."""
        message = event.message
        record = dead_letter_record(
            SERVICE,
            message.topic,
            reason,
            event.value if isinstance(event.value, bytes) else b"",
            message.partition,
            message.offset,
        )
        log.warning(
            "dead-lettered %s@%d:%d: %s",
            message.topic,
            message.partition,
            message.offset,
            record.reason,
            extra={"topic": message.topic},
        )
        _dead_letters.add(1, {"source": message.topic})
        return await self._send(self.dead_letter_topic, message.topic, record)
