"""The twin of ladder_digits.py written the way an Optuna user would: the same digits
MLP and study (4 workers, ASHA, a log-float, an int, a categorical with a conditional
child), Optuna's in-memory study with 4 threads.

    python examples/optuna_digits.py
"""

import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def objective(trial: optuna.Trial, epochs: int) -> float:
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y), test_size=0.2, random_state=0
    )
    lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
    hidden = trial.suggest_int("hidden", 16, 256)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    if trial.suggest_categorical("optimizer", ["sgd", "adam"]) == "sgd":
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(x_train)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x_val), y_val).item()
        trial.report(loss, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def main(n_trials: int = 40, epochs: int = 27) -> None:
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    study.optimize(lambda trial: objective(trial, epochs), n_trials=n_trials, n_jobs=4)
    print(f"best val_loss {study.best_value:.4f} with {study.best_params}")


if __name__ == "__main__":
    main()
