"""The GP's MAP fit in plain torch (gp_fit.py): gpytorch's objective, BoTorch's optimum."""

import torch
from botorch.fit import fit_gpytorch_mll
from gpytorch.mlls import ExactMarginalLogLikelihood
from ladder.samplers.gp import NOISE_PRIOR, fit_model
from ladder.samplers.gp_fit import fit_map, negative_log_posterior


def data(n: int, dim: int, relevant: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    train_x = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    train_y = -((train_x[:, :relevant] - 0.4) ** 2).sum(dim=-1, keepdim=True)
    return train_x, train_y


def gpytorch_mll(model: torch.nn.Module) -> float:
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with torch.no_grad():
        value = mll(model(*model.train_inputs), model.train_targets).item()
    model.eval()
    return value


def unfitted(train_x: torch.Tensor, train_y: torch.Tensor) -> torch.nn.Module:
    return fit_model(train_x, train_y, start={}, optimise=False)


def test_objective_is_gpytorchs_marginal_log_likelihood_with_priors() -> None:
    model = unfitted(*data(24, 3, 2))
    with torch.no_grad():
        model.covar_module.lengthscale = torch.tensor([[0.3, 1.7, 4.0]], dtype=torch.float64)
        model.likelihood.noise = torch.tensor([0.02], dtype=torch.float64)
        model.mean_module.constant = torch.tensor(0.4, dtype=torch.float64)
    prior = model.covar_module.lengthscale_prior
    ours = negative_log_posterior(
        model.covar_module.lengthscale.detach().reshape(-1),
        torch.tensor(0.02, dtype=torch.float64),
        torch.tensor(0.4, dtype=torch.float64),
        model.train_inputs[0],
        model.train_targets,
        (prior.loc, prior.scale),
        NOISE_PRIOR,
    )
    assert abs(-ours.item() - gpytorch_mll(model)) < 1e-9


def test_reaches_botorchs_optimum_and_tells_irrelevant_columns_apart() -> None:
    train_x, train_y = data(40, 5, 2)
    theirs = unfitted(train_x, train_y)
    theirs.train()
    fit_gpytorch_mll(ExactMarginalLogLikelihood(theirs.likelihood, theirs))
    ours = unfitted(train_x, train_y)
    fit_map(ours, 200)
    assert gpytorch_mll(ours) >= gpytorch_mll(theirs) - 1e-4
    lengthscale = ours.covar_module.lengthscale.detach().reshape(-1)
    assert lengthscale[2:].min() > 3 * lengthscale[:2].max()


def test_a_warm_start_at_the_optimum_stays_there() -> None:
    train_x, train_y = data(30, 3, 3, seed=1)
    noise = torch.randn(train_y.shape, generator=torch.Generator().manual_seed(2))
    train_y = train_y + 0.05 * noise.to(train_y)
    model = fit_model(train_x, train_y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = fit_model(train_x, train_y, start=model.state_dict())
    for key in ("covar_module.raw_lengthscale", "likelihood.noise_covar.raw_noise"):
        assert torch.allclose(again.state_dict()[key], before[key], rtol=1e-3, atol=1e-6)
