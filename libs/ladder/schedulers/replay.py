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
    max_steps = table.max_steps
    steps_run = [0] * len(rows)
    pruned_flags = [False] * len(rows)
    # (time the epoch ends, worker, trial index in start order, epoch number)
    events: list[tuple[float, int, int, int]] = []
    next_trial = 0
    wall = 0.0
    epochs_so_far = 0
    completions: list[tuple[int, float]] = []
    paused: dict[int, float] = {}  # trial -> its last value (promotion form)
    resumable: deque[int] = deque()  # promoted trials waiting for a worker
    idle: list[int] = []
    promotions = 0
    take_promoted = getattr(policy, "take_promoted", None)

    def schedule(worker: int, now: float, trial: int, step: int) -> None:
        heapq.heappush(
            events, (now + float(table.seconds[rows[trial], step - 1]), worker, trial, step)
        )

    def launch(worker: int, now: float) -> None:
        nonlocal next_trial
        if resumable:  # promoted trials first, as Suggest hands out resumable ones
            trial = resumable.popleft()
            schedule(worker, now, trial, steps_run[trial] + 1)
            return
        if next_trial >= len(rows):
            idle.append(worker)
            return
        trial = next_trial
        next_trial += 1
        policy.start(trial)
        schedule(worker, now, trial, 1)

    for worker in range(workers):
        launch(worker, 0.0)
    while events:
        now, worker, trial, step = heapq.heappop(events)
        wall = max(wall, now)
        row = rows[trial]
        value = float(table.values[row, step - 1])
        steps_run[trial] = step
        epochs_so_far += 1
        if step >= max_steps:
            completions.append((epochs_so_far, value))
            policy.finish(trial, value, pruned=False)
            launch(worker, now)
            continue
        verdict = policy.report(trial, step, value)
        for promoted in take_promoted() if take_promoted is not None else []:
            if paused.pop(promoted, None) is not None:
                promotions += 1
                resumable.append(promoted)
        if verdict is True or verdict is Action.STOP:
            pruned_flags[trial] = True
            policy.finish(trial, value, pruned=True)
            launch(worker, now)
        elif verdict is Action.PAUSE:
            paused[trial] = value
            launch(worker, now)
        else:
            schedule(worker, now, trial, step + 1)
        while idle and resumable:
            launch(idle.pop(), now)
    for trial, value in sorted(paused.items()):
        pruned_flags[trial] = True
        policy.finish(trial, value, pruned=True)

    finals = table.finals()
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
        pruned=sum(pruned_flags),
        completed=len(completed_rows),
        best_found=best_found,
        best_possible=best_possible,
        found_row=found_row,
        found_rank=found_rank,
        wall_time=wall,
        completions=tuple(completions),
        paused_at_end=len(paused),
        promotions=promotions,
    )
