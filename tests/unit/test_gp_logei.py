"""gp_logei: the NumPy single-point qLogEI, its hand-derived gradient, and its optimiser."""

import numpy as np
import pytest
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.safe_math import fatmax, log_fatplus
from ladder.samplers import gp_logei
from ladder.samplers.gp import Preconditioned
from ladder.samplers.gp_pending import PendingLogEI

from tests.unit.test_gp_pending import candidates, fitted


def test_log_fatplus_and_fatmax_are_botorchs() -> None:
    x = torch.tensor([-1e3, -40.0, -1.0, -1e-7, 0.0, 1e-7, 0.5, 30.0, 1e4], dtype=torch.float64)
    ours, _ = gp_logei.log_fatplus(x.numpy(), 1e-6)
    assert np.allclose(ours, log_fatplus(x, tau=1e-6).numpy(), rtol=1e-12, atol=1e-12)
    values = torch.randn(16, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours, _ = gp_logei.fatmax(values.numpy(), 1e-2)
    assert np.allclose(ours, fatmax(values, dim=-1, tau=1e-2).numpy(), rtol=1e-12, atol=1e-12)


def test_fatmax_gradient_is_torchs_autograd() -> None:
    values = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values.requires_grad_(True)
    fatmax(values, dim=-1, tau=1e-2).sum().backward()
    _, ours = gp_logei.fatmax(values.detach().numpy(), 1e-2)
    assert np.allclose(ours, values.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pending_count", [0, 1, 5])
def test_gradient_matches_central_differences(pending_count: int) -> None:
    model, train_x, train_y = fitted()
    pending = 0.4 + 0.1 * (candidates(1, pending_count).squeeze(1) - 0.5)
    terms = PendingLogEI(model, train_y.max(), pending, 64, seed=5).terms
    # Around the optimum (0.4), where the acquisition is not flat to rounding.
    near = 0.4 + 0.4 * (candidates(4) - 0.5)
    points = torch.cat([near, train_x[:3].unsqueeze(1) + 1e-3]).squeeze(1).numpy()
    _, grad = gp_logei.value_and_grad(terms, points)
    step = 1e-6
    for column in range(points.shape[1]):
        shift = np.zeros_like(points)
        shift[:, column] = step
        up, _ = gp_logei.value_and_grad(terms, points + shift, need_grad=False)
        down, _ = gp_logei.value_and_grad(terms, points - shift, need_grad=False)
        numeric = (up - down) / (2 * step)
        assert np.allclose(grad[:, column], numeric, rtol=1e-3, atol=1e-4 * np.abs(grad).max())


def test_without_pending_points_the_gradient_is_botorchs() -> None:
    model, _, train_y = fitted()
    ours = PendingLogEI(model, train_y.max(), torch.zeros(0, 3, dtype=torch.float64), 64, seed=5)
    botorch = qLogExpectedImprovement(
        model, best_f=train_y.max(), sampler=SobolQMCNormalSampler(torch.Size([64]), seed=5)
    )
    a = candidates(4).requires_grad_(True)
    b = candidates(4).requires_grad_(True)
    ours(a).sum().backward()
    botorch(b).sum().backward()
    # The same function; rounding of the two posterior computations apart.
    assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-8)


def test_maximise_finds_the_points_optimize_acqf_finds() -> None:
    model, train_x, train_y = fitted()
    acquisition = PendingLogEI(model, train_y.max(), train_x[:2] + 0.01, 64, seed=0)
    starts = candidates(7, 5)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # a preconditioned search
    bounds = torch.stack([torch.zeros(3), torch.ones(3)]).to(torch.float64)
    expected, _ = optimize_acqf(
        Preconditioned(acquisition, scale),
        bounds=bounds / scale,
        q=1,
        num_restarts=len(starts),
        batch_initial_conditions=starts / scale,
        return_best_only=False,
        options={"maxiter": 60},
    )
    ours = gp_logei.maximise(acquisition.terms, starts.squeeze(1).numpy(), scale.numpy(), 60)
    assert np.allclose(ours, (expected * scale).clamp(0, 1).squeeze(1).numpy(), atol=1e-9)
    with torch.no_grad():
        assert (acquisition(torch.from_numpy(ours).unsqueeze(1)) >= acquisition(starts)).all()


def test_any_batch_shape_is_scored_point_by_point() -> None:
    model, train_x, train_y = fitted()
    acquisition = PendingLogEI(model, train_y.max(), train_x[:2] + 0.01, 64, seed=0)
    points = candidates(9, 6)
    with torch.no_grad():
        flat = acquisition(points)
        assert acquisition(points.reshape(2, 3, 1, 3)).shape == (2, 3)
        assert torch.equal(acquisition(points.reshape(2, 3, 1, 3)).reshape(-1), flat)
        assert acquisition(points[0]).shape == ()
