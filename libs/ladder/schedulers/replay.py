"""Replay recorded learning curves through a stopping policy, as N asynchronous workers.

A benchmark of early stopping needs the same curves judged by several schedulers in the
same order. ``replay`` simulates ``workers`` workers that pull configurations (rows of a
``CurveTable``) in a given order; each epoch takes the time recorded for it, and after
every epoch the worker reports (step, value) to a ``StoppingPolicy`` and stops the trial
when told to. Events are processed in simulated-time order (ties by worker index), so
what a scheduler knows at a decision is exactly what a real asynchronous deployment
with instant decisions would know. No threads, no clocks: deterministic.

``LadderPolicy`` runs the early-stop service's own ``EarlyStopEngine`` (smoothing,
rung crossings and divergence per report, then the decisions of each crossing on the
trial's (Hyperband-bracket) rung leaderboard), with its leaderboards in memory.

ASHA's promotion form (``AshaForm.PROMOTION``): a trial told PAUSE gives its worker back
at once and waits; when a later crossing promotes it, it joins a FIFO of resumable
trials, which a free worker takes before any new configuration (as Suggest does), and it
continues from the epoch after the one it paused at. A trial still paused when the last
worker goes idle counts as pruned (at its rung), as in ASHA with a finite trial budget.

Accounting (``ReplayResult``): budget = epochs consumed; a trial is *completed* when it
ran all ``max_steps`` epochs, *pruned* otherwise (stopped, or paused and never
promoted). Regret = best final value among completed trials minus the best final value
of the whole table (lower is better).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ladder.schedulers.curves import CurveState
from ladder.schedulers.engine import EarlyStopEngine
from ladder.schedulers.leaderboard import Leaderboards
from ladder.schedulers.rules import Action
from ladder.schedulers.spec import SchedulerSpec


@dataclass(frozen=True)
class CurveTable:
    """``values[i, t]``: the metric of configuration i after epoch t+1 (NaN: diverged);
    ``seconds[i, t]``: how long that epoch took. Lower values are better."""

    values: np.ndarray
    seconds: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape != self.seconds.shape:
            raise ValueError(
                f"values and seconds must be 2-d and of one shape "
                f"(got {self.values.shape} and {self.seconds.shape})"
            )
        if self.values.shape[0] == 0 or self.values.shape[1] == 0:
            raise ValueError("the table needs at least one configuration and one epoch")
        if not np.all(np.isfinite(self.seconds)) or np.any(self.seconds < 0):
            raise ValueError("seconds must be finite and >= 0")

    @classmethod
    def unit_time(cls, values: np.ndarray) -> CurveTable:
        """Every epoch takes one time unit."""
        values = np.asarray(values, dtype=float)
        return cls(values, np.ones_like(values))

    @property
    def configs(self) -> int:
        return int(self.values.shape[0])

    @property
    def max_steps(self) -> int:
        return int(self.values.shape[1])

    def finals(self) -> np.ndarray:
        return self.values[:, -1]


class StoppingPolicy(Protocol):
    """What the replay asks of a scheduler (one instance per replay)."""

    def start(self, trial: int) -> None:
        """Trial ``trial`` (0-based, in start order) begins."""

    def report(self, trial: int, step: int, value: float) -> bool | Action:
        """The trial finished epoch ``step`` (1-based) with ``value``; True or
        ``Action.STOP`` = stop it, ``Action.PAUSE`` = pause it until promoted (then the
        policy lists it in ``take_promoted``). Not called for the last epoch: a trial
        that ran every epoch is complete."""

    def finish(self, trial: int, value: float, pruned: bool) -> None:
        """The trial ended: completed with ``value`` or pruned at its last report."""


class NoStopping:
    """Every trial runs to completion (the full-budget reference)."""

    def start(self, trial: int) -> None:
        pass

    def report(self, trial: int, step: int, value: float) -> bool:
        return False

    def finish(self, trial: int, value: float, pruned: bool) -> None:
        pass


@dataclass
class LadderPolicy:
    """The early-stop service's engine, without Kafka: every report goes through stage 1
    and each crossing it causes through stage 2 at once (instant decisions)."""

    spec: SchedulerSpec
    trial_prefix: str = "trial-"
    study_id: str = "replay"
    engine: EarlyStopEngine = field(default_factory=lambda: EarlyStopEngine(Leaderboards()))
    curves: dict[int, CurveState] = field(default_factory=dict)
    decisions: int = 0
    _promoted: list[int] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def trial_id(self, trial: int) -> str:
        return f"{self.trial_prefix}{trial:06d}"

    def start(self, trial: int) -> None:
        self.curves[trial] = CurveState(study_id=self.study_id)
        self._index[self.trial_id(trial)] = trial

    def report(self, trial: int, step: int, value: float) -> bool | Action:
        """The trial's first STOP or PAUSE among the decisions of every crossing the
        report caused (all are judged, as the service judges every crossing emitted)."""
        observed = self.engine.observe(
            self.spec, self.curves[trial], self.study_id, self.trial_id(trial), float(step), value
        )
        self.curves[trial] = observed.state
        verdict = Action.CONTINUE
        for crossing in observed.crossings:
            decisions = self.engine.judge(self.spec, crossing)
            self.decisions += len(decisions)
            self._promoted.extend(self._index[d.trial_id] for d in decisions[1:])
            own = decisions[0].action if decisions else Action.CONTINUE
            if verdict is Action.CONTINUE and own in (Action.STOP, Action.PAUSE):
                verdict = own
        return verdict

    def take_promoted(self) -> list[int]:
        """Paused trials promoted since the last call, in decision order."""
        out, self._promoted = self._promoted, []
        return out

    def finish(self, trial: int, value: float, pruned: bool) -> None:
        self.curves.pop(trial, None)


@dataclass(frozen=True)
class ReplayResult:
    order: tuple[int, ...]  # table rows in start order
    steps_run: tuple[int, ...]  # epochs each started trial ran, in start order
    epochs_used: int
    full_budget: int  # configs * max_steps
    pruned: int
    completed: int
    best_found: float  # best final value among completed trials (NaN: none)
    best_possible: float  # best final value in the table
    found_row: int  # table row of best_found (-1: none)
    found_rank: int  # 1-based rank of found_row's final value in the table (0: none)
    wall_time: float  # simulated time until the last worker went idle
    # (epochs consumed by all workers so far, final value) per completed trial, in
    # simulated-time order: the anytime curve behind ``regret_at``.
    completions: tuple[tuple[int, float], ...] = ()
    paused_at_end: int = 0  # promotion form: paused and never promoted (in ``pruned``)
    promotions: int = 0  # promotion form: paused trials promoted and resumed

    @property
    def pruned_fraction(self) -> float:
        return self.pruned / len(self.order) if self.order else 0.0

    @property
    def budget_fraction(self) -> float:
        return self.epochs_used / self.full_budget if self.full_budget else 0.0

    @property
    def regret(self) -> float:
        return self.best_found - self.best_possible

    def regret_at(self, epochs: int) -> float:
        """The regret this run had once ``epochs`` epochs were consumed (NaN before its
        first completion): compares schedulers at equal budget."""
        finals = [v for used, v in self.completions if used <= epochs and math.isfinite(v)]
        return min(finals) - self.best_possible if finals else math.nan

    def reached(self, steps: int) -> int:
        """How many trials ran at least ``steps`` epochs."""
        return sum(1 for s in self.steps_run if s >= steps)


def replay(
    table: CurveTable,
    policy: StoppingPolicy,
    workers: int,
    order: Sequence[int] | None = None,
) -> ReplayResult:
    """Run every row of ``table`` (in ``order``, default 0..n-1) through ``policy``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    rows = list(range(table.configs)) if order is None else [int(r) for r in order]
    if any(not 0 <= r < table.configs for r in rows):
        raise ValueError("order names a row outside the table")
    run = _Run(table, rows, policy)
    run.until_idle(workers)
    return run.result()


