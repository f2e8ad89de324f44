"""What the load simulator's parent process watches, and the end-to-end counts check.

- :class:`DecisionLog` tails the decisions topic (kafka-python thread) and keeps every
  Decision of the study with the time it was seen;
- :class:`GroupProgress` samples the early-stop consumer group's committed offsets on
  the metrics topic: the metric events early-stop has processed, and its lag;
- :func:`counts_check` compares the rung crossings implied by the acknowledged metric
  reports with the decisions on the topic: each (trial, rung) exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from ladder.config import Settings
from ladder.gaps import GapGuard
from ladder.kafkaacl import ADMIN as OBSERVER
from ladder.v1 import events_pb2

T = TypeVar("T")


def percentiles(values: Iterable[float]) -> dict[str, float | int]:
    data = sorted(values)
    if not data:
        return {"n": 0}

    def pick(q: float) -> float:
        return round(data[min(len(data) - 1, int(q * len(data)))], 1)

    return {
        "n": len(data),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(data[-1], 1),
    }


@dataclass(frozen=True)
class SeenDecision:
    trial_id: str
    rung: int
    action: int
    report_ts_ms: int
    decided_ts_ms: int  # Decision.ts_ms: when early-stop produced it
    seen_ms: float  # when this observer read it from the topic


class DecisionLog:
    """Every decision of ``study_id`` published after construction."""

    def __init__(self, settings: Settings, study_id: str) -> None:
        self.study_id = study_id
        self.decisions: list[SeenDecision] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gaps = GapGuard()
        topic = settings.topics.decisions
        self._guarded = topic in settings.gap_guarded_topics
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.broker.fetch_max_wait_ms,
            client_id="ladder-loadsim-decisions",
            **settings.kafka_security(OBSERVER).kafka_python(),
        )
        parts = sorted(self._consumer.partitions_for_topic(topic) or ())
        partitions = [TopicPartition(topic, p) for p in parts]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            self._consumer.position(tp)  # resolve "end" before anything is reported
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for tp, records in self._consumer.poll(timeout_ms=200).items():
                    seen_ms = time.time() * 1000
                    batch = []
                    for record in records:
                        if self._guarded and not self._gaps.admit(tp, record.offset):
                            continue  # the fetch skipped offsets before it (ladder.gaps)
                        decision = events_pb2.Decision()
                        try:
                            decision.ParseFromString(record.value)
                        except Exception:  # noqa: BLE001 - other producers' records
                            continue
                        if decision.study_id == self.study_id:
                            batch.append(
                                SeenDecision(
                                    decision.trial_id,
                                    decision.rung,
                                    decision.action,
                                    decision.report_ts_ms,
                                    decision.ts_ms,
                                    seen_ms,
                                )
                            )
                    with self._lock:
                        self.decisions.extend(batch)
                for tp, offset in self._gaps.end_batch():
                    self._consumer.seek(tp, offset)
        finally:
            self._consumer.close()

    def snapshot(self) -> list[SeenDecision]:
        with self._lock:
            return list(self.decisions)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class GroupProgress:
    """Samples (time, committed offsets, end offsets) of the metrics topic for a group."""

    settings: Settings
    group_id: str
    every: float = 1.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="group-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bootstrap = self.settings.kafka_bootstrap.split(",")
        # group_id only for OffsetFetch: this consumer never subscribes, so it never
        # joins the group (no rebalance of the early-stop workers).
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            client_id="ladder-loadsim-progress",
            **self.settings.kafka_security(OBSERVER).kafka_python(),
        )
        topic = self.settings.topics.metrics
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        try:
            while not self._stop.is_set():
                try:
                    committed = [consumer.committed(tp) or 0 for tp in partitions]
                    ends = consumer.end_offsets(partitions)
                except Exception:  # noqa: BLE001 - a missed sample is only a gap
                    self._stop.wait(self.every)
                    continue
                done = sum(committed)
                self.samples.append((time.time(), done, sum(ends.values())))
                self._stop.wait(self.every)
        finally:
            consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def rate_between(self, start: float, end: float) -> float | None:
        """Metric events committed by the group per second between two wall times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return round((c1 - c0) / (t1 - t0), 1) if t1 > t0 else None

    def lag_at(self, when: float) -> int | None:
        before = [s for s in self.samples if s[0] <= when]
        # max(0, ...): tansu answers ListOffsets with the base offset of a partition's last
        # batch + 1 (bench/README.md, "Early-stop on the embedded broker"), so on tansu
        # this lag is a lower bound, short by up to a batch per partition.
        return max(0, before[-1][2] - before[-1][1]) if before else None


