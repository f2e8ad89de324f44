"""Smoothing of a trial's learning curve before it is compared with others.

Noisy curves would otherwise prune late bloomers on one unlucky evaluation. Each
smoother is a pure function of (state, value) -> (new state, smoothed value); the
state is a small JSON-friendly dict so a stream processor can keep it in a
changelog-backed table.

A NaN or infinite value is not smoothed at all: it means the run diverged
(``is_divergent``), and averaging it in would poison every later value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ladder.schedulers.spec import SchedulerSpec, SmoothingKind

SmootherState = dict[str, Any]


def is_divergent(value: float) -> bool:
    return not math.isfinite(value)


@dataclass(frozen=True)
class Ema:
    """Exponential moving average: s_t = alpha * x_t + (1 - alpha) * s_{t-1}, s_1 = x_1."""

    alpha: float = 0.5

    def update(self, state: Mapping[str, Any] | None, value: float) -> tuple[SmootherState, float]:
        _check_finite(value)
        previous = (state or {}).get("ema")
        smoothed = value if previous is None else self.alpha * value + (1 - self.alpha) * previous
        return {"ema": smoothed}, smoothed


@dataclass(frozen=True)
class MovingWindow:
    """Mean of the last ``size`` values."""

    size: int = 3

    def update(self, state: Mapping[str, Any] | None, value: float) -> tuple[SmootherState, float]:
        _check_finite(value)
        recent = [*(state or {}).get("window", []), value][-self.size :]
        return {"window": recent}, math.fsum(recent) / len(recent)


@dataclass(frozen=True)
class NoSmoothing:
    def update(self, state: Mapping[str, Any] | None, value: float) -> tuple[SmootherState, float]:
        _check_finite(value)
        return {}, value


Smoother = Ema | MovingWindow | NoSmoothing


def make_smoother(spec: SchedulerSpec) -> Smoother:
    if spec.smoothing is SmoothingKind.EMA:
        return Ema(spec.ema_alpha)
    if spec.smoothing is SmoothingKind.WINDOW:
        return MovingWindow(spec.window)
    return NoSmoothing()


def _check_finite(value: float) -> None:
    if is_divergent(value):
        # Callers route divergence before smoothing; reaching here is a bug.
        raise ValueError(f"cannot smooth a non-finite value {value!r}: the run diverged")