class _Run:
    """One replay's simulated workers: the queue of epoch ends, what each trial ran, and
    (promotion form) the paused trials and the promoted ones waiting for a worker."""

    def __init__(self, table: CurveTable, rows: list[int], policy: StoppingPolicy) -> None:
        self.table = table
        self.rows = rows
        self.policy = policy
        self.steps_run = [0] * len(rows)
        self.pruned = [False] * len(rows)
        # (time the epoch ends, worker, trial index in start order, epoch number)
        self.events: list[tuple[float, int, int, int]] = []
        self.next_trial = 0
        self.wall = 0.0
        self.epochs_so_far = 0
        self.completions: list[tuple[int, float]] = []
        self.paused: dict[int, float] = {}  # trial -> its last value
        self.resumable: deque[int] = deque()
        self.idle: list[int] = []
        self.promotions = 0
        self._take_promoted = getattr(policy, "take_promoted", None)

    def until_idle(self, workers: int) -> None:
        """Start ``workers`` workers and run until the last goes idle; the trials still
        paused then count as pruned."""
        for worker in range(workers):
            self._launch(worker, 0.0)
        while self.events:
            self._epoch_ended(*heapq.heappop(self.events))
        for trial, value in sorted(self.paused.items()):
            self.pruned[trial] = True
            self.policy.finish(trial, value, pruned=True)

    def _schedule(self, worker: int, now: float, trial: int, step: int) -> None:
        seconds = float(self.table.seconds[self.rows[trial], step - 1])
        heapq.heappush(self.events, (now + seconds, worker, trial, step))

    def _launch(self, worker: int, now: float) -> None:
        if self.resumable:  # promoted trials first, as Suggest hands out resumable ones
            trial = self.resumable.popleft()
            self._schedule(worker, now, trial, self.steps_run[trial] + 1)
            return
        if self.next_trial >= len(self.rows):
            self.idle.append(worker)
            return
        trial = self.next_trial
        self.next_trial += 1
        self.policy.start(trial)
        self._schedule(worker, now, trial, 1)

    def _epoch_ended(self, now: float, worker: int, trial: int, step: int) -> None:
        self.wall = max(self.wall, now)
        value = float(self.table.values[self.rows[trial], step - 1])
        self.steps_run[trial] = step
        self.epochs_so_far += 1
        if step >= self.table.max_steps:
            self.completions.append((self.epochs_so_far, value))
            self.policy.finish(trial, value, pruned=False)
            self._launch(worker, now)
            return
        verdict = self.policy.report(trial, step, value)
        self._queue_promoted()
        if verdict is True or verdict is Action.STOP:
            self.pruned[trial] = True
            self.policy.finish(trial, value, pruned=True)
            self._launch(worker, now)
        elif verdict is Action.PAUSE:
            self.paused[trial] = value
            self._launch(worker, now)
        else:
            self._schedule(worker, now, trial, step + 1)
        while self.idle and self.resumable:
            self._launch(self.idle.pop(), now)

    def _queue_promoted(self) -> None:
        """The paused trials the policy promoted wait for the next free worker."""
        for promoted in self._take_promoted() if self._take_promoted is not None else []:
            if self.paused.pop(promoted, None) is not None:
                self.promotions += 1
                self.resumable.append(promoted)

    def result(self) -> ReplayResult:
        rows, steps_run, max_steps = self.rows, self.steps_run, self.table.max_steps
        finals = self.table.finals()
        completed_rows = [rows[t] for t in range(len(rows)) if steps_run[t] >= max_steps]
        finite_completed = [r for r in completed_rows if math.isfinite(finals[r])]
        found_row = min(finite_completed, key=lambda r: (finals[r], r)) if finite_completed else -1
        best_found = float(finals[found_row]) if found_row >= 0 else math.nan
        best_possible = float(np.nanmin(finals)) if np.isfinite(finals).any() else math.nan
        # NaN finals rank last (they are not a result anyone would pick).
        found_rank = (
            1 + int(np.sum(np.where(np.isfinite(finals), finals, np.inf) < best_found))
            if found_row >= 0
            else 0
        )
        return ReplayResult(
            order=tuple(rows),
            steps_run=tuple(steps_run),
            epochs_used=sum(steps_run),
            full_budget=len(rows) * max_steps,
            pruned=sum(self.pruned),
            completed=len(completed_rows),
            best_found=best_found,
            best_possible=best_possible,
            found_row=found_row,
            found_rank=found_rank,
            wall_time=self.wall,
            completions=tuple(self.completions),
            paused_at_end=len(self.paused),
            promotions=self.promotions,
        )
