"""A digits MLP tuned with Ladder: 4 worker processes, ASHA early stopping, a log-float,
an int, a categorical with a conditional child. Its twin with Optuna: optuna_digits.py.

    python examples/ladder_digits.py        # starts the embedded stack if none runs
"""

import ladder
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def objective(trial: ladder.Trial) -> float:
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y), test_size=0.2, random_state=0
    )
    model = nn.Sequential(nn.Linear(64, trial["hidden"]), nn.ReLU(), nn.Linear(trial["hidden"], 10))
    if trial["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=trial["lr"], momentum=trial["momentum"])
    else:
        opt = torch.optim.Adam(model.parameters(), lr=trial["lr"])
    for epoch in range(trial.restore(model, opt), trial.max_steps + 1):  # checkpointed when due
        for batch in torch.randperm(len(x_train)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x_val), y_val).item()
        trial.report(loss, step=epoch)
        if trial.should_stop():
            break
    return loss


def main(n_trials: int = 40, epochs: int = 27) -> None:
    study = ladder.optimize(objective, {
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "hidden": {"type": "int", "low": 16, "high": 256},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
    }, n_trials=n_trials, n_workers=4, scheduler="asha", max_steps=epochs)
    print(f"best val_loss {study.best_value:.4f} with {study.best_params}")


if __name__ == "__main__":
    main()
