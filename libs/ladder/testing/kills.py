"""Kill -9 evaluate again and again during a study, then check that every event of
every trial reached the trials topic and lineage, in order: the proof of the outbox
(``ladder.state``), shared by ``tests/integration/test_evaluate_kills.py`` and
``bench/evaluate_kills.py``.

The workers are threads driving the real client (Suggest, StartTrial, a few
ReportCheckpoint calls, CompleteTrial); the client retries while evaluate is down, so
each call's transition happens exactly once whatever the kills interrupt. A trial's
expected events are the kinds its calls caused, and their number must equal the
trial's ``version`` in Redis (bumped by every transition that publishes an event).
An event's identity on the topic and in lineage is (kind, ts_ms, reason, attempt): a
re-published event is the same event, so duplicates collapse.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.errors import BudgetExhausted
from ladder.state import open_state
from ladder.testing.topics import decoded, read_topic
from ladder.testing.waiting import wait_for
from ladder.v1 import events_pb2

KIND = events_pb2.TrialEventKind
SUGGESTED = events_pb2.TRIAL_SUGGESTED


@dataclass
class CheckpointingWorkers:
    """``workers`` threads running trials of ``study_id`` until its budget is spent,
    each trial with ``checkpoints`` checkpoints ``pace`` seconds apart."""

    client: LadderClient
    study_id: str
    workers: int
    checkpoints: int
    pace: float
    expected: dict[str, list[int]] = field(default_factory=dict)
    calls: int = 0  # lifecycle calls answered so far
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CheckpointingWorkers:
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, args=(f"kw-{n}",), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, worker_id: str) -> None:
        try:
            while True:
                try:
                    (suggestion,) = self.client.suggest(self.study_id, worker_id, 1)
                except BudgetExhausted:
                    return
                self._trial(worker_id, suggestion.trial.trial_id)
        except Exception as exc:  # noqa: BLE001 - reported by check(), not lost in a thread
            with self._lock:
                self.errors.append(f"{worker_id}: {exc!r}")

    def _trial(self, worker_id: str, trial_id: str) -> None:
        attempt = uuid.uuid4().hex[:12]
        kinds = [SUGGESTED]
        self.client.start_trial(trial_id, worker_id, attempt)
        self._answered(kinds, events_pb2.TRIAL_STARTED)
        for step in range(1, self.checkpoints + 1):
            time.sleep(self.pace)  # the workload's "training"; not a synchronisation
            self.client.checkpoint(trial_id, attempt, f"file:///ckpt/{trial_id}/{step}", step)
            self._answered(kinds, events_pb2.TRIAL_CHECKPOINTED)
        self.client.complete(trial_id, attempt, 1.0 / (1 + len(trial_id)), self.checkpoints)
        self._answered(kinds, events_pb2.TRIAL_COMPLETED)
        with self._lock:
            self.expected[trial_id] = kinds

    def _answered(self, kinds: list[int], kind: int) -> None:
        kinds.append(kind)
        with self._lock:
            self.calls += 1


def _identity(kind: int, ts_ms: int, reason: str, attempt_id: str) -> tuple[int, int, str, str]:
    return (kind, ts_ms, reason, attempt_id)


def _first_seen(keys: Iterable[tuple[str, tuple[int, int, str, str]]]) -> dict[str, list[Any]]:
    """Per trial, its distinct events in order of first appearance."""
    out: dict[str, list[Any]] = {}
    seen: set[tuple[str, tuple[int, int, str, str]]] = set()
    for trial_id, key in keys:
        if (trial_id, key) not in seen:
            seen.add((trial_id, key))
            out.setdefault(trial_id, []).append(key)
    return out


def topic_events(records: Iterable[events_pb2.TrialEvent], study_id: str) -> list[Any]:
    """(trial id, identity) of the study's events, in topic order."""
    return [
        (e.trial.trial_id, _identity(e.kind, e.ts_ms, e.reason, e.trial.attempt_id))
        for e in records
        if e.trial.study_id == study_id
    ]


