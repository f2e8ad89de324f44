"""A fast synthetic workload for the worker runtime: a learning curve, no training.

``python -m workers --workload synthetic``. The objective after step ``s`` is
``floor + 1 / s`` where ``floor`` grows with the distance of every float parameter
(on its log scale when positive) from a fixed optimum, so the scheduler has worse and
better trials to tell apart; each step sleeps LADDER_SYNTHETIC_STEP_S seconds
(default 0.1) so a study lasts long enough to restart components during it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ladder.params import PlainValue

OPTIMUM_LOG10 = -2.5  # a float parameter's best value, log10 of it when positive


class SyntheticWorkload:
    name = "synthetic"
    metric = "val_loss"
    max_steps = 9

    def __init__(self) -> None:
        self.step_s = float(os.environ.get("LADDER_SYNTHETIC_STEP_S", 0.1))

    def init(self, params: Mapping[str, PlainValue], seed: int) -> dict[str, Any]:
        floor = 0.0
        for value in params.values():
            if isinstance(value, float | int) and not isinstance(value, bool):
                x = math.log10(value) if value > 0 else float(value)
                floor += 0.1 * (x - OPTIMUM_LOG10) ** 2
        return {"floor": floor, "step": 0}

    def train_step(self, state: dict[str, Any], step: int) -> float:
        time.sleep(self.step_s)
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
