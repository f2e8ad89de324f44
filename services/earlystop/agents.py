"""The three Faust agents: studies -> table, stage 1 (metrics -> rungs), stage 2
(rungs -> decisions). The algorithms are ``ladder.schedulers``; this module only moves
records, keeps table state and carries trace context.

Delivery: at least once (Faust commits a record's offset after its agent handled it
and flushed the producer). Each handler is idempotent, and it writes its table only
after the records it produced were acknowledged, so a crash in between replays the
input and re-produces, never loses:

- stage 1 ignores a report whose step is not beyond the trial's last step;
- stage 2 ignores a crossing already on the rung's leaderboard (population never
  counts a trial twice, no second decision);
- the studies agent only rewrites a study whose bytes changed.

A record that can never be processed goes to the dead-letter topic (key = source
topic) with the reason, and the agent carries on with the next one. Any other error
(broker unavailable, ...) is retried with back-off: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from google.protobuf.message import Message
from ladder import telemetry
from ladder.codec import BadRecord, decode, parse_metric_report
from ladder.config import Settings
from ladder.schedulers import (
    Action,
    CurveState,
    RungDecision,
    SchedulerSpec,
    decide,
    diverged_decision,
    observe,
)
from ladder.v1 import events_pb2
from opentelemetry import metrics, trace

from services.earlystop.tables import EarlyStopTables, LeaderboardView, StudyDirectory, StudyEntry

log = logging.getLogger("ladder.earlystop")
_meter = metrics.get_meter("ladder.earlystop")
_decisions = _meter.create_counter("ladder.earlystop.decisions", description="decisions emitted")
_dead_letters = _meter.create_counter(
    "ladder.earlystop.dead_letters", description="records sent to dead-letter"
)

SERVICE = "earlystop"
# Divergences are kept on their own pseudo-rung so a replayed one is recognised.
DIVERGED_RUNG = -1
_ACTIONS = {
    Action.CONTINUE: events_pb2.CONTINUE,
    Action.STOP: events_pb2.STOP,
    Action.PROMOTE: events_pb2.PROMOTE,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def record_headers(event: faust.types.EventT) -> list[tuple[str, bytes]]:
    headers: Any = event.message.headers or event.headers or []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def decision_message(
    study_id: str, trial_id: str, decision: RungDecision, report_ts_ms: int
) -> events_pb2.Decision:
    return events_pb2.Decision(
        study_id=study_id,
        trial_id=trial_id,
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
    ) -> None:
        self.app = app
        self.tables = tables
        self.studies = studies
        self.leaderboards = leaderboards
        topics = settings.topics

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
        async for event in stream.events():
            await self._handle(event, self.on_metric)

    async def consume_rungs(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self._handle(event, self.on_rung)

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
                    return
                except BadRecord as exc:
                    bad_reason = str(exc)
                    continue  # to the dead-letter topic, retried like any send
                except Exception:  # noqa: BLE001 - retried: a record is never skipped
                    attempt += 1
                    log.exception(
                        "handling %s@%d:%d failed (attempt %d); retrying",
                        message.topic, message.partition, message.offset, attempt,
                        extra={"topic": message.topic},
                    )
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))  # retry back-off

    # ------------------------------------------------------------------ handlers

    async def on_study(self, event: faust.types.EventT) -> None:
        table = self.tables.studies
        if not event.value:
            # Tombstone on the compacted topic: the study is gone.
            if event.key and event.key in table:
                del table[event.key]
            return
        study_event = decode(events_pb2.StudyEvent, event.value)
        study_id = study_event.study.study_id
        if not study_id:
            raise BadRecord("StudyEvent has no study.study_id")
        key = study_id.encode()
        if table.get(key) != event.value:
            table[key] = event.value
            log.info("study %s registered", study_id, extra={"study_id": study_id})
        await self.studies.notify()

    async def on_metric(self, event: faust.types.EventT) -> None:
        report = parse_metric_report(event.value)
        study_id, trial_id = report.study_id, report.trial_id
        span = trace.get_current_span()
        span.set_attribute("ladder.study_id", study_id)
        span.set_attribute("ladder.trial_id", trial_id)
        spec = self._spec(await self.studies.wait_for(study_id), study_id)
        if not spec.enabled:
            return
        if report.metric and spec.metric and report.metric != spec.metric:
            return  # not the objective: lineage records it, early stopping ignores it
        state = CurveState.from_dict(self.tables.curves.get(trial_id))
        if state.study_id and state.study_id != study_id:
            raise BadRecord(
                f"trial {trial_id!r} belongs to study {state.study_id!r}, "
                f"the report says {study_id!r}"
            )
        state.study_id = study_id
        observed = observe(spec, state, report.step, report.value, spec.bracket_of(trial_id))
        if observed.ignored:
            log.debug("report ignored: %s", observed.ignored, extra={"trial_id": trial_id})
            return
        report_ts = report.ts_ms or int(event.message.timestamp * 1000)
        crossings = [
            events_pb2.RungCrossing(
                study_id=study_id,
                trial_id=trial_id,
                rung=c.rung,
                resource=c.resource,
                smoothed_value=c.value,
                raw_value=report.value,
                ts_ms=now_ms(),
                report_ts_ms=report_ts,
            )
            for c in observed.crossings
        ]
        if observed.divergence is not None:
            crossings.append(
                events_pb2.RungCrossing(
                    study_id=study_id,
                    trial_id=trial_id,
                    rung=observed.divergence.rung,
                    resource=observed.divergence.step,
                    smoothed_value=report.value,
                    raw_value=report.value,
                    diverged=True,
                    ts_ms=now_ms(),
                    report_ts_ms=report_ts,
                )
            )
        acks = [await self._send(self.rungs_topic, study_id, c) for c in crossings]
        for ack in acks:
            await ack
        # Only now: a crash before this line replays the report and re-emits.
        self.tables.curves[trial_id] = observed.state.to_dict()
        for c in crossings:
            log.info(
                "trial %s %s rung %d (%s)", trial_id,
                "diverged near" if c.diverged else "crossed", c.rung,
                spec.format_resource(c.resource),
                extra={"trial_id": trial_id, "study_id": study_id},
            )

    async def on_rung(self, event: faust.types.EventT) -> None:
        crossing = decode(events_pb2.RungCrossing, event.value)
        study_id, trial_id = crossing.study_id, crossing.trial_id
        if not study_id or not trial_id:
            raise BadRecord("RungCrossing needs study_id and trial_id")
        span = trace.get_current_span()
        span.set_attribute("ladder.study_id", study_id)
        span.set_attribute("ladder.trial_id", trial_id)
        spec = self._spec(await self.studies.wait_for(study_id), study_id)
        bracket = spec.bracket_of(trial_id)
        rung = DIVERGED_RUNG if crossing.diverged else crossing.rung
        board = self.leaderboards.board(study_id, bracket, rung, spec.maximize)
        if trial_id in board:
            log.debug("crossing replayed", extra={"trial_id": trial_id, "study_id": study_id})
            return
        board.record(trial_id, crossing.smoothed_value)
        try:
            if crossing.diverged:
                decision = diverged_decision(spec, crossing.rung, crossing.resource,
                                             crossing.raw_value)
            else:
                decision = decide(spec, board, trial_id, crossing.rung, crossing.resource)
            message = decision_message(study_id, trial_id, decision, crossing.report_ts_ms)
            await (await self._send(self.decisions_topic, trial_id, message))
        except BaseException:
            # Undo the in-memory record so the retry decides on the same board.
            board.values.pop(trial_id, None)
            raise
        self.leaderboards.persist(study_id, bracket, rung, trial_id, crossing.smoothed_value)
        _decisions.add(1, {"action": decision.action.value, "rule": decision.rule})
        log.info(
            "%s %s: %s", decision.action.value, trial_id, decision.reason,
            extra={"trial_id": trial_id, "study_id": study_id},
        )

    # ------------------------------------------------------------------ helpers

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
        with telemetry.kafka_producer_span(name, key):
            return await topic.send(
                key=key.encode(),
                value=message.SerializeToString(),
                headers=telemetry.inject_headers(),
                force=True,  # send now, not at commit: the handler awaits the ack
            )

    async def _dead_letter(self, event: faust.types.EventT, reason: str) -> None:
        message = event.message
        record = events_pb2.DeadLetter(
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            reason=reason,
            payload=event.value if isinstance(event.value, bytes) else b"",
            service=SERVICE,
            ts_ms=now_ms(),
        )
        log.warning(
            "dead-lettered %s@%d:%d: %s", message.topic, message.partition, message.offset,
            reason, extra={"topic": message.topic},
        )
        _dead_letters.add(1, {"source": message.topic})
        await (await self._send(self.dead_letter_topic, message.topic, record))
