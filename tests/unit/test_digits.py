import math
import time
from pathlib import Path

import pytest

from workers.digits import DigitsConfig, DigitsWorkload, load_split

PARAMS = {"lr": 0.01, "hidden_units": 32, "layers": 1, "optimizer": "adam",
          "weight_decay": 1e-5, "batch_size": 64, "dropout": 0.1}


@pytest.fixture(scope="module")
def workload() -> DigitsWorkload:
    return DigitsWorkload()


def test_split_is_fixed_and_stratified() -> None:
    split = load_split()
    assert len(split.x_train) + len(split.x_val) == 1797
    assert len(split.x_val) == 360
    assert set(split.y_val.tolist()) == set(range(10))
    assert float(split.x_train.max()) <= 1.0


def test_validation_loss_decreases_over_a_few_epochs(workload: DigitsWorkload) -> None:
    state = workload.init(PARAMS, seed=3)
    losses = [workload.train_step(state, epoch) for epoch in range(1, 4)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] < math.log(10)  # better than guessing after one epoch
    assert losses[2] < losses[0]


def test_checkpoint_resume_continues_the_same_run(workload: DigitsWorkload,
                                                  tmp_path: Path) -> None:
    state = workload.init(PARAMS, seed=11)
    workload.train_step(state, 1)
    path = tmp_path / "ck" / "step1.pt"
    workload.save_checkpoint(state, path)
    uninterrupted = workload.train_step(state, 2)

    resumed = workload.load_checkpoint(path, PARAMS, seed=11)
    assert resumed.epochs_done == 1
    assert workload.train_step(resumed, 2) == pytest.approx(uninterrupted, rel=1e-6)


def test_same_seed_same_curve(workload: DigitsWorkload) -> None:
    first = workload.train_step(workload.init(PARAMS, seed=5), 1)
    second = workload.train_step(workload.init(PARAMS, seed=5), 1)
    assert first == second


def test_largest_configuration_epoch_is_well_under_a_second(workload: DigitsWorkload) -> None:
    largest = {"lr": 0.01, "hidden_units": 256, "layers": 3, "optimizer": "sgd",
               "momentum": 0.9, "batch_size": 16, "dropout": 0.5, "weight_decay": 1e-6}
    state = workload.init(largest, seed=0)
    started = time.perf_counter()
    workload.train_step(state, 1)
    assert time.perf_counter() - started < 1.0


def test_params_arrive_as_floats_or_ints() -> None:
    config = DigitsConfig.from_params({"hidden_units": 64.0, "batch_size": 32.0, "layers": 2,
                                       "optimizer": "adam", "momentum": 0.9})
    assert (config.hidden_units, config.batch_size, config.layers) == (64, 32, 2)
    assert config.momentum == 0.0  # only meaningful for sgd


def test_unknown_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        DigitsConfig.from_params({"optimizer": "rmsprop"})