def merge_per_trial(
    per_process: Iterable[Mapping[str, T]], keep: Callable[[T, T], T]
) -> dict[str, T]:
    """One value per trial over every simulator process (``keep`` of two): a trial
    re-issued after its lease expired may have run in more than one."""
    merged: dict[str, T] = {}
    for values in per_process:
        for trial_id, value in values.items():
            merged[trial_id] = keep(value, merged[trial_id]) if trial_id in merged else value
    return merged


def merge_acked_steps(per_process: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The last acknowledged step of each trial over every simulator process."""
    return merge_per_trial(per_process, max)


def merge_obeyed(per_process: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """When each trial's worker first obeyed a STOP, over every simulator process."""
    return merge_per_trial(per_process, min)


def expected_crossings(
    acked_max_step: Mapping[str, int], rungs: list[float]
) -> set[tuple[str, int]]:
    """(trial, rung index) for every rung a trial's acknowledged reports reached.

    Steps are reported 1, 2, 3, ... without gaps, so a trial whose last acknowledged
    step is s crossed exactly the rungs whose resource is <= s.
    """
    return {
        (trial, index)
        for trial, step in acked_max_step.items()
        for index, resource in enumerate(rungs)
        if step >= resource - 1e-9
    }


def first_stops(decisions: Iterable[SeenDecision]) -> dict[str, SeenDecision]:
    """Each trial's STOP of its lowest rung: the one a worker should have obeyed. A trial
    that trains on past it crosses more rungs and may be told STOP again; evaluate keeps
    the latest, so a Heartbeat's ``decision`` can be a later one than this."""
    first: dict[str, SeenDecision] = {}
    for d in decisions:
        if d.action == events_pb2.STOP and d.rung >= 0:
            known = first.get(d.trial_id)
            if known is None or d.rung < known.rung:
                first[d.trial_id] = d
    return first


def stop_obey_latencies(
    obeyed_ms: Mapping[str, float], decisions: Iterable[SeenDecision]
) -> list[float]:
    """ms from the report that earned each trial its first STOP (:func:`first_stops`)
    to the worker obeying a STOP (``obeyed_ms``: trial -> wall-clock ms), for the trials
    that obeyed one whose STOP was seen on the topic."""
    first = first_stops(decisions)
    return [
        at - first[trial].report_ts_ms
        for trial, at in obeyed_ms.items()
        if trial in first and first[trial].report_ts_ms
    ]


def stop_timeliness(
    acked_max_step: Mapping[str, int], decisions: Iterable[SeenDecision], rungs: list[float],
    max_resource: int,
) -> dict[str, Any]:
    """What the decisions' lag cost the pruning: the trials told STOP, those of them
    whose STOP came only after they had run all ``max_resource`` steps (too late to
    prune: they count as completed), and how many steps each trial told STOP had
    reported past the rung the STOP was about (its last acknowledged step minus the
    rung's resource; truncated by the run's end)."""
    stopped = {
        trial: d.rung for trial, d in first_stops(decisions).items() if d.rung < len(rungs)
    }
    return {
        "trials_told_stop": len(stopped),
        "stop_after_all_steps": sum(
            acked_max_step.get(t, 0) >= max_resource for t in stopped
        ),
        "steps_past_the_stop_rung": percentiles(
            acked_max_step.get(t, 0) - rungs[r] for t, r in stopped.items()
        ),
    }


def counts_check(expected: set[tuple[str, int]], decisions: list[SeenDecision]) -> dict[str, Any]:
    seen = Counter((d.trial_id, d.rung) for d in decisions)
    duplicates = {key: n for key, n in seen.items() if n > 1}
    # A duplicate with a different verdict would mean the leaderboard counted twice;
    # one with the same verdict is a redelivery (at-least-once, e.g. after a crash).
    verdicts = {
        key: {d.action for d in decisions if (d.trial_id, d.rung) == key} for key in duplicates
    }
    conflicting = sum(len(actions) > 1 for actions in verdicts.values())
    identical = sum(duplicates[key] - 1 for key, actions in verdicts.items() if len(actions) == 1)
    missing = expected - set(seen)
    unexpected = set(seen) - expected
    return {
        "expected_crossings": len(expected),
        "decisions_on_topic": sum(seen.values()),
        "distinct_decided": len(seen),
        "missing": len(missing),
        "duplicates": sum(n - 1 for n in duplicates.values()),
        "conflicting_duplicates": conflicting,
        "identical_redeliveries": identical,
        "unexpected": len(unexpected),
        "ok": not missing and not duplicates and not unexpected,
        "missing_sample": sorted(missing)[:5],
    }
