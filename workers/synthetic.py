"""A fast synthetic workload for the worker runtime: a learning curve, no training.

``python -m workers --workload synthetic``. The objective after step ``s`` is
``floor + 1 / s`` where ``floor`` grows with the distance of every float parameter
(on its log scale when positive) from a fixed optimum, so the scheduler has worse and
better trials to tell apart; each step sleeps LADDER_SYNTHETIC_STEP_S seconds
(default 0.1) so a study lasts long enough to restart components during it.

Interruptible (``workers.runtime.Workload``): a step waits on the runtime's interrupt
event instead of sleeping; once it is set the step stops, the state keeps how much of
the step was done (``partial_s``) and a resumed attempt waits only for the rest.
LADDER_SYNTHETIC_INTERRUPTIBLE=0 makes it a workload without the hook (its steps cannot
be cut short), to exercise the runtime's other path.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ladder.params import PlainValue

from workers.runtime import StepInterrupted

OPTIMUM_LOG10 = -2.5  # a float parameter's best value, log10 of it when positive


class SyntheticWorkload:
    name = "synthetic"
    metric = "val_loss"
    max_steps = 9

    def __init__(self) -> None:
        self.step_s = float(os.environ.get("LADDER_SYNTHETIC_STEP_S", 0.1))
        self.interruptible = os.environ.get("LADDER_SYNTHETIC_INTERRUPTIBLE", "1") != "0"

    def init(self, params: Mapping[str, PlainValue], seed: int) -> dict[str, Any]:
        floor = 0.0
        for value in params.values():
            if isinstance(value, float | int) and not isinstance(value, bool):
                x = math.log10(value) if value > 0 else float(value)
                floor += 0.1 * (x - OPTIMUM_LOG10) ** 2
        return {"floor": floor, "step": 0}

    def train_step(
        self, state: dict[str, Any], step: int, interrupt: threading.Event | None = None
    ) -> float:
        done = state.get("partial_s", 0.0) if state.get("partial_step") == step else 0.0
        started = time.monotonic() - done
        while (done := time.monotonic() - started) < self.step_s:
            left = self.step_s - done
            if interrupt is None:
                time.sleep(left)
            elif interrupt.wait(left):
                state.update(partial_step=step, partial_s=done)
                raise StepInterrupted(f"step {step} stopped after {done:.3f} s")
        state.pop("partial_step", None)
        state.pop("partial_s", None)
        state["step"] = step
        return self.evaluate(state)

    def evaluate(self, state: dict[str, Any]) -> float:
        return state["floor"] + 1.0 / max(1, state["step"])

    def save_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state))

    def load_checkpoint(
        self, path: Path, params: Mapping[str, PlainValue], seed: int
    ) -> dict[str, Any]:
        return json.loads(path.read_text())
