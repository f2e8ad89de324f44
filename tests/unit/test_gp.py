import numpy as np
from ladder.samplers import (
    FACTORIES,
    LocalDraws,
    Observation,
    Proposal,
    QuasiRandomSampler,
    SamplerContext,
)
from ladder.samplers.gp import ENCODING, GPSampler, initial_points
from ladder.space import Kind, ParamSpec, Space
from ladder.study import Algorithm
from ladder.testing.samplers import random_observations

PLANE = Space(
    [ParamSpec("x", Kind.FLOAT, low=0, high=1), ParamSpec("y", Kind.FLOAT, low=-2, high=2)]
)
MIXED = Space(
    [
        ParamSpec("x", Kind.FLOAT, low=0, high=1),
        ParamSpec("lr", Kind.FLOAT, low=1e-4, high=1, log=True),
        ParamSpec("n", Kind.INT, low=1, high=6),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
        ParamSpec("mom", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({0})),
    ]
)


def bowl(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (p["y"] - 1.0) ** 2


def gp(space: Space, seed: int = 1, maximize: bool = False) -> GPSampler:
    return GPSampler(SamplerContext(space, seed=seed, maximize=maximize, reserve=LocalDraws()))


def test_initial_design_is_the_quasi_random_stream() -> None:
    ctx = SamplerContext(PLANE, seed=4)
    expected = [p.params for p in QuasiRandomSampler(ctx).suggest((), initial_points(PLANE))]
    got = [p.params for p in GPSampler(ctx).suggest((), initial_points(PLANE))]
    assert got == expected
    assert isinstance(FACTORIES[Algorithm.GP](ctx), GPSampler)


def test_initial_design_is_twice_the_columns_between_its_bounds() -> None:
    def floats(n: int) -> Space:
        return Space([ParamSpec(f"x{i}", Kind.FLOAT, low=0, high=1) for i in range(n)])

    assert initial_points(PLANE) == 8  # 2 x 2 columns, raised to the minimum
    assert initial_points(floats(5)) == 10
    # Capped: 20 columns (or six five-way categoricals, 30 one-hot columns) would
    # otherwise spend 40 or 60 of a 100-evaluation study on the Sobol' design.
    assert initial_points(floats(20)) == 16
    six_categoricals = Space(
        [ParamSpec(f"c{i}", Kind.CATEGORICAL, values=tuple("abcde")) for i in range(6)]
    )
    assert initial_points(six_categoricals) == 16
    # The sampler leaves its Sobol' design after that many points.
    data = random_observations(floats(20), 16, lambda p: sum(v for v in p.values()))
    assert gp(floats(20)).suggest(data[:15], 1)[0].model_observations == 0
    assert gp(floats(20)).suggest(data, 1)[0].model_observations == 16


def test_model_based_suggestion_is_deterministic_and_predicts() -> None:
    data = random_observations(PLANE, 14, bowl)
    a, b = gp(PLANE), gp(PLANE)
    pa, pb = a.suggest(data, 1)[0], b.suggest(data, 1)[0]
    assert pa.params == pb.params and pa.draw == 0
    assert pa.predicted_std > 0
    # The model has seen values between ~0 and ~5; it predicts a low value there.
    assert -1 < pa.predicted_mean < min(o.value for o in data) + 0.5
    assert bowl(pa.params) < np.median([o.value for o in data])


def test_maximize_reports_values_in_the_metric_direction() -> None:
    s = gp(PLANE, maximize=True)
    data = random_observations(PLANE, 14, lambda p: 10 - bowl(p))
    proposal = s.suggest(data, 1)[0]
    assert proposal.predicted_mean > np.median([o.value for o in data])


def test_pending_points_are_not_suggested_again() -> None:
    s = gp(PLANE)
    data = random_observations(PLANE, 14, bowl)
    first = s.suggest(data, 1)[0].params
    unit = PLANE.params_to_unit
    again = s.suggest(data, 1)[0].params
    diverted = s.suggest(data, 1, pending=[first])[0].params
    assert np.linalg.norm(unit(again) - unit(first)) < 0.05  # same state, same optimum
    assert np.linalg.norm(unit(diverted) - unit(first)) > np.linalg.norm(unit(again) - unit(first))


def test_mixed_conditional_space_batch_is_valid() -> None:
    def value(p: dict) -> float:
        return (p["x"] - 0.5) ** 2 + (np.log10(p["lr"]) + 2) ** 2 + (p["opt"] != "a")

    s = gp(MIXED)
    data = random_observations(MIXED, initial_points(MIXED), value)
    data.append(Observation("nan", {"x": 0.1, "lr": 0.1, "n": 2, "opt": "b"}, float("nan")))
    batch = s.suggest(data, 2)
    assert [p.draw for p in batch] == [0, 1]
    for proposal in batch:
        MIXED.check_params(proposal.params)  # ints are ints, inactive child omitted
        assert isinstance(proposal.params["n"], int)
    assert batch[0].params != batch[1].params


def test_zero_count_is_empty() -> None:
    assert gp(PLANE).suggest((), 0) == []


CHOICES = Space(
    [
        ParamSpec("x", Kind.FLOAT, low=0, high=1),
        ParamSpec("n", Kind.INT, low=1, high=6),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
        ParamSpec("mom", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({0})),
    ]
)


def test_discrete_neighbours_are_valid_one_step_moves() -> None:
    s = gp(CHOICES)
    point = {"x": 0.2, "n": 1, "opt": "b"}
    moves = s._neighbours(point)
    for move in moves:
        CHOICES.check_params(move)  # switching to "a" activates "mom"
    assert {m["opt"] for m in moves if m["n"] == 1} == {"a", "c"}
    assert sorted(m["n"] for m in moves if m["opt"] == "b") == [2]  # n=0 is out of range


def test_discrete_choices_are_optimised_not_rounded() -> None:
    def value(p: dict) -> float:
        return (p["x"] - 0.5) ** 2 + 0.3 * (p["n"] - 4) ** 2 + (0.0 if p["opt"] == "c" else 1.0)

    s = gp(CHOICES, seed=2)
    proposal = s.suggest(random_observations(CHOICES, 40, value, seed=5), 1)[0]
    CHOICES.check_params(proposal.params)
    assert proposal.params["opt"] == "c"
    assert proposal.params["n"] in (3, 4, 5)


def test_local_search_walks_discrete_moves_to_the_acquisition_optimum() -> None:
    import torch

    s = gp(CHOICES)
    target = torch.tensor(CHOICES.params_to_unit({"x": 0.2, "n": 4, "opt": "c"}, ENCODING))

    def acquisition(x: torch.Tensor) -> torch.Tensor:  # batch x q x d -> batch
        return -((x - target) ** 2).sum(dim=(-1, -2))

    start = {"x": 0.2, "n": 1, "opt": "a", "mom": 0.3}
    found = s._local_search(acquisition, [start], 0)  # type: ignore[arg-type]
    assert found == {"x": 0.2, "n": 4, "opt": "c"}  # 3 int steps + 1 switch, mom dropped


def fitted_plane_model(n: int = 20):  # noqa: ANN201 - botorch type
    import torch
    from ladder.samplers.gp import fit_model

    s = gp(PLANE)
    data = random_observations(PLANE, n, bowl)
    train_x = s._encode([o.params for o in data])
    train_y = torch.tensor([[-o.value] for o in data], dtype=torch.float64)
    return s, data, fit_model(train_x, train_y), train_x, train_y


def test_fast_posterior_equals_the_gpytorch_posterior() -> None:
    import torch
    from ladder.samplers.gp import fast_posterior_model

    _, _, model, _, _ = fitted_plane_model()
    fast = fast_posterior_model(model)
    points = torch.rand(5, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        slow, quick = model.posterior(points), fast.posterior(points)
    assert torch.allclose(slow.mean, quick.mean, atol=1e-8)
    assert torch.allclose(
        slow.mvn.covariance_matrix, quick.mvn.covariance_matrix, rtol=1e-6, atol=1e-7
    )


def test_optimiser_starts_include_the_best_observed_points() -> None:
    import torch
    from botorch.acquisition.analytic import PosteriorMean
    from ladder.samplers.gp import INCUMBENT_STARTS, NUM_RESTARTS, fast_posterior_model

    s, _, model, train_x, train_y = fitted_plane_model()
    starts = s._starts(PosteriorMean(fast_posterior_model(model)), train_x, train_y, 1, 7)
    assert starts.shape == (NUM_RESTARTS + INCUMBENT_STARTS, 1, 2)
    best = train_x[torch.argsort(train_y.squeeze(-1), descending=True)[:INCUMBENT_STARTS]]
    assert torch.equal(starts[-INCUMBENT_STARTS:, 0, :], best)


def test_exploitation_draw_is_the_posterior_mean_optimum_and_avoids_pending() -> None:
    from ladder.samplers.gp import EXPLOIT_EVERY, MIN_DISTANCE, is_exploitation_draw

    draw = EXPLOIT_EVERY - 1
    assert is_exploitation_draw(draw) and not is_exploitation_draw(draw - 1)
    data = random_observations(PLANE, 20, bowl)

    def at_draw(start: int, pending: list) -> Proposal:
        s = GPSampler(SamplerContext(PLANE, seed=1, reserve=LocalDraws(start)))
        proposal = s.suggest(data, 1, pending)[0]
        assert proposal.draw == start
        return proposal

    unit = PLANE.params_to_unit
    exploit = at_draw(draw, [])
    # The bowl's minimum is (0.3, 1.0); the GP mean of 20 samples of it is close,
    # and predicted better than every observation (pure exploitation).
    assert np.linalg.norm(unit(exploit.params) - unit({"x": 0.3, "y": 1.0})) < 0.05
    assert exploit.predicted_mean < min(o.value for o in data)
    assert exploit.predicted_std < at_draw(draw - 1, []).predicted_std
    # With that very point running, the draw never lands on it (or next to it).
    diverted = at_draw(draw, [exploit.params]).params
    exploit = exploit.params
    assert np.linalg.norm(unit(diverted) - unit(exploit)) >= MIN_DISTANCE


def test_a_start_beats_a_relaxed_optimum_that_decodes_poorly() -> None:
    """The relaxed optimum of this acquisition has both one-hot columns at 1 (an
    interaction no real point has) and x near p's optimum, so it decodes to p;
    switching to q there is worse, so the discrete search keeps p (value 0.5).
    The start at q's optimum (value 1.0) must win."""
    import torch
    from botorch.acquisition import AcquisitionFunction

    space = Space(
        [
            ParamSpec("x", Kind.FLOAT, low=0, high=1),
            ParamSpec("k", Kind.CATEGORICAL, values=("p", "q")),
        ]
    )

    class Interacting(AcquisitionFunction):
        def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803 - botorch name
            x, p, q = X[..., 0, 0], X[..., 0, 1], X[..., 0, 2]
            return 40 * p * q + p * (0.5 - 50 * (x - 0.2) ** 2) + q * (1 - 2 * (x - 0.9) ** 2)

    s = gp(space)
    acquisition = Interacting(model=None)  # type: ignore[arg-type]
    good = torch.tensor(space.params_to_unit({"x": 0.9, "k": "q"}, ENCODING))
    starts = torch.stack([torch.tensor([0.5, 0.6, 0.6], dtype=torch.float64), good])
    bounds = torch.tensor([[0.0] * 3, [1.0] * 3], dtype=torch.float64)
    [point] = s._maximise(acquisition, starts.unsqueeze(1), bounds, {"maxiter": 60})
    assert point["k"] == "q" and abs(point["x"] - 0.9) < 1e-3


def test_the_optimiser_passes_over_a_point_being_evaluated() -> None:
    """The acquisition peaks exactly at a pending point: the suggestion must be the
    best candidate that does not repeat it (not the pending point itself)."""
    import torch
    from botorch.acquisition import AcquisitionFunction
    from ladder.samplers.gp import MIN_DISTANCE

    space = Space([ParamSpec("x", Kind.FLOAT, low=0, high=1)])

    class PeakAt(AcquisitionFunction):
        def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803 - botorch name
            return -((X[..., 0, 0] - 0.3) ** 2)

    s = gp(space)
    starts = torch.tensor([[[0.1]], [[0.8]]], dtype=torch.float64)
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    pending = torch.tensor([[0.3]], dtype=torch.float64)
    [free] = s._maximise(PeakAt(model=None), starts, bounds, {"maxiter": 60})  # type: ignore[arg-type]
    assert abs(free["x"] - 0.3) < 1e-3  # without the pending point: the peak
    [point] = s._maximise(PeakAt(model=None), starts, bounds, {"maxiter": 60}, pending)  # type: ignore[arg-type]
    assert abs(point["x"] - 0.3) >= MIN_DISTANCE


class _Anisotropic:
    """A concave quadratic acquisition whose curvature per column is 1 / lengthscale^2,
    with its model's lengthscales where ``_column_scale`` finds them; it records every
    point it is evaluated at."""

    def __init__(self, centre: list[float], lengthscale: list[float]) -> None:
        import types

        import torch

        self.centre = torch.tensor(centre, dtype=torch.float64)
        self.lengthscale = torch.tensor([lengthscale], dtype=torch.float64)
        cache = types.SimpleNamespace(lengthscale=self.lengthscale)
        self.model = types.SimpleNamespace(cache=cache)
        self.seen: list = []

    def acquisition(self):  # noqa: ANN201 - botorch type
        from botorch.acquisition import AcquisitionFunction

        outer = self

        class Quadratic(AcquisitionFunction):
            def forward(self, X):  # noqa: ANN001, ANN202, N803 - botorch name
                outer.seen.append(X.detach().clone())
                return -(((X[..., 0, :] - outer.centre) / outer.lengthscale) ** 2).sum(-1)

        acquisition = Quadratic(model=None)  # type: ignore[arg-type]
        acquisition.model = self.model
        return acquisition


def test_acquisition_is_optimised_in_lengthscale_units(monkeypatch) -> None:  # noqa: ANN001
    """L-BFGS works on x / lengthscale (as Optuna's GPSampler does): the optimum and
    every evaluated point are still in the unit cube, and on a function whose
    curvatures span three orders of magnitude (a relevant column next to irrelevant
    ones in 20-D) it needs fewer evaluations than on the raw cube."""
    import torch
    from ladder.samplers import gp as gp_module

    names = [f"x{i}" for i in range(6)]
    space = Space([ParamSpec(n, Kind.FLOAT, low=0, high=1) for n in names])
    centre = [0.31, 0.62, 0.18, 0.77, 0.45, 0.53]
    lengthscale = [0.03, 0.05, 0.3, 2.0, 8.0, 20.0]
    starts = torch.tensor([[[0.9, 0.1, 0.8, 0.2, 0.95, 0.05]]], dtype=torch.float64)
    bounds = torch.tensor([[0.0] * 6, [1.0] * 6], dtype=torch.float64)
    evaluations = {}
    for precondition in (False, True):
        monkeypatch.setattr(gp_module, "PRECONDITION", precondition)
        fake = _Anisotropic(centre, lengthscale)
        acquisition = fake.acquisition()
        scale = gp_module._column_scale(acquisition, 6)
        assert torch.equal(scale, fake.lengthscale[0] if precondition else torch.ones(6))
        [point] = gp(space)._maximise(acquisition, starts, bounds, {"maxiter": 200})
        seen = torch.cat([x.reshape(-1, 6) for x in fake.seen])
        assert seen.min() >= 0 and seen.max() <= 1
        # The columns that matter (short lengthscales) are found to within a
        # small fraction of their lengthscale.
        assert all(abs(point[n] - c) < 1e-3 for n, c in zip(names[:3], centre[:3], strict=True))
        evaluations[precondition] = len(fake.seen)
    assert evaluations[True] < evaluations[False]
    # Lengthscales less than PRECONDITION_RATIO apart: no conditioning to repair.
    similar = _Anisotropic(centre, [0.2, 0.3, 0.5, 0.6, 1.0, 1.9]).acquisition()
    assert torch.equal(gp_module._column_scale(similar, 6), torch.ones(6))
    # An acquisition whose model has no cached lengthscales is not rescaled.
    plain = _Anisotropic(centre, lengthscale).acquisition()
    plain.model = None
    assert torch.equal(gp_module._column_scale(plain, 6), torch.ones(6))
