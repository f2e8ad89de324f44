"""The digits workload: a torch MLP on scikit-learn's bundled 8x8 digits images.

The data ships inside scikit-learn (1797 images, 10 classes), so the demo needs no
download. The split is fixed (stratified, 20 % validation, ``random_state=0``): every
trial of a study sees the same data, which is what :data:`DATASET_ID` names in the
lineage. One step of the runtime is one epoch over the training split; the objective
is the validation log-loss (mean cross entropy), lower is better.

torch runs on one thread: the demo shares two cores between eight workers and the
services, and an epoch of even the largest configuration takes a few tens of
milliseconds on one core.

Two ways to run it: :func:`train`, an objective written with the Python API (what
``make demo`` runs through ``ladder.optimize``), and :class:`DigitsWorkload`, the
``workers.runtime.Workload`` of ``python -m workers``. Interruptible as a Workload: the
runtime's interrupt event is polled between mini-batches; once set, the epoch stops
there and the state keeps the epoch's order and the next mini-batch
(:class:`PartialEpoch`), which the checkpoint holds too, so a resumed attempt finishes
that epoch exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from ladder.params import PlainValue
from torch import nn

from workers.runtime import StepInterrupted

DATASET_ID = "sklearn-digits-1797-split-seed0"
METRIC = "val_loss"
MAX_EPOCHS = 27
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0
# Gradient-norm clip: large learning rates (0.3 with momentum 0.99) then make a trial
# bad rather than NaN, so divergence stays the exception it is in real training.
GRAD_CLIP_NORM = 5.0

# The demo's search space, in the SDK's plain-dict form (ladder.client.search_space).
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 3e-1, "log": True},
    "hidden_units": {"type": "int", "low": 16, "high": 256, "log": True},
    "layers": {"type": "int", "low": 1, "high": 3},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "batch_size": {"type": "ordinal", "values": [16, 32, 64, 128]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}

# Used for parameters a caller leaves out (e.g. momentum when the optimizer is adam).
DEFAULTS: dict[str, PlainValue] = {
    "lr": 0.01,
    "hidden_units": 64,
    "layers": 1,
    "optimizer": "adam",
    "momentum": 0.0,
    "weight_decay": 1e-5,
    "batch_size": 32,
    "dropout": 0.0,
}


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@lru_cache(maxsize=1)
def load_split() -> Split:
    """The fixed train/validation split (loaded once per process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel intensities are 0..16; scaling to [0, 1] keeps every lr in range usable.
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Split(x_train, y_train, x_val, y_val)


@dataclass(frozen=True)
class DigitsConfig:
    lr: float
    hidden_units: int
    layers: int
    optimizer: str
    momentum: float
    weight_decay: float
    batch_size: int
    dropout: float

    @classmethod
    def from_params(cls, params: Mapping[str, PlainValue]) -> DigitsConfig:
        merged = {**DEFAULTS, **params}
        optimizer = str(merged["optimizer"])
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        return cls(
            lr=float(merged["lr"]),
            # Ordinal and int values may arrive as floats (ParamValue float_value).
            hidden_units=int(round(float(merged["hidden_units"]))),
            layers=int(round(float(merged["layers"]))),
            optimizer=optimizer,
            momentum=float(merged["momentum"]) if optimizer == "sgd" else 0.0,
            weight_decay=float(merged["weight_decay"]),
            batch_size=int(round(float(merged["batch_size"]))),
            dropout=float(merged["dropout"]),
        )


@dataclass
class PartialEpoch:
    """An epoch stopped between two mini-batches."""

    epoch: int
    order: torch.Tensor  # the epoch's permutation of the training split
    next_batch: int  # index of the first mini-batch not trained yet


@dataclass
class DigitsState:
    config: DigitsConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    epochs_done: int = 0
    partial: PartialEpoch | None = None


def build_model(config: DigitsConfig, n_features: int = 64, n_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_features
    for _ in range(config.layers):
        layers += [nn.Linear(width, config.hidden_units), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = config.hidden_units
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def build_optimizer(config: DigitsConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train(trial: Any) -> float:
    """The digits MLP as a ``ladder.Trial`` objective: an epoch a step, the validation
    log-loss reported after each; model, optimizer and shuffling stream checkpointed
    when the study's policy says."""
    workload = DigitsWorkload()
    state = workload.init(trial.params, trial.seed)
    loss = math.nan
    last = trial.max_steps or MAX_EPOCHS
    for epoch in range(trial.restore(state.model, state.optimizer, state.shuffle), last + 1):
        loss = workload.train_step(state, epoch)
        trial.report(loss, step=epoch)
        if trial.should_stop():
            break
    return loss


class DigitsWorkload:
    """Implements :class:`workers.runtime.Workload` for the digits MLP."""

    name = "digits"
    metric = METRIC
    dataset_id = DATASET_ID
    max_steps = MAX_EPOCHS

    def __init__(self, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        # Recorded with every attempt in the lineage.
        self.environment = f"torch={torch.__version__} threads={threads}"

    def init(self, params: Mapping[str, PlainValue], seed: int) -> DigitsState:
        config = DigitsConfig.from_params(params)
        # The global generator drives weight init and dropout; its state goes into
        # every checkpoint so a resumed run continues the same random stream.
        torch.manual_seed(seed)
        model = build_model(config)
        shuffle = torch.Generator().manual_seed(seed)
        return DigitsState(config, model, build_optimizer(config, model), shuffle)

    interruptible = True

    def train_step(
        self, state: DigitsState, step: int, interrupt: threading.Event | None = None
    ) -> float:
        """Train one epoch; return the validation log-loss after it (NaN if it diverged).
        Raises StepInterrupted between two mini-batches once ``interrupt`` is set."""
        split = load_split()
        model = state.model
        model.train()
        partial = state.partial if state.partial and state.partial.epoch == step else None
        if partial is not None:
            order, first = partial.order, partial.next_batch
        else:
            order, first = torch.randperm(len(split.x_train), generator=state.shuffle), 0
        size = state.config.batch_size
        loss_fn = nn.functional.cross_entropy
        for index in range(first, math.ceil(len(order) / size)):
            if interrupt is not None and interrupt.is_set():
                state.partial = PartialEpoch(step, order, index)
                raise StepInterrupted(f"epoch {step} stopped before mini-batch {index}")
            batch = order[index * size:(index + 1) * size]
            state.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(split.x_train[batch]), split.y_train[batch])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            state.optimizer.step()
        state.partial = None
        state.epochs_done = step
        return self.evaluate(state)

    def evaluate(self, state: DigitsState) -> float:
        split = load_split()
        state.model.eval()
        with torch.no_grad():
            value = float(nn.functional.cross_entropy(state.model(split.x_val), split.y_val))
        return value if math.isfinite(value) else math.nan

    def save_checkpoint(self, state: DigitsState, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "shuffle_rng": state.shuffle.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epochs_done": state.epochs_done,
                "partial": None if state.partial is None else {
                    "epoch": state.partial.epoch,
                    "order": state.partial.order,
                    "next_batch": state.partial.next_batch,
                },
            },
            tmp,
        )
        # Rename last: a reported checkpoint URI never points at a half-written file.
        tmp.replace(path)

    def load_checkpoint(
        self, path: Path, params: Mapping[str, PlainValue], seed: int
    ) -> DigitsState:
        state = self.init(params, seed)
        saved = torch.load(path, weights_only=True)
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.shuffle.set_state(saved["shuffle_rng"])
        torch.set_rng_state(saved["torch_rng"])
        state.epochs_done = int(saved["epochs_done"])
        partial = saved.get("partial")
        if partial is not None:
            state.partial = PartialEpoch(
                int(partial["epoch"]), partial["order"], int(partial["next_batch"])
            )
        return state