def lineage_events(db: Path, study_id: str) -> list[Any]:
    """(trial id, identity) of the study's events lineage stored, in arrival order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT trial_id, kind, ts_ms, reason, attempt_id FROM trial_events "
            "WHERE study_id = ? ORDER BY id",
            (study_id,),
        ).fetchall()
    finally:
        conn.close()
    return [(row[0], _identity(*row[1:])) for row in rows]


def _in_order(events: list[Any], expected: list[int]) -> bool:
    """The events' kinds are the expected ones, and in the order the transitions
    happened. TRIAL_SUGGESTED is suggest's, published off the request path, so it
    may follow TRIAL_STARTED (services/suggest/publisher.py); every other event
    must arrive in order."""
    if sorted(k[0] for k in events) != sorted(expected):
        return False
    by_time = [k[0] for k in sorted(events, key=lambda k: k[1])]
    arrived = [k for k in events if k[0] != SUGGESTED]
    times = [k[1] for k in arrived]
    return by_time == expected and times == sorted(times)


def check(
    expected: dict[str, list[int]],
    versions: dict[str, int],
    on_topic: list[Any],
    in_lineage: list[Any],
) -> dict[str, Any]:
    """Compare each trial's events on the topic and in lineage with what its
    transitions caused; ``ok`` when none is missing, extra or out of order."""
    topic, lineage = _first_seen(on_topic), _first_seen(in_lineage)
    problems: list[str] = []
    for trial_id, kinds in sorted(expected.items()):
        if versions.get(trial_id) != len(kinds):
            problems.append(f"{trial_id}: {versions.get(trial_id)} transitions, {len(kinds)} calls")
        for where, got in (("topic", topic), ("lineage", lineage)):
            events = got.get(trial_id, [])
            if not _in_order(events, kinds):
                names = [KIND.Name(k[0]) for k in events]
                problems.append(f"{trial_id} in {where}: {names}")
    expected_events = sum(len(k) for k in expected.values())
    return {
        "ok": not problems and bool(expected),
        "trials": len(expected),
        "events_expected": expected_events,
        "events_on_topic": sum(len(v) for k, v in topic.items() if k in expected),
        "events_in_lineage": sum(len(v) for k, v in lineage.items() if k in expected),
        "records_on_topic": sum(1 for t, _ in on_topic if t in expected),
        "problems": problems[:20],
    }


def kill_repeatedly(
    kill: Callable[[], None],
    restart: Callable[[], None],
    kills: int,
    ready: Callable[[], bool],
    timeout: float,
) -> list[float]:
    """``kills`` times: wait until ``ready()`` (work is under way), kill, restart.
    Returns the seconds each restart took."""
    took = []
    for n in range(kills):
        wait_for(ready, timeout, f"work under way before kill {n + 1}", every=0.05)
        kill()
        started = time.monotonic()
        restart()
        took.append(round(time.monotonic() - started, 3))
    return took


def evaluate_kills_study(
    start: Callable[..., Any],
    infra: Settings,
    lineage_db: Path,
    *,
    kills: int,
    trials: int,
    workers: int,
    checkpoints: int,
    pace: float,
    kill_every: int,
    drain: float = 60.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Start suggest, lineage (storing in ``lineage_db``) and evaluate with ``start``
    (``ServiceGroup.start``), run a study of ``trials`` trials with
    ``CheckpointingWorkers``, kill -9 evaluate ``kills`` times (after every
    ``kill_every`` answered calls), restarting it on the same port each time, then
    check every trial's events on the topic and in lineage (``check``)."""
    lineage = start("services.lineage", {"LADDER_LINEAGE_DB": str(lineage_db)})
    suggest = start("services.suggest")
    # A short outbox retry: the relay's part shows within the drain.
    evaluate_env = {"LADDER_OUTBOX_RETRY_SECONDS": "2"}
    evaluate = start("services.evaluate", evaluate_env)
    port = int(evaluate.addr.rsplit(":", 1)[1])
    settings = replace(
        infra,
        suggest_addr=suggest.addr,
        evaluate_addr=evaluate.addr,
        lineage_addr=lineage.addr,
    )
    client = LadderClient(settings, retry_timeout=120, readdress=False)
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    study = client.create_study(
        study_config(space, name="evaluate-kills", max_trials=trials, seed=seed)
    )
    state = open_state(settings)
    current = [evaluate]
    try:
        started = time.monotonic()
        crew = CheckpointingWorkers(client, study.study_id, workers, checkpoints, pace).start()
        marks = [0]

        def under_way() -> bool:
            return crew.calls >= marks[-1] + kill_every

        def kill() -> None:
            marks.append(crew.calls)
            current[0].proc.kill()  # SIGKILL: no shutdown, no flush
            current[0].proc.wait(10)

        def restart() -> None:
            current[0] = start("services.evaluate", evaluate_env, port=port)

        restarts = kill_repeatedly(kill, restart, kills, under_way, 120)
        wait_for(lambda: not crew.alive(), 300, "the workers to finish the study", every=0.2)
        study_s = time.monotonic() - started
        versions: dict[str, int] = {}
        last: list[dict[str, Any]] = []

        def settled() -> bool:
            for trial_id in crew.expected:
                raw = state.client.hget(state.keys.trial(trial_id), "version")
                versions[trial_id] = int(raw or 0)
            records = read_topic(settings, settings.topics.trials, timeout=30)
            on_topic = topic_events(decoded(events_pb2.TrialEvent, records), study.study_id)
            stored = lineage_events(lineage_db, study.study_id)
            last.append(check(crew.expected, versions, on_topic, stored))
            # An event can be on the topic while its outbox entry is still there (a kill
            # between the publish and the delete: the restarted evaluate's sweeper sends
            # it again after outbox_retry_seconds, then deletes it), so the outbox is
            # waited for too, not read once.
            pending[:] = [t for t in crew.expected if state.client.hlen(state.keys.trial_outbox(t))]
            return bool(last[-1]["ok"]) and not pending

        pending: list[str] = []
        drained = time.monotonic()
        try:
            wait_for(settled, drain, "every event on the topic and in lineage", every=1)
        except AssertionError:
            pass  # the last report names what is missing or out of order
        report = last[-1]
        report.update(
            study_id=study.study_id,
            kills=len(restarts),
            restart_seconds=restarts,
            kill_at_calls=marks[1:],
            calls=crew.calls,
            worker_errors=crew.errors,
            study_seconds=round(study_s, 2),
            drain_seconds=round(time.monotonic() - drained, 2),
            outbox_left=len(pending),
        )
        report["ok"] = report["ok"] and not crew.errors and not pending
        return report
    finally:
        state.close()
        client.close()
