"""The example workloads stop mid-step when interrupted and a resumed run finishes that
step as the uninterrupted run would have."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from workers.digits import DigitsWorkload
from workers.runtime import StepInterrupted
from workers.synthetic import SyntheticWorkload

PARAMS = {"lr": 0.01, "hidden_units": 32, "layers": 1, "optimizer": "adam",
          "weight_decay": 1e-5, "batch_size": 64, "dropout": 0.1}


class SetAfter(threading.Event):
    """An interrupt that reads as set from its ``polls``-th poll on (mid-epoch)."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls

    def is_set(self) -> bool:
        self.polls -= 1
        return self.polls < 0 or super().is_set()


def test_digits_resumes_an_interrupted_epoch_exactly(tmp_path: Path) -> None:
    workload = DigitsWorkload()
    straight = workload.init(PARAMS, seed=7)
    expected = [workload.train_step(straight, epoch) for epoch in (1, 2, 3)]

    state = workload.init(PARAMS, seed=7)
    workload.train_step(state, 1, threading.Event())
    with pytest.raises(StepInterrupted):
        workload.train_step(state, 2, SetAfter(polls=10))  # 10 of 23 mini-batches
    assert state.partial is not None and state.partial.next_batch == 10
    path = tmp_path / "mid.ckpt"
    workload.save_checkpoint(state, path)

    resumed = workload.load_checkpoint(path, PARAMS, seed=7)
    assert resumed.epochs_done == 1 and resumed.partial.next_batch == 10
    assert workload.train_step(resumed, 2) == pytest.approx(expected[1], rel=1e-6)
    assert resumed.partial is None
    assert workload.train_step(resumed, 3) == pytest.approx(expected[2], rel=1e-6)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_synthetic_waits_only_for_the_rest_of_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_SYNTHETIC_STEP_S", "0.2")
    workload = SyntheticWorkload()
    state = workload.init({"x": 0.01}, seed=0)
    interrupt = threading.Event()
    interrupt.set()  # at once: nothing of the step is done
    with pytest.raises(StepInterrupted):
        workload.train_step(state, 1, interrupt)
    assert state["partial_step"] == 1 and state["partial_s"] < 0.2
    path = tmp_path / "s.ckpt"
    workload.save_checkpoint(state, path)
    resumed = workload.load_checkpoint(path, {"x": 0.01}, seed=0)
    value = workload.train_step(resumed, 1, threading.Event())
    assert value == workload.evaluate(resumed) and resumed["step"] == 1
    assert "partial_step" not in resumed
