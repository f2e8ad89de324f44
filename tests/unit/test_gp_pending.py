"""PendingLogEI (gp_pending.py): BoTorch's qLogEI with pending points, drawn once per ask."""

import pytest
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.sampling import SobolQMCNormalSampler
from ladder.samplers.gp import fast_posterior_model, fit_model, log_ei
from ladder.samplers.gp_pending import PendingLogEI

SAMPLES = 4096


def fitted(n: int = 24, seed: int = 0):  # noqa: ANN201 - botorch type
    generator = torch.Generator().manual_seed(seed)
    train_x = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    train_y = -((train_x - 0.4) ** 2).sum(dim=-1, keepdim=True)
    return fast_posterior_model(fit_model(train_x, train_y)), train_x, train_y


def candidates(seed: int, count: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 3, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("pending_count", [0, 1, 5])
def test_same_values_as_botorch_qlogei_with_pending_points(pending_count: int) -> None:
    model, train_x, train_y = fitted()
    # Pending points near the optimum, where they change the acquisition most.
    pending = 0.4 + 0.1 * (candidates(1, pending_count).squeeze(1) - 0.5)
    ours = PendingLogEI(model, train_y.max(), pending, SAMPLES, seed=3)
    botorch = qLogExpectedImprovement(
        model,
        best_f=train_y.max(),
        X_pending=pending if pending_count else None,
        sampler=SobolQMCNormalSampler(torch.Size([SAMPLES]), seed=3),
    )
    points = torch.cat([candidates(2), pending.unsqueeze(1), train_x[:4].unsqueeze(1)])
    with torch.no_grad():
        a, b = ours(points), botorch(points)
    assert a.shape == b.shape == (len(points),)
    # Same expectation; the two estimates differ by Monte-Carlo noise only.
    assert torch.allclose(a, b, atol=0.1), (a - b).abs().max()
    assert torch.equal(torch.argsort(a[:8]), torch.argsort(b[:8])) or (a - b).abs().max() < 0.05


def test_a_pending_point_makes_its_neighbourhood_worth_less_than_elsewhere() -> None:
    model, _, train_y = fitted()
    running = torch.tensor([[0.4, 0.4, 0.4]], dtype=torch.float64)
    near = running.unsqueeze(0) + 1e-3
    aside = torch.tensor([[[0.45, 0.4, 0.4]]], dtype=torch.float64)
    alone = PendingLogEI(model, train_y.max(), running[:0], 256, seed=0)
    with_pending = PendingLogEI(model, train_y.max(), running, 256, seed=0)
    with torch.no_grad():
        # Alone, the point next to the optimum is the better one; with the optimum
        # being evaluated it adds little, and a point a step aside wins.
        assert alone(near).item() > alone(aside).item() + 0.02
        assert with_pending(aside).item() > with_pending(near).item() + 0.005


def test_gradient_is_finite_at_training_and_pending_points() -> None:
    model, train_x, train_y = fitted()
    pending = train_x[:3] + 1e-3
    acquisition = PendingLogEI(model, train_y.max(), pending, 64, seed=0)
    points = torch.cat([train_x[:3], pending, train_x[5:8] + 0.05]).unsqueeze(1)
    points.requires_grad_(True)
    acquisition(points).sum().backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()


def test_joint_batches_keep_botorch_qlogei() -> None:
    model, train_x, train_y = fitted()
    single = log_ei(model, train_y.max(), train_x[:2], 1, seed=0)
    joint = log_ei(model, train_y.max(), train_x[:2], 3, seed=0)
    assert isinstance(single, PendingLogEI)
    assert type(joint) is qLogExpectedImprovement
    with pytest.raises(ValueError):
        single(candidates(0, 6).reshape(2, 3, 3))


def test_without_pending_points_the_values_are_botorchs_exactly() -> None:
    model, _, train_y = fitted()
    none = torch.zeros(0, 3, dtype=torch.float64)
    ours = PendingLogEI(model, train_y.max(), none, 64, seed=5)
    botorch = qLogExpectedImprovement(
        model, best_f=train_y.max(), sampler=SobolQMCNormalSampler(torch.Size([64]), seed=5)
    )
    points = candidates(4)
    with torch.no_grad():
        # The same draws: equal up to the rounding of the two posterior computations.
        assert torch.allclose(ours(points), botorch(points), rtol=1e-6, atol=1e-6)
